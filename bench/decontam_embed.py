"""Bench: decontamination with the embedding method — recall, false positives and time, against
plain fp32 `SentenceTransformer.encode` of every pool row and every benchmark item once.

    .venv/bin/python bench/decontam_embed.py [--clean 8000] [--train 1000] [--plants 100]
        [--benchmarks gsm8k,math500] [--limit N] [--backend auto] [--threshold 0.85] [--prefilter 0.3]

Pool (all real text from ../shared/data): `--clean` general-pool rows; `--train` GSM8K *train*
questions (same style as the test set, different problems: near-domain negatives); number-
substituted plants — `--plants` GSM8K test and `--plants` MATH-500 items with every number
changed and the rest verbatim, each put in the middle of a real pool row; the hand-written GSM8K
paraphrases (tests/stages/data) alone and buried in ~110-word pool paragraphs.

Then, in this one process, the `decontaminate` stage's score() over the pool in 4,096-row
batches (n-gram + embedding methods, `embed_threshold`), timed with its prepare (benchmark
items read and embedded):
  1. cold: empty row cache (items and windows embedded);
  2. warm: the same pool again with the same cache (a rerun: item and window vectors read back);
  3. items cached, new rows: other clean rows (the refresh case: only new rows' windows embedded);
and the baseline: plain fp32 encode of every pool row and every benchmark segment once.
Prints recall per plant kind, false-positive rates, and each time as a ratio of the baseline
(targets: recall >= 0.9, FP <= 0.1 % clean and <= 1 % GSM8K train, cold <= 1x, warm <= 0.5x).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data"))
BENCH_FILES = {
    "gsm8k": {"preset": "gsm8k", "paths": [str(DATA / "gsm8k" / "test.jsonl.gz")]},
    "math500": {"preset": "math500", "paths": [str(DATA / "math500" / "test.jsonl.gz")]},
    "humaneval": {"preset": "humaneval", "paths": [str(DATA / "humaneval" / "HumanEval.jsonl.gz")]},
    "mmlu": {"preset": "mmlu", "paths": [str(DATA / "mmlu" / "test.jsonl.gz")]},
}
PARAPHRASES = ROOT / "tests" / "stages" / "data" / "gsm8k_test_paraphrases.json"


def jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def change_numbers(text: str, rng: random.Random) -> str:
    """Every number replaced by another of the same digit count (never itself)."""
    def sub(m):
        s = m.group(0)
        while True:
            new = str(rng.randint(10 ** (len(s) - 1) if len(s) > 1 else 0, 10 ** len(s) - 1))
            if new != s:
                return new
    return re.sub(r"\d+", sub, text)


def build_pool(args, rng: random.Random) -> tuple[list[dict], list[dict], dict[str, str]]:
    pool = jsonl(DATA / "general_pool" / "pool.jsonl.gz")
    rng.shuffle(pool)
    clean = [{"id": f"clean/{i}", "text": r["text"]} for i, r in enumerate(pool[:args.clean])]
    fresh = [{"id": f"fresh/{i}", "text": r["text"]} for i, r in enumerate(pool[args.clean:2 * args.clean])]
    hosts = [r for r in pool[2 * args.clean:] if 40 <= len(r["text"].split()) <= 200]
    paras = [r for r in pool[2 * args.clean:] if 90 <= len(r["text"].split()) <= 130]
    train = [{"id": f"train/{i}", "text": r["question"]}
             for i, r in enumerate(jsonl(DATA / "gsm8k" / "train.jsonl.gz")[:args.train])]
    rows, kind = clean + train, {}
    k = 0
    for bench, field in (("gsm8k", "question"), ("math500", "problem")):
        items = jsonl(DATA / bench / "test.jsonl.gz")[:args.limit]
        for j in rng.sample(range(len(items)), min(args.plants, len(items))):
            w = hosts[k % len(hosts)]["text"].split()
            k += 1
            mid = len(w) // 2
            text = " ".join(w[:mid] + [change_numbers(items[j][field], rng)] + w[mid:])
            rows.append({"id": f"plant/{bench}/{j}", "text": text})
            kind[rows[-1]["id"]] = f"numbers changed ({bench})"
    for i, (line, t) in enumerate(json.loads(PARAPHRASES.read_text(encoding="utf-8")).items()):
        rows.append({"id": f"para/{line}", "text": t})
        kind[rows[-1]["id"]] = "paraphrase alone"
        w = paras[i % len(paras)]["text"].split()
        rows.append({"id": f"buried/{line}", "text": " ".join(w[:len(w) // 2] + [t] + w[len(w) // 2:])})
        kind[rows[-1]["id"]] = "paraphrase in ~110 words"
    return rows, fresh, kind


def run_decontam(rows: list[dict], benchmarks: list[dict], args, cache_dir: str | None, out: Path):
    """(seconds, {id: flagged benchmark or None}, counters-ish dict) of prepare + score."""
    from thresher.core.context import StageContext
    from thresher.recipe.load import validate_recipe
    from thresher.stages.decontam.decontaminate import BEST_BENCHMARK, Decontaminate
    from thresher.testing.harness import make_batch

    recipe = validate_recipe({
        "sources": [{"name": "pool", "paths": ["pool.jsonl"]}], "output": {"dir": str(out)},
        "stages": [{"type": "decontaminate", "params": {
            "benchmarks": benchmarks, "embed_threshold": args.threshold, "embed_backend": args.backend,
            "embed_prefilter": args.prefilter}}]}, base_dir=str(out))
    ctx = StageContext(name="decontaminate", seed=0, out_dir=str(out), work_dir=str(out / "_work"),
                       recipe=recipe, cache_dir=cache_dir)
    t0 = time.perf_counter()
    stage = Decontaminate(recipe.stages[0].params, ctx)
    stage.prepare()
    stage.setup()
    flagged: dict[str, str | None] = {}
    for i in range(0, len(rows), 4096):
        part = rows[i:i + 4096]
        cols = stage.score(make_batch(part, "pool"))
        flagged.update(zip((r["id"] for r in part), cols[BEST_BENCHMARK].to_pylist(), strict=True))
    dt = time.perf_counter() - t0
    cache = getattr(stage, "_cache", None)  # the worker's RowCache: its hit counts
    hits = (cache.hits, cache.misses) if cache is not None else (0, 0)
    return dt, flagged, {"windows_from_cache": hits[0], "windows_embedded": hits[1],
                         "items_from_cache": stage.static["embedding"]["item_vectors_from_cache"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", type=int, default=8000)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--plants", type=int, default=100, help="per benchmark (GSM8K test, MATH-500)")
    ap.add_argument("--benchmarks", default="gsm8k,math500")
    ap.add_argument("--limit", type=int, default=None, help="first N items of each benchmark (quick runs)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--prefilter", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    if not (DATA / "general_pool" / "pool.jsonl.gz").exists():
        sys.exit(f"needs {DATA} (the shared data beside the project); set THRESHER_SHARED_DATA")

    from thresher.models.embeddings import load_model
    from thresher.recipe.load import validate_recipe
    from thresher.stages.decontam.benchmarks import Benchmark, load_segments

    rng = random.Random(0)
    rows, fresh, kind = build_pool(args, rng)
    benchmarks = [{**BENCH_FILES[b], **({"limit": args.limit} if args.limit else {})}
                  for b in args.benchmarks.split(",")]
    segs = load_segments(validate_recipe({"sources": [{"name": "p", "paths": ["p.jsonl"]}],
                                          "output": {"dir": "o"}}, base_dir="/tmp"),
                         [Benchmark(**b) for b in benchmarks])
    print(f"pool {len(rows)} rows ({args.clean} clean, {args.train} GSM8K train, "
          f"{sum(1 for v in kind.values() if v.startswith('numbers'))} number-substituted plants, "
          f"{sum(1 for v in kind.values() if v.startswith('para'))} paraphrase rows); benchmarks "
          f"{args.benchmarks}: {len(segs.text)} segments; backend {args.backend}, threshold {args.threshold}, "
          f"prefilter {args.prefilter}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-decontam-embed-"))
    model = load_model(None, "cpu")
    load_model(None, "cpu", backend=args.backend)  # the export, made once per machine: not timed
    model.encode(["warm up"], normalize_embeddings=True)
    t0 = time.perf_counter()
    model.encode([r["text"] for r in rows], batch_size=args.batch_size, normalize_embeddings=True)
    model.encode(list(segs.text), batch_size=args.batch_size, normalize_embeddings=True)
    plain_s = time.perf_counter() - t0
    print(f"baseline: plain fp32 encode of {len(rows)} rows + {len(segs.text)} segments: {plain_s:.1f} s", flush=True)

    cache = str(tmp / "cache")
    cold_s, flagged, c1 = run_decontam(rows, benchmarks, args, cache, tmp / "cold")
    print(f"cold  (empty cache)          : {cold_s:7.1f} s = {cold_s / plain_s:.2f}x baseline  {c1}", flush=True)
    warm_s, flagged2, c2 = run_decontam(rows, benchmarks, args, cache, tmp / "warm")
    print(f"warm  (same pool, same cache): {warm_s:7.1f} s = {warm_s / plain_s:.2f}x baseline  {c2}", flush=True)
    assert flagged2 == flagged, "a warm rerun flagged other rows than the cold run"
    new_s, flagged3, c3 = run_decontam(fresh, benchmarks, args, cache, tmp / "fresh")
    print(f"items cached, {len(fresh)} new clean rows: {new_s:7.1f} s  {c3}", flush=True)

    by_kind: dict[str, list[bool]] = {}
    for rid, k in kind.items():
        by_kind.setdefault(k, []).append(flagged[rid] is not None)
    for k, v in sorted(by_kind.items()):
        print(f"recall {k:32s}: {np.mean(v):.3f} ({sum(v)}/{len(v)})")
    fp_clean = [flagged[r["id"]] is not None for r in rows if r["id"].startswith("clean/")]
    fp_clean += [v is not None for v in flagged3.values()]
    fp_train = [flagged[r["id"]] is not None for r in rows if r["id"].startswith("train/")]
    print(f"false positives: clean rows {np.mean(fp_clean) * 100:.3f} % ({sum(fp_clean)}/{len(fp_clean)}), "
          f"GSM8K train {np.mean(fp_train) * 100:.2f} % ({sum(fp_train)}/{len(fp_train)})")


if __name__ == "__main__":
    main()
