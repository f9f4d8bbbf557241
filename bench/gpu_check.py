"""GPU check: the `embed` stage and the faiss index on CUDA, with throughput next to plain encode.

    .venv/bin/python bench/gpu_check.py [--texts 20000] [--index flat|ivf]

Needs a CUDA GPU seen by torch, and faiss with GPU support (`pip install thresher[gpu]`,
which installs faiss-gpu in place of faiss-cpu). Exits 2 with a message saying what is
missing when there is no CUDA device; fails (exit 1) when something ran on the CPU.

1. plain `SentenceTransformer.encode` over the texts, fp32 on CUDA (the baseline) and fp16 (the
   model `embed` loads: `precision: auto` on CUDA), their sentences/s and the fp16 vectors'
   agreement with fp32 (mean cosine, target >= 0.99);
2. the Beam pipeline: read JSONL -> `embed` (device cuda, index built) -> Arrow shards;
   asserts every row was embedded on CUDA (the stage's `embed/device/cuda` counter) and the
   index was built on the GPU (its report says `gpu: true`);
3. faiss alone: build the same index kind on the GPU and time 1,000 k=10 queries.
Prints sentences/s for 1 and 2 and their ratios, and the faiss timings. Not yet run on a GPU
(written on a machine without one): the first GPU session should run it as is.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--index", default="flat", choices=["flat", "ivf", "ivfpq"])
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False: no GPU on this machine, "
              f"or a CPU-only torch build, torch {torch.__version__}); nothing to check.", file=sys.stderr)
        return 2
    import faiss
    from embed import pick_texts, write_jsonl

    from thresher.models import faiss_index
    from thresher.models.embeddings import encode_texts, load_model

    print(f"GPU: {torch.cuda.get_device_name(0)}; faiss {faiss.__version__}, GPUs seen by faiss: "
          f"{faiss.get_num_gpus()}")
    failures = []
    if not faiss_index.gpu_available():
        failures.append("faiss has no GPU support here (faiss-cpu installed?): install thresher[gpu] (faiss-gpu)")

    records = pick_texts(args.texts)
    texts = [r["text"] for r in records]
    tmp = Path(tempfile.mkdtemp(prefix="thresher-gpu-check-"))
    data = tmp / "texts.jsonl"
    write_jsonl(data, records)

    model = load_model(None, "cuda")  # precision auto: fp16
    fp32 = load_model(None, "cuda", precision="fp32")
    assert model.device.type == "cuda" and fp32.device.type == "cuda", (model.device, fp32.device)
    if next(model.parameters()).dtype != torch.float16:
        failures.append(f"embed's CUDA model is {next(model.parameters()).dtype}, not float16")
    for m in (model, fp32):
        encode_texts(m, texts[:256], args.batch_size)  # warm-up (CUDA context, kernels)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    base = encode_texts(fp32, texts, args.batch_size)
    torch.cuda.synchronize()
    fp32_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectors = encode_texts(model, texts, args.batch_size)
    torch.cuda.synchronize()
    plain_s = time.perf_counter() - t0
    cos = (vectors * base).sum(1)
    if cos.mean() < 0.99:
        failures.append(f"fp16 vectors agree with fp32 at mean cosine {cos.mean():.4f} < 0.99")

    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe({
        "sources": [{"name": "bench", "paths": [str(data)], "id_field": "id"}],
        "stages": [{"type": "embed", "params": {"device": "cuda", "batch_size": args.batch_size,
                                                "index": args.index}}],
        "output": {"dir": str(tmp / "out")},
    }, base_dir=str(tmp))
    t0 = time.perf_counter()
    res = run_pipeline(make_plan(recipe))
    stage_s = time.perf_counter() - t0
    on_cuda = res.counters.get("embed/device/cuda", 0)
    if on_cuda != len(texts):
        failures.append(f"embed stage: {on_cuda} of {len(texts)} rows embedded on CUDA ({res.counters})")
    index_info = res.reports["embed"].get("index") or {}
    if not index_info.get("gpu"):
        failures.append(f"embed stage index was not built on the GPU: {index_info}")

    t0 = time.perf_counter()
    index = faiss_index.build_index(vectors, args.index, use_gpu=faiss_index.gpu_available())
    build_s = time.perf_counter() - t0
    queries = vectors[:1000]
    t0 = time.perf_counter()
    _, pos = faiss_index.search(index, queries, 10)
    search_s = time.perf_counter() - t0
    if args.index == "flat" and not (pos[:, 0] == range(len(queries))).all():
        failures.append("flat index: a vector's nearest neighbour is not itself")

    plain, stage = len(texts) / plain_s, len(texts) / stage_s
    print(f"plain SentenceTransformer.encode (cuda fp32): {len(texts) / fp32_s:9.1f} sentences/s")
    print(f"plain SentenceTransformer.encode (cuda fp16): {plain:9.1f} sentences/s "
          f"({fp32_s / plain_s:.2f}x fp32; cosine to fp32 mean {cos.mean():.4f}, min {cos.min():.4f})")
    print(f"thresher embed stage, pipeline end to end   : {stage:9.1f} sentences/s "
          f"(inside the model {res.counters.get('embed/encode_ms', 0) / 1000:.1f} s of {stage_s:.1f} s)")
    print(f"ratio stage/plain                           : {stage / plain:9.2f}x")
    print(f"faiss {args.index} on {'GPU' if faiss_index.is_gpu_index(index) else 'CPU'}: build "
          f"{len(texts)} vectors {build_s:.2f} s, 1000 queries k=10 {search_s * 1000:.1f} ms; "
          f"stage index: {index_info}")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
