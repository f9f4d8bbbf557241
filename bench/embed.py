"""Bench: the `embed` stage's sentences/s against plain `SentenceTransformer.encode`, same texts.

    .venv/bin/python bench/embed.py [--texts 1000] [--rounds 2] [--device cpu] [--batch-size 64]

Takes `--texts` documents spread over ../shared/data/general_pool (every k-th line, all
sources; median ~50 words), then, in this one process with the same loaded model:

* plain    — `model.encode(texts, batch_size, normalize_embeddings=True)`;
* thresher — the whole Beam pipeline (`run_pipeline`: read JSONL -> `embed` -> write
  Arrow shards) on FnApiRunner, timed end to end, so Beam's and the shard writer's overhead
  count against it.

Both are warmed up first (model loaded, Beam imported). Rounds run in ABBA order so drift on a
shared machine hits both sides alike; sentences/s is total texts / total seconds per side.
Prints both, the ratio (target >= 0.9), and the stage's own time inside the model.
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


def run_stage(path: Path, out: Path, device: str, batch_size: int) -> tuple[float, dict]:
    from thresher.engine.build import run_pipeline
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe({
        "sources": [{"name": "bench", "paths": [str(path)], "id_field": "id"}],
        "stages": [{"type": "embed", "params": {"device": device, "batch_size": batch_size}}],
        "output": {"dir": str(out)},
    }, base_dir=str(path.parent))
    t0 = time.perf_counter()
    res = run_pipeline(make_plan(recipe))
    return time.perf_counter() - t0, res.counters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from thresher.models.embeddings import encode_texts, load_model

    records = pick_texts(args.texts)
    texts = [r["text"] for r in records]
    words = sorted(len(t.split()) for t in texts)
    print(f"{len(texts)} texts from general_pool, median {words[len(words) // 2]} words; "
          f"device {args.device}, batch_size {args.batch_size}, torch threads "
          f"{__import__('torch').get_num_threads()}")
    tmp = Path(tempfile.mkdtemp(prefix="thresher-bench-embed-"))
    data = tmp / "texts.jsonl"
    write_jsonl(data, records)
    warm = tmp / "warm.jsonl"
    write_jsonl(warm, records[:16])

    model = load_model(None, args.device)
    encode_texts(model, texts[:16], args.batch_size)  # warm-up: first forward pass
    run_stage(warm, tmp / "out-warm", args.device, args.batch_size)  # warm-up: Beam imports

    plain_s, stage_s, encode_ms = 0.0, 0.0, 0
    per_round: list[dict[str, float]] = []
    for r in range(args.rounds):
        per_round.append({})
        for side in (("plain", "stage") if r % 2 == 0 else ("stage", "plain")):
            if side == "plain":
                t0 = time.perf_counter()
                model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
                dt = time.perf_counter() - t0
                plain_s += dt
            else:
                dt, counters = run_stage(data, tmp / f"out-{r}", args.device, args.batch_size)
                assert counters["embed/embedded/bench"] == len(texts), counters
                stage_s += dt
                encode_ms += counters["embed/encode_ms"]
            per_round[-1][side] = dt
            print(f"  round {r} {side:6s} {dt:7.1f} s  {len(texts) / dt:7.1f} sentences/s", flush=True)

    n = len(texts) * args.rounds
    plain, stage = n / plain_s, n / stage_s
    print(f"plain SentenceTransformer.encode : {plain:8.1f} sentences/s")
    print(f"thresher embed stage (pipeline)  : {stage:8.1f} sentences/s "
          f"(of which inside the model: {encode_ms / 1000:.1f} s of {stage_s:.1f} s)")
    print(f"ratio stage/plain                : {stage / plain:8.2f}x  (target >= 0.90)")
    # A load spike on a shared machine skews one round; each round's own ratio shows it.
    print("per-round ratios                 : " + ", ".join(f"{t['plain'] / t['stage']:.2f}x" for t in per_round))


if __name__ == "__main__":
    main()
