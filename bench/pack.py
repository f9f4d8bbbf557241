"""Bench: the `tokenize` stage + packing vs a plain `tokenizers` batch-encode loop, same texts.

    .venv/bin/python bench/pack.py [--tokenizer smollm2] [--repeat 1] [--batch-rows 4096] [--seq-len 2048]

Texts: ../shared/data/general_pool (73,038 paragraphs, median ~52 words) x `--repeat`.
In this one process (the Rust tokenizer uses every core on both sides):

* plain — what a user hand-writes: `tokenizers.Tokenizer.from_file(<the same tokenizer.json>)`,
  `encode_batch(texts, add_special_tokens=False)` per chunk of `--batch-rows`, ids kept as
  Python lists (no EOS, no Arrow, no packing);
* thresher — the stage's `columns()` hook (what each Beam worker runs per record batch) over
  Arrow batches of `--batch-rows` (ids + EOS + loss mask + n_tokens as Arrow columns), then
  `pack_table` over all rows (one partition) with `greedy` and with `best_fit`.

Sides alternate batch by batch (ABBA...) so machine-load drift hits both; prints tokens/s and
docs/s of each, by wall time and by CPU time (all threads of this process: steadier than wall
on a shared machine), and the ratio plain time / thresher time (goal >= 0.8x).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "general_pool" / "pool.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="smollm2")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=2048)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tokenizers import Tokenizer

    from thresher.io.packing import pack_table
    from thresher.models.tokenizer import load_tokenizer
    from thresher.stages.features.tokenize import Tokenize

    with gzip.open(POOL, "rt") as fh:
        base = [json.loads(line) for line in fh]
    rows = base * args.repeat
    handle = load_tokenizer(args.tokenizer)
    plain_tok = Tokenizer.from_file(handle.json_path)
    plain_tok.no_truncation()
    plain_tok.no_padding()
    stage = Tokenize({"tokenizer": args.tokenizer})
    stage.setup()
    print(f"documents: {len(rows):,} ({len(base):,} from general_pool x {args.repeat}); "
          f"tokenizer {args.tokenizer} ({handle.json_path}); batch {args.batch_rows}; seq_len {args.seq_len}")

    def clock():
        return time.perf_counter(), time.process_time()

    def since(t0):
        return [a - b for a, b in zip(clock(), t0, strict=True)]

    def plain(texts):
        return [e.ids for e in plain_tok.encode_batch(texts, add_special_tokens=False)]

    chunks = [rows[i:i + args.batch_rows] for i in range(0, len(rows), args.batch_rows)]
    batches = [pa.RecordBatch.from_pylist(c) for c in chunks]
    plain([d["text"] for d in chunks[0][:500]])  # warm both (thread pools, first-call costs)
    stage.columns(batches[0].slice(0, 500))
    # Alternate the sides chunk by chunk (ABBA...), so a load change on this shared machine
    # hits both; wall time and CPU time (all of this process's threads) are both summed.
    p_time, t_time, p_tokens, out = [0.0, 0.0], [0.0, 0.0], 0, []
    for i, (chunk, batch) in enumerate(zip(chunks, batches, strict=True)):
        texts = [d["text"] for d in chunk]
        for side in (("plain", "thresher") if i % 2 == 0 else ("thresher", "plain")):
            t0 = clock()
            if side == "plain":
                p_tokens += sum(map(len, plain(texts)))
                p_time = [a + b for a, b in zip(p_time, since(t0), strict=True)]
            else:
                cols = stage.columns(batch)
                out.append(pa.RecordBatch.from_pydict({"id": batch.column("id"), **cols}))
                t_time = [a + b for a, b in zip(t_time, since(t0), strict=True)]
    table = pa.Table.from_batches(out)
    t_tokens = pa.compute.sum(table.column("n_tokens")).as_py()
    packs = {}
    for method in ("greedy", "best_fit"):
        t0 = clock()
        packed = pack_table(table, args.seq_len, method, handle.pad_id or 0)
        packs[method] = (since(t0), packed.num_rows)
    n = len(rows)

    def line(label, secs, tokens, extra=""):
        wall, cpu = secs
        print(f"{label:24s}: wall {wall:7.2f} s  {tokens / wall:10,.0f} tokens/s  {n / wall:8,.0f} docs/s | "
              f"cpu {cpu:7.2f} s  {tokens / cpu:10,.0f} tokens/cpu-s{extra}")

    line("plain encode_batch", p_time, p_tokens)
    line("tokenize stage", t_time, t_tokens, f"  (tokens incl. one EOS per doc: {t_tokens:,} vs {p_tokens:,})")
    for method, (secs, n_seq) in packs.items():
        total = [a + b for a, b in zip(t_time, secs, strict=True)]
        line(f"tokenize + pack {method}", total, t_tokens,
             f"  (pack alone: wall {secs[0]:.2f} s, {n_seq:,} sequences)")
        print(f"    ratio plain/thresher ({method}): wall {p_time[0] / total[0]:.2f}x, cpu {p_time[1] / total[1]:.2f}x")


if __name__ == "__main__":
    main()
