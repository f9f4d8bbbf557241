"""The dataset card: a `README.md` whose Hugging Face YAML front matter lists exactly the shards.

`datasets.load_dataset(folder)` reads a folder's `README.md` front matter (`configs:` /
`data_files:`) before it looks at the files; listing the shards there makes it load exactly
them — never `reports/*.arrow`, `quarantine/` or `dropped/`, which it would otherwise pick up.

Two cards per run (`flows.publish` writes both):
- `OUT/snapshots/<id>/README.md`, paths `shards/...` (so `load_dataset(OUT + "/latest")` works);
- `OUT/README.md`, paths `snapshots/<id>/shards/...` (so `load_dataset(OUT)` works), rewritten
  at every publish right after the manifest, before `latest` moves.

A card carries `MARKER`; a root `README.md` without it is the user's and is never overwritten
(one warning says the card was not written there).
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from thresher.io import fs
from thresher.io.atomic import write_bytes_atomic

README = "README.md"
MARKER = "<!-- thresher:dataset-card (rewritten by every run; remove this line to keep your own README) -->"

log = logging.getLogger("thresher.card")


def front_matter(shard_paths: list[str], shard_splits: list[str | None] | None = None) -> str:
    """The YAML front matter: one `default` config listing exactly these files, all in split
    `train`, or (with `output.splits`) each in its own split, in the order first seen."""
    by_split: dict[str, list[str]] = {}
    for path, split in zip(shard_paths, shard_splits or [None] * len(shard_paths), strict=True):
        by_split.setdefault(split or "train", []).append(path)
    files = [{"split": name, "path": paths} for name, paths in by_split.items()] or [{"split": "train", "path": []}]
    meta = {"configs": [{"config_name": "default", "default": True, "data_files": files}]}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n"


def card_text(manifest: dict[str, Any], prefix: str = "") -> str:
    """The card for `manifest`'s snapshot; shard paths are relative to the card's folder
    (`prefix`: the snapshot's folder relative to it, e.g. `snapshots/<id>/`)."""
    shards = [prefix + s["path"] for s in manifest.get("shards") or []]
    recipe = manifest.get("recipe") or {}
    out = recipe.get("output") or {}
    total = (manifest.get("counts") or {}).get("total") or {}
    card_splits = [s.get("split") for s in manifest.get("shards") or []]  # set by engine.build with splits
    lines = [front_matter(shards, card_splits), MARKER, "", f"# {manifest.get('name', 'thresher run')}", "",
             f"Curated by [thresher](https://pypi.org/project/thresher/) {manifest.get('thresher_version', '')}, "
             f"snapshot `{manifest.get('snapshot')}` ({manifest.get('created_at', '')}), recipe sha256 "
             f"`{str(manifest.get('recipe_sha256', ''))[:16]}`, seed {manifest.get('seed')}.", "",
             "## What ran", "",
             f"- Rows: {total.get('read', 0):,} read, {total.get('quarantined', 0):,} quarantined, "
             f"{total.get('dropped', 0):,} dropped by stages, {manifest.get('num_rows', 0):,} "
             f"{'packed sequences' if out.get('pack') else 'rows'} written.",
             f"- Shards: {len(shards)} × {out.get('format', 'arrow')}"
             + (f" (`num_shards: {out['num_shards']}`: sizes within one row of each other)"
                if out.get("num_shards") else "") + f", {manifest.get('num_bytes', 0):,} bytes.",
             f"- Tokenizer: {recipe.get('tokenizer') or 'none (counts are words)'}{_tokens(manifest)}.",
             f"- Packing: {_pack_line(out.get('pack'))}."]
    stages = manifest.get("stages") or {}
    if stages:
        lines += ["", "| stage | type | rows in | dropped |", "|---|---|---:|---:|"]
        for name, s in stages.items():
            dropped = sum((s.get("dropped") or {}).values())
            lines.append(f"| {name} | {s.get('type')} | {s.get('rows_in', 0):,} | {dropped:,} |")
    fields = [f["name"] for f in ((manifest.get("schema") or {}).get("fields") or [])]
    if fields:
        lines += ["", "Columns: " + ", ".join(f"`{f}`" for f in fields) + "."]
    lines += ["", "## Loading", "", "```python", "import datasets",
              "ds = datasets.load_dataset(FOLDER, split=\"train\")  # this folder: exactly the shards above",
              "it = datasets.load_dataset(FOLDER, split=\"train\", streaming=True)  # no copy into the HF cache",
              "", "import thresher.load as tl", "ds = tl.load_hf(FOLDER)        # Arrow shards memory-mapped, no copy",
              "pads = tl.open_dataset(FOLDER)  # a pyarrow.dataset.Dataset",
              "torch_ds = tl.TorchShards(FOLDER, rank=0, world_size=1)  # a torch IterableDataset, rank/worker-sharded",
              "```", "", "`manifest.json` beside the shards lists every shard with its rows, bytes and sha256, and "
              "where every input row went.", ""]
    return "\n".join(lines)


def _tokens(manifest: dict[str, Any]) -> str:
    tokens = manifest.get("tokens")
    if not isinstance(tokens, dict) or tokens.get("total") is None:
        return ""
    return f"; {tokens['total']:,} {'tokens' if isinstance(tokens.get('counted_by'), dict) else 'words'} written"


def _pack_line(pack: dict[str, Any] | None) -> str:
    if not pack:
        return "none (one row per document)"
    return (f"{pack.get('method', 'greedy')}, sequences of {pack.get('seq_len')} tokens (input_ids, labels, "
            "position_ids, attention_mask, doc_ids/doc_offsets/doc_lengths); each partition's last sequence may be "
            "padded")


def is_ours(path: str) -> bool:
    """True when `path` does not exist or is a card thresher wrote."""
    if not fs.exists(path):
        return True
    try:
        return MARKER in fs.read_text(path)
    except (OSError, UnicodeDecodeError):
        return False


def write_card(folder: str, manifest: dict[str, Any], prefix: str = "") -> str | None:
    """Write `folder/README.md` for `manifest` (atomically); returns its path, or None when a
    README.md thresher did not write is there (left alone, with one warning)."""
    path = fs.join(folder, README)
    if not is_ours(path):
        log.warning("%s was not written by thresher: left as it is, so load_dataset(%s) reads that card, not the "
                    "shards' (load with thresher.load, or remove it)", path, folder)
        return None
    write_bytes_atomic(path, card_text(manifest, prefix).encode())
    return path
