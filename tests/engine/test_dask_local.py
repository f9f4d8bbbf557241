"""`runner: dask` without an address: a LocalCluster whose workers fork from thresher's
preloaded forkserver (engine/dask_forkserver.py), and still see the driver's environment."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import psutil
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from thresher.engine import dask_forkserver

pytest.importorskip("dask.distributed")
pytestmark = pytest.mark.skipif(not dask_forkserver.available(), reason="no forkserver on this platform")

from thresher.engine.dask_runner import ThresherDaskRunner  # noqa: E402 - after the skip: needs dask

# Read at collection, before any nanny has put its own values into this process's environment.
_THREADS_SET_BY_USER = any(os.environ.get(name) for name in dask_forkserver.ONE_THREAD)


def _forkservers() -> list[int]:
    return [p.pid for p in psutil.Process().children()
            if any("forkserver" in part for part in p.cmdline())]


def _probe_on_a_worker(tmp_path) -> dict:
    out = tmp_path / "probe.json"

    def probe(_):
        from threadpoolctl import threadpool_info

        with open(out, "w") as f:
            json.dump({"ppid": os.getppid(), "mark": os.environ.get("THRESHER_PROBE_MARK"),
                       "trim": os.environ.get(dask_forkserver.MALLOC_TRIM), "cwd": os.getcwd(),
                       "blas_threads": [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]}, f)
        return 1

    with beam.Pipeline(runner=ThresherDaskRunner(), options=PipelineOptions(flags=[], dask_workers=1)) as p:
        _ = p | beam.Create([0]) | beam.Map(probe)
    return json.loads(out.read_text())


def test_local_cluster_workers_fork_from_the_server_and_see_the_current_environment(tmp_path, monkeypatch):
    assert dask_forkserver.prestart()
    servers = _forkservers()
    assert len(servers) == 1
    # Set after the server started: a fork would not inherit it; the nanny passes it on.
    monkeypatch.setenv("THRESHER_PROBE_MARK", "set-after-the-server-started")
    monkeypatch.setenv(dask_forkserver.MALLOC_TRIM, "65536")  # what dask puts in a driver's environment
    monkeypatch.chdir(tmp_path)
    seen = _probe_on_a_worker(tmp_path)
    assert seen["ppid"] == servers[0]  # forked by the server, not spawned by this process
    assert seen["mark"] == "set-after-the-server-started"
    assert seen["trim"] is None  # glibc's trim threshold stays unset on the workers
    assert seen["cwd"] == str(tmp_path)
    if not _THREADS_SET_BY_USER:
        assert seen["blas_threads"] and set(seen["blas_threads"]) == {1}  # as dask gives spawned workers
    assert _forkservers() == servers  # one server, reused


@pytest.mark.slow
def test_a_variable_removed_since_the_server_started_falls_back_to_spawn(tmp_path, monkeypatch):
    assert dask_forkserver.prestart()
    monkeypatch.setenv("THRESHER_PROBE_GONE", "1")
    # As if the server had started with the variable set (it may have started in an earlier test).
    monkeypatch.setattr(dask_forkserver, "_started_env", {**os.environ})
    assert dask_forkserver.usable()
    monkeypatch.delenv("THRESHER_PROBE_GONE")
    assert not dask_forkserver.usable()  # a fork would still have it: the cluster spawns
    seen = _probe_on_a_worker(tmp_path)
    assert seen["ppid"] == os.getpid()  # spawned by this process's nanny
