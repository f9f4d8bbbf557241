"""Hugging Face `datasets`: a dataset saved with `save_to_disk`, or a name on the hub (streamed).

Rows are numbered from 0. `datasets` is imported only when such a source is read: it is slow
to import, and most runs never need it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pyarrow as pa

from thresher.io.atomic import sha256_file
from thresher.io.readers.arrow import ends_with_eos
from thresher.io.readers.base import ColumnarReader, Reader
from thresher.io.records import Record, records_to_batches, table_to_batches
from thresher.io.tasks import Batches, InputError, ReadTally, ReadTask, SourceReadError
from thresher.recipe.schema import Source


def load_hf_disk(source: Source, path: str):
    """The saved dataset (the source's split of a DatasetDict)."""
    import datasets  # heavy: only for sources that use it

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if not source.split:
            raise InputError(
                [f"sources.{source.name}: {path} is a DatasetDict with splits {list(ds)}; set `split:`"]
            )
        if source.split not in ds:
            raise InputError([f"sources.{source.name}: {path} has no split {source.split!r} ({list(ds)})"])
        ds = ds[source.split]
    return ds


class HfDiskReader(ColumnarReader):
    def schema(self, source: Source, path: str) -> pa.Schema:
        return load_hf_disk(source, path).data.schema

    def read(self, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches:
        ds = load_hf_disk(task.source, task.path)
        tally.counts = True
        tally.records += ds.num_rows
        first = 0
        for table in ds.with_format("arrow").iter(batch_size=batch_rows):
            yield from table_to_batches(task, table, first, batch_rows)
            first += table.num_rows
        # Its data files are Arrow IPC streams, read as far as their bytes go: a cut one is
        # told only by its missing end-of-stream marker (see readers.arrow).
        for f in ds.cache_files:
            if not ends_with_eos(f["filename"]):
                raise SourceReadError(f"{task.path}: truncated data file {os.path.basename(f['filename'])}: no "
                                      f"end-of-stream marker (read {first} rows)")

    def fingerprint(self, path: str, with_hashes: bool) -> tuple[int, str]:
        """A directory: total size, and a hash over each file's relative path and hash."""
        files = sorted(
            os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if not f.startswith(".")
        )
        size = sum(os.path.getsize(f) for f in files)
        if not with_hashes:
            return size, ""
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.relpath(f, path).encode() + b"\0" + sha256_file(f).encode())
        return size, h.hexdigest()


class HfHubReader(Reader):
    """`path` is `hf://<name>`; the name, config and split come from the source."""

    def check(self, source: Source, path: str) -> list[int | None]:
        # Checking fields would mean fetching the dataset before the run.
        return [None]

    def read(self, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches:
        yield from records_to_batches(task, _iter_hub(task.source), batch_rows)

    def fingerprint(self, path: str, with_hashes: bool) -> tuple[int, str]:
        return 0, ""  # nothing local to measure

    def peek_fields(self, source: Source, path: str) -> set[str] | None:
        first = next(_iter_hub(source), None)
        return None if first is None else set(first[2])


def _iter_hub(src: Source) -> Iterator[Record]:
    import datasets  # heavy: only for sources that use it

    n = 0
    try:
        ds = datasets.load_dataset(src.hf_name, src.hf_config, split=src.split or "train", streaming=True)
        for obj in ds:
            yield n, b"", obj, None
            n += 1
    except Exception as exc:  # noqa: BLE001 - offline, missing, network: the source failed, no record did
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        raise SourceReadError(f"hf://{src.hf_name}: the hub dataset cannot be read{offline}, after {n} rows: "
                              f"{type(exc).__name__}: {exc}") from None
