"""What N processes can give on this machine: the ceiling a bench's N-worker speed-up is read against.

A CPU-bound pure-Python loop with no I/O, no shared state and no serial part runs once in one
process, then in N processes at once. Its speed-up is what the cores themselves deliver (on a
VM, two vCPUs may share a physical core or its caches; a neighbour may take cycles), so an
engine's N-worker / 1-worker ratio can only come close to it, never pass it.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

LOOP = 20_000_000  # ~1.5-2 s of one core here


def _spin(_: int = 0) -> float:
    t0 = time.perf_counter()
    s = 0
    for i in range(LOOP):
        s += i * i % 7
    return time.perf_counter() - t0


def _noop(_: int = 0) -> None:
    return None


def parallel_ceiling(n: int = 2, repeats: int = 3) -> float:
    """Median over `repeats` of: N loops' work per second in N processes / one loop's in one."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing the bench imported is shared
    ratios = []
    with ctx.Pool(n) as pool:
        pool.map(_noop, range(n), chunksize=1)  # the processes' start-up out of the timings
        for _ in range(repeats):
            one = pool.apply(_spin)
            t0 = time.perf_counter()
            pool.map(_spin, range(n), chunksize=1)
            ratios.append(n * one / (time.perf_counter() - t0))
    return statistics.median(ratios)
