"""The reader protocol: what every input format implements, and the helpers most share.

A reader is a stateless object, one per format (`readers.READERS`):

    check(source, path) -> parts      before the run: can this file give what the source
                                      needs? Raises `InputError` with 'sources.<name>: ...'
                                      lines; returns one part per read task (Parquet row
                                      groups; `[None]`: the whole file is one task).
    read(task, batch_rows, tally)     on a worker: (canonical batch | None,
              -> Batches              quarantine batch | None) pairs, in row order. A reader
                                      that can count the records a file holds apart from
                                      parsing them adds them to `tally.records`; a streamed
                                      reader opens the file through `open_binary(path, tally)`
                                      and sets `tally.hashed` once it has read to the end.
    fingerprint(path, with_hashes)    (size in bytes, sha256 or "") for the manifest.
    peek_fields(source, path)         the field names a check can see without reading the
                                      rows (a JSONL file's first record, a CSV header, a
                                      columnar schema, a hub dataset's first record);
                                      None when there are no records.
"""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod

import pyarrow as pa

from thresher.io import fs
from thresher.io.atomic import sha256_file
from thresher.io.tasks import Batches, InputError, ReadTally, ReadTask
from thresher.recipe.schema import Source


class Reader(ABC):
    """Base of the format readers; see the module docstring for the protocol."""

    @abstractmethod
    def check(self, source: Source, path: str) -> list[int | None]: ...

    @abstractmethod
    def read(self, task: ReadTask, batch_rows: int, tally: ReadTally) -> Batches: ...

    def fingerprint(self, path: str, with_hashes: bool) -> tuple[int, str]:
        return fs.size(path), sha256_file(path) if with_hashes else ""

    @abstractmethod
    def peek_fields(self, source: Source, path: str) -> set[str] | None: ...


def needed_fields(source: Source) -> list[str]:
    """The fields every record must have: the text field, or those the template uses."""
    return [f for f in source.template_fields() if f]


# The largest width or precision a `text_template` format spec may ask for: a spec like
# `{q:>30000000}` would make every row a 30 MB text.
MAX_FORMAT_WIDTH = 1000


def check_template(source: Source, path: str, fields: set[str] | list[str] | None) -> None:
    """A `text_template`'s fields must be in the records (`fields`: those the first records
    have; None: not known before the run), and its format specs bounded and literal."""
    if source.text_template is None:
        return
    problems = []
    for _, name, spec, _ in string.Formatter().parse(source.text_template):
        if name is None:
            continue
        where = f"sources.{source.name}: text_template field {name!r}"
        if not name or name.isdigit():
            problems.append(f"{where}: name the field (positional fields have no value)")
        if spec and "{" in spec:
            problems.append(f"{where}: format spec {spec!r} takes a value from the record; write it out")
        elif spec and any(int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"\d+", spec)):
            problems.append(f"{where}: format spec {spec!r} asks for a width or precision over "
                            f"{MAX_FORMAT_WIDTH}")
        if name and fields is not None and name not in fields:
            problems.append(f"sources.{source.name}: {path}: text_template field {name!r} is not in the records "
                            f"(fields: {sorted(fields)})")
    if problems:
        raise InputError(problems)


def check_fields(source: Source, path: str, schema: pa.Schema) -> None:
    """A columnar file must have every needed field, and a string text field."""
    check_template(source, path, None)  # its fields are checked below, with the schema's words
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
