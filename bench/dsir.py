"""Bench: DSIR end to end — the official `data-selection` package vs thresher, same data.

    .venv/bin/python bench/dsir.py [--repeat 3] [--k 20000] [--min-tokens 5] [--workers 1]

Pool: ../shared/data/general_pool repeated `--repeat` times with fresh ids (default 3 ->
219,114 documents), as 8 JSONL files (the official package wants >= num_proc files). Target:
../shared/data/target_domain/math_word_problems.jsonl.gz (9,473 questions). Both select the
same `--k` rows; both drop rows under `--min-tokens` tokens (the official package's
`min_example_length`, whose default of 100 would drop most of this pool).

* official — `HashedNgramDSIR(num_proc=2)`: fit_importance_estimator, then
  compute_importance_weights, then resample (numpy's global RNG seeded, as it has no seed).
* thresher — `run_pipeline` on a recipe: read JSONL -> importance_resample -> Arrow shards,
  on FnApiRunner with `--workers` workers: one pipeline, so fit / weights / resample are not
  separate phases and only the total is printed.

Each side runs in its own subprocess (peak RSS = that process's ru_maxrss, plus the largest
worker process it reaped). KL reduction = KL(target||pool) - KL(target||selected) on hashed
n-gram distributions; each selection is scored with both featurisers (thresher's hash and
the official sha256 one), so the two methods are compared on the same yardstick.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
POOL = DATA / "general_pool" / "pool.jsonl.gz"
TARGET = DATA / "target_domain" / "math_word_problems.jsonl.gz"
N_FILES = 8


def build_data(work: Path, repeat: int) -> int:
    work.mkdir(parents=True, exist_ok=True)
    with gzip.open(POOL, "rt") as fh:
        base = [json.loads(line) for line in fh]
    outs = [open(work / f"pool-{i}.jsonl", "w") for i in range(N_FILES)]
    n = 0
    for r in range(repeat):
        for x in base:
            outs[n % N_FILES].write(json.dumps({"id": f"{x['id']}#{r}", "text": x["text"]}) + "\n")
            n += 1
    for o in outs:
        o.close()
    with gzip.open(TARGET, "rt") as fh, open(work / "target.jsonl", "w") as out:
        out.write(fh.read())
    return n


def _peak_mb() -> tuple[float, float]:
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def run_official(work: Path, k: int, min_tokens: int) -> dict:
    import numpy as np
    from data_selection import HashedNgramDSIR

    np.random.seed(0)
    files = sorted(glob.glob(str(work / "pool-*.jsonl")))
    dsir = HashedNgramDSIR(files, [str(work / "target.jsonl")], cache_dir=str(work / "off_cache"),
                           num_proc=2, min_example_length=min_tokens)
    t0 = time.perf_counter()
    dsir.fit_importance_estimator()
    t1 = time.perf_counter()
    dsir.compute_importance_weights()
    t2 = time.perf_counter()
    dsir.resample(out_dir=str(work / "off_out"), num_to_sample=k, cache_dir=str(work / "off_resample"))
    t3 = time.perf_counter()
    ids = []
    for f in sorted(glob.glob(str(work / "off_out" / "*.jsonl"))):
        with open(f) as fh:
            ids += [json.loads(line)["id"] for line in fh]
    rss, child = _peak_mb()
    return {"fit": t1 - t0, "weights": t2 - t1, "resample": t3 - t2, "total": t3 - t0, "ids": ids,
            "rss_mb": rss, "worker_rss_mb": child}


def run_thresher(work: Path, k: int, min_tokens: int, workers: int, seed: int) -> dict:
    import pyarrow as pa

    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    opts = {"direct_num_workers": workers}
    if workers > 1:
        opts["direct_running_mode"] = "multi_processing"
    recipe = validate_recipe({
        "seed": seed,
        "sources": [{"name": "pool", "paths": [str(work / "pool-*.jsonl")], "id_field": "id"}],
        "stages": [{"type": "importance_resample", "params": {
            "k": k, "min_tokens": min_tokens,
            "target": [{"name": "math", "paths": [str(work / "target.jsonl")]}]}}],
        "output": {"dir": str(work / "thr_out")}, "runner": {"options": opts}})
    t0 = time.perf_counter()
    res = run_pipeline(make_plan(recipe))
    total = time.perf_counter() - t0
    ids = []
    for s in res.shards:
        ids += pa.ipc.open_stream(str(work / "thr_out" / s["path"])).read_all().column("id").to_pylist()
    rss, child = _peak_mb()
    rep = res.reports["importance_resample"]
    return {"total": total, "ids": ids, "rss_mb": rss, "worker_rss_mb": child,
            "report_kl_reduction": rep["kl_reduction"]}


def kl_reductions(work: Path, selections: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """KL reduction of each selection under both featurisers."""
    import numpy as np
    from data_selection.hashed_ngram_dsir import get_ngram_counts, wpt

    from thresher.stages.selection.dsir import kl_divergence
    from thresher.text.ngrams import ngram_rows

    texts, by_id = [], {}
    for f in sorted(glob.glob(str(work / "pool-*.jsonl"))):
        with open(f) as fh:
            for line in fh:
                x = json.loads(line)
                by_id[x["id"]] = len(texts)
                texts.append(x["text"])
    with open(work / "target.jsonl") as fh:
        target = [json.loads(line)["text"] for line in fh]

    def norm(c):
        c = np.asarray(c, np.float64).ravel()
        return c / c.sum()

    def thr_counts(docs):
        out = np.zeros(10_000)
        for i in range(0, len(docs), 4096):
            _, b, _ = ngram_rows(docs[i:i + 4096])
            out += np.bincount(b, minlength=10_000)
        return out

    def off_counts(docs):
        c = np.zeros(10_000, int)
        for d in docs:
            get_ngram_counts(d, n=2, num_buckets=10_000, counts=c, tokenizer=wpt.tokenize)
        return c

    out: dict[str, dict[str, float]] = {}
    uniq = {}
    for t in texts:  # the pool repeats: the official featuriser needs each text once
        uniq[t] = uniq.get(t, 0) + 1
    pool_off = np.zeros(10_000)
    for t, n in uniq.items():
        pool_off += n * off_counts([t])
    feats = {"thresher features": (thr_counts, norm(thr_counts(target)), norm(thr_counts(texts))),
             "official features": (off_counts, norm(off_counts(target)), norm(pool_off))}
    for name, ids in selections.items():
        sel = [texts[by_id[i]] for i in ids]
        out[name] = {}
        for fname, (fn, p_t, p_r) in feats.items():
            out[name][fname] = kl_divergence(p_t, p_r) - kl_divergence(p_t, norm(fn(sel)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--k", type=int, default=20_000)
    ap.add_argument("--min-tokens", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", choices=["official", "thresher"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child process: one side, result as JSON on the last line
        work = Path(args.work)
        res = (run_official(work, args.k, args.min_tokens) if args.side == "official"
               else run_thresher(work, args.k, args.min_tokens, args.workers, args.seed))
        print("RESULT " + json.dumps(res))
        return

    work = Path(tempfile.mkdtemp(prefix="thresher_dsir_bench_"))
    try:
        n = build_data(work, args.repeat)
        print(f"pool: {n:,} documents in {N_FILES} files; target: {TARGET.name}; k = {args.k:,}; "
              f"min tokens = {args.min_tokens}")
        results = {}
        for side in ("official", "thresher"):
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--k", str(args.k),
                   "--min-tokens", str(args.min_tokens), "--workers", str(args.workers),
                   "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "TQDM_DISABLE": "1"})
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
            results[side] = json.loads(line[-1][7:])
        kl = kl_reductions(work, {s: r["ids"] for s, r in results.items()})
        for side, r in results.items():
            phases = (f"fit {r['fit']:.1f} s / weights {r['weights']:.1f} s / resample {r['resample']:.1f} s"
                      if side == "official" else "one pipeline (read + fit + weights + resample + write)")
            print(f"{side:9s} total {r['total']:.1f} s ({phases}); {n / r['total']:,.0f} docs/s; "
                  f"peak RSS {r['rss_mb']:.0f} MB (largest reaped worker {r['worker_rss_mb']:.0f} MB); "
                  f"selected {len(r['ids']):,}; KL reduction: "
                  + ", ".join(f"{v:.4f} ({f})" for f, v in kl[side].items()))
        print(f"thresher report's own KL reduction: {results['thresher']['report_kl_reduction']:.4f}")
        ratio = results["official"]["total"] / results["thresher"]["total"]
        print(f"docs/s ratio thresher/official: {ratio:.1f}x (goal >= 10x)")
        own = kl["thresher"]["thresher features"] - kl["official"]["official features"]
        print(f"KL reduction thresher - official (each on its own features): {own:+.4f} (goal >= -0.01)")
        for f in kl["thresher"]:
            d = kl["thresher"][f] - kl["official"][f]
            print(f"KL reduction thresher - official ({f}): {d:+.4f} (goal >= -0.01)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
