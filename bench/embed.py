"""Bench: the `embed` stage's sentences/s per backend against plain fp32 `SentenceTransformer.encode`
of the same texts, and each fast backend's agreement with fp32 torch.

    .venv/bin/python bench/embed.py [--texts 1000] [--others 10000] [--rounds 2]
        [--backends torch,onnx,onnx:fp32,openvino] [--device cpu] [--batch-size 64]
        [--batch-rows 4096] [--sort-rows 32768]

Takes `--texts` documents spread over ../shared/data/general_pool (every k-th line, all
sources; median ~50 words), then, in this one process:

* plain    — `model.encode(texts, batch_size, normalize_embeddings=True)`, fp32 torch: the baseline;
* stage:B  — for each backend B, the whole Beam pipeline (`run_pipeline`: read JSONL -> `embed`
  with `backend: B` -> write Arrow shards) on FnApiRunner, timed end to end, so Beam's and the
  shard writer's overhead count against it. `B:precision` names a precision (`onnx:fp32`: the
  fused fp32 export, what `backend: auto` runs on CPU); without one onnx runs int8, openvino fp32.
  `--batch-rows` sets the recipe's rows per record batch; `--sort-rows 0,32768` runs each torch
  side once per value of the stage's `sort_rows` (0: each record batch encoded alone, its texts
  ordered by tokens; 32768: consecutive batches of a bundle encoded together).

With a torch side it also prints the token positions each side computes (plain `encode` orders
texts by characters; the stage by tokens, per record batch or across them) — the work saved,
free of the machine's load — and how far the stage's ordering moves torch's vectors from plain
`encode`'s (max abs difference on the first `--diff-texts` texts).

Everything is warmed up first (models loaded and exported, Beam imported). Rounds rotate the
order of the sides (and reverse it every other round) so drift on a shared machine hits them
alike; sentences/s is total texts / total seconds per side. CPU-seconds (this process, all its
threads) are printed too: less noisy than wall time when other work shares the CPU, but they
count torch's spin-waiting OpenMP threads against it, so they favour onnx (whose session does
not spin): read both. Then agreement: each fast backend's vectors of the `--texts` rows
against fp32 torch's (mean and min cosine; target mean >= 0.99), and whether each row's nearest
neighbour among `--others` further pool rows is the same under both (target >= 98 %).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
POOL = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data")) / "general_pool" / "pool.jsonl.gz"


def pick_texts(n: int) -> list[dict]:
    if not POOL.exists():
        sys.exit(f"needs {POOL} (the shared data beside the project); set THRESHER_SHARED_DATA")
    with gzip.open(POOL, "rt", encoding="utf-8") as fh:
        lines = fh.readlines()
    step = max(1, len(lines) // n)
    return [json.loads(line) for line in lines[::step][:n]]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")


def run_stage(path: Path, out: Path, device: str, batch_size: int, backend: str = "torch",
              precision: str = "auto", sort_rows: int | None = None,
              batch_rows: int = 4096) -> tuple[float, float, dict]:
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe({
        "sources": [{"name": "bench", "paths": [str(path)], "id_field": "id"}],
        "stages": [{"type": "embed", "params": {"device": device, "batch_size": batch_size,
                                                "backend": backend, "precision": precision,
                                                **({} if sort_rows is None else {"sort_rows": sort_rows})}}],
        "output": {"dir": str(out)}, "batch_rows": batch_rows,
        "cache": {"enabled": False},  # every round computes: this measures the encoder, not the cache
    }, base_dir=str(path.parent))
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_pipeline(make_plan(recipe))
    return time.perf_counter() - t0, time.process_time() - c0, res.counters


def agreement(fast, base, fast_others, base_others) -> tuple[float, float, float, np.ndarray]:
    """(mean cosine, min cosine, same-nearest-neighbour fraction) of fast vs fp32 vectors, and
    for each row whose neighbour changed, how much closer (fp32 cosine) fp32's neighbour is
    than the one the fast backend chose: how near a tie the flip was."""
    cos = (fast * base).sum(1)
    base_sim = base @ base_others.T
    nn_fast = np.argmax(fast @ fast_others.T, axis=1)
    nn_base = np.argmax(base_sim, axis=1)
    rows = np.arange(len(base))
    flipped = np.flatnonzero(nn_fast != nn_base)
    lost = base_sim[rows[flipped], nn_base[flipped]] - base_sim[rows[flipped], nn_fast[flipped]]
    return float(cos.mean()), float(cos.min()), float((nn_fast == nn_base).mean()), lost


def neighbour_gaps(base, base_others) -> np.ndarray:
    """fp32 cosine of each row's nearest neighbour minus its second nearest: a backend whose
    vectors move by more than this for a row can change that row's neighbour."""
    top2 = np.sort(np.partition(base @ base_others.T, -2, axis=1)[:, -2:], axis=1)
    return top2[:, 1] - top2[:, 0]


def padded_tokens(texts: list[str], tokens: list[int], batch_size: int, by_tokens: bool = False) -> int:
    """Token positions computed when the texts are ordered longest first — by characters (what
    `SentenceTransformer.encode` does) or by tokens (`encode_by_tokens`) — and cut into
    mini-batches, each padded to its longest text in tokens."""
    key = tokens if by_tokens else [len(t) for t in texts]
    ordered = [tokens[i] for i in np.argsort([-k for k in key], kind="stable")]
    return sum(max(ordered[i:i + batch_size]) * len(ordered[i:i + batch_size])
               for i in range(0, len(ordered), batch_size))


def parse_backend(spec: str) -> tuple[str, str]:
    """`onnx` -> (onnx, auto); `onnx:fp32` -> (onnx, fp32); `torch@0` -> (torch, auto) (the
    `@sort_rows` suffix is read by `parse_side`)."""
    name, _, precision = spec.split("@")[0].partition(":")
    return name, precision or "auto"


def parse_side(spec: str) -> dict:
    """A stage side's run_stage keywords: backend, precision and (`@N`) sort_rows."""
    backend, precision = parse_backend(spec)
    _, at, rows = spec.partition("@")
    return {"backend": backend, "precision": precision, **({"sort_rows": int(rows)} if at else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--others", type=int, default=10000, help="pool rows the nearest neighbour is sought among")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", default="torch,onnx,onnx:fp32,openvino",
                    help="comma-separated backend[:precision] (precision default: the backend's own)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batch-rows", type=int, default=4096, help="the recipe's rows per record batch")
    ap.add_argument("--diff-texts", type=int, default=300,
                    help="texts whose torch vectors are compared, stage ordering vs plain encode")
    ap.add_argument("--sort-rows", default="",
                    help="comma-separated `sort_rows` values: each torch side runs once per value "
                         "(default: the stage's own)")
    args = ap.parse_args()

    from thresher.models.embeddings import encode_by_tokens, encode_texts, load_model

    backends = [b for b in args.backends.split(",") if b]
    sort_rows = [int(x) for x in args.sort_rows.split(",") if x]
    if sort_rows:  # a torch side per sort_rows value: `torch@0`, `torch@32768`
        backends = [f"{b}@{n}" for b in backends for n in (sort_rows if parse_backend(b)[0] == "torch" else [None])]
        backends = [b.removesuffix("@None") for b in backends]
    records = pick_texts(args.texts + args.others)
    others = [r["text"] for r in records[args.texts:]]
    records = records[:args.texts]
    texts = [r["text"] for r in records]
    words = sorted(len(t.split()) for t in texts)
    print(f"{len(texts)} texts from general_pool, median {words[len(words) // 2]} words; "
          f"device {args.device}, batch_size {args.batch_size}, batch_rows {args.batch_rows}, torch threads "
          f"{__import__('torch').get_num_threads()}, backends {backends}")
    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-embed-"))
    data = tmp / "texts.jsonl"
    write_jsonl(data, records)
    warm = tmp / "warm.jsonl"
    write_jsonl(warm, records[:16])

    model = load_model(None, args.device)
    encoders = {b: load_model(None, args.device, backend=parse_backend(b)[0], precision=parse_backend(b)[1])
                for b in backends if "@" not in b}  # exports on first use
    encode_texts(model, texts[:16], args.batch_size)  # warm-up: first forward pass
    for b in backends:
        run_stage(warm, tmp / f"out-warm-{b}", args.device, args.batch_size, **parse_side(b))  # Beam, sessions

    sides = ["plain"] + [f"stage:{b}" for b in backends]
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    encode_ms = dict.fromkeys(backends, 0)
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        order = order if r % 2 == 0 else order[::-1]  # ABBA: each side early in one round, late in the next
        for side in order:
            if side == "plain":
                t0, c0 = time.perf_counter(), time.process_time()
                model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
            else:
                b = side.split(":", 1)[1]
                dt, dc, counters = run_stage(data, tmp / f"out-{r}-{b}", args.device, args.batch_size,
                                             batch_rows=args.batch_rows, **parse_side(b))
                assert counters["embed/embedded/bench"] == len(texts), counters
                encode_ms[b] += counters["embed/encode_ms"]
            wall[side] += dt
            cpu[side] += dc
            print(f"  round {r} {side:18s} {dt:7.1f} s wall {dc:7.1f} s CPU  {len(texts) / dt:7.1f} sentences/s",
                  flush=True)

    n = len(texts) * args.rounds
    plain = n / wall["plain"]
    print(f"plain fp32 SentenceTransformer.encode      : {plain:8.1f} sentences/s ({cpu['plain']:.1f} CPU-s)")
    for b in backends:
        rate = n / wall[f"stage:{b}"]
        print(f"embed stage, backend {b:12s} (pipeline): {rate:8.1f} sentences/s, {rate / plain:5.2f}x plain "
              f"wall, {cpu['plain'] / cpu[f'stage:{b}']:5.2f}x plain CPU-s (inside the model "
              f"{encode_ms[b] / 1000:.1f} s of {wall[f'stage:{b}']:.1f} s; target for the quantized backend >= 2.00x)")

    if any(parse_backend(b)[0] == "torch" for b in backends):
        # The work each side does, independent of the machine's load: token positions computed
        # (each mini-batch padded to its longest text). plain: one encode call, which orders the
        # texts by characters; the stage: ordered by tokens (`encode_by_tokens`), per record batch
        # (sort_rows 0) or across batches (sort_rows >= the rows here).
        lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True,
                                                       max_length=model.max_seq_length)["input_ids"]]
        chunks = [range(i, min(i + args.batch_rows, len(texts))) for i in range(0, len(texts), args.batch_rows)]
        plain_pos = padded_tokens(texts, lengths, args.batch_size)
        per_batch = sum(padded_tokens([texts[i] for i in c], [lengths[i] for i in c], args.batch_size,
                                      by_tokens=True) for c in chunks)
        across = padded_tokens(texts, lengths, args.batch_size, by_tokens=True)
        real = sum(lengths)
        print(f"token positions computed ({real} real tokens): plain {plain_pos / real:.3f}x; stage ordered by "
              f"tokens within each {args.batch_rows}-row record batch {per_batch / real:.3f}x, across all "
              f"{len(texts)} rows {across / real:.3f}x")
    few = texts[:args.diff_texts] if any(parse_backend(b)[0] == "torch" for b in backends) else []
    if few:
        # What the ordering changes in the vectors: torch pads each mini-batch to its longest text,
        # so a row's vector moves in the last bits with the texts batched beside it.
        plain_v = encode_texts(model, few, args.batch_size)
        across_v = encode_by_tokens(model, few, args.batch_size)
        per_v = np.concatenate([encode_by_tokens(model, few[i:i + args.batch_rows], args.batch_size)
                                for i in range(0, len(few), args.batch_rows)])
        for name, v in (("stage across batches", across_v), (f"stage per {args.batch_rows}-row batch", per_v)):
            print(f"torch vectors of the first {len(few)} texts, {name} vs plain encode: max abs difference "
                  f"{np.abs(v - plain_v).max():.2e}, min cosine {(v * plain_v).sum(1).min():.7f}")

    fast = [b for b in backends if parse_backend(b)[0] != "torch"]
    if fast:
        t0 = time.perf_counter()
        base = encode_texts(model, texts, args.batch_size)
        base_others = encode_texts(model, others, args.batch_size)
        print(f"agreement with fp32 torch over {len(texts)} rows, nearest neighbour among {len(others)} "
              f"others (fp32 embedding took {time.perf_counter() - t0:.0f} s):")
        gaps = neighbour_gaps(base, base_others)
        print("  fp32 gap between each row's nearest and second-nearest neighbour: "
              + ", ".join(f"{(gaps < g).mean() * 100:.1f} % of rows under {g}" for g in (0.0003, 0.001, 0.003, 0.01)))
        for b in fast:
            enc = encoders[b]
            ident = getattr(enc, "thresher_identity", {})
            v, vo = encode_texts(enc, texts), encode_texts(enc, others)
            mean, low, same_nn, lost = agreement(v, base, vo, base_others)
            print(f"  {b:12s} {ident.get('precision', '?'):5s}: mean cosine {mean:.4f} (min {low:.4f}), "
                  f"same nearest neighbour {same_nn * 100:.1f} %  (targets >= 0.99, >= 98 %)", flush=True)
            if len(lost):
                print(f"    its {len(lost)} changed neighbours were, in fp32, within "
                      f"{np.median(lost):.4f} (median) / {lost.max():.4f} (max) of fp32's own", flush=True)


if __name__ == "__main__":
    main()
