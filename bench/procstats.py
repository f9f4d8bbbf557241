"""CPU seconds and peak memory of a bench run's processes, forked dask workers included.

A `runner: dask` LocalCluster's workers are forked from multiprocessing's forkserver
(`thresher/engine/dask_forkserver.py`), a child of the bench process that outlives each run and
reaps the workers itself: `RUSAGE_CHILDREN` never sees them. psutil reads a live child's own
CPU and that of the children it reaped (/proc's cutime/cstime); memory is sampled.
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
    """The largest sum of memory over this process and all its descendants, sampled every 0.1 s
    while running (`with PeakRss() as peak: ...; peak.bytes`). Each process counts its
    proportional set size (PSS: a page shared by n processes counts 1/n in each, so forked
    workers' shared pages count once), or its RSS where PSS cannot be read."""

    def __init__(self):
        super().__init__(daemon=True)
        self._done, self.bytes = threading.Event(), 0

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += _pss(p)
                except psutil.NoSuchProcess:
                    pass
            self.bytes = max(self.bytes, total)
            if self._done.wait(0.1):
                return


def _pss(p: psutil.Process) -> int:
    try:
        return p.memory_full_info().pss  # Linux: /proc/PID/smaps_rollup, ~0.4 ms
    except (AttributeError, psutil.AccessDenied):
        return p.memory_info().rss
