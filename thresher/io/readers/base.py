"""The reader protocol: what every input format implements, and the helpers most share.

A reader is a stateless object, one per format (`readers.READERS`):

    check(source, path) -> parts      before the run: can this file give what the source
                                      needs? Raises `InputError` with 'sources.<name>: ...'
                                      lines; returns one part per read task (Parquet row
                                      groups; `[None]`: the whole file is one task).
    read(task, batch_rows) -> Batches on a worker: (canonical batch | None,
                                      quarantine batch | None) pairs, in row order.
    fingerprint(path, with_hashes)    (size in bytes, sha256 or "") for the manifest.
    peek_fields(source, path)         the field names a check can see without reading the
                                      rows (a JSONL file's first record, a CSV header, a
                                      columnar schema, a hub dataset's first record);
                                      None when there are no records.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import pyarrow as pa

from thresher.io.atomic import sha256_file
from thresher.io.tasks import Batches, InputError, ReadTask
from thresher.recipe.schema import Source


class Reader(ABC):
    """Base of the format readers; see the module docstring for the protocol."""

    @abstractmethod
    def check(self, source: Source, path: str) -> list[int | None]: ...

    @abstractmethod
    def read(self, task: ReadTask, batch_rows: int) -> Batches: ...

    def fingerprint(self, path: str, with_hashes: bool) -> tuple[int, str]:
        return os.path.getsize(path), sha256_file(path) if with_hashes else ""

    @abstractmethod
    def peek_fields(self, source: Source, path: str) -> set[str] | None: ...


def needed_fields(source: Source) -> list[str]:
    """The fields every record must have: the text field, or those the template uses."""
    return [f for f in source.template_fields() if f]


def check_fields(source: Source, path: str, schema: pa.Schema) -> None:
    """A columnar file must have every needed field, and a string text field."""
    for f in needed_fields(source):
        if f not in schema.names:
            raise InputError(
                [f"sources.{source.name}: {path}: no field {f!r} (fields: {schema.names})"]
            )
    if source.text_field:
        t = schema.field(source.text_field).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(
                [f"sources.{source.name}: {path}: text field {source.text_field!r} has type {t}, "
                 "not string; use `text_template` to format it"]
            )


class ColumnarReader(Reader):
    """A format whose schema is known before reading (Arrow, Parquet, `datasets`)."""

    @abstractmethod
    def schema(self, source: Source, path: str) -> pa.Schema: ...

    def check(self, source: Source, path: str) -> list[int | None]:
        check_fields(source, path, self.schema(source, path))
        return [None]

    def peek_fields(self, source: Source, path: str) -> set[str] | None:
        return set(self.schema(source, path).names)
