"""Records and tables -> canonical batches: text, normalisation, ids, provenance, `__row_key`.

Every reader ends here. Dict records (JSONL lines that needed the per-line path, hub rows) go
through `records_to_batches`; Arrow tables (Parquet, Arrow IPC, CSV, `datasets`, JSONL blocks
parsed by pyarrow) through `table_to_batches`. Both quarantine what cannot become a row —
missing or non-string text, a failing template, empty text after normalisation, invalid
UTF-8 in any field, nesting deeper than `validity.MAX_NESTING` — as
`QUARANTINE_SCHEMA` batches that keep the record's bytes, and both give the same rows for the
same records (tests/io/test_jsonl.py compares them).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.core import rows
from thresher.io.tasks import Batches, ReadTask
from thresher.io.validity import MAX_NESTING, invalid_utf8_rows, nesting_depth, row_cells_bytes
from thresher.recipe.schema import Normalize, Source

RAW_LIMIT = 1 << 20  # keep at most 1 MiB of one bad record's bytes

# (row number, raw bytes, parsed object or None, parse error or None)
Record = tuple[int, bytes, Any, str | None]


def quarantine_batch(source: str, path: str, row_nos, reasons, fields, raws) -> pa.RecordBatch:
    n = len(row_nos)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([source] * n, pa.string()),
            pa.array([path] * n, pa.string()),
            pa.array(row_nos, pa.int64()),
            pa.array(reasons, pa.string()),
            pa.array(fields, pa.string()),
            pa.array(raws, pa.binary()),
        ],
        schema=rows.QUARANTINE_SCHEMA,
    )


def _merge_quarantine(q: pa.RecordBatch | None, q2: pa.RecordBatch | None) -> pa.RecordBatch | None:
    if q2 is None:
        return q
    return q2 if q is None else pa.Table.from_batches([q, q2]).combine_chunks().to_batches()[0]


def rename_extra(name: str) -> str:
    """The column a kept source field is stored under.

    A source field named like a canonical column (e.g. the pool's own `source`) is kept under
    `orig_<name>` so that neither is lost."""
    return f"orig_{name}" if name in rows.CANONICAL_NAMES or rows.is_internal(name) else name


# The C0 controls `strip_control` removes, and DEL: single bytes in UTF-8, never part of a
# multi-byte character.
_C0_DEL = np.zeros(256, bool)
_C0_DEL[[*range(0x9), 0xB, 0xC, *range(0xE, 0x20), 0x7F]] = True


def _may_hold_control(arr: pa.Array) -> bool:
    """Whether some value may hold a character `strip_control` removes. A NumPy scan of the
    UTF-8 bytes (C0/DEL bytes, or C1's 0xC2 0x80-0x9F) costs ~1/2 of the regex pass, which
    then runs only on the (rare) batches that need it."""
    if not isinstance(arr, pa.Array) or arr.type not in (pa.string(), pa.large_string()):
        return True
    width = np.int32 if arr.type == pa.string() else np.int64
    offsets = np.frombuffer(arr.buffers()[1], width, len(arr) + 1, arr.offset * np.dtype(width).itemsize)
    data = arr.buffers()[2]
    if data is None or offsets[-1] == offsets[0]:
        return False
    raw = np.frombuffer(data, np.uint8, int(offsets[-1] - offsets[0]), int(offsets[0]))
    if np.take(_C0_DEL, raw).any():
        return True
    lead = np.flatnonzero(raw[:-1] == 0xC2)
    return bool(len(lead) and (raw[lead + 1] < 0xA0).any())


def normalize_text(arr: pa.Array, norm: Normalize) -> pa.Array:
    """Vectorised text normalisation (pyarrow.compute, RE2)."""
    if norm.nfc:
        # Not pc.utf8_normalize: in pyarrow 25 it returns the decomposed form for every
        # `form` (NFC included; see tests/io/test_ingest.py). CPython's unicodedata is
        # exact, and `is_normalized` makes the usual already-NFC text nearly free.
        # ASCII text is NFC already: only rows with other characters go through Python.
        ascii_ = pc.fill_null(pc.string_is_ascii(arr), True)
        if not pc.all(ascii_).as_py():
            idx = pc.indices_nonzero(pc.invert(ascii_))
            values = arr.take(idx).to_pylist()
            if not all(unicodedata.is_normalized("NFC", v) for v in values):
                fixed = pa.array([unicodedata.normalize("NFC", v) for v in values], arr.type)
                mask = pc.invert(ascii_)
                arr = pc.replace_with_mask(arr, mask, fixed)
    if norm.strip_control and _may_hold_control(arr):
        # C0 controls except tab/newline/carriage return, DEL, and C1 controls.
        arr = pc.replace_substring_regex(arr, r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{7f}-\x{9f}]", "")
    if norm.fold_whitespace:
        arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))
    return arr


def content_id(texts: list[str]) -> list[str]:
    """The id of a row whose source gives none: a hash of its (normalised) text."""
    return [xxhash.xxh3_64_hexdigest(t.encode("utf-8", "surrogatepass")) for t in texts]


def _canonical_batch(
    task: ReadTask,
    text: pa.Array,
    ids: pa.Array | None,
    row_nos: np.ndarray,
    extras: pa.Table | None,
    raw_of: Callable[[int], bytes],
) -> tuple[pa.RecordBatch | None, pa.RecordBatch | None]:
    """Normalise, quarantine empty texts, attach id, provenance, extras and `__row_key`."""
    src = task.source
    text = normalize_text(text, src.normalize)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    empty = pc.fill_null(empty, True)
    q_batch = None
    if pc.any(empty).as_py():
        bad = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
        q_batch = quarantine_batch(
            src.name, task.path, row_nos[bad].tolist(), ["empty text"] * len(bad),
            [src.text_field or "text_template"] * len(bad), [raw_of(int(i)) for i in bad],
        )
        good = pc.invert(empty)
        text = text.filter(good)
        row_nos = row_nos[~empty.to_numpy(zero_copy_only=False)]
        ids = ids.filter(good) if ids is not None else None
        extras = extras.filter(good) if extras is not None else None
    n = len(text)
    if n == 0:
        return None, q_batch
    if ids is None:
        id_arr = pa.array(content_id(text.to_pylist()), pa.string())
    else:
        id_arr = ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())
        if id_arr.null_count:
            fallback = content_id(text.to_pylist())
            id_arr = pa.array([v if v is not None else fallback[i] for i, v in enumerate(id_arr.to_pylist())],
                              pa.string())
    row_key = (np.uint64(task.file_index) << np.uint64(rows.ROW_KEY_FILE_SHIFT)) | row_nos.astype(np.uint64)
    cols = {
        rows.ID: id_arr,
        rows.TEXT: text.cast(pa.string()),
        rows.SOURCE: pa.array([src.name] * n, pa.string()),
        rows.SOURCE_FILE: pa.array([task.path] * n, pa.string()),
        rows.SOURCE_ROW: pa.array(row_nos, pa.int64()),
    }
    if extras is not None:
        for name in extras.column_names:
            col = extras.column(name)
            cols[rename_extra(name)] = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    names = rows.column_order(list(cols))
    arrays = [cols[n_] for n_ in names] + [pa.array(row_key, pa.uint64())]
    return pa.RecordBatch.from_arrays(arrays, names=names + [rows.ROW_KEY]), q_batch


def _keep(src: Source, name: str) -> bool:
    # The field that became the canonical `text` (or `id`) under the same name is not kept
    # twice; a differently named one (`question`) stays, as do clashes like `source`.
    if (name == rows.TEXT and src.text_field == rows.TEXT) or (name == rows.ID and src.id_field == rows.ID):
        return False
    return src.keep_fields == "all" or name in src.keep_fields


def _text_of(src: Source, obj: dict, fields: list[str]) -> tuple[str | None, str | None, str | None]:
    """(text, None, None), or (None, reason, field) when the record has no usable text."""
    if src.text_template is None:
        f = src.text_field
        if f not in obj or obj[f] is None:
            return None, f"missing text field {f!r}", f
        v = obj[f]
        if not isinstance(v, str):
            return None, f"text field {f!r} is not a string (got {type(v).__name__})", f
        return v, None, None
    for f in fields:
        if obj.get(f) is None:
            return None, f"missing field {f!r} used by text_template", f
    try:
        return src.text_template.format(**obj), None, None
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        return None, f"text_template failed: {exc}", None


# ---------------------------------------------------------------------------------------
# Dict records


def _column_from_values(values: list[Any]) -> pa.Array:
    """Infer an Arrow column; values of mixed types are stored as JSON text instead of failing."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array(
            [None if v is None else (v if isinstance(v, str) else orjson.dumps(v, default=str).decode())
             for v in values],
            pa.string(),
        )


class _Chunk:
    """Rows gathered from dict records before conversion to Arrow."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ids: list[Any] = []
        self.row_nos: list[int] = []
        self.extras: list[dict[str, Any]] = []
        self.q_rows: list[int] = []
        self.q_reasons: list[str] = []
        self.q_fields: list[str | None] = []
        self.q_raw: list[bytes] = []

    def quarantine(self, row_no: int, reason: str, field: str | None, raw: bytes) -> None:
        self.q_rows.append(row_no)
        self.q_reasons.append(reason)
        self.q_fields.append(field)
        self.q_raw.append(raw[:RAW_LIMIT])

    def __len__(self) -> int:
        return len(self.texts) + len(self.q_rows)

    def flush(self, task: ReadTask) -> tuple[pa.RecordBatch | None, pa.RecordBatch | None]:
        src = task.source
        q = None
        if self.q_rows:
            q = quarantine_batch(src.name, task.path, self.q_rows, self.q_reasons, self.q_fields, self.q_raw)
        if not self.texts:
            return None, q
        extras = None
        if self.extras:
            keys: dict[str, None] = {}
            for r in self.extras:
                keys.update(dict.fromkeys(r))
            extras = pa.table({k: _column_from_values([r.get(k) for r in self.extras]) for k in keys}) if keys else None
        ids = _column_from_values(self.ids) if src.id_field else None
        if ids is not None and not (pa.types.is_string(ids.type) or pa.types.is_integer(ids.type)
                                    or pa.types.is_null(ids.type)):
            ids = pc.cast(ids, pa.string())
        if ids is not None and pa.types.is_null(ids.type):
            ids = pa.array([None] * len(ids), pa.string())
        texts, extras_rows = self.texts, self.extras

        def raw_of(i: int) -> bytes:
            if not extras_rows:
                return texts[i].encode()
            return orjson.dumps({**extras_rows[i], "__text": texts[i]}, default=str)

        b, q2 = _canonical_batch(task, pa.array(texts, pa.string()), ids, np.asarray(self.row_nos, np.int64),
                                 extras, raw_of)
        return b, _merge_quarantine(q, q2)


def records_to_batches(task: ReadTask, records: Iterator[Record], batch_rows: int) -> Batches:
    """(row_no, raw bytes, parsed object or None, parse error) -> canonical + quarantine batches."""
    src = task.source
    fields = src.template_fields()
    chunk = _Chunk()
    try:
        for row_no, raw, obj, err in records:
            if err is not None:
                chunk.quarantine(row_no, err, None, raw)
            elif not isinstance(obj, dict):
                chunk.quarantine(row_no, f"not a JSON object (got {type(obj).__name__})", None, raw)
            elif (not raw or raw.count(b"{") + raw.count(b"[") > MAX_NESTING) \
                    and nesting_depth(obj) > MAX_NESTING:
                # (Counting brackets first keeps the usual flat record free of the walk.)
                chunk.quarantine(row_no, f"nested deeper than {MAX_NESTING} levels", None, raw)
            else:
                text, reason, bad_field = _text_of(src, obj, fields)
                if reason is not None:
                    chunk.quarantine(row_no, reason, bad_field, raw)
                else:
                    chunk.texts.append(text)  # type: ignore[arg-type]
                    chunk.row_nos.append(row_no)
                    if src.id_field:
                        chunk.ids.append(obj.get(src.id_field))
                    chunk.extras.append({k: v for k, v in obj.items() if _keep(src, k)})
            if len(chunk) >= batch_rows:
                yield chunk.flush(task)
                chunk = _Chunk()
    except (OSError, EOFError, ValueError):
        # The file broke part-way (truncated gzip, say): keep every row read before the
        # break, then let the caller record the failure itself.
        if len(chunk):
            yield chunk.flush(task)
        raise
    if len(chunk):
        yield chunk.flush(task)


# ---------------------------------------------------------------------------------------
# Arrow tables


def _row_json(table: pa.Table, i: int) -> bytes:
    try:
        return orjson.dumps(table.slice(i, 1).to_pylist()[0], default=str)
    except UnicodeDecodeError:
        return row_cells_bytes(table, i)


def table_to_batches(task: ReadTask, table: pa.Table, first_row: int, batch_rows: int,
                     row_numbers: np.ndarray | None = None,
                     raw_by_row: Callable[[int], bytes] | None = None, check_utf8: bool = True) -> Batches:
    """Columnar input -> canonical + quarantine batches of at most `batch_rows` rows.

    Rows are numbered from `first_row`, or by `row_numbers` when the caller knows better (CSV
    lines). `raw_by_row(row_number)` gives a bad row's original bytes when the caller has them
    (JSONL); otherwise the row is kept as JSON. Rows with a string that is not UTF-8 are
    quarantined (`check_utf8=False`: the caller has checked)."""
    src = task.source

    def raw(part: pa.Table, i: int, row_no: int) -> bytes:
        return raw_by_row(int(row_no)) if raw_by_row is not None else _row_json(part, i)

    for off in range(0, table.num_rows, batch_rows):
        part = table.slice(off, batch_rows)
        if row_numbers is not None:
            row_nos = row_numbers[off: off + part.num_rows]
        else:
            row_nos = np.arange(first_row + off, first_row + off + part.num_rows, dtype=np.int64)
        q = None
        if check_utf8:
            invalid, invalid_field = invalid_utf8_rows(part)
            if invalid.any():
                bad = np.flatnonzero(invalid)
                q = quarantine_batch(src.name, task.path, row_nos[bad].tolist(), ["invalid UTF-8"] * len(bad),
                                     [invalid_field[int(i)] for i in bad], [raw(part, int(i), row_nos[i]) for i in bad])
                part = part.filter(pa.array(~invalid))
                row_nos = row_nos[~invalid]
        if src.text_template is None:
            text = part.column(src.text_field).combine_chunks()
            nulls = text.is_null()
            if text.null_count:
                bad = np.flatnonzero(nulls.to_numpy(zero_copy_only=False))
                q = _merge_quarantine(q, quarantine_batch(
                    src.name, task.path, row_nos[bad].tolist(),
                    [f"missing text field {src.text_field!r}"] * len(bad), [src.text_field] * len(bad),
                    [raw(part, int(i), row_nos[i]) for i in bad],
                ))
                keep = pc.invert(nulls)
                part = part.filter(keep)
                text = text.filter(keep)
                row_nos = row_nos[~nulls.to_numpy(zero_copy_only=False)]
            text = text.cast(pa.string())
        else:
            fields = src.template_fields()
            recs = part.select(fields).to_pylist()
            texts, bad, reasons = [], [], []
            for i, r in enumerate(recs):
                t, reason, _ = _text_of(src, r, fields)
                if reason is None:
                    texts.append(t)
                else:
                    bad.append(i)
                    reasons.append(reason)
            if bad:
                q = _merge_quarantine(q, quarantine_batch(src.name, task.path, row_nos[bad].tolist(), reasons,
                                      ["text_template"] * len(bad), [raw(part, i, row_nos[i]) for i in bad]))
                mask = np.ones(part.num_rows, bool)
                mask[bad] = False
                part = part.filter(pa.array(mask))
                row_nos = row_nos[mask]
            text = pa.array(texts, pa.string())
        ids = part.column(src.id_field).combine_chunks() if src.id_field and src.id_field in part.column_names else None
        extras = part.select([c for c in part.column_names if _keep(src, c)])

        def raw_of(i: int, part=part, row_nos=row_nos) -> bytes:
            return raw(part, i, row_nos[i])

        b, q2 = _canonical_batch(task, text, ids, row_nos, extras, raw_of)
        yield b, _merge_quarantine(q, q2)
