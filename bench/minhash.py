"""`minhash_dedup` against datatrove's MinHash pipeline, on >= 200k rows with planted near-duplicates.

    .venv/bin/python bench/minhash.py [--rows 200000] [--small 100000] [--verify]

Data (deterministic, built under bench/_data/minhash/): general_pool has 73,038 paragraphs, so
the base rows are each paragraph as is, then with its words reversed, then with its even-
position words followed by its odd-position ones (new word bigrams: a variant shares almost
no shingle with its source), taken in that order up to `rows - rows // 11`. Then `rows // 11`
planted near-duplicates: copies of distinct random base rows with 5-15 % of their words
substituted, deleted or inserted, each placed at a random position. The ground truth is the
(copy, source) pairs.

Both tools use the same shingles (word bigrams, lowercased, punctuation dropped), the same 128
permutations (datatrove's formula and draw, seed 1) and the same 32 bands x 4 rows (an S-curve
at Jaccard ~0.4; planted copies have 0.5-0.9). datatrove (PyPI, in its own venv under
bench/.venvs/datatrove because of its pins) runs its 4 steps with the local executor (one task
per input file, 1 worker process);
thresher runs the stage in the real engine pipeline (read JSONL -> minhash_dedup -> Arrow
shards + dropped/, FnApiRunner, 1 worker). Each run is its own subprocess, so each peak RSS
(ru_maxrss of that process and its children) is its own.

Printed per tool: recall on the planted pairs (copy and source end in one group), precision of
the drops (a dropped row's kept row is its planted family: `planted`; or also any pair whose
true word-bigram Jaccard is >= 0.4, i.e. natural near-duplicates in general_pool count as
right: `with natural dups`), docs/s (rows / wall seconds of the whole run, and rows / CPU
seconds: on a shared machine the CPU figure is the steadier one), peak RSS, and
thresher/datatrove ratios. `baseline` is the same engine pipeline without the stage (what the
in-process runner itself holds as rows grow). datatrove runs at --rows only (its spaCy
tokenisation makes it the long pole); thresher also at --small, for its peak RSS as rows grow.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / "bench" / "_data" / "minhash"
DT_PYTHON = ROOT / "bench" / ".venvs" / "datatrove" / "bin" / "python"
NGRAM, BANDS, ROWS, SEED, THRESHOLD = 2, 32, 4, 1, 0.4
PARTS = 4  # input files; datatrove runs one task per file
VOCAB = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()

DATATROVE = """
import json, resource, sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig

data, work, ngram, bands, rows, seed, parts = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8])
workers = 1
cfg = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows, seed=seed,
                    hash_config=HashConfig(precision=64, hash_fc="xxhash"))
cpu0 = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),))
read = lambda: JsonlReader(data, glob_pattern="*.jsonl", text_key="text", id_key="id", add_file_path=False)
t = time.perf_counter()
LocalPipelineExecutor([read(), MinhashDedupSignature(f"{work}/sigs", config=cfg)], tasks=parts, workers=workers,
                      logging_dir=f"{work}/logs/1").run()
LocalPipelineExecutor([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=cfg)], tasks=bands,
                      workers=workers, logging_dir=f"{work}/logs/2").run()
LocalPipelineExecutor([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=cfg, save_cluster_id=True)],
                      tasks=1, workers=1, logging_dir=f"{work}/logs/3").run()
LocalPipelineExecutor([read(), MinhashDedupFilter(f"{work}/remove", load_cluster_ids=True,
                                                  exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)),
                       JsonlWriter(f"{work}/kept", compression=None)], tasks=parts, workers=workers,
                      logging_dir=f"{work}/logs/4").run()
dt = time.perf_counter() - t
use = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print("RESULT " + json.dumps({"seconds": dt, "rss_mib": max(u.ru_maxrss for u in use) / 1024,
                              "cpu": sum(u.ru_utime + u.ru_stime for u in use) - cpu0}))
"""


# ---------------------------------------------------------------------------------------
# Data


def _edit(words: list[str], rng: np.random.Generator) -> str:
    words = list(words)
    k = max(1, round(rng.uniform(0.05, 0.15) * len(words)))
    for pos in sorted(rng.choice(len(words), k, replace=False).tolist(), reverse=True):
        op = int(rng.integers(3))
        if op == 0:
            words[pos] = VOCAB[int(rng.integers(len(VOCAB)))]
        elif op == 1:
            del words[pos]
        else:
            words.insert(pos + 1, VOCAB[int(rng.integers(len(VOCAB)))])
    return " ".join(words)


def make_data(n: int) -> tuple[Path, Path]:
    """`n` rows as JSONL files (`PARTS` consecutive slices, so datatrove's tasks split the
    work) in one folder, plus the planted pairs (copy id -> source id); cached by size."""
    path, truth_path = CACHE / f"rows_{n}", CACHE / f"truth_{n}.json"
    if path.exists() and truth_path.exists():
        return path, truth_path
    CACHE.mkdir(parents=True, exist_ok=True)
    with gzip.open(DATA / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        pool = [json.loads(line) for line in fh]
    variants = [lambda w: w, lambda w: w[::-1], lambda w: w[0::2] + w[1::2]]
    n_copies = n // 11
    n_base = n - n_copies
    base = []
    for v, fn in enumerate(variants):
        for r in pool:
            if len(base) == n_base:
                break
            base.append((f"{r['id']}#v{v}", fn(r["text"].split())))
    if len(base) < n_base:
        sys.exit(f"general_pool gives at most {3 * len(pool)} base rows; ask for fewer")
    rng = np.random.default_rng(n)
    sources = rng.choice(n_base, n_copies, replace=False)
    rows = [(float(i), rid, " ".join(w)) for i, (rid, w) in enumerate(base)]
    truth = {}
    for j, s in enumerate(sources.tolist()):
        cid = f"planted{j}"
        rows.append((float(rng.uniform(0, n_base)), cid, _edit(base[s][1], rng)))
        truth[cid] = base[s][0]
    rows.sort(key=lambda r: r[0])
    path.mkdir(exist_ok=True)
    for part in range(PARTS):
        with open(path / f"part{part}.jsonl", "w", encoding="utf-8") as out:
            for _, rid, text in rows[part * len(rows) // PARTS:(part + 1) * len(rows) // PARTS]:
                out.write(json.dumps({"id": rid, "text": text}) + "\n")
    truth_path.write_text(json.dumps(truth))
    return path, truth_path


# ---------------------------------------------------------------------------------------
# Children (each in its own process)


def _cpu() -> float:
    use = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in use)


def child_thresher(data: str, work: str, verify: bool, baseline: bool = False) -> None:
    import pyarrow as pa

    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    params = {"ngram": NGRAM, "num_perm": BANDS * ROWS, "bands": BANDS, "rows": ROWS, "seed": SEED,
              "threshold": THRESHOLD, "verify": verify}
    recipe = validate_recipe({"sources": [{"name": "bench", "paths": [f"{data}/*.jsonl"], "id_field": "id"}],
                              "stages": [] if baseline else [{"type": "minhash_dedup", "params": params}],
                              "output": {"dir": f"{work}/out", "write_dropped": True}}, base_dir=work)
    t, cpu0 = time.perf_counter(), _cpu()
    res = run_pipeline(make_plan(recipe))
    dt, cpu = time.perf_counter() - t, _cpu() - cpu0
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    dropped = {}
    for p in Path(res.out_dir).rglob("*.arrow"):
        if "dropped" in p.parts:
            t_ = pa.ipc.open_stream(str(p)).read_all() if p.stat().st_size else None
            if t_ is not None and t_.num_rows:
                dropped.update(zip(t_.column("id").to_pylist(), t_.column("dup_of").to_pylist(), strict=True))
    Path(work, "groups.json").write_text(json.dumps(dropped))
    print("RESULT " + json.dumps({"seconds": dt, "cpu": cpu, "rss_mib": rss / 1024,
                                  "report": res.reports.get("minhash_dedup")}))


def _datatrove_groups(work: str) -> dict[str, str]:
    """Dropped row id -> the kept row of its cluster, from datatrove's outputs."""
    kept_of, removed = {}, []
    for sub, into in (("kept", None), ("removed", removed)):
        for p in sorted(Path(work, sub).glob("*")):
            with open(p, encoding="utf-8") as fh:
                for line in fh:
                    d = json.loads(line)
                    cid = d["metadata"].get("minhash_cluster_id", -1)
                    if into is None:
                        if cid != -1:
                            kept_of[cid] = d["id"]
                    else:
                        into.append((d["id"], cid))
    return {rid: kept_of[cid] for rid, cid in removed}


# ---------------------------------------------------------------------------------------
# Parent


def _run(cmd: list[str]) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not lines:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{r.stderr[-4000:]}")
    return json.loads(lines[-1][7:])


def score(groups: dict[str, str], truth: dict[str, str], texts: dict[str, str]) -> dict[str, float]:
    from thresher.text.shingles import jaccard, shingle_sets

    group = lambda x: groups.get(x, x)  # noqa: E731
    family = lambda x: truth.get(x, x)  # noqa: E731
    recall = np.mean([group(c) == group(s) for c, s in truth.items()])
    right = [family(d) == family(k) for d, k in groups.items()]
    wrong = [(d, k) for (d, k), ok in zip(groups.items(), right, strict=True) if not ok]
    natural = 0
    if wrong:
        sets = shingle_sets([texts[x] for pair in wrong for x in pair], NGRAM)
        natural = sum(jaccard(sets[2 * i], sets[2 * i + 1]) >= THRESHOLD for i in range(len(wrong)))
    n = max(len(groups), 1)
    return {"dropped": len(groups), "recall": float(recall), "precision_planted": sum(right) / n,
            "precision_jaccard": (sum(right) + natural) / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--small", type=int, default=100_000, help="a second size, for peak RSS as rows grow")
    ap.add_argument("--verify", action="store_true", help="also run thresher with verify: true")
    ap.add_argument("--tools", default="datatrove,thresher,baseline",
                    help="comma-separated: datatrove, thresher, baseline (the engine pipeline without the stage)")
    ap.add_argument("--child", choices=["thresher", "baseline"])
    ap.add_argument("--data")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.child:
        child_thresher(args.data, args.work, args.verify, baseline=args.child == "baseline")
        return
    if not DT_PYTHON.exists():
        sys.exit(f"no datatrove venv at {DT_PYTHON}: python -m venv bench/.venvs/datatrove && "
                 "bench/.venvs/datatrove/bin/pip install 'datatrove==0.10.*' psutil")
    print(f"config: word {NGRAM}-grams, {BANDS} bands x {ROWS} rows = {BANDS * ROWS} permutations, seed {SEED}; "
          "thresher 1 worker (FnApiRunner), datatrove 1 worker process", flush=True)
    results = {}
    for n in sorted({args.small, args.rows}):
        t = time.perf_counter()
        path, truth_path = make_data(n)
        truth = json.loads(truth_path.read_text())
        print(f"\n{n} rows ({len(truth)} planted near-duplicates), data ready in {time.perf_counter() - t:.0f}s",
              flush=True)
        texts = {}
        for part in sorted(path.glob("*.jsonl")):
            with open(part, encoding="utf-8") as fh:
                for line in fh:
                    d = json.loads(line)
                    texts[d["id"]] = d["text"]
        # datatrove runs at the full size only (its spaCy tokenisation makes it the long pole);
        # thresher at both, for its peak RSS as rows grow.
        tools = args.tools.split(",")
        runs = ([("datatrove", None)] if n == args.rows and "datatrove" in tools else [])
        if "thresher" in tools:
            runs += [("thresher", False)] + ([("thresher+verify", True)] if args.verify else [])
        if "baseline" in tools:  # the same engine pipeline without the stage: the runner's own memory
            runs += [("baseline", False)]
        for name, verify in runs:
            with tempfile.TemporaryDirectory(prefix=f"bench-minhash-{name}-") as work:
                if name == "datatrove":
                    script = Path(work, "dt.py")
                    script.write_text(DATATROVE)
                    out = _run([str(DT_PYTHON), str(script), str(path), work, str(NGRAM), str(BANDS), str(ROWS),
                                str(SEED), str(PARTS)])
                    groups = _datatrove_groups(work)
                else:
                    child = "baseline" if name == "baseline" else "thresher"
                    out = _run([sys.executable, __file__, "--child", child, "--data", str(path), "--work", work,
                                *(["--verify"] if verify else [])])
                    groups = json.loads(Path(work, "groups.json").read_text())
            s = score(groups, truth, texts)
            results[(n, name)] = {**out, **s}
            rep = out.get("report") or {}
            extra = (f"  candidate pairs {rep.get('candidate_pairs')}, components {rep.get('components')}, "
                     f"largest bucket {rep.get('largest_bucket')}") if rep else ""
            print(f"  {name:16s} dropped {s['dropped']:6d}  recall {s['recall']:.4f}  precision planted "
                  f"{s['precision_planted']:.4f} / with natural dups {s['precision_jaccard']:.4f}  "
                  f"{n / out['seconds']:6.0f} docs/s wall ({out['seconds']:.0f}s), {n / out['cpu']:6.0f} per CPU-s "
                  f"({out['cpu']:.0f}s)  peak RSS {out['rss_mib']:.0f} MiB"
                  f"{extra}", flush=True)
        if (n, "datatrove") not in results:
            continue
        dt_, th = results[(n, "datatrove")], results[(n, "thresher")]
        print(f"  thresher vs datatrove: docs/s x{dt_['seconds'] / th['seconds']:.2f} (wall), "
              f"x{dt_['cpu'] / th['cpu']:.2f} (CPU), recall "
              f"{th['recall'] - dt_['recall']:+.4f}, precision planted "
              f"{th['precision_planted'] - dt_['precision_planted']:+.4f} / with natural dups "
              f"{th['precision_jaccard'] - dt_['precision_jaccard']:+.4f}", flush=True)
    for name in ("thresher", "baseline"):
        if args.small != args.rows and name in args.tools:
            a, b = results[(args.small, name)]["rss_mib"], results[(args.rows, name)]["rss_mib"]
            print(f"peak RSS {name}: {a:.0f} MiB at {args.small} rows, {b:.0f} MiB at {args.rows} rows (x{b / a:.2f})")


if __name__ == "__main__":
    main()
