"""GPU check: the `embed` stage on CUDA (fp16, large batches) next to plain `encode`, and agreement.

    .venv/bin/python bench/gpu_check.py [--texts 40000] [--source FILE] [--json OUT.json]

Texts: the first `--texts` rows of ../shared/data/general_pool/pool.jsonl.gz (real paragraphs,
median 52 words), or of `--source` (JSONL, optionally .gz, a `text` field per row). Exits 2
with a message when torch sees no CUDA device; 1 when a check failed.

1. Baselines, in this command: plain `SentenceTransformer.encode` of the texts on CUDA in fp32
   and with the model cast to fp16 (`.half()`), both at sentence-transformers' default
   batch size (32). Sentences/s, two rounds each (ABBA), the best round reported.
   Also plain fp16 `encode` at batch 256 and 1024 (plain encode at its best).
2. thresher's model path (`load_model(device="cuda")`, fp16, `encode_texts`, which on CUDA
   runs `torch_batches.encode_sorted`) at batch sizes 256, 1024, 4096: sentences/s and the
   ratio to plain fp32 and fp16 encode.
3. Agreement of thresher's fp16 vectors with plain fp32: mean and min cosine over all texts,
   and, for `--queries` rows, whether the nearest neighbour among `--others` other rows is
   the same (the issue's bar: mean cosine >= 0.99, same neighbour >= 98 %).
4. The Beam pipeline end to end: JSONL -> `embed` (device cuda, backend auto) -> Arrow
   shards, on the local runner; asserts every row was embedded on CUDA (the stage's
   `embed/device/cuda` counter) and prints sentences/s, wall and inside the model.
5. faiss on the GPU, when a faiss with GPU support is installed (skipped otherwise).
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
POOL = ROOT.parent / "shared" / "data" / "general_pool" / "pool.jsonl.gz"


def read_texts(path: Path, n: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    texts = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line).get("text") or ""
            if text.strip():
                texts.append(text)
            if len(texts) >= n:
                break
    return texts


def timed(fn, *args, **kwargs):
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - t0


def same_neighbour(fast, base, queries: int, others: int) -> float:
    """Share of the first `queries` rows whose nearest row among the next `others` rows is the
    same under both sets of vectors (on the GPU: 1,000 x 10,000 dot products)."""
    import torch

    def nearest(v):
        t = torch.as_tensor(v, device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.float32)
        return (t[:queries] @ t[queries:queries + others].T).argmax(1)

    return float((nearest(fast) == nearest(base)).float().mean())


def pipeline_check(texts: list[str], batch_size: int, tmp: Path, device: str) -> dict:
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    data = tmp / "texts.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"r{i}", "text": t}) + "\n")
    recipe = validate_recipe({
        "sources": [{"name": "bench", "paths": [str(data)], "id_field": "id"}],
        "stages": [{"type": "embed", "params": {"device": device, "backend": "torch",
                                                "batch_size": batch_size}}],
        "output": {"dir": str(tmp / "out")},
    }, base_dir=str(tmp))
    t0 = time.perf_counter()
    res = run_pipeline(make_plan(recipe))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "rows_on_device": res.counters.get(f"embed/device/{device}", 0),
            "encode_s": res.counters.get("embed/encode_ms", 0) / 1000, "report": res.reports.get("embed")}


def report_pipeline(res: dict, n: int, plain: dict, dev: str, batch_size: int, out: dict, failures: list) -> None:
    rate = n / res["wall_s"]
    out["pipeline"] = {k: v for k, v in res.items() if k != "report"} | {"sentences_per_s": rate}
    print(f"thresher pipeline (read JSONL -> embed on {dev} -> Arrow shards), batch {batch_size}: "
          f"{rate:9.0f} sentences/s wall = {rate / plain['fp32']:.2f}x plain fp32 encode, "
          f"{rate / plain['fp16']:.2f}x plain fp16 (inside the model {res['encode_s']:.1f} s of "
          f"{res['wall_s']:.1f} s; report: {res['report']})", flush=True)
    if res["rows_on_device"] != n:
        failures.append(f"embed stage: {res['rows_on_device']} of {n} rows embedded on {dev}")


def faiss_check(vectors) -> str:
    try:
        import faiss
    except ImportError:
        return "faiss: not installed here (skipped)"
    from thresher.models import faiss_index

    if not faiss_index.gpu_available():
        return f"faiss {faiss.__version__}: no GPU support in this build (skipped)"
    t0 = time.perf_counter()
    index = faiss_index.build_index(vectors, "flat", use_gpu=True)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    faiss_index.search(index, vectors[:1000], 10)
    return (f"faiss flat on GPU: build {len(vectors)} vectors {build:.2f} s, 1000 queries k=10 "
            f"{(time.perf_counter() - t0) * 1000:.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=40000)
    ap.add_argument("--source", type=Path, default=POOL)
    ap.add_argument("--repeat", type=int, default=1,
                    help="use the texts this many times over (longer timed runs from a small file)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--others", type=int, default=10000)
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    ap.add_argument("--plain-batch-sizes", default="256,1024", help="also plain fp16 encode at these")
    ap.add_argument("--pipeline-batch-size", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a dry run of this script on a machine without a GPU (use few --texts)")
    args = ap.parse_args()

    import numpy as np
    import torch

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False: no GPU on this machine, "
              f"or a CPU-only torch build, torch {torch.__version__}); nothing to check.", file=sys.stderr)
        return 2
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    from thresher.models.embeddings import encode_texts, load_model, resolve_model_path

    texts = read_texts(args.source, args.texts)
    uniq = len(texts)
    texts = texts * args.repeat
    n = len(texts)
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else "none (cpu dry run)"
    print(f"GPU: {gpu}; torch {torch.__version__}, sentence-transformers "
          f"{sentence_transformers.__version__}; {n} texts from {args.source.name}", flush=True)
    out: dict = {"gpu": gpu, "texts": n}
    failures = []

    path = resolve_model_path(None)
    plain32 = SentenceTransformer(path, device=dev)
    plain16 = SentenceTransformer(path, device=dev)
    if dev == "cuda":  # fp16 matmuls on a CPU without fp16 units crawl: a dry run keeps fp32
        plain16.half()
    for m in (plain32, plain16):
        m.encode(texts[:512])  # warm-up: CUDA context, kernels, allocator
    rounds: dict[str, list[float]] = {"fp32": [], "fp16": []}
    base = None
    for name in ("fp32", "fp16", "fp16", "fp32"):  # ABBA: drift hits both alike
        vec, s = timed((plain32 if name == "fp32" else plain16).encode, texts, convert_to_numpy=True,
                       normalize_embeddings=True)
        rounds[name].append(s)
        if name == "fp32":
            base = vec
    plain = {k: n / min(v) for k, v in rounds.items()}
    print(f"plain encode fp32 (batch 32): {plain['fp32']:9.0f} sentences/s", flush=True)
    print(f"plain encode fp16 (batch 32): {plain['fp16']:9.0f} sentences/s "
          f"({plain['fp16'] / plain['fp32']:.2f}x fp32)", flush=True)
    for bs in [int(b) for b in args.plain_batch_sizes.split(",") if b]:  # plain encode at its best batch
        _, s = timed(plain16.encode, texts, batch_size=bs, convert_to_numpy=True, normalize_embeddings=True)
        plain[f"fp16_batch{bs}"] = n / s
        print(f"plain encode fp16 (batch {bs}): {n / s:9.0f} sentences/s", flush=True)
    out["plain_sentences_per_s"] = plain

    model = load_model(None, dev)  # what `embed` loads on CUDA: torch fp16
    if dev == "cuda" and next(model.parameters()).dtype != torch.float16:
        failures.append(f"embed's CUDA model is {next(model.parameters()).dtype}, not float16")
    out["thresher"] = {}
    vectors = None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        encode_texts(model, texts[:2048], bs)  # warm-up at this shape
        best = float("inf")
        for _ in range(2):
            vectors, s = timed(encode_texts, model, texts, bs)
            best = min(best, s)
        rate = n / best
        out["thresher"][bs] = rate
        print(f"thresher encode_texts fp16, batch {bs:5d}: {rate:9.0f} sentences/s = "
              f"{rate / plain['fp32']:.2f}x plain fp32, {rate / plain['fp16']:.2f}x plain fp16", flush=True)

    cos = (vectors * base).sum(1)
    # Neighbours among distinct texts only (a repeated text's nearest row would be its copy).
    q = min(args.queries, uniq // 11)
    o = min(args.others, uniq - q)
    same = same_neighbour(vectors, base, q, o)
    out["agreement"] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                        "same_neighbour": same, "queries": q, "others": o}
    print(f"fp16 vs plain fp32: mean cosine {cos.mean():.5f} (min {cos.min():.5f}) over {n} texts; "
          f"same nearest neighbour for {same:.1%} of {q} rows among {o} others", flush=True)
    if cos.mean() < 0.99 or same < 0.98:
        failures.append(f"fp16 agreement below the bar: mean cosine {cos.mean():.4f}, same neighbour {same:.1%}")

    try:
        with tempfile.TemporaryDirectory(prefix="thresher-gpu-check-") as tmp:
            res = pipeline_check(texts, args.pipeline_batch_size, Path(tmp), dev)
    except Exception as exc:  # report it and still print/write what was measured above
        failures.append(f"pipeline run failed: {type(exc).__name__}: {exc}")
        res = None
    if res is not None:
        report_pipeline(res, n, plain, dev, args.pipeline_batch_size, out, failures)

    msg = faiss_check(np.ascontiguousarray(vectors))
    print(msg)
    out["faiss"] = msg
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
