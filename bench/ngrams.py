"""Bench: the `ngram_features` featuriser vs the official DSIR package's, same documents.

    .venv/bin/python bench/ngrams.py [--repeat 3] [--batch-rows 4096]

Documents: ../shared/data/general_pool (73,038 paragraphs, median ~52 words) repeated
`--repeat` times (default 3 -> 219,114 documents). In this one process, one core each:

* official — `data_selection.hashed_ngram_dsir.get_ngram_counts` (what `HashedNgramDSIR`'s
  featurizer calls: nltk WordPunctTokenizer on the lowercased text, unigrams + bigrams,
  sha256 mod 10,000 into a dense count vector), one document at a time;
* thresher — the stage's `columns()` hook (what each Beam worker runs per record batch):
  `add_feature_columns` over Arrow batches of `--batch-rows`, producing the
  `ngram_buckets`/`ngram_counts`/`n_words` columns (no tokenizer: word counts).

Sides run in ABBA order over halves of the corpus so machine-load drift hits both; prints
docs/s of each and the ratio (aim >= 10x).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "general_pool" / "pool.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=4096)
    args = ap.parse_args()

    from data_selection.hashed_ngram_dsir import get_ngram_counts, wpt

    from thresher.stages.features.ngram_features import add_feature_columns

    with gzip.open(POOL, "rt") as fh:
        base = [json.loads(line)["text"] for line in fh]
    texts = base * args.repeat
    half = len(texts) // 2
    parts = [texts[:half], texts[half:]]
    print(f"documents: {len(texts):,} ({len(base):,} from general_pool x {args.repeat})")

    def official(docs):
        t = time.perf_counter()
        for d in docs:
            get_ngram_counts(d, n=2, num_buckets=10_000, tokenizer=wpt.tokenize)
        return time.perf_counter() - t

    def thresher(docs):
        batches = [pa.RecordBatch.from_pydict({"text": docs[i:i + args.batch_rows]})
                   for i in range(0, len(docs), args.batch_rows)]
        t = time.perf_counter()
        for b in batches:
            add_feature_columns(b, 2, 10_000)
        return time.perf_counter() - t

    thresher(texts[:2000])  # warm-up (imports, code-point class table)
    secs = {"official": 0.0, "thresher": 0.0}
    for side, part in (("official", 0), ("thresher", 0), ("thresher", 1), ("official", 1)):
        secs[side] += (official if side == "official" else thresher)(parts[part])
        print(f"  {side:9s} half {part}: {secs[side]:.1f} s so far", flush=True)
    o, t = len(texts) / secs["official"], len(texts) / secs["thresher"]
    print(f"official DSIR featuriser: {o:,.0f} docs/s ({secs['official']:.1f} s)")
    print(f"thresher ngram_features:  {t:,.0f} docs/s ({secs['thresher']:.1f} s)")
    print(f"ratio thresher/official:  {t / o:.1f}x")


if __name__ == "__main__":
    main()
