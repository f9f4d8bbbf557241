"""The row cache: per-row results (an embedding, a score) reused across runs, keyed by content.

A stage that does costly per-row work asks the cache first and computes only the misses:

    cache = RowCache.open(ctx.cache_dir, namespace=identity)   # once per worker (setup)
    keys = content_keys(texts)                                 # 16-byte xxh3-128 of each text
    found = cache.get_many(keys)                               # list[bytes | None]
    ... compute the rows whose entry is None ...
    cache.put_many(zip(missing_keys, values))

`namespace` names *what* was computed — the model, its revision, every param that changes the
value (see `namespace_of`) — so two configurations never read each other's entries and a
changed model is a clean miss, not a stale hit. A value is opaque bytes (the caller packs it,
e.g. `vector.tobytes()`).

Why hand-written on SQLite rather than `diskcache`: a batch of rows is one `IN (...)` query
here; diskcache gets one key per call (~20 µs each plus a write to update its LRU stamp),
which would cost more than the n-gram work it would save. SQLite in WAL mode gives what a
shared cache needs: many worker processes read while one writes, a kill mid-write loses at
most the uncommitted batch, and nothing is ever half-written.

Eviction is not done during a run (a run must be able to read back what it just wrote):
`prune(max_bytes)` removes least-recently-used entries after the run (`thresher cache prune`,
and the publish step with the recipe's `cache.max_bytes`). "Used" is stamped per batch, in
whole seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import xxhash

from thresher.io import sqlite_store

FILE_NAME = "rows.sqlite"
_CHUNK = 900  # below SQLite's default limit of 999 host parameters per statement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    ns TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
"""


def content_keys(texts: Iterable[str | None]) -> list[bytes]:
    """16-byte keys of each text's UTF-8 bytes (None and "" share the key of "")."""
    return [xxhash.xxh3_128_digest((t or "").encode("utf-8", "surrogatepass")) for t in texts]


def namespace_of(kind: str, identity: dict[str, Any]) -> str:
    """A namespace from what determines a value: `kind` plus a stable hash of `identity`
    (model path and revision, params...). Readable prefix, so `cache info` can group by kind."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return f"{kind}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class RowCache:
    """A process-safe content-keyed cache of per-row values, in one SQLite file.

    Not picklable on purpose: open one per worker process (in a stage's `setup()`).
    Counts its own `hits` and `misses` (per process) for the stage to report."""

    def __init__(self, path: str, namespace: str, timeout_s: float = 120.0):
        self.path = path
        self.namespace = namespace
        self.hits = 0
        self.misses = 0
        self._timeout_s = timeout_s
        self._local = threading.local()  # sqlite3 connections must not cross threads
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._conn().executescript(_SCHEMA)

    @classmethod
    def open(cls, cache_dir: str, namespace: str) -> RowCache:
        return cls(os.path.join(cache_dir, FILE_NAME), namespace)

    def __getstate__(self):
        raise TypeError("RowCache is per process: open it in setup(), not in the pickled stage")

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = sqlite_store.connect(self.path, self._timeout_s)
        return c

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The stored value of each key, or None; stamps the found entries as used now."""
        found: dict[bytes, bytes] = {}
        c = self._conn()
        uniq = list(dict.fromkeys(keys))
        for i in range(0, len(uniq), _CHUNK):
            part = uniq[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            found.update(c.execute(f"SELECT key, value FROM entries WHERE ns = ? AND key IN ({marks})",
                                   [self.namespace, *part]).fetchall())
        if found:
            now = int(time.time())
            hit = list(found)
            for i in range(0, len(hit), _CHUNK):
                part = hit[i:i + _CHUNK]
                marks = ",".join("?" * len(part))
                c.execute(f"UPDATE entries SET used = ? WHERE ns = ? AND key IN ({marks}) AND used < ?",
                          [now, self.namespace, *part, now])
        out = [found.get(k) for k in keys]
        n_hit = sum(v is not None for v in out)
        self.hits += n_hit
        self.misses += len(out) - n_hit
        return out

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Store values (one transaction: all or none of them survive a kill)."""
        now = int(time.time())
        rows = [(self.namespace, k, v, now) for k, v in items]
        if not rows:
            return
        with sqlite_store.transaction(self._conn()) as c:
            c.executemany("INSERT OR REPLACE INTO entries (ns, key, value, used) VALUES (?, ?, ?, ?)", rows)

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None


def cache_info(cache_dir: str) -> dict[str, Any]:
    """What a cache folder holds: file size, and entries/bytes per namespace (and per kind)."""
    path = os.path.join(cache_dir, FILE_NAME)
    if not os.path.exists(path):
        return {"path": path, "exists": False, "file_bytes": 0, "entries": 0, "namespaces": {}}
    with sqlite3.connect(path, timeout=120) as c:
        rows = c.execute("SELECT ns, COUNT(*), SUM(LENGTH(value) + LENGTH(key)), MIN(used), MAX(used) "
                         "FROM entries GROUP BY ns ORDER BY ns").fetchall()
    file_bytes = sum(os.path.getsize(path + sfx) for sfx in ("", "-wal") if os.path.exists(path + sfx))
    return {
        "path": path, "exists": True, "file_bytes": file_bytes,
        "entries": sum(r[1] for r in rows),
        "namespaces": {ns: {"entries": n, "bytes": b, "oldest_use": lo, "newest_use": hi}
                       for ns, n, b, lo, hi in rows},
    }


def prune(cache_dir: str, max_bytes: int) -> dict[str, int]:
    """Remove least-recently-used entries until the stored bytes are at most `max_bytes`, then
    give the space back to the file system. Returns what was removed."""
    path = os.path.join(cache_dir, FILE_NAME)
    if not os.path.exists(path):
        return {"removed_entries": 0, "removed_bytes": 0, "kept_bytes": 0}
    with sqlite3.connect(path, timeout=120, isolation_level=None) as c:
        total = c.execute("SELECT COALESCE(SUM(LENGTH(value) + LENGTH(key)), 0) FROM entries").fetchone()[0]
        removed = removed_bytes = 0
        if total > max_bytes:
            excess = total - max_bytes
            # Oldest first; ties broken by namespace and key so the same cache prunes the same way.
            cur = c.execute("SELECT ns, key, LENGTH(value) + LENGTH(key) FROM entries ORDER BY used, ns, key")
            doomed = []
            for ns, key, size in cur:
                if removed_bytes >= excess:
                    break
                doomed.append((ns, key))
                removed_bytes += size
            with sqlite_store.transaction(c):
                c.executemany("DELETE FROM entries WHERE ns = ? AND key = ?", doomed)
            removed = len(doomed)
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            c.execute("VACUUM")
    return {"removed_entries": removed, "removed_bytes": removed_bytes, "kept_bytes": total - removed_bytes}
