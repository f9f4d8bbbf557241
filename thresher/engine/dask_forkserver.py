"""Worker processes of a `runner: dask` LocalCluster, forked from a preloaded forkserver.

dask's nanny starts each worker with multiprocessing's `spawn`: a fresh interpreter that then
imports distributed, Beam and thresher (2.5-4.5 s of CPU per worker here, while the run waits
for it). With `forkserver`, one server process imports them once and every worker is a fork of
it (0.2-0.3 s to a ready cluster). `prestart` starts that server as early as `run_pipeline`
knows the run is a local dask run, so its imports overlap with the driver building the graph;
later runs in the same process reuse it. On 2 cores this took 2.5-3 s off both a 1- and a
2-worker run of `bench/scale.py` (511k rows).

What forking changes, and how it is kept as with `spawn`:
- The working directory and `sys.path` travel with multiprocessing's preparation data, as
  before. The environment does not: a worker would see the server's environment from when it
  started. `worker_env` gives the nanny the driver's current variables, and `usable` says to fall
  back to `spawn` when a variable has been removed since (it cannot be unset through the nanny).
- Some variables act only when a process starts or a library loads, which for a fork happened
  in the server: the server starts without `MALLOC_TRIM_THRESHOLD_` (glibc; the reason is in
  `engine/dask_runner.py`) and with `OMP_NUM_THREADS`, `MKL_NUM_THREADS` and
  `OPENBLAS_NUM_THREADS` at 1 unless they are set, as dask starts a spawned worker.

This module imports nothing heavy: `run_pipeline` calls it before Beam builds anything.
"""

from __future__ import annotations

import logging
import multiprocessing
import os

log = logging.getLogger("thresher.dask")

MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
# What every worker unpickles first; stage modules are added by the caller.
PRELOAD = ("distributed", "thresher.engine.dask_bundles")

# dask starts a spawned worker with these at 1 (unless set): one BLAS/OpenMP thread per worker
# thread. They are read when NumPy loads, which in a fork happened in the server.
ONE_THREAD = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_started_env: dict[str, str] | None = None  # the environment the server was started with


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def prestart(modules: tuple[str, ...] | list[str] = ()) -> bool:
    """Start the forkserver (once per process) with thresher preloaded; True when the workers
    of a LocalCluster can be forked from it. Returns at once: the server imports on its own."""
    global _started_env
    if not available():
        return False
    if _started_env is not None:
        return True
    from multiprocessing import forkserver

    # Has no effect when something else in this process started the server already: its
    # workers then import what the server lacks themselves, as with spawn.
    # A script's own stages (`__main__`) reach a worker through multiprocessing's preparation
    # data, as with spawn; preloading names it would run the script in the server.
    preload = [*PRELOAD, *(m for m in modules if not m.startswith("__"))]
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    trim = os.environ.pop(MALLOC_TRIM, None)
    added = [name for name in ONE_THREAD if name not in os.environ]
    os.environ.update(dict.fromkeys(added, "1"))
    try:
        forkserver.ensure_running()  # the server starts with this environment
    finally:
        for name in added:
            os.environ.pop(name, None)
        if trim is not None:
            os.environ[MALLOC_TRIM] = trim
    _started_env = {k: v for k, v in os.environ.items() if k != MALLOC_TRIM}
    log.debug("dask: forkserver started, preloading %s", ", ".join(preload))
    return True


def usable() -> bool:
    """Whether this cluster's workers can be forked from the server: it runs (or starts now) and
    no variable it was started with has been removed from the environment since."""
    if not prestart():
        return False
    gone = sorted(set(_started_env or {}) - set(os.environ))
    if gone:
        log.debug("dask: %s removed from the environment since the forkserver started: workers are "
                  "spawned", ", ".join(gone))
        return False
    return True


def worker_env() -> dict[str, str]:
    """The variables a forked worker must set to see the driver's environment of now."""
    started = _started_env or {}
    return {k: v for k, v in os.environ.items() if k != MALLOC_TRIM and started.get(k) != v}
