"""Bench: DSIR's marginal cost — the official `data-selection` package vs thresher, same rows.

    .venv/bin/python bench/dsir.py [--pairs POOL/TARGET ...] [--k 20000] [--min-tokens 5]
                                   [--workers 1] [--runner local|dask] [--small 0.1] [--repeat 3] [--runs 3]
                                   [--no-kl]

e.g. `--pairs sentences/mmlu sentences/python_docstrings general/arc` prints one ratio per pair.

Pools (written as 8 JSONL files: the official package wants >= num_proc files):
* `general` — ../shared/data/general_pool (73,038 paragraphs, median 52 words) repeated
  `--repeat` times with fresh ids (default 3 -> 219,114 rows);
* `sentences` — the same paragraphs cut after each `. ! ? ; :` (280,910 rows, median 16
  words): the short-row shape.
Targets: `math_word_problems` (9,473 questions) and `python_docstrings` (3,327) from
../shared/data/target_domain; `mmlu` (14,042 test questions, each with its choices); `arc`
(3,548 easy + challenge test questions with choices); `math` (MATH's 5,000 test problems);
`gsm8k` (7,473 train questions with their worked answers). Default pair:
`general/math_word_problems`. Both sides select `--k` rows and drop rows under
`--min-tokens` tokens (the official package's `min_example_length`, whose default of 100
would drop most of these pools).

Marginal cost. Each side runs at two sizes per pair, each run in its own subprocess: on the whole
pool (N rows, k) and on the first `--small` of every pool file (n rows, k scaled alike), both
with the whole target. A side's marginal cost is T(N) - T(n): the time the extra N - n pool
rows cost. What does not grow with the pool — interpreter and imports, process pools, Beam's
pipeline construction and start-up, reading and featurising the target, the model — is in
both runs and cancels — on average: between runs it varies by more than thresher's marginal cost
on a shared machine (starting dask workers alone costs ~4 CPU-s each), so thresher runs
`--runs` times per size, interleaved, and its median T and median CPU seconds count (the
official side runs once per size: its marginal cost is ~10x its noise). T counts from the
first call that touches data:
* official — `HashedNgramDSIR(num_proc=os.cpu_count())` (its default, all cores; its other
  defaults kept but `min_example_length`), then fit_importance_estimator +
  compute_importance_weights + resample (numpy's global RNG seeded: it has no seed); the
  constructor, which reads nothing, is outside T;
* thresher — `run_pipeline` on a recipe (plan, read JSONL -> importance_resample -> Arrow
  shards) on FnApiRunner with `--workers` workers, or with `--runner dask` on a Dask
  LocalCluster of `--workers` worker processes (`--runner dask --workers 2` uses the two cores
  the official package's num_proc uses: the equal-cores comparison).
Ratio = official marginal / thresher marginal, in wall-clock seconds (also printed: the same
ratio in CPU seconds of all of a side's processes — steadier on a shared machine, and blind
to the official package's use of every core — and the ratio of whole-pool totals).

Peak PSS = the largest sum of PSS over the side's processes, sampled (`bench/procstats.py`). KL reduction =
KL(target||pool) - KL(target||selected) on hashed n-gram distributions, for the whole-pool
runs; each selection is scored with both featurisers (thresher's hash and the official
sha256 one), so the two are compared on the same yardstick.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procstats import PeakRss, cpu_s  # bench/ is this script's folder: on sys.path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
N_FILES = 8
DEFAULT_PAIR = "general/math_word_problems"
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def _jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def _with_choices(question: str, choices: list[str]) -> str:
    return question + "\n" + "\n".join(choices)


def pool_texts(name: str, repeat: int) -> list[tuple[str, str]]:
    """(id, text) rows of the named pool."""
    base = _jsonl(DATA / "general_pool" / "pool.jsonl.gz")
    if name == "general":
        return [(f"{x['id']}#{r}", x["text"]) for r in range(repeat) for x in base]
    if name == "sentences":
        return [(f"{x['id']}/{j}", s) for x in base
                for j, s in enumerate(t for t in SENTENCE_END.split(x["text"]) if t.strip())]
    raise SystemExit(f"unknown pool {name!r}: choose general or sentences")


def target_texts(name: str) -> list[str]:
    if name in ("math_word_problems", "python_docstrings"):
        return [x["text"] for x in _jsonl(DATA / "target_domain" / f"{name}.jsonl.gz")]
    if name == "mmlu":
        return [_with_choices(x["question"], x["choices"]) for x in _jsonl(DATA / "mmlu" / "test.jsonl.gz")]
    if name == "arc":
        return [_with_choices(x["query"].removeprefix("Question: "), x["choices"])
                for part in ("easy", "challenge") for x in _jsonl(DATA / "arc" / f"arc_{part}_test.jsonl.gz")]
    if name == "math":
        return [x["problem"] for x in _jsonl(DATA / "math_test_full" / "test.jsonl.gz")]
    if name == "gsm8k":
        return [x["question"] + "\n" + x["answer"] for x in _jsonl(DATA / "gsm8k" / "train.jsonl.gz")]
    raise SystemExit(f"unknown target {name!r}: choose math_word_problems, python_docstrings, mmlu, arc, "
                     "math or gsm8k")


def write_pool(folder: Path, rows: list[tuple[str, str]], fraction: float) -> int:
    """Rows dealt round-robin into N_FILES files; `fraction` < 1 keeps each file's first part."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[list[str]] = [[] for _ in range(N_FILES)]
    for i, (rid, text) in enumerate(rows):
        files[i % N_FILES].append(json.dumps({"id": rid, "text": text}) + "\n")
    n = 0
    for i, lines in enumerate(files):
        keep = lines if fraction >= 1 else lines[:max(1, round(len(lines) * fraction))]
        (folder / f"pool-{i}.jsonl").write_text("".join(keep))
        n += len(keep)
    return n


def build_pair(work: Path, pool: str, target: str, repeat: int, small: float) -> tuple[int, int, int]:
    rows = pool_texts(pool, repeat)
    n_full = write_pool(work / "full", rows, 1.0)
    n_small = write_pool(work / "small", rows, small)
    texts = target_texts(target)
    with open(work / "target.jsonl", "w") as out:
        out.writelines(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    return n_full, n_small, len(texts)


def _load() -> str:
    """The 1/5/15-minute load averages (the machine may be shared: compare with its cores)."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def run_official(pool: Path, target: Path, out: Path, k: int, min_tokens: int) -> dict:
    import numpy as np
    from data_selection import HashedNgramDSIR

    np.random.seed(0)
    files = sorted(glob.glob(str(pool / "pool-*.jsonl")))
    dsir = HashedNgramDSIR(files, [str(target)], cache_dir=str(out / "off_cache"),
                           num_proc=os.cpu_count(), min_example_length=min_tokens)
    with PeakRss() as peak:
        cpu0, t0 = cpu_s(), time.perf_counter()
        dsir.fit_importance_estimator()
        t1 = time.perf_counter()
        dsir.compute_importance_weights()
        t2 = time.perf_counter()
        dsir.resample(out_dir=str(out / "off_out"), num_to_sample=k, cache_dir=str(out / "off_resample"))
        t3 = time.perf_counter()
        # joblib keeps its worker processes for reuse: end them so their CPU time is counted.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
        cpu = cpu_s() - cpu0
    ids = []
    for f in sorted(glob.glob(str(out / "off_out" / "*.jsonl"))):
        with open(f) as fh:
            ids += [json.loads(line)["id"] for line in fh]
    return {"fit": t1 - t0, "weights": t2 - t1, "resample": t3 - t2, "total": t3 - t0, "cpu": cpu, "ids": ids,
            "rss_mb": peak.bytes / 2**20}


def run_thresher(pool: Path, target: Path, out: Path, k: int, min_tokens: int, workers: int, seed: int,
                 runner: str = "local") -> dict:
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.load import read_shard
    from thresher.recipe.load import validate_recipe

    if runner == "dask":
        run = {"runner": "dask", "options": {"dask_workers": workers}}
    elif workers > 1:
        sys.exit("the local runner runs one worker (thresher refuses direct_num_workers > 1): "
                 "use --runner dask for two")
    else:
        run = {}
    recipe = validate_recipe({
        "seed": seed,
        "sources": [{"name": "pool", "paths": [str(pool / "pool-*.jsonl")], "id_field": "id"}],
        "stages": [{"type": "importance_resample", "params": {
            "k": k, "min_tokens": min_tokens, "target": [{"name": "target", "paths": [str(target)]}]}}],
        "output": {"dir": str(out / "thr_out")}, "runner": run})
    with PeakRss() as peak:
        cpu0, t0 = cpu_s(), time.perf_counter()
        res = run_pipeline(make_plan(recipe))
        total, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    ids = []
    for shard in res.shards:  # run_pipeline writes no manifest (the CLI does): its own list
        ids += read_shard(os.path.join(res.out_dir, shard["path"])).column("id").to_pylist()
    return {"total": total, "cpu": cpu, "ids": ids, "rss_mb": peak.bytes / 2**20,
            "report_kl_reduction": res.reports["importance_resample"]["kl_reduction"]}


def kl_reductions(pool: Path, target: Path, selections: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """KL reduction of each selection under both featurisers."""
    import numpy as np
    from data_selection.hashed_ngram_dsir import get_ngram_counts, wpt

    from thresher.stages.selection.dsir import kl_divergence
    from thresher.text.ngrams import ngram_rows

    texts, by_id = [], {}
    for f in sorted(glob.glob(str(pool / "pool-*.jsonl"))):
        with open(f) as fh:
            for line in fh:
                x = json.loads(line)
                by_id[x["id"]] = len(texts)
                texts.append(x["text"])
    with open(target) as fh:
        target_docs = [json.loads(line)["text"] for line in fh]

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

    uniq: dict[str, int] = {}
    for t in texts:  # a pool may repeat: the official featuriser needs each text once
        uniq[t] = uniq.get(t, 0) + 1
    pool_off = np.zeros(10_000)
    for t, n in uniq.items():
        pool_off += n * off_counts([t])
    feats = {"thresher features": (thr_counts, norm(thr_counts(target_docs)), norm(thr_counts(texts))),
             "official features": (off_counts, norm(off_counts(target_docs)), norm(pool_off))}
    out: dict[str, dict[str, float]] = {}
    for name, ids in selections.items():
        sel = [texts[by_id[i]] for i in ids]
        out[name] = {fname: kl_divergence(p_t, p_r) - kl_divergence(p_t, norm(fn(sel)))
                     for fname, (fn, p_t, p_r) in feats.items()}
    return out


def run_side(side: str, pool: Path, target: Path, out: Path, k: int, args) -> dict:
    """One side in its own subprocess (a fresh interpreter: its start-up and peak RSS its own)."""
    cmd = [sys.executable, __file__, "--side", side, "--pool-dir", str(pool), "--target-file", str(target),
           "--work", str(out), "--k", str(k), "--min-tokens", str(args.min_tokens),
           "--workers", str(args.workers), "--runner", args.runner, "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"})
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[-1][7:])


def _median(runs: list[dict]) -> dict:
    """The run of median total time, with the median CPU seconds of all runs."""
    mid = sorted(runs, key=lambda r: r["total"])[len(runs) // 2]
    return {**mid, "cpu": sorted(r["cpu"] for r in runs)[len(runs) // 2]}


def _spread(runs: list[dict]) -> str:
    return "-".join(f"{x:.1f}" for x in (min(r["total"] for r in runs), max(r["total"] for r in runs)))


def bench_pair(pair: str, args) -> float:
    pool_name, _, target_name = pair.partition("/")
    work = Path(tempfile.mkdtemp(prefix="thresher_dsir_bench_"))
    try:
        n, n_small, n_target = build_pair(work, pool_name, target_name, args.repeat, args.small)
        k_small = max(1, round(args.k * n_small / n))
        print(f"\n== {pair}: pool {n:,} rows (small run: {n_small:,}, k {k_small:,}); target {n_target:,} rows; "
              f"k = {args.k:,}; min tokens = {args.min_tokens}; load average {_load()}", flush=True)
        target = work / "target.jsonl"
        runs: dict[tuple[str, str], list[dict]] = {}
        # ABBA over (side, size): slow drift in the machine's load hits both sides alike.
        for side, size in ([("official", "full")] + [("thresher", "full"), ("thresher", "small")] * args.runs
                           + [("official", "small")]):
            runs.setdefault((side, size), []).append(
                run_side(side, work / size, target, work / f"{side}-{size}", args.k if size == "full" else k_small,
                         args))
        res = {key: _median(r) for key, r in runs.items()}
        sides = ("official", "thresher")
        marginal = {s: res[s, "full"]["total"] - res[s, "small"]["total"] for s in sides}
        cpu = {s: res[s, "full"]["cpu"] - res[s, "small"]["cpu"] for s in sides}
        kl = (kl_reductions(work / "full", target, {s: res[s, "full"]["ids"] for s in marginal})
              if args.kl else None)
        for side in marginal:
            r = res[side, "full"]
            phases = (f"fit {r['fit']:.1f} / weights {r['weights']:.1f} / resample {r['resample']:.1f} s"
                      if side == "official" else "one pipeline: read + fit + weights + resample + write")
            spread = "" if len(runs[side, "full"]) == 1 else (
                f" [median of {len(runs[side, 'full'])} runs each; totals {_spread(runs[side, 'full'])} / "
                f"{_spread(runs[side, 'small'])} s]")
            print(f"{side:9s} total {r['total']:.1f} s ({phases}), small run {res[side, 'small']['total']:.1f} s"
                  f"{spread}; "
                  f"marginal {marginal[side]:.1f} s = {1e6 * marginal[side] / (n - n_small):.1f} µs/row "
                  f"(CPU {cpu[side]:.1f} s of all its processes); "
                  f"peak PSS {r['rss_mb']:.0f} MB (all its processes); "
                  f"selected {len(r['ids']):,}"
                  + ("; KL reduction: " + ", ".join(f"{v:.4f} ({f})" for f, v in kl[side].items()) if kl else ""))
        print(f"thresher report's own KL reduction: {res['thresher', 'full']['report_kl_reduction']:.4f}")
        if kl:
            own = kl["thresher"]["thresher features"] - kl["official"]["official features"]
            print(f"KL reduction thresher - official (each on its own features): {own:+.4f} (goal >= -0.01)")
            for f in kl["thresher"]:
                print(f"KL reduction thresher - official ({f}): "
                      f"{kl['thresher'][f] - kl['official'][f]:+.4f} (goal >= -0.01)")
        total_ratio = res["official", "full"]["total"] / res["thresher", "full"]["total"]
        ratio = marginal["official"] / marginal["thresher"]
        print(f"{pair}: marginal cost ratio official/thresher {ratio:.1f}x (goal >= 10x); "
              f"marginal CPU seconds {cpu['official'] / cpu['thresher']:.1f}x; whole-pool totals {total_ratio:.1f}x; "
              f"load average now {_load()} (wall ratios mean little on a busy machine: the official package's "
              f"{os.cpu_count()} processes compete for the cores; read the CPU ratio there)", flush=True)
        return ratio
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=[DEFAULT_PAIR], metavar="POOL/TARGET")
    ap.add_argument("--repeat", type=int, default=3, help="copies of general_pool in the `general` pool")
    ap.add_argument("--k", type=int, default=20_000)
    ap.add_argument("--min-tokens", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--runner", choices=["local", "dask"], default="local",
                    help="thresher's runner: the local FnApiRunner or a Dask LocalCluster of --workers workers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", type=float, default=0.1, help="the small run's share of each pool file")
    ap.add_argument("--runs", type=int, default=3,
                    help="thresher's runs per pool size (odd; the median counts): its fixed cost, most of "
                    "a run, varies by more than its marginal cost between runs on a shared machine")
    ap.add_argument("--no-kl", dest="kl", action="store_false", help="skip the KL comparison (~1 min a pair)")
    ap.add_argument("--side", choices=["official", "thresher"], help=argparse.SUPPRESS)
    ap.add_argument("--pool-dir", help=argparse.SUPPRESS)
    ap.add_argument("--target-file", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child process: one side, result as JSON on the last line
        pool, target, out = Path(args.pool_dir), Path(args.target_file), Path(args.work)
        res = (run_official(pool, target, out, args.k, args.min_tokens) if args.side == "official"
               else run_thresher(pool, target, out, args.k, args.min_tokens, args.workers, args.seed, args.runner))
        print("RESULT " + json.dumps(res))
        return

    ratios = {pair: bench_pair(pair, args) for pair in args.pairs}
    print("\nmarginal cost ratio official/thresher (goal >= 10x): "
          + "; ".join(f"{p} {r:.1f}x" for p, r in ratios.items()))


if __name__ == "__main__":
    main()
