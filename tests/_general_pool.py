"""Small, varied slices of `general_pool` for the embedding tests (short texts: CPU is slow)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def short_rows(shared_data: Path, n: int, max_words: int = 35, stride: int = 113,
               must_include: tuple[str, ...] = ()) -> list[dict]:
    """`n` rows of at most `max_words` words, every `stride`-th such row (so all sources show
    up), plus the rows named in `must_include`; in file order, ids unique."""
    picked, wanted, k = [], set(must_include), 0
    with gzip.open(shared_data / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if len(row["text"].split()) > max_words:
                continue
            k += 1
            if row["id"] in wanted or (k % stride == 0 and len(picked) < n):
                picked.append(row)
                wanted.discard(row["id"])
    assert not wanted, f"rows not found in general_pool: {sorted(wanted)}"
    return picked


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path
