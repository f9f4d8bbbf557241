"""One real dask.distributed cluster (a scheduler and two worker processes on loopback) for
the tests that run recipes on dask, one after another: starting one takes several seconds, each
test's recipe far less. An idle cluster is not free (its heartbeats cost ~10% of a core), so it
is stopped, by PID, as soon as the next test does not ask for it, and started again if a later
one does: any order and any single test still work. Its processes get the session's moto
server in their environment, so `s3://` recipes run on it too (a test takes the `s3` fixture
to empty that server and reach it from this process)."""

from __future__ import annotations

import contextlib
import os

import pytest

_running: dict[str, contextlib.ExitStack | str] = {}


def _stop_cluster() -> None:
    stack = _running.pop("stack", None)
    _running.pop("address", None)
    if stack is not None:
        stack.close()


@pytest.fixture(scope="session")
def _dask_env(moto_endpoint, tmp_path_factory):
    from thresher.testing.moto_server import aws_env

    # Its own HOME: nothing a worker caches lands in the user's.
    yield {**os.environ, **aws_env(moto_endpoint), "HOME": str(tmp_path_factory.mktemp("dask_home"))}
    _stop_cluster()


@pytest.fixture
def dask_address(_dask_env) -> str:
    """The scheduler address ("tcp://127.0.0.1:PORT") of the running cluster, started if none is."""
    from thresher.testing.dask_cluster import dask_cluster

    if "address" not in _running:
        stack = contextlib.ExitStack()
        _running["address"] = stack.enter_context(dask_cluster(workers=2, threads=1, env=_dask_env))
        _running["stack"] = stack
    return _running["address"]


def pytest_runtest_teardown(item, nextitem):
    if "address" in _running and (nextitem is None or "dask_address" not in nextitem.fixturenames):
        _stop_cluster()
