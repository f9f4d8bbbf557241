"""Packing tokenised documents into fixed-length training sequences, losslessly.

`pack_table(table, seq_len, method, pad_id)` takes rows in their final order with `id`,
`input_ids` (list<int>) and optionally `loss_mask` (list<int>, 1 where a training loss applies;
all ones when absent) and returns one row per sequence:

    input_ids       list<int32>  exactly `seq_len` tokens (padding filled with `pad_id`)
    labels          list<int32>  the token where a loss applies, else -100: -100 where
                                 `loss_mask` is 0, on padding, and on the first token of every
                                 document piece. Causal LMs shift labels left by one, so the
                                 label at a piece's first token is what the *previous* token
                                 (another document's) would be trained to predict: masking it
                                 keeps every loss inside one document. A document's own first
                                 token has no context to be predicted from, so nothing is lost.
    position_ids    list<int32>  0, 1, 2, ... restarting at every piece start (and at the
                                 start of the padding), so `position_ids == 0` marks exactly the
                                 boundaries that varlen attention kernels (flash-attention's
                                 packed path in transformers) use to keep documents apart
    attention_mask  list<int8>   1 on real tokens, 0 on padding. It does not by itself stop a
                                 token attending to an earlier document in the same sequence
                                 (standard packed pretraining); position_ids do, where the
                                 attention kernel reads them
    doc_ids         list<id>     which document each piece of the sequence comes from,
    doc_offsets     list<int32>  where in the sequence that piece starts,
    doc_lengths     list<int32>  and how many tokens it has (0 for an empty document)

Pieces of one document appear in document order when the sequences are read in order, so
`unpack(packed)` gives every document's tokens back exactly (keyed by `id`: ids must be unique,
which `on_duplicate_id: rename` guarantees; shards of one partition are unpacked together, as
a document may continue into the next shard).

Methods:
- `greedy`: the documents concatenated in order and cut every `seq_len` tokens; a document
  may be split across sequences. Only the last sequence can be short: it is padded.
- `best_fit`: best-fit decreasing bin packing of whole documents: longest first (ties in input
  order), each into the open sequence with the least room that still fits it, else a new one.
  A document longer than `seq_len` is split: its first `len % seq_len` tokens are packed like a
  document, the rest fill whole sequences of their own right after that piece's sequence is
  chosen (so pieces stay in order). Any sequence may end in padding (the price of not
  splitting); deterministic for the same input.
The bin search loops in Python once per document (bin packing is sequential by nature); all
per-token work is NumPy over the flat token array (one concatenation + offsets).
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

IGNORE_INDEX = -100  # what torch's cross-entropy (and transformers' losses) skip
METHODS = ("greedy", "best_fit")
PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "attention_mask",
                  "doc_ids", "doc_offsets", "doc_lengths")


def _list_column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise TypeError(f"pack_table: column {name!r} is {arr.type}, not a list of ints; "
                        "it must be the output of the `tokenize` stage")
    return arr


def _flat(arr: pa.Array, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(lengths per row, flat values) of a list array; null rows count as empty."""
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return lengths, flat


def _greedy_pieces(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, ...]:
    """(sequence, offset in it, document, start in the document, length) of every piece."""
    n = len(lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if n else np.zeros(0, np.int64)
    total = int(lengths.sum())
    nonempty = np.flatnonzero(lengths > 0)
    cuts = np.arange(seq_len, total, seq_len, dtype=np.int64)
    piece_pos = np.union1d(starts[nonempty], cuts)
    piece_end = np.append(piece_pos[1:], total).astype(np.int64)
    piece_doc = nonempty[np.searchsorted(starts[nonempty], piece_pos, side="right") - 1] if len(piece_pos) \
        else np.zeros(0, np.int64)
    # Empty documents become zero-length pieces where they sit, so their ids survive.
    empty = np.flatnonzero(lengths == 0)
    pos = np.concatenate((piece_pos, starts[empty]))
    doc = np.concatenate((piece_doc, empty))
    length = np.concatenate((piece_end - piece_pos, np.zeros(len(empty), np.int64)))
    order = np.lexsort((doc, pos))
    pos, doc, length = pos[order], doc[order], length[order]
    n_seq = max(-(-total // seq_len), 1 if n else 0)
    seq = np.minimum(pos // seq_len, n_seq - 1)
    return seq, pos - seq * seq_len, doc, pos - starts[doc], length


def _best_fit_pieces(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, ...]:
    fill: list[int] = []  # tokens placed in each sequence so far
    caps: list[int] = []  # sorted distinct room left among open (not full) sequences
    by_cap: dict[int, list[int]] = {}  # room -> heap of sequence indices (lowest first: deterministic)
    out: list[tuple[int, int, int, int, int]] = []

    def place(size: int) -> tuple[int, int]:
        i = bisect.bisect_left(caps, size)
        if i < len(caps):
            room = caps[i]
            b = heapq.heappop(by_cap[room])
            if not by_cap[room]:
                del by_cap[room]
                caps.pop(i)
        else:
            room, b = seq_len, len(fill)
            fill.append(0)
        offset = fill[b]
        fill[b] += size
        left = room - size
        if left > 0:
            if left not in by_cap:
                by_cap[left] = []
                bisect.insort(caps, left)
            heapq.heappush(by_cap[left], b)
        return b, offset

    empties = []
    for d in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[d])
        if n == 0:
            empties.append(d)
            continue
        head = n % seq_len
        if head:
            b, offset = place(head)
            out.append((b, offset, d, 0, head))
        for k in range(n // seq_len):
            out.append((len(fill), 0, d, head + k * seq_len, seq_len))
            fill.append(seq_len)
    if empties and not fill:
        fill.append(0)
    for d in empties:  # zero-length pieces at the end of the last sequence
        out.append((len(fill) - 1, fill[-1], d, 0, 0))
    if not out:
        z = np.zeros(0, np.int64)
        return z, z, z, z, z
    a = np.asarray(out, dtype=np.int64)
    a = a[np.lexsort((a[:, 2], a[:, 1], a[:, 0]))]
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4]


def _list_array(flat: np.ndarray, n_rows: int, width: int, type_: pa.DataType) -> pa.Array:
    offsets = np.arange(n_rows + 1, dtype=np.int64) * width
    values = pa.array(flat, type=type_)
    if n_rows * width < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


def pack_table(table: pa.Table, seq_len: int, method: str = "greedy", pad_id: int = 0) -> pa.Table:
    """Rows (`id`, `input_ids`, optional `loss_mask`) -> one row per `seq_len`-token sequence
    (columns in `PACKED_COLUMNS`; see the module docstring)."""
    if seq_len <= 0:
        raise ValueError(f"pack_table: seq_len must be positive, got {seq_len}")
    if method not in METHODS:
        raise ValueError(f"pack_table: method {method!r} is not one of {', '.join(METHODS)}")
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [c for c in ("id", "input_ids") if c not in table.column_names]
    if missing:
        raise KeyError(f"pack_table: the rows lack {', '.join(missing)} (columns: "
                       f"{', '.join(table.column_names)}); add a `tokenize` stage to the recipe")
    lengths, tokens = _flat(_list_column(table, "input_ids"), np.int32)
    if "loss_mask" in table.column_names:
        mask_lengths, mask = _flat(_list_column(table, "loss_mask"), np.int8)
        if not np.array_equal(mask_lengths, lengths):
            bad = int(np.flatnonzero(mask_lengths != lengths)[0])
            raise ValueError(f"pack_table: row {bad} (id {table.column('id')[bad].as_py()!r}) has "
                             f"{lengths[bad]} input_ids but {mask_lengths[bad]} loss_mask values")
    else:
        mask = np.ones(len(tokens), np.int8)
    pieces = (_greedy_pieces if method == "greedy" else _best_fit_pieces)(lengths, seq_len)
    seq, offset, doc, doc_pos, plen = pieces
    n_seq = int(seq.max()) + 1 if len(seq) else 0

    # One gather over every token: piece k's tokens go from src[k].. to dest[k]..
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else np.zeros(0, np.int64)
    src_start = starts[doc] + doc_pos
    dest_start = seq * seq_len + offset
    piece_cum = np.concatenate(([0], np.cumsum(plen)[:-1])) if len(plen) else np.zeros(0, np.int64)
    within = np.arange(int(plen.sum()), dtype=np.int64) - np.repeat(piece_cum, plen)
    dest = np.repeat(dest_start, plen) + within
    src = np.repeat(src_start, plen) + within

    size = n_seq * seq_len
    ids = np.full(size, pad_id, np.int32)
    ids[dest] = tokens[src]
    labels = np.full(size, IGNORE_INDEX, np.int32)
    labels[dest] = np.where(mask[src] != 0, tokens[src], IGNORE_INDEX)
    labels[dest[within == 0]] = IGNORE_INDEX
    positions = np.zeros(size, np.int32)
    positions[dest] = within
    filled = np.bincount(seq, weights=plen, minlength=n_seq).astype(np.int64)
    col = np.arange(seq_len, dtype=np.int64)[None, :]
    pad = col >= filled[:, None]
    pos2d = positions.reshape(n_seq, seq_len)
    pos2d[pad] = (col - filled[:, None])[pad]
    attention = (~pad).astype(np.int8).reshape(-1)

    counts = np.bincount(seq, minlength=n_seq)
    piece_offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
    id_col = table.column("id")
    id_arr = id_col.combine_chunks() if isinstance(id_col, pa.ChunkedArray) else id_col
    return pa.table({
        "input_ids": _list_array(ids, n_seq, seq_len, pa.int32()),
        "labels": _list_array(labels, n_seq, seq_len, pa.int32()),
        "position_ids": _list_array(positions, n_seq, seq_len, pa.int32()),
        "attention_mask": _list_array(attention, n_seq, seq_len, pa.int8()),
        "doc_ids": pa.ListArray.from_arrays(piece_offsets, id_arr.take(pa.array(doc))),
        "doc_offsets": pa.ListArray.from_arrays(piece_offsets, pa.array(offset.astype(np.int32))),
        "doc_lengths": pa.ListArray.from_arrays(piece_offsets, pa.array(plen.astype(np.int32))),
    })


def unpack(packed: pa.Table) -> dict[Any, list[int]]:
    """A packed table -> {document id: its tokens}, pieces joined in order (for tests and users)."""
    ids_col = _list_column(packed, "input_ids")
    row_starts = ids_col.offsets.to_numpy().astype(np.int64)
    row_starts = row_starts - row_starts[0]
    tokens = ids_col.flatten().to_numpy(zero_copy_only=False)
    doc_ids = _list_column(packed, "doc_ids")
    per_row = pc.list_value_length(doc_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(per_row)), per_row)
    begin = row_starts[row] + _list_column(packed, "doc_offsets").flatten().to_numpy(zero_copy_only=False)
    end = begin + _list_column(packed, "doc_lengths").flatten().to_numpy(zero_copy_only=False)
    out: dict[Any, list[int]] = {}
    for key, a, b in zip(doc_ids.flatten().to_pylist(), begin.tolist(), end.tolist(), strict=True):
        out.setdefault(key, []).extend(tokens[a:b].tolist())
    return out
