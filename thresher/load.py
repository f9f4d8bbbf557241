"""Reading a finished run, for training jobs: manifest, shard paths, Arrow/datasets/torch.

Every function takes an output folder (local, or a URL such as `s3://bucket/out`: see
`thresher.io.fs`) (and reads its `latest` snapshot, resolved once per
call, so a refresh that moves `latest` mid-read never mixes two snapshots) or a snapshot
folder (`OUT/snapshots/<id>`, or `OUT/latest`).

Shards are Arrow IPC files in the *stream* format by default (`output.ipc_format: stream`),
which is what `datasets.Dataset.from_file` memory-maps; `load_dataset("arrow")` reads both
formats. `pyarrow.dataset`'s "arrow" format needs the IPC *file* format: either set
`output.ipc_format: file`, or use `open_dataset()` below, which builds a pyarrow Dataset over
memory-mapped stream shards (zero-copy for uncompressed shards).

Training jobs: `TorchShards(out_dir, rank=, world_size=, columns=, format=)` is a PyTorch
`IterableDataset` split across ranks and DataLoader workers (`thresher.load_torch`; torch is
imported only when it is named). `datasets.load_dataset(OUT)` loads exactly the shards through
the dataset card `README.md` that every run writes (`thresher.io.dataset_card`).

A manifest is trusted only while its shards match it: `shard_paths` (and so every loader
here) checks each shard's size against the manifest (a stat per shard), or its sha256 with
`verify="sha256"` (reads every byte), and raises `ShardMismatchError` naming the shard.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pyarrow as pa

from thresher.core.errors import UserError
from thresher.engine import snapshots
from thresher.io import fs
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
    if sid and fs.isfile(fs.join(snapshots.snapshot_path(out_dir, sid), MANIFEST)):
        return snapshots.snapshot_path(out_dir, sid)
    return snapshots.resolve(out_dir)


def load_manifest(out_dir: str) -> dict[str, Any]:
    """The manifest of `out_dir`'s latest snapshot (or of the snapshot folder given)."""
    out_dir = snapshots.resolve(out_dir)
    path = fs.join(out_dir, MANIFEST)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a finished thresher run (the manifest is "
            "written last; a run that was killed or failed has none)"
        )
    return json.loads(fs.read_bytes(path))


def shard_entries(manifest: dict[str, Any], split: str | None = None) -> list[dict[str, Any]]:
    """The manifest's shard entries, in order: all of them, or those of one `output.splits` split
    (a run without splits has one, `train`)."""
    if split is None:
        return list(manifest["shards"])
    names = list((manifest.get("recipe") or {}).get("output", {}).get("splits") or ["train"])
    if split not in names:
        raise ValueError(f"split {split!r}: this run's splits are {', '.join(names)}")
    return [s for s in manifest["shards"] if (s.get("split") or "train") == split]


def shard_paths(out_dir: str, manifest: dict[str, Any] | None = None, verify: Verify = "size",
                split: str | None = None) -> list[str]:
    """Absolute paths of a finished run's shards (all, or one split's), in order, each checked
    against the manifest."""
    manifest = manifest or load_manifest(out_dir)
    out_dir = snapshot_dir(out_dir, manifest)
    paths = []
    for s in shard_entries(manifest, split):
        path = fs.join(out_dir, s["path"])
        if verify != "none":
            _verify(path, s, verify)
        paths.append(path)
    return paths


def _verify(path: str, entry: dict[str, Any], verify: Verify) -> None:
    try:
        size = fs.size(path)
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
    """One shard as an Arrow table: Arrow IPC (either format) memory-mapped with no copy (a URL:
    read into memory); Parquet (`output.format: parquet`) decoded into memory."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(fs.arrow_file(path))

    def source():
        return pa.BufferReader(fs.read_bytes(path)) if fs.is_remote(path) else pa.memory_map(path)

    try:
        return pa.ipc.open_stream(source()).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source()).read_all()


def read_schema(path: str) -> pa.Schema:
    """A shard's schema, reading only its header (Arrow IPC) or footer (Parquet)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_schema(fs.arrow_file(path))
    return read_shard(path).schema  # memory-mapped: reads no column data


def open_dataset(out_dir: str, verify: Verify = "size", split: str | None = None):
    """A `pyarrow.dataset.Dataset` over a run's shards (all, or one split's)."""
    import pyarrow.dataset as pads

    manifest = load_manifest(out_dir)
    paths = shard_paths(out_dir, manifest, verify, split)
    if manifest.get("shard_format") == "parquet":
        return pads.dataset([read_shard(p) for p in paths]) if any(fs.is_remote(p) for p in paths) \
            else pads.dataset(paths, format="parquet")
    if manifest.get("ipc_format") == "file" and not any(fs.is_remote(p) for p in paths):
        return pads.dataset(paths, format="arrow")
    return pads.dataset([read_shard(p) for p in paths])


def load_hf(out_dir: str, verify: Verify = "size", split: str | None = None):
    """The run's shards (all, or one split's) as one `datasets.Dataset` (memory-mapped, no copy)."""
    import datasets

    manifest = load_manifest(out_dir)
    paths = shard_paths(out_dir, manifest, verify, split)
    if manifest.get("shard_format") == "parquet":  # decoded once into the HF cache (Arrow)
        return datasets.load_dataset("parquet", data_files=paths, split="train")
    if manifest.get("ipc_format") == "file":
        return datasets.load_dataset("arrow", data_files=paths, split="train")
    if any(fs.is_remote(p) for p in paths):  # from_file memory-maps a local file only
        return datasets.concatenate_datasets([datasets.Dataset(read_shard(p)) for p in paths])
    return datasets.concatenate_datasets([datasets.Dataset.from_file(p) for p in paths])


def reader_plan(rows: list[int], reader: int, readers: int) -> list[tuple[int, int, int]]:
    """What reader `reader` of `readers` (rank * workers + worker) reads of shards holding
    `rows` rows each: [(shard index, first row, end row)]. Whole shards (shard i to reader
    i mod readers) when the shard count divides by the readers, else the global rows
    [floor(k*T/readers), floor((k+1)*T/readers)) in shard order; either way every row once."""
    if rows and len(rows) % readers == 0:
        return [(i, 0, n) for i, n in enumerate(rows) if i % readers == reader]
    total = sum(rows)
    lo, hi = reader * total // readers, (reader + 1) * total // readers
    out, start = [], 0
    for i, n in enumerate(rows):
        a, b = max(lo, start), min(hi, start + n)
        if b > a:
            out.append((i, a - start, b - start))
        start += n
    return out


def __getattr__(name: str):
    # `thresher.load.TorchShards` (load_torch) imports torch only when a caller names it.
    if name in ("TorchShards", "dist_rank_world"):
        from thresher import load_torch

        return getattr(load_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
