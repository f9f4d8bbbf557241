"""A real dask.distributed cluster on loopback for tests and benches: a scheduler and worker
processes, each its own OS process, as `dask scheduler` / `dask worker` start them on a cluster.

    with dask_cluster(workers=2) as address:      # "tcp://127.0.0.1:PORT"
        recipe["runner"] = {"runner": "dask", "options": {"dask_client_address": address}}

The workers import thresher from this interpreter's environment (the venv's editable install),
as a cluster's workers must. `env` is the processes' whole environment (default: this
process's, at start). Both processes are stopped by their PIDs afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from thresher.testing.ports import free_port, stop_process


def _dask_cli() -> str:
    exe = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    if exe is None:
        raise RuntimeError("the `dask` command was not found; pip install 'thresher[dask]'")
    return exe


def _wait_for_workers(address: str, n: int, procs: list[subprocess.Popen], timeout_s: float) -> None:
    from dask.distributed import Client

    deadline = time.monotonic() + timeout_s
    client = None
    try:
        while time.monotonic() < deadline:
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"dask process {dead[0].args[:2]} exited with code {dead[0].returncode} "
                                   f"before {n} worker(s) joined {address}")
            try:
                if client is None:
                    client = Client(address, timeout=5)
                client.wait_for_workers(n, timeout=max(1.0, min(5.0, deadline - time.monotonic())))
                return
            except (OSError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"{n} dask worker(s) did not join {address} within {timeout_s:g} s")
    finally:
        if client is not None:
            client.close()


@contextmanager
def dask_cluster(workers: int = 2, threads: int = 1, timeout_s: float = 90.0,
                 env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `dask scheduler` and `dask worker --nworkers N --nthreads T` on free loopback ports;
    yield the scheduler's address once all N workers have joined; stop both after."""
    exe = _dask_cli()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    scheduler = subprocess.Popen([exe, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], **quiet)
    procs = [scheduler]
    try:
        worker = subprocess.Popen([exe, "worker", address, "--nworkers", str(workers), "--nthreads", str(threads),
                                   "--host", "127.0.0.1", "--no-dashboard"], **quiet)
        procs.append(worker)
        _wait_for_workers(address, workers, procs, timeout_s)
        yield address
    finally:
        for p in procs:  # all at once: each takes seconds to shut down gracefully
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            stop_process(p)
