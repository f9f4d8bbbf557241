"""Bench: decontamination with the embedding method — recall, false positives and time, against
plain fp32 `SentenceTransformer.encode` of every pool row and every benchmark item once.

    .venv/bin/python bench/decontam_embed.py [--clean 8000] [--train 1000] [--plants 100]
        [--benchmarks gsm8k,math500,humaneval,mmlu] [--limit N] [--backend auto] [--threshold 0.85]
        [--prefilter 0.3] [--margin 0.18|none] [--fresh N] [--baseline-sample F] [--train-offset N]

Pool (all real text from ../shared/data): `--clean` general-pool rows; `--train` GSM8K *train*
questions (same style as the test set, different problems: near-domain negatives); number-
substituted plants — `--plants` GSM8K test and `--plants` MATH-500 items with every number
changed and the rest verbatim, each put in the middle of a real pool row; hand-written
paraphrases (tests/stages/data: the GSM8K set the windows were designed on, and a held-out
GSM8K + MATH-500 set written afterwards) alone and buried in the middle of ~110-word pool
paragraphs.

Then, in this one process, the `decontaminate` stage's score() over the pool in 4,096-row
batches (n-gram + embedding methods, `embed_threshold`), timed with its prepare (benchmark
items read and embedded):
  1. cold: empty row cache (items and windows embedded);
  2. warm: the same pool again with the same cache (a rerun: item and window vectors read back);
  3. items cached, new rows: `--fresh` other clean rows (the refresh case: only new rows'
     windows embedded; they count as clean rows for the false-positive rate);
and the baseline: plain fp32 encode of every pool row and every benchmark item (its longest
segment) once. Prints recall per plant kind, false-positive rates, and each time as a ratio of
the baseline, wall-clock and CPU seconds (the machine may be shared: CPU seconds are the
steadier ratio) (targets: recall >= 0.9, FP <= 0.1 % clean and <= 1 % GSM8K train,
cold <= 1x, warm <= 0.5x).
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
# Written after the window design was tuned on PARAPHRASES, to check that it generalises.
HELD_OUT = ROOT / "tests" / "stages" / "data" / "heldout_paraphrases.json"


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
    lo = args.train_offset
    train = [{"id": f"train/{lo + i}", "text": r["question"]}
             for i, r in enumerate(jsonl(DATA / "gsm8k" / "train.jsonl.gz")[lo:lo + args.train])]
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
    sets = [("", "gsm8k", json.loads(PARAPHRASES.read_text(encoding="utf-8")))]
    sets += [(" held-out", b, v) for b, v in json.loads(HELD_OUT.read_text(encoding="utf-8")).items()]
    i = 0
    for tag, bench, para in sets:
        for item, t in para.items():
            rows.append({"id": f"para/{bench}/{item}", "text": t})
            kind[rows[-1]["id"]] = f"paraphrase{tag} alone"
            w = paras[i % len(paras)]["text"].split()
            i += 1
            rows.append({"id": f"buried/{bench}/{item}", "text": " ".join(w[:len(w) // 2] + [t] + w[len(w) // 2:])})
            kind[rows[-1]["id"]] = f"paraphrase{tag} in ~110 words"
    return rows, fresh[:args.fresh], kind


SCORES: dict[str, float] = {}  # each row's embedding score (best window's cosine), for the sweep
MATCH: dict[str, str] = {}  # flagged rows: "method item" of their best match


def run_decontam(rows: list[dict], benchmarks: list[dict], args, cache_dir: str | None, out: Path):
    """(seconds, {id: flagged benchmark or None}, counters-ish dict) of prepare + score."""
    from thresher.core.context import StageContext
    from thresher.recipe.load import validate_recipe
    from thresher.stages.decontam.decontaminate import (
        BEST_BENCHMARK,
        EMBED_SCORE,
        MATCH_ITEM,
        MATCH_METHOD,
        Decontaminate,
    )
    from thresher.testing.harness import make_batch

    recipe = validate_recipe({
        "sources": [{"name": "pool", "paths": ["pool.jsonl"]}], "output": {"dir": str(out)},
        "stages": [{"type": "decontaminate", "params": {
            "benchmarks": benchmarks, "embed_threshold": args.threshold, "embed_backend": args.backend,
            "embed_prefilter": args.prefilter, "embed_margin": args.margin,
            "action": "flag"}}]}, base_dir=str(out))
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
        SCORES.update(zip((r["id"] for r in part), cols[EMBED_SCORE].to_pylist(), strict=True))
        for r, m, it in zip(part, cols[MATCH_METHOD].to_pylist(), cols[MATCH_ITEM].to_pylist(), strict=True):
            if m is not None:
                MATCH[r["id"]] = f"{m} {it}"
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
    ap.add_argument("--benchmarks", default="gsm8k,math500,humaneval,mmlu")
    ap.add_argument("--limit", type=int, default=None, help="first N items of each benchmark (quick runs)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--prefilter", type=float, default=0.3)
    ap.add_argument("--margin", type=lambda v: None if v == "none" else float(v), default=0.18,
                    help="embed_margin (none: cosine threshold alone)")
    ap.add_argument("--train-offset", type=int, default=0,
                    help="GSM8K train questions [offset, offset + --train): another sample for a held-out check")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--fresh", type=int, default=None, help="new clean rows for the items-cached run "
                    "(default: --clean; 0: skip it)")
    ap.add_argument("--baseline-sample", type=float, default=1.0,
                    help="time the baseline on this random fraction of its texts and scale (busy machines)")
    args = ap.parse_args()
    args.fresh = args.clean if args.fresh is None else args.fresh
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
          f"prefilter {args.prefilter}, margin {args.margin}, GSM8K train rows {args.train_offset}.."
          f"{args.train_offset + args.train - 1}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-decontam-embed-"))
    model = load_model(None, "cpu")
    load_model(None, "cpu", backend=args.backend)  # the export, made once per machine: not timed
    model.encode(["warm up"], normalize_embeddings=True)
    # The baseline embeds each pool row and each benchmark *item* once: an item's longest
    # segment (MMLU: question + choices; the stage's other segments are for n-gram matching).
    longest: dict[int, str] = {}
    for t, it in zip(segs.text, segs.item.tolist(), strict=True):
        if len(t) > len(longest.get(it, "")):
            longest[it] = t
    base = [r["text"] for r in rows] + list(longest.values())
    # On a busy machine the full baseline (~25k texts in fp32) can take most of an hour: with
    # --baseline-sample F a seeded random F of the texts is encoded and the time scaled by 1/F.
    sample = base if args.baseline_sample >= 1 else random.Random(1).sample(
        base, max(1, round(args.baseline_sample * len(base))))
    t0, c0 = time.perf_counter(), time.process_time()
    model.encode(sample, batch_size=args.batch_size, normalize_embeddings=True)
    scale = len(base) / len(sample)
    plain_s, plain_cpu = (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale
    print(f"baseline: plain fp32 encode of {len(rows)} rows + {len(longest)} items"
          + (f" (timed on a random {len(sample)} of the {len(base)} texts, scaled x{scale:.2f})" if scale > 1 else "")
          + f": {plain_s:.1f} s, {plain_cpu:.1f} CPU s", flush=True)

    def show(label: str, wall: float, cpu: float, counts: dict) -> None:
        print(f"{label}: {wall:7.1f} s = {wall / plain_s:.2f}x baseline; {cpu:7.1f} CPU s = "
              f"{cpu / plain_cpu:.2f}x baseline CPU  {counts}", flush=True)

    cache = str(tmp / "cache")
    c0 = time.process_time()
    cold_s, flagged, c1 = run_decontam(rows, benchmarks, args, cache, tmp / "cold")
    show("cold  (empty cache)          ", cold_s, time.process_time() - c0, c1)
    c0 = time.process_time()
    warm_s, flagged2, c2 = run_decontam(rows, benchmarks, args, cache, tmp / "warm")
    show("warm  (same pool, same cache)", warm_s, time.process_time() - c0, c2)
    assert flagged2 == flagged, "a warm rerun flagged other rows than the cold run"
    flagged3: dict = {}
    if fresh:
        c0 = time.process_time()
        new_s, flagged3, c3 = run_decontam(fresh, benchmarks, args, cache, tmp / "fresh")
        show(f"items cached, {len(fresh)} new clean rows", new_s, time.process_time() - c0, c3)

    by_kind: dict[str, list[bool]] = {}
    for rid, k in kind.items():
        by_kind.setdefault(k, []).append(flagged[rid] is not None)
    for k, v in sorted(by_kind.items()):
        print(f"recall {k:32s}: {np.mean(v):.3f} ({sum(v)}/{len(v)})")
    # What another embed_threshold would give (embedding method alone; the n-gram method's
    # finds are in the lines above): rows whose best window reaches each cosine.
    groups = {**{k: [r for r, v in kind.items() if v == k] for k in by_kind},
              "clean rows": [r["id"] for r in rows if r["id"].startswith("clean/")] + list(flagged3),
              "GSM8K train": [r["id"] for r in rows if r["id"].startswith("train/")]}
    cuts = (0.8, 0.82, 0.84, 0.85, 0.86, 0.88)
    print("embedding score >= " + " / ".join(f"{c:.2f}" for c in cuts) + " (rows):")
    for k, ids in groups.items():
        print(f"  {k:40s}: " + " / ".join(str(sum(SCORES[i] >= c for i in ids)) for c in cuts) + f"  of {len(ids)}")
    fp_clean = [flagged[r["id"]] is not None for r in rows if r["id"].startswith("clean/")]
    fp_clean += [v is not None for v in flagged3.values()]
    fp_train = [flagged[r["id"]] is not None for r in rows if r["id"].startswith("train/")]
    print(f"false positives: clean rows {np.mean(fp_clean) * 100:.3f} % ({sum(fp_clean)}/{len(fp_clean)}), "
          f"GSM8K train {np.mean(fp_train) * 100:.2f} % ({sum(fp_train)}/{len(fp_train)})")
    # Each flagged GSM8K-train row with what flagged it: a train question that is a near-copy
    # of a test one (GSM8K has some) is a true find, not a false positive; read them to judge.
    text_of = {r["id"]: r["text"] for r in rows}
    for rid in [r["id"] for r in rows if r["id"].startswith("train/") and flagged[r["id"]] is not None]:
        print(f"  flagged {rid} ({MATCH.get(rid)}; best window {SCORES.get(rid, float('nan')):.3f}): "
              f"{text_of[rid][:160]!r}")


if __name__ == "__main__":
    main()
