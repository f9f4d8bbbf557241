"""Ctrl-C and SIGTERM stop a run at once: one line, exit 130 / 143, no process left behind.

A KeyboardInterrupt does not stop a run promptly: Beam's worker threads keep the process
alive, and on the Prefect path Prefect's temporary API server (a child process, which a
terminal's Ctrl-C also interrupts) is gone while the flow keeps logging to it, for a minute
or two. So while a run is in progress the first SIGINT or SIGTERM prints one line, ends this
process's child processes (Prefect's server, Beam's worker processes) and leaves with
`os._exit`, skipping the threads' shutdown.

Leaving like that loses nothing: the engine removes the old `manifest.json` before it writes
any shard and writes the new one last, atomically, so an interrupted output folder never
looks complete; a rerun sweeps the half-written temporary files and does the work again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import psutil

# The shell's convention: 128 + the signal number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
CHILD_GRACE_S = 1.5  # how long children get to stop on SIGTERM before SIGKILL


def end_children(grace_s: float = CHILD_GRACE_S, rounds: int = 3) -> None:
    """Terminate this process's descendants, then kill the ones still running (best effort).

    Several rounds: Beam's runner threads keep going while this runs and may start a worker
    after the first listing; missed, that worker would outlive the run and print a traceback
    into the caller's terminal when its connection times out."""
    for _ in range(rounds):
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        if not children:
            return
        for c in children:
            with contextlib.suppress(psutil.Error):
                c.terminate()
        _, alive = psutil.wait_procs(children, timeout=grace_s)
        for c in alive:
            with contextlib.suppress(psutil.Error):
                c.kill()


@contextlib.contextmanager
def exit_on_signals(say: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, SIGINT / SIGTERM call `say(line)`, end the children and exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, _frame: object) -> None:
        # A second signal while this one is handled must not interrupt the cleanup.
        for s in EXIT_CODES:
            signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(signum).name
        with contextlib.suppress(Exception):
            say(f"interrupted ({name}): the run stopped unfinished, no manifest written; rerun to finish it")
            sys.stdout.flush()
            sys.stderr.flush()
            # That line is the last word: Beam's threads report their workers' deaths while
            # the children end, and nobody needs those tracebacks.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        end_children()
        os._exit(EXIT_CODES[signum])

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def sigterm_stays_ours() -> Iterator[None]:
    """Keep Prefect's flow engine from taking SIGTERM over while the block runs.

    During a flow run Prefect swaps in a handler that raises `TerminationSignal` in the main
    thread, reports a crash to its API and only then re-sends the signal to the handler it
    replaced: seconds late, and when the signal lands inside Beam (which catches
    BaseException and re-raises it augmented) the re-send never happens and the run ends
    with exit 1 and a traceback. A CLI run has no Prefect runner to cancel it, so
    `exit_on_signals`'s handler stays in place.
    """
    from prefect import flow_engine

    bridge = getattr(flow_engine, "capture_sigterm", None)
    if bridge is None:  # a Prefect without the bridge: nothing to keep away
        yield
        return
    flow_engine.capture_sigterm = contextlib.nullcontext
    try:
        yield
    finally:
        flow_engine.capture_sigterm = bridge
