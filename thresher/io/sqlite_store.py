"""SQLite as thresher's local stores use it (the row cache, the rollout store): one connection
per thread, WAL so readers never block while another process writes, and batches written in
one transaction so a kill leaves all or none of a batch."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager


def connect(path: str, timeout_s: float) -> sqlite3.Connection:
    """A connection in WAL mode with a busy timeout (one per thread: they must not cross)."""
    c = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    for attempt in range(20):
        try:  # another process may be switching the journal mode at the same moment
            c.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            time.sleep(0.05 * (attempt + 1))
    c.execute("PRAGMA synchronous=NORMAL")  # durable against process kills, not power loss
    c.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    return c


@contextmanager
def transaction(c: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (or interrupt)."""
    c.execute("BEGIN IMMEDIATE")
    try:
        yield c
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise
