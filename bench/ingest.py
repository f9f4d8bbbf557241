"""Bench: ingest + normalise + exact dedup + shard writing, thresher vs a plain pyarrow loop.

    .venv/bin/python bench/ingest.py [--rows 511266] [--workers 1]

Builds a corpus of >= 500k rows from ../shared/data/general_pool (the 73k-document pool
repeated with fresh ids; copies carry a suffix so they are distinct, except one copy that
repeats the pool exactly, so dedup has ~1/7 of the rows to drop), as 8 JSONL.gz files under
bench/_data/ (built once, reused). Then, each in its own subprocess so peak RSS is its own:

* baseline — the same work as one plain Python/pyarrow loop: orjson per line, the same
  validity checks, NFC + control-character stripping, xxh3 dedup with a dict, a seeded
  hash shuffle, Arrow IPC stream shards of 100k rows;
* thresher — the Beam pipeline (`run_pipeline` + `publish`, no Prefect) on FnApiRunner.

Prints docs/s for both, the ratio, and each one's peak RSS.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data")) / "general_pool" / "pool.jsonl.gz"
DATA = ROOT / "bench" / "_data" / "ingest"
FILES = 8


def build_corpus(copies: int) -> list[Path]:
    stamp = DATA / f"copies-{copies}.done"
    paths = [DATA / f"pool-{i:02d}.jsonl.gz" for i in range(FILES)]
    if stamp.exists():
        return paths
    if not POOL.exists():
        sys.exit(f"needs {POOL} (the shared data beside the project); set THRESHER_SHARED_DATA")
    DATA.mkdir(parents=True, exist_ok=True)
    with gzip.open(POOL, "rt") as fh:
        base = [json.loads(line) for line in fh]
    outs = [gzip.open(p, "wt", compresslevel=1) for p in paths]
    n = 0
    for c in range(copies):
        for r in base:
            text = f"{r['text']} [copy {0 if c == copies - 1 else c}]"  # the last copy repeats copy 0
            outs[n % FILES].write(json.dumps({"id": f"{r['id']}#{c}", "text": text, "origin": r["source"]}) + "\n")
            n += 1
    for o in outs:
        o.close()
    stamp.write_text(str(n))
    return paths


def run_baseline(paths: list[Path], out: Path) -> int:
    import re
    import unicodedata

    import orjson
    import pyarrow as pa
    import xxhash

    control = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
    seen: set[int] = set()
    ids, texts, origins, files, lines, order = [], [], [], [], [], []
    for path in paths:
        with gzip.open(path, "rb") as fh:
            for ln, raw in enumerate(fh, 1):
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                t = obj.get("text") if isinstance(obj, dict) else None
                if not isinstance(t, str):
                    continue
                t = control.sub("", unicodedata.normalize("NFC", t))
                if not t.strip():
                    continue
                h = xxhash.xxh3_64_intdigest(t.encode())
                if h in seen:
                    continue
                seen.add(h)
                ids.append(obj["id"])
                texts.append(t)
                origins.append(obj.get("origin"))
                files.append(str(path))
                lines.append(ln)
                order.append(xxhash.xxh3_64_intdigest(obj["id"].encode(), 0))
    table = pa.table({"id": ids, "text": texts, "source": ["pool"] * len(ids), "source_file": files,
                      "source_row": lines, "origin": origins})
    idx = sorted(range(len(order)), key=order.__getitem__)
    table = table.take(pa.array(idx))
    out.mkdir(parents=True, exist_ok=True)
    for j, off in enumerate(range(0, table.num_rows, 100_000)):
        with pa.OSFile(str(out / f"part-{j:05d}.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table.slice(off, 100_000))
    return table.num_rows


def run_thresher(paths: list[Path], out: Path, workers: int) -> int:
    # Imported here, not at the top: the baseline child must not pay for (or measure) them.
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.flows.publish import publish
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe({
        "name": "bench-ingest",
        "sources": [{"name": "pool", "paths": [str(p) for p in paths], "id_field": "id"}],
        "stages": [{"type": "exact_dedup"}],
        "output": {"dir": str(out)},
        # Several workers: a dask LocalCluster (thresher refuses direct_num_workers > 1).
        "runner": {"runner": "dask", "options": {"dask_workers": workers}} if workers > 1 else {},
    })
    plan = make_plan(recipe)
    res = run_pipeline(plan)
    publish(plan, res)
    return sum(s["rows"] for s in res.shards)


def child(mode: str, workers: int) -> None:
    paths = sorted(DATA.glob("pool-*.jsonl.gz"))
    out = ROOT / "bench" / "_data" / f"out-{mode}"
    t0 = time.perf_counter()
    rows = run_baseline(paths, out) if mode == "baseline" else run_thresher(paths, out, workers)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"mode": mode, "rows_out": rows, "seconds": secs, "peak_rss": max(peak, peak_children)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=7, help="pool copies (7 x 73,038 = 511,266 rows)")
    ap.add_argument("--workers", type=int, default=1, help="thresher: 1 = the local runner, more = dask workers")
    ap.add_argument("--child", choices=["baseline", "thresher"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.workers)
        return
    paths = build_corpus(args.copies)
    rows_in = int((DATA / f"copies-{args.copies}.done").read_text())
    results = {}
    for mode in ("baseline", "thresher"):
        p = subprocess.run([sys.executable, __file__, "--child", mode, "--workers", str(args.workers)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{mode} failed:\n{p.stderr[-4000:]}")
        results[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    b, t = results["baseline"], results["thresher"]
    print(f"corpus: {rows_in:,} rows in {len(paths)} JSONL.gz files; workers={args.workers}")
    print(f"{'':10s} {'rows out':>10s} {'seconds':>9s} {'docs/s':>10s} {'peak RSS':>10s}")
    for name, r in (("baseline", b), ("thresher", t)):
        print(f"{name:10s} {r['rows_out']:>10,} {r['seconds']:>9.1f} {rows_in / r['seconds']:>10,.0f} "
              f"{r['peak_rss'] / 2**20:>8,.0f} MiB")
    assert b["rows_out"] == t["rows_out"], "both must keep the same rows"
    print(f"ratio thresher/baseline docs/s: {b['seconds'] / t['seconds']:.2f}x")


if __name__ == "__main__":
    main()
