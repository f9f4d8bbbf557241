"""Reading a finished run, for training jobs: manifest, shard paths, Arrow/datasets/torch.

Every function takes an output folder (and reads its `latest` snapshot, resolved once per
call, so a refresh that moves `latest` mid-read never mixes two snapshots) or a snapshot
folder (`OUT/snapshots/<id>`, or `OUT/latest`).

Shards are Arrow IPC files in the *stream* format by default (`output.ipc_format: stream`),
which is what `datasets.Dataset.from_file` memory-maps; `load_dataset("arrow")` reads both
formats. `pyarrow.dataset`'s "arrow" format needs the IPC *file* format: either set
`output.ipc_format: file`, or use `open_dataset()` below, which builds a pyarrow Dataset over
memory-mapped stream shards (zero-copy for uncompressed shards).

A manifest is trusted only while its shards match it: `shard_paths` (and so every loader
here) checks each shard's size against the manifest (a stat per shard), or its sha256 with
`verify="sha256"` (reads every byte), and raises `ShardMismatchError` naming the shard.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import pyarrow as pa

from thresher.core.errors import UserError
from thresher.engine import snapshots
from thresher.io.atomic import sha256_file

MANIFEST = "manifest.json"

Verify = Literal["size", "sha256", "none"]


class ShardMismatchError(UserError):
    """A shard is missing or differs from what the manifest says: the folder changed after the
    run finished (another run writing into it, a copy cut short), so its rows cannot be trusted."""


def snapshot_dir(out_dir: str, manifest: dict[str, Any] | None = None) -> str:
    """The folder whose shards `manifest` lists: the snapshot it names under `out_dir`, else
    `out_dir`'s latest snapshot (or `out_dir` itself for a snapshot folder)."""
    sid = (manifest or {}).get("snapshot")
    if sid and os.path.isfile(os.path.join(snapshots.snapshot_path(out_dir, sid), MANIFEST)):
        return snapshots.snapshot_path(out_dir, sid)
    return snapshots.resolve(out_dir)


def load_manifest(out_dir: str) -> dict[str, Any]:
    """The manifest of `out_dir`'s latest snapshot (or of the snapshot folder given)."""
    out_dir = snapshots.resolve(out_dir)
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a finished thresher run (the manifest is "
            "written last; a run that was killed or failed has none)"
        )
    with open(path) as fh:
        return json.load(fh)


def shard_paths(out_dir: str, manifest: dict[str, Any] | None = None, verify: Verify = "size") -> list[str]:
    """Absolute paths of a finished run's shards, in order, each checked against the manifest."""
    manifest = manifest or load_manifest(out_dir)
    out_dir = snapshot_dir(out_dir, manifest)
    paths = []
    for s in manifest["shards"]:
        path = os.path.join(out_dir, s["path"])
        if verify != "none":
            _verify(path, s, verify)
        paths.append(path)
    return paths


def _verify(path: str, entry: dict[str, Any], verify: Verify) -> None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ShardMismatchError(f"{path}: listed in the manifest but missing; the run's folder was changed "
                                 "after it finished: rerun it") from None
    if size != entry["bytes"]:
        raise ShardMismatchError(f"{path}: {size} bytes on disk, the manifest lists {entry['bytes']}; the run's "
                                 "folder was changed after it finished: rerun it")
    if verify == "sha256" and (digest := sha256_file(path)) != entry["sha256"]:
        raise ShardMismatchError(f"{path}: sha256 {digest[:16]}… on disk, the manifest lists "
                                 f"{entry['sha256'][:16]}…; the run's folder was changed after it finished: "
                                 "rerun it")


def read_shard(path: str) -> pa.Table:
    """One shard (either IPC format) as a memory-mapped Arrow table."""
    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()


def open_dataset(out_dir: str, verify: Verify = "size"):
    """A `pyarrow.dataset.Dataset` over a run's shards."""
    import pyarrow.dataset as pads

    manifest = load_manifest(out_dir)
    paths = shard_paths(out_dir, manifest, verify)
    if manifest.get("ipc_format") == "file":
        return pads.dataset(paths, format="arrow")
    return pads.dataset([read_shard(p) for p in paths])


def load_hf(out_dir: str, verify: Verify = "size"):
    """The run's shards as one `datasets.Dataset` (memory-mapped, no copy)."""
    import datasets

    manifest = load_manifest(out_dir)
    paths = shard_paths(out_dir, manifest, verify)
    if manifest.get("ipc_format") == "file":
        return datasets.load_dataset("arrow", data_files=paths, split="train")
    return datasets.concatenate_datasets([datasets.Dataset.from_file(p) for p in paths])
