"""Time-bounded grading in any thread: a small pool of worker processes per process.

math-verify's own time limits use `signal.alarm`, which only works in the main thread, and Beam
runs DoFns in worker threads — so a pathological expression would block a worker for ever. Here
a reward's `grade_here` runs in a worker process instead; the caller waits for each result at
most `timeout_s` and, past it, kills the worker (SIGKILL, then waits for it: nothing is left
behind), scores that pair 0 with failure "timeout", and goes on with a fresh worker.

Why hand-written rather than `concurrent.futures.ProcessPoolExecutor` or `multiprocessing`:
the executor can neither cancel a running task nor kill one worker, only break the whole pool;
and `spawn`/`forkserver` children re-run the caller's `__main__` script (a script without an
`if __name__ == "__main__":` guard would run again in every worker), while `fork` from a
threaded Beam worker is unsafe. A worker here is a plain `python -c` subprocess that imports only
thresher and the reward's own modules, and talks over a `multiprocessing.connection` pipe. A
batch goes to one worker in one message and results stream back one by one, so a timeout costs
only the pair that hung (the rest are resent to a fresh worker).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from thresher.models.reward_grade import ERROR, TIMEOUT, WORKER_DIED, Grade

DEFAULT_TIMEOUT_S = 5.0
POOL_SIZE = max(1, min(2, os.cpu_count() or 1))
# Pairs per message: large enough that a round-trip is paid rarely, small enough that a
# timeout early in a batch does not resend much.
CHUNK = 64
# A fresh worker imports the reward's libraries (math-verify pulls in sympy: ~2 s idle, far more
# on a loaded machine) before its first grade; that is not the grade's time.
STARTUP_TIMEOUT_S = 120.0
_BOOT = ("import sys; from thresher.models.reward_timeout import serve; "
         "serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))")


def serve(read_fd: int, write_fd: int, parent: int) -> None:
    """Worker loop (runs in the subprocess): ("warm", reward) -> "ok"; (reward, pairs) -> one
    Grade per pair, sent as each is done; returns when the pipe closes."""
    rx, tx = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    _die_with_parent(parent)
    while True:
        try:
            reward, pairs = rx.recv()
        except (EOFError, OSError):
            return
        if isinstance(reward, str):  # ("warm", reward)
            try:
                pairs.warm()
            except Exception:  # its grades will say so ("error"), one by one
                pass
            tx.send("ok")
            continue
        for completion, reference in pairs:
            try:
                grade = reward.grade_here(completion, reference)
            except Exception:  # a reward that raises grades 0; the worker lives on
                grade = Grade(0.0, None, ERROR)
            tx.send(grade)


def _die_with_parent(parent: int) -> None:
    """A worker busy on a hanging grade never reads its pipe, and sympy's big-integer arithmetic
    holds the GIL (no watchdog thread could run), so it would outlive a parent that died: ask
    the kernel to SIGKILL it then (Linux's PR_SET_PDEATHSIG). That fires when the parent
    *thread* that started it ends, so workers are started from one long-lived thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != parent:  # it died before the line above
        os._exit(0)


class _Worker:
    def __init__(self):
        child_r, parent_w = os.pipe()
        parent_r, child_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(child_r), str(child_w), str(os.getpid())],
                                         pass_fds=(child_r, child_w), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(child_r)
            os.close(child_w)
        self.tx = Connection(parent_w, readable=False)
        self.rx = Connection(parent_r, writable=False)
        self.warmed: set[type] = set()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.tx.close()
        self.rx.close()

    def close(self) -> None:
        self.tx.close()  # the worker sees EOF and returns
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.rx.close()


class WorkerPool:
    """At most `size` workers, started when first needed; a thread checks one out per batch."""

    def __init__(self, size: int = POOL_SIZE):
        self.size = size
        self.pid = os.getpid()
        self._idle: list[_Worker] = []
        self._live = 0
        self._cond = threading.Condition()
        # Workers are started from this one thread, which lives as long as the process (see
        # `_die_with_parent`): not from Beam's short-lived worker threads.
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="thresher-reward-starter")

    def _checkout(self) -> _Worker:
        with self._cond:
            while not self._idle and self._live >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            return self._starter.submit(_Worker).result()
        except BaseException:
            self._checkin(None)
            raise

    def _checkin(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is None:
                self._live -= 1
            else:
                self._idle.append(worker)
            self._cond.notify()

    def grade(self, reward: Any, pairs: Sequence[tuple[str, str]], timeout_s: float) -> list[Grade]:
        """`reward.grade_here` on every pair, each bounded by `timeout_s` seconds."""
        out: list[Grade] = []
        pairs = list(pairs)
        while len(out) < len(pairs):
            worker = self._checkout()
            healthy = True
            try:
                if type(reward) not in worker.warmed:
                    worker.tx.send(("warm", reward))
                    if not worker.rx.poll(STARTUP_TIMEOUT_S) or worker.rx.recv() != "ok":
                        raise EOFError
                    worker.warmed.add(type(reward))
                while healthy and len(out) < len(pairs):
                    chunk = pairs[len(out):len(out) + CHUNK]
                    worker.tx.send((reward, chunk))
                    for _ in chunk:
                        if not worker.rx.poll(timeout_s):
                            out.append(Grade(0.0, None, TIMEOUT))
                            healthy = False
                            break
                        out.append(worker.rx.recv())
            except (EOFError, OSError):  # the worker died (killed, out of memory, failed to start)
                out.append(Grade(0.0, None, WORKER_DIED))
                healthy = False
            except BaseException:  # e.g. an unpicklable reward, or an interrupt: results may be
                healthy = False    # left unread in the pipe, so this worker is not reused
                raise
            finally:
                if not healthy:
                    worker.kill()
                self._checkin(worker if healthy else None)
        return out

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for w in idle:
            w.close()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> WorkerPool:
    """This process's pool (a forked child gets its own: its parent's pipes are not its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = WorkerPool()
        return _POOL


def grade_bounded(reward: Any, pairs: Sequence[tuple[str, str]], timeout_s: float) -> list[Grade]:
    return pool().grade(reward, pairs, timeout_s)


@atexit.register
def _close_pool() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()
