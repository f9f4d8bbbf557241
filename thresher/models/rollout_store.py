"""The rollout store: every model generation, once, on disk.

Keyed by (model, prompt, sampling params, sample key, seed) — see `rollout_key` — so a rerun,
or a run killed half-way, answers every request it already made from disk and calls the model
only for the rest. Failed calls are never stored: a rerun retries them.

Backed by SQLite in WAL mode: one file, readers never block, concurrent writers from several
worker processes serialise on SQLite's lock (`busy_timeout`), and each `put_many` is one
transaction, so a SIGKILL leaves either all or none of a batch's rows. SQLite needs a local
(or otherwise lock-honouring) filesystem; on a distributed runner give each worker pool a
local path, or share a store on NFS only with care.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

import xxhash

from thresher.io import sqlite_store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    sample TEXT NOT NULL,
    seed INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    reward REAL,
    created REAL NOT NULL
)
"""


def rollout_key(model: str, prompt: str, params: dict[str, Any], sample: str | int, seed: int) -> str:
    """Stable key of one generation request (xxh3-128 of its canonical JSON)."""
    blob = json.dumps([model, prompt, params, str(sample), int(seed)], sort_keys=True, separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(blob.encode("utf-8", "surrogatepass"))


@dataclass
class StoredRollout:
    text: str
    finish_reason: str | None
    reward: float | None


class RolloutStore:
    """A process-safe, resumable cache of generations. Open one per worker (not picklable)."""

    def __init__(self, path: str, timeout_s: float = 60.0):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # One connection per thread: sqlite3 connections must not cross threads.
        self._local = threading.local()
        self._timeout_s = timeout_s
        with self._conn() as c:
            c.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = sqlite_store.connect(self.path, self._timeout_s)
        return c

    def get_many(self, keys: list[str]) -> dict[str, StoredRollout]:
        out: dict[str, StoredRollout] = {}
        c = self._conn()
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            part = keys[i : i + 500]
            q = f"SELECT key, text, finish_reason, reward FROM rollouts WHERE key IN ({','.join('?' * len(part))})"
            for k, text, fr, reward in c.execute(q, part):
                out[k] = StoredRollout(text, fr, reward)
        return out

    def put_many(self, records: list[dict[str, Any]]) -> None:
        """Insert records (keys: key, model, prompt, params, sample, seed, text, finish_reason,
        reward); a key already present keeps its first value."""
        if not records:
            return
        now = time.time()
        rows = [
            (r["key"], r["model"], r["prompt"], json.dumps(r["params"], sort_keys=True), str(r["sample"]),
             int(r["seed"]), r["text"], r.get("finish_reason"), r.get("reward"), now)
            for r in records
        ]
        with sqlite_store.transaction(self._conn()) as c:
            c.executemany("INSERT OR IGNORE INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def set_rewards(self, rewards: dict[str, float]) -> None:
        if not rewards:
            return
        with sqlite_store.transaction(self._conn()) as c:
            c.executemany("UPDATE rollouts SET reward=? WHERE key=?", [(float(v), k) for k, v in rewards.items()])

    def reserve(self, scope: str, n: int, limit: int) -> int:
        """Take up to `n` calls from the budget `limit` shared by every process using `scope`;
        returns how many were granted. One transaction, so concurrent workers never overspend."""
        if n <= 0:
            return 0
        c = self._conn()
        c.execute("CREATE TABLE IF NOT EXISTS budgets (scope TEXT PRIMARY KEY, used INTEGER NOT NULL)")
        with sqlite_store.transaction(c):
            row = c.execute("SELECT used FROM budgets WHERE scope=?", (scope,)).fetchone()
            used = int(row[0]) if row else 0
            grant = max(0, min(n, limit - used))
            c.execute("INSERT INTO budgets VALUES (?, ?) ON CONFLICT(scope) DO UPDATE SET used=excluded.used",
                      (scope, used + grant))
        return grant

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM rollouts").fetchone()[0])

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None
