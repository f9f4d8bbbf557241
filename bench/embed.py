"""Bench: the `embed` stage's sentences/s per backend against plain fp32 `SentenceTransformer.encode`
of the same texts, and each fast backend's agreement with fp32 torch.

    .venv/bin/python bench/embed.py [--texts 1000] [--others 10000] [--rounds 2]
        [--backends torch,onnx,onnx:fp32,openvino] [--device cpu] [--batch-size 64]

Takes `--texts` documents spread over ../shared/data/general_pool (every k-th line, all
sources; median ~50 words), then, in this one process:

* plain    — `model.encode(texts, batch_size, normalize_embeddings=True)`, fp32 torch: the baseline;
* stage:B  — for each backend B, the whole Beam pipeline (`run_pipeline`: read JSONL -> `embed`
  with `backend: B` -> write Arrow shards) on FnApiRunner, timed end to end, so Beam's and the
  shard writer's overhead count against it. `B:precision` names a precision (`onnx:fp32`: the
  fused fp32 export, what `backend: auto` runs on CPU); without one onnx/openvino run int8.

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
              precision: str = "auto") -> tuple[float, float, dict]:
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe({
        "sources": [{"name": "bench", "paths": [str(path)], "id_field": "id"}],
        "stages": [{"type": "embed", "params": {"device": device, "batch_size": batch_size,
                                                "backend": backend, "precision": precision}}],
        "output": {"dir": str(out)},
        "cache": {"enabled": False},  # every round computes: this measures the encoder, not the cache
    }, base_dir=str(path.parent))
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_pipeline(make_plan(recipe))
    return time.perf_counter() - t0, time.process_time() - c0, res.counters


def agreement(fast, base, fast_others, base_others) -> tuple[float, float, float]:
    """(mean cosine, min cosine, same-nearest-neighbour fraction) of fast vs fp32 vectors."""
    cos = (fast * base).sum(1)
    nn_fast = np.argmax(fast @ fast_others.T, axis=1)
    nn_base = np.argmax(base @ base_others.T, axis=1)
    return float(cos.mean()), float(cos.min()), float((nn_fast == nn_base).mean())


def parse_backend(spec: str) -> tuple[str, str]:
    """`onnx` -> (onnx, auto); `onnx:fp32` -> (onnx, fp32)."""
    name, _, precision = spec.partition(":")
    return name, precision or "auto"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--others", type=int, default=10000, help="pool rows the nearest neighbour is sought among")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", default="torch,onnx,onnx:fp32,openvino",
                    help="comma-separated backend[:precision] (precision default: the backend's own)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from thresher.models.embeddings import encode_texts, load_model

    backends = [b for b in args.backends.split(",") if b]
    records = pick_texts(args.texts + args.others)
    others = [r["text"] for r in records[args.texts:]]
    records = records[:args.texts]
    texts = [r["text"] for r in records]
    words = sorted(len(t.split()) for t in texts)
    print(f"{len(texts)} texts from general_pool, median {words[len(words) // 2]} words; "
          f"device {args.device}, batch_size {args.batch_size}, torch threads "
          f"{__import__('torch').get_num_threads()}, backends {backends}")
    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-embed-"))
    data = tmp / "texts.jsonl"
    write_jsonl(data, records)
    warm = tmp / "warm.jsonl"
    write_jsonl(warm, records[:16])

    model = load_model(None, args.device)
    encoders = {b: load_model(None, args.device, backend=parse_backend(b)[0], precision=parse_backend(b)[1])
                for b in backends}  # exports on first use
    encode_texts(model, texts[:16], args.batch_size)  # warm-up: first forward pass
    for b in backends:
        run_stage(warm, tmp / f"out-warm-{b}", args.device, args.batch_size, *parse_backend(b))  # Beam, sessions

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
                                             *parse_backend(b))
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

    fast = [b for b in backends if b != "torch"]
    if fast:
        t0 = time.perf_counter()
        base = encode_texts(model, texts, args.batch_size)
        base_others = encode_texts(model, others, args.batch_size)
        print(f"agreement with fp32 torch over {len(texts)} rows, nearest neighbour among {len(others)} "
              f"others (fp32 embedding took {time.perf_counter() - t0:.0f} s):")
        for b in fast:
            enc = encoders[b]
            ident = getattr(enc, "thresher_identity", {})
            v, vo = encode_texts(enc, texts), encode_texts(enc, others)
            mean, low, same_nn = agreement(v, base, vo, base_others)
            print(f"  {b:12s} {ident.get('precision', '?'):5s}: mean cosine {mean:.4f} (min {low:.4f}), "
                  f"same nearest neighbour {same_nn * 100:.1f} %  (targets >= 0.99, >= 98 %)", flush=True)


if __name__ == "__main__":
    main()
