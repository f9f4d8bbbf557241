"""`language_id` and `pii` against plain Python loops, on >= 20k real general_pool rows.

    .venv/bin/python bench/quality_steps.py [--rows 20000] [--batch 4096] [--repeat 3]

Rows: `--rows` rows evenly spaced over general_pool (so all seven sources are in). Each
stage's per-batch work (`score` + `decide`, exactly what its Beam step runs) is timed over Arrow
record batches of `--batch` rows, next to its baseline in the same process:

  language_id  baseline: py3langid's `classify` called row by row in a Python loop on the same
               first 2,000 characters (the stage walks py3langid's own DFA tables for a whole
               batch at once and scores with one sparse product); the labels are compared.
  pii          baseline: a plain `re` loop — every row through the same exact patterns and
               checksums (`pii_patterns.find` + `redact`), no prefilter; the stage runs one RE2
               pass (pyarrow) per batch and the exact patterns only on the rows it flags. The
               per-row hit counts are compared.

Printed: docs/s of each (best of `--repeat`) by wall time and by CPU time of this process (the
steadier number on a busy shared machine), stage/baseline ratios, agreement. Not timed here:
the Beam pipeline around the stage (the same for every selector; through the test harness it
is dominated by pickling the in-memory rows into the pipeline, not by the stage).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data"))

from thresher.core.columns import set_columns  # noqa: E402
from thresher.stages.quality import pii_patterns as pat  # noqa: E402
from thresher.stages.quality.language_id import LanguageId, batch_identifier, encode, load_identifier  # noqa: E402
from thresher.stages.quality.pii import Pii  # noqa: E402
from thresher.testing.harness import make_batch  # noqa: E402


def pool_rows(n: int) -> list[dict]:
    with gzip.open(DATA / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        pool = [json.loads(line) for line in fh]
    if n > len(pool):
        sys.exit(f"general_pool has {len(pool):,} rows; ask for at most that many --rows")
    # Evenly spaced over the file, which is ordered by source: every source is in the sample.
    return [{k: pool[i * len(pool) // n][k] for k in ("id", "text", "source")} for i in range(n)]


def best_of(repeat: int, fn):
    """((fastest wall seconds, fewest CPU seconds of this process), the last result)."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return (wall, cpu), out


def run_batches(stage, batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    stage.setup()
    out = []
    for b in batches:
        b = set_columns(b, stage.score(b))
        stage.decide(b)
        out.append(b)
    return out


def line(name: str, n: int, secs: tuple[float, float]) -> str:
    wall, cpu = secs
    return f"  {name:<44} {n / wall:>9,.0f} docs/s wall ({wall:.2f} s)  {n / cpu:>9,.0f} docs/CPU-s ({cpu:.2f} s)"


def ratio(base: tuple[float, float], stage: tuple[float, float]) -> str:
    return f"ratio stage/baseline: {base[0] / stage[0]:.2f}x wall, {base[1] / stage[1]:.2f}x CPU"


def bench_language_id(texts: list[str], batches, repeat: int) -> None:
    lib = load_identifier()
    batch_identifier()  # model load is not part of either timing
    chars = LanguageId.Params().text_chars
    t_base, base = best_of(repeat, lambda: [lib.classify(encode(t, chars))[0] for t in texts])
    t_stage, out = best_of(repeat, lambda: run_batches(LanguageId({}), batches))
    langs = [x for b in out for x in b.column("lang").to_pylist()]
    same = sum(a == b for a, b in zip(langs, base, strict=True))
    print(f"language_id on {len(texts):,} rows (text_chars={chars})")
    print(line("baseline: py3langid.classify, row loop", len(texts), t_base))
    print(line("stage: score+decide over record batches", len(texts), t_stage))
    print(f"  {ratio(t_base, t_stage)}   same label: {same:,}/{len(texts):,}")


def bench_pii(texts: list[str], batches, repeat: int) -> None:
    def baseline():
        counts = []
        for t in texts:
            hits = pat.find(t, pat.KINDS)
            if hits:
                pat.redact(t, hits, lambda h: pat.placeholder(h.kind))
            counts.append(len(hits))
        return counts

    t_base, base = best_of(repeat, baseline)
    t_stage, out = best_of(repeat, lambda: run_batches(Pii({}), batches))
    counts = [x for b in out for x in b.column("pii_count").to_pylist()]
    scanned = sum(sum(b.column("__pii_scanned").to_pylist()) for b in out)
    same = sum(a == b for a, b in zip(counts, base, strict=True))
    print(f"pii on {len(texts):,} rows (all kinds, redact with placeholders)")
    print(line("baseline: plain re loop, same patterns", len(texts), t_base))
    print(line("stage: RE2 prefilter + exact on flagged rows", len(texts), t_stage))
    print(f"  {ratio(t_base, t_stage)}   same counts: {same:,}/{len(texts):,}   "
          f"rows with PII: {sum(1 for c in counts if c):,}   hits: {sum(counts):,}   "
          f"rows scanned in Python: {scanned:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = pool_rows(args.rows)
    texts = [r["text"] for r in rows]
    batches = [make_batch(rows[i:i + args.batch], first_key=i) for i in range(0, len(rows), args.batch)]
    print(f"general_pool: {len(rows):,} rows, mean {sum(map(len, texts)) / len(texts):,.0f} chars; "
          f"batches of {args.batch}; best of {args.repeat}; {os.cpu_count()} CPUs (shared)")
    bench_language_id(texts, batches, args.repeat)
    bench_pii(texts, batches, args.repeat)


if __name__ == "__main__":
    main()
