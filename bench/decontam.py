"""Throughput and memory of n-gram decontamination against GSM8K test, MATH-500, HumanEval, MMLU
test and ARC (challenge + easy) over >= 500k general-pool rows.

    .venv/bin/python bench/decontam.py [--repeat 7] [--skip-pipeline]

Prints, each measured in its own subprocess (so each peak RSS is its own):
  1. index size for growing benchmark sets (bytes track the benchmark n-grams);
  2. the stage's score + decide alone over the pool streamed from disk (rows/s; peak RSS after
     1/7 of the pool and after all of it: flat, so memory does not grow with the pool);
  3. the whole Beam pipeline (ingest -> decontaminate -> shards) against the same pipeline
     without the stage, in the same command: rows/s and the ratio.
Needs ../shared/data (general_pool and the benchmarks).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data"))
BENCHMARKS = [
    {"preset": "gsm8k", "paths": [str(DATA / "gsm8k" / "test.jsonl.gz")]},
    {"preset": "math500", "paths": [str(DATA / "math500" / "test.jsonl.gz")]},
    {"preset": "humaneval", "paths": [str(DATA / "humaneval" / "HumanEval.jsonl.gz")]},
    {"preset": "arc", "name": "arc_challenge", "paths": [str(DATA / "arc" / "arc_challenge_test.jsonl.gz")]},
    {"preset": "arc", "name": "arc_easy", "paths": [str(DATA / "arc" / "arc_easy_test.jsonl.gz")]},
    {"preset": "mmlu", "paths": [str(DATA / "mmlu" / "test.jsonl.gz")]},
]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_pool(path: Path, repeat: int) -> int:
    n = 0
    with gzip.open(DATA / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        pool = [json.loads(line) for line in fh]
    with open(path, "w", encoding="utf-8") as out:
        for r in range(repeat):
            for row in pool:
                out.write(json.dumps({"id": f"{row['id']}#{r}", "text": row["text"]}) + "\n")
                n += 1
    return n


def _recipe(pool: Path, benchmarks: list[dict] | None, out: Path):
    from thresher.recipe.load import validate_recipe

    stages = [] if benchmarks is None else [{"type": "decontaminate", "params": {"benchmarks": benchmarks}}]
    return validate_recipe({"sources": [{"name": "pool", "paths": [str(pool)], "id_field": "id"}],
                            "stages": stages, "output": {"dir": str(out)}}, base_dir=str(out.parent))


def _stage(recipe, out: Path):
    from thresher.core.context import StageContext
    from thresher.stages.decontam.decontaminate import Decontaminate

    ctx = StageContext(name="decontaminate", seed=0, out_dir=str(out), work_dir=str(out / "_work"), recipe=recipe)
    return Decontaminate(recipe.stages[0].params, ctx)


def mode_index(args) -> None:
    out = Path(args.work) / "idx"
    for k in range(1, len(BENCHMARKS) + 1):
        recipe = _recipe(Path(args.pool), BENCHMARKS[:k], out)
        t = time.perf_counter()
        stage = _stage(recipe, out)
        stage.prepare()
        static = stage.static
        dt = time.perf_counter() - t
        items = sum(static["benchmark_items"].values())
        ix = static["index"]
        print(f"  {'+'.join(b.get('name', b['preset']) for b in BENCHMARKS[:k]):58s} items {items:6d}  "
              f"segments {ix['segments']:6d}  n-grams {ix['ngrams']:8d}  index {ix['bytes'] / 2**20:6.1f} MiB "
              f"({ix['bytes'] / max(ix['ngrams'], 1):.1f} B/n-gram)  built in {dt:.1f}s", flush=True)


def mode_stage(args) -> None:
    from thresher.core import columns as cols
    from thresher.io.ingest import plan_reads, read_task

    out = Path(args.work) / "stage"
    recipe = _recipe(Path(args.pool), BENCHMARKS, out)
    stage = _stage(recipe, out)
    stage.prepare()  # reads the benchmarks and builds the index, as the driver does
    stage.setup()
    static = stage.static
    rss_built = peak_rss_mib()
    tasks, _ = plan_reads(recipe, with_hashes=False)
    n = flagged = 0
    busy = 0.0
    checkpoints = []
    next_mark = args.mark
    for task in tasks:
        for batch, _q in read_task(task, recipe.batch_rows):  # streamed: one batch in memory
            if batch is None:
                continue
            t = time.perf_counter()
            keep, _ = stage.decide(cols.set_columns(batch, stage.score(batch)))
            busy += time.perf_counter() - t
            n += batch.num_rows
            flagged += batch.num_rows - int(keep.sum())
            if n >= next_mark:
                checkpoints.append((n, peak_rss_mib()))
                next_mark = 1 << 62
    print(f"  index {static['index']['bytes'] / 2**20:.1f} MiB, {static['index']['ngrams']} n-grams; "
          f"peak RSS after building it {rss_built:.0f} MiB")
    for rows_, rss in checkpoints:
        print(f"  peak RSS after {rows_:7d} rows: {rss:.0f} MiB")
    print(f"  peak RSS after {n:7d} rows: {peak_rss_mib():.0f} MiB")
    print(f"  STAGE rows {n} flagged {flagged} seconds-in-stage {busy:.1f} rows/s {n / busy:.0f}", flush=True)


def mode_pipeline(args) -> None:
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan

    out = Path(args.work) / ("pipe_decon" if args.decon else "pipe_base")
    recipe = _recipe(Path(args.pool), BENCHMARKS if args.decon else None, out)
    t = time.perf_counter()
    res = run_pipeline(make_plan(recipe))
    dt = time.perf_counter() - t
    n = res.counters.get("read/pool", 0)
    label = "with decontaminate" if args.decon else "baseline (no stage)"
    print(f"  PIPELINE {label}: rows {n} seconds {dt:.1f} rows/s {n / dt:.0f} peak RSS {peak_rss_mib():.0f} MiB",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="main", choices=["main", "index", "stage", "pipeline"])
    ap.add_argument("--repeat", type=int, default=7, help="copies of general_pool (73,038 rows each)")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--pool")
    ap.add_argument("--work")
    ap.add_argument("--mark", type=int, default=73_038)
    ap.add_argument("--decon", type=int, default=1)
    args = ap.parse_args()
    if args.mode != "main":
        {"index": mode_index, "stage": mode_stage, "pipeline": mode_pipeline}[args.mode](args)
        return
    if not (DATA / "general_pool" / "pool.jsonl.gz").exists():
        sys.exit(f"needs the shared data at {DATA}")
    with tempfile.TemporaryDirectory(prefix="thresher-bench-decontam-") as work:
        pool = Path(work) / "pool.jsonl"
        t = time.perf_counter()
        n = make_pool(pool, args.repeat)
        print(f"pool: {n} rows ({pool.stat().st_size / 2**20:.0f} MiB JSONL), made in {time.perf_counter() - t:.0f}s")

        def sub(*extra) -> str:
            cmd = [sys.executable, __file__, "--pool", str(pool), "--work", work, *extra]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                sys.exit(r.stderr[-3000:])
            return r.stdout

        print("1. index size vs benchmark size (pool not involved):")
        print(sub("--mode", "index"), end="")
        print("2. the stage's score + decide alone, pool streamed from disk:")
        print(sub("--mode", "stage"), end="")
        if not args.skip_pipeline:
            print("3. whole Beam pipeline (FnApiRunner, 1 worker), same pool:")
            base = sub("--mode", "pipeline", "--decon", "0")
            dec = sub("--mode", "pipeline", "--decon", "1")
            print(base + dec, end="")
            rate = lambda s: float(s.split("rows/s ")[1].split()[0])  # noqa: E731
            print(f"  pipeline rows/s with decontaminate / baseline: {rate(dec) / rate(base):.2f}")


if __name__ == "__main__":
    main()
