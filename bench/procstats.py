"""CPU seconds and peak memory of a bench run's processes, forked dask workers included.

A `runner: dask` LocalCluster's workers are forked from multiprocessing's forkserver
(`thresher/engine/dask_forkserver.py`), a child of the bench process that outlives each run and
reaps the workers itself: `RUSAGE_CHILDREN` never sees them. psutil reads a live child's own
CPU and that of the children it reaped (/proc's cutime/cstime); memory is sampled.

Sampling is not free: reading a process's PSS makes the kernel walk its page tables, and
listing descendants reads every /proc/PID/stat. Every 0.1 s over a 2-worker dask run that cost
~6 CPU-s and made the run 3 s (15 %) slower on 2 cores, while the peaks it found were within 5 %
of sampling every 5 s (bench/scale.py, 511k rows): hence every 1 s, from outside the measured
process where the bench can (`PeakRss(pid=child.pid)`), so it never holds that process's GIL.
"""

from __future__ import annotations

import resource
import threading

import psutil


def cpu_s() -> float:
    """CPU seconds (user + system) of this process, its reaped children, and its live children
    with the children they reaped. Take differences: a forkserver's count spans runs."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for child in psutil.Process().children():
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        live += t.user + t.system + t.children_user + t.children_system
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + live


class PeakRss(threading.Thread):
    """The largest sum of memory over a process (`pid`, default this one) and all its
    descendants, sampled every `every` seconds while running (`with PeakRss() as peak: ...;
    peak.bytes`). Each process counts its proportional set size (PSS: a page shared by n
    processes counts 1/n in each, so forked workers' shared pages count once), or its RSS where
    PSS cannot be read."""

    def __init__(self, pid: int | None = None, every: float = 1.0):
        super().__init__(daemon=True)
        self._done, self.bytes = threading.Event(), 0
        self._pid, self._every = pid, every

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        try:
            root = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            return
        while True:
            total = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:  # the measured process has ended
                return
            for p in tree:
                try:
                    total += _pss(p)
                except psutil.NoSuchProcess:
                    pass
            self.bytes = max(self.bytes, total)
            if self._done.wait(self._every):
                return


def _pss(p: psutil.Process) -> int:
    try:
        return p.memory_full_info().pss  # Linux: /proc/PID/smaps_rollup, ~0.4 ms
    except (AttributeError, psutil.AccessDenied):
        return p.memory_info().rss
