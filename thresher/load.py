"""Reading a finished run, for training jobs: manifest, shard paths, Arrow/datasets/torch.

Shards are Arrow IPC files in the *stream* format by default (`output.ipc_format: stream`),
which is what `datasets.Dataset.from_file` memory-maps; `load_dataset("arrow")` reads both
formats. `pyarrow.dataset`'s "arrow" format needs the IPC *file* format: either set
`output.ipc_format: file`, or use `open_dataset()` below, which builds a pyarrow Dataset over
memory-mapped stream shards (zero-copy for uncompressed shards).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa

MANIFEST = "manifest.json"


def load_manifest(out_dir: str) -> dict[str, Any]:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a finished thresher run (the manifest is "
            "written last; a run that was killed or failed has none)"
        )
    with open(path) as fh:
        return json.load(fh)


def shard_paths(out_dir: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Absolute paths of a finished run's shards, in order."""
    manifest = manifest or load_manifest(out_dir)
    return [os.path.join(out_dir, s["path"]) for s in manifest["shards"]]


def read_shard(path: str) -> pa.Table:
    """One shard (either IPC format) as a memory-mapped Arrow table."""
    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()


def open_dataset(out_dir: str):
    """A `pyarrow.dataset.Dataset` over a run's shards."""
    import pyarrow.dataset as pads

    manifest = load_manifest(out_dir)
    paths = shard_paths(out_dir, manifest)
    if manifest.get("ipc_format") == "file":
        return pads.dataset(paths, format="arrow")
    return pads.dataset([read_shard(p) for p in paths])


def load_hf(out_dir: str):
    """The run's shards as one `datasets.Dataset` (memory-mapped, no copy)."""
    import datasets

    paths = shard_paths(out_dir)
    if load_manifest(out_dir).get("ipc_format") == "file":
        return datasets.load_dataset("arrow", data_files=paths, split="train")
    return datasets.concatenate_datasets([datasets.Dataset.from_file(p) for p in paths])
