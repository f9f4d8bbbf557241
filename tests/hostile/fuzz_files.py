"""Corrupt-input fuzzing for the readers (issue 10): generate files of every input format,
each with one corruption.

* `make_cases(root, fmt, n, seed)` writes `n` files of one format under `root`, each with one
  corruption kind (cycled, so every kind is covered), and returns their case dicts.

`KINDS` lists the corruption kinds of each format (`FORMATS`). What a file really holds is
worked out in `tests.hostile.fuzz_truth`; reading it like a run, in `tests.hostile.fuzz_read`.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from tests.hostile.fuzz_records import (
    HUGE_MORE,
    HUGE_SIZES,
    corrupt_bytes,
    flip,
    insert_nuls,
    records,
    table,
    truncate,
)

# Corruption kinds per format. "text" kinds change the records' bytes (before compression);
# the rest change the file's bytes.
JSONL_TEXT_KINDS = ["clean", "flip", "truncate", "nul", "deep100", "deep20000", "huge", "badutf8_text",
                    "badutf8_field", "badutf8_key", "wrongtype", "blank_crlf", "odd_blank"]
Z_KINDS = ["zflip", "ztrunc_mid", "ztrunc_block", "zmulti", "ztrunc_member", "ztrailing"]
KINDS: dict[str, list[str]] = {
    "jsonl": JSONL_TEXT_KINDS,
    "jsonl.gz": Z_KINDS + ["clean", "nul", "deep100", "deep20000", "huge", "badutf8_text", "badutf8_field",
                           "wrongtype"],
    "jsonl.zst": Z_KINDS + ["clean", "nul", "deep100", "deep20000", "huge", "badutf8_text", "badutf8_field",
                            "wrongtype"],
    "csv": ["clean", "flip", "truncate", "nul", "huge", "badutf8_text", "badutf8_field", "extra_field",
            "missing_field", "blank_crlf", "gz_truncate", "zst_truncate"],  # the last two: .csv.gz/.zst
    "parquet": ["clean", "flip", "truncate", "nul", "huge", "badutf8_text", "multi_rg_flip"],
    "arrow": ["clean", "flip", "truncate", "nul", "huge", "badutf8_text", "stream_trunc_msg", "stream_flip",
              "stream_truncate"],
    "hf": ["clean", "flip_data", "truncate_data", "nul_data", "flip_state", "badutf8_text", "trunc_msg_data"],
}
FORMATS = list(KINDS)


def _jsonl_lines(rng: random.Random, kind: str, n: int, huge: int = HUGE_MORE) -> tuple[list[bytes], int]:
    """The records as JSONL lines, with a record-level corruption; (lines, records written)."""
    recs = records(rng, n)
    lines = [json.dumps(r, ensure_ascii=rng.random() < 0.3).encode() for r in recs]
    if not lines:
        return lines, 0
    i = rng.randrange(len(lines))
    if kind.startswith("deep"):
        depth = int(kind[4:])
        open_, close = rng.choice([("[", "]"), ('{"a":', "}")])
        lines[i] = (b'{"id": "deep", "text": "nested", "payload": ' + (open_ * depth).encode() + b"1"
                    + (close * depth).encode() + b"}")
    elif kind == "huge":
        lines[i] = json.dumps({"id": "huge", "text": "h" * huge}).encode()
    elif kind == "badutf8_text":
        lines[i] = b'{"id": "bad", "text": "ok \xff\xfe bad \xc3"}'
    elif kind == "badutf8_field":
        lines[i] = b'{"id": "bad", "text": "fine text", "meta": {"w": "\xed\xa0\x80 surrogate"}, "tags": ["\xc0\xaf"]}'
    elif kind == "badutf8_key":
        lines[i] = b'{"id": "bad", "text": "fine text", "k\xff": 1}'
    elif kind == "wrongtype":
        for j in rng.sample(range(len(lines)), min(3, len(lines))):
            lines[j] = json.dumps({"id": j, "text": rng.choice([1, 2.5, True, ["a"], {"x": "y"}, None]),
                                   "score": "not a number"}).encode()
    elif kind == "blank_crlf":
        lines = [ln + b"\r" if rng.random() < 0.5 else ln for ln in lines]
        for _ in range(3):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"", b"   ", b"\t\r"]))
    elif kind == "odd_blank":
        # Not JSON whitespace (vertical tab, form feed): a bad record, not a blank line.
        lines.insert(rng.randrange(len(lines) + 1), rng.choice([b"\x0b", b"\x0c", b" \x0c "]))
    return lines, n


def _gz_members(chunks: list[bytes], sync: bool = False) -> tuple[bytes, list[int]]:
    """A gzip file of one member per chunk (or one member with a full flush after each
    chunk when `sync`); and the byte offsets of the member ends / flush points."""
    if not sync:
        out, cuts = b"", []
        for c in chunks:
            out += gzip.compress(c, mtime=0)
            cuts.append(len(out))
        return out, cuts
    co = zlib.compressobj(6, zlib.DEFLATED, 31)
    out, cuts = b"", []
    for c in chunks:
        out += co.compress(c) + co.flush(zlib.Z_FULL_FLUSH)
        cuts.append(len(out))
    return out + co.flush(), cuts


def _zst_frames(chunks: list[bytes]) -> tuple[bytes, list[int]]:
    out, cuts = b"", []
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    for c in chunks:
        out += cctx.compress(c)
        cuts.append(len(out))
    return out, cuts


def _zst_block_ends(frame: bytes) -> list[int]:
    """Byte offsets just after each (non-last) block of a zstd frame."""
    fhd = frame[4]
    fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + [0, 1, 2, 4][did_flag] + [1 if single else 0, 2, 4, 8][fcs_flag]
    ends = []
    while pos + 3 <= len(frame):
        hdr = int.from_bytes(frame[pos: pos + 3], "little")
        last, btype, size = hdr & 1, (hdr >> 1) & 3, hdr >> 3
        pos += 3 + (1 if btype == 1 else size)
        if last:
            break
        ends.append(pos)
    return ends


def _write_jsonl(path: Path, rng: random.Random, kind: str, comp: str, n: int, huge: int) -> int:
    text_kind = kind if not kind.startswith("z") else "clean"
    if kind in ("ztrunc_block",):
        n = max(n, 400)  # enough text for several zstd blocks / deflate flush points
    lines, written = _jsonl_lines(rng, text_kind, n, huge)
    data = b"".join(ln + b"\n" for ln in lines)
    if comp == "":
        if kind == "flip":
            data = flip(rng, data)
        elif kind == "truncate":
            data = truncate(rng, data)
        elif kind == "nul":
            data = insert_nuls(rng, data)
        path.write_bytes(data)
        return written
    # Compressed: split the text into pieces at line ends (members / frames / flush points).
    if kind == "ztrunc_block" and comp == "zst":
        # One frame, many blocks: repeat the data past zstd's 128 KiB block size.
        data = data * max(1, (400 << 10) // max(1, len(data)))
        blob = zstandard.ZstdCompressor(level=1).compress(data)
        ends = _zst_block_ends(blob)
        blob = blob[: rng.choice(ends)] if ends else blob[: len(blob) // 2]
        path.write_bytes(blob)
        return written
    k = rng.randint(2, 4) if kind in ("zmulti", "ztrunc_member", "ztrunc_block") else 1
    bounds = sorted(rng.sample(range(1, max(2, len(lines))), min(k - 1, max(0, len(lines) - 1))))
    spans = zip([0] + bounds, bounds + [len(lines)], strict=True)
    pieces = [b"".join(ln + b"\n" for ln in lines[a:b]) for a, b in spans]
    if comp == "gz":
        blob, cuts = _gz_members(pieces, sync=kind == "ztrunc_block")
    else:
        blob, cuts = _zst_frames(pieces)
    if kind == "zflip":
        blob = flip(rng, blob, start=min(10, len(blob) - 1), n=rng.randint(1, 3))
    elif kind == "ztrunc_mid":
        blob = blob[: rng.randrange(1, len(blob))]
    elif kind == "ztrunc_block":
        blob = blob[: rng.choice(cuts[:-1] or [len(blob) // 2])]
    elif kind == "ztrunc_member":
        # Cut at a member/frame boundary: a valid, shorter file (truth: what is left).
        blob = blob[: rng.choice(cuts[:-1] or cuts)]
    elif kind == "ztrailing":
        blob += rng.choice([b"garbage after the stream\n", os.urandom(rng.randint(1, 64)), b"\x00" * 16])
    path.write_bytes(blob)
    return written


def _write_csv(path: Path, rng: random.Random, kind: str, n: int, huge: int) -> int:
    recs = records(rng, n, csv_safe=True)
    rows = [["id", "text", "score"]] + [[r["id"], r["text"], str(r["score"])] for r in recs]
    lines = [",".join(r).encode() for r in rows]
    if n:
        i = rng.randrange(1, len(lines))
        if kind == "huge":
            lines[i] = b"huge," + b"h" * huge + b",0.5"
        elif kind == "badutf8_text":
            lines[i] = b"bad,ok \xff\xfe bad \xc3,0.5"
        elif kind == "badutf8_field":
            lines[i] = b"bad\xed\xa0\x80,fine text,0.\xc0"
        elif kind == "extra_field":
            lines[i] = lines[i] + b",extra"
        elif kind == "missing_field":
            lines[i] = b"only,two"
        elif kind == "blank_crlf":
            lines = [ln + b"\r" if rng.random() < 0.5 else ln for ln in lines]
            for _ in range(3):
                lines.insert(rng.randrange(1, len(lines) + 1), rng.choice([b"", b"\r"]))
    data = b"".join(ln + b"\n" for ln in lines)
    if kind == "flip":
        data = flip(rng, data)
    elif kind == "truncate":
        data = truncate(rng, data)
    elif kind == "nul":
        data = insert_nuls(rng, data, start=len(lines[0]) + 1)
    elif kind in ("gz_truncate", "zst_truncate"):
        blob = gzip.compress(data, mtime=0) if kind.startswith("gz") else zstandard.ZstdCompressor().compress(data)
        data = blob[: rng.randrange(1, len(blob))]
    path.write_bytes(data)
    return n



def _write_parquet(path: Path, rng: random.Random, kind: str, n: int, huge: int) -> int:
    t = table(rng, kind, n, huge)
    pq.write_table(t, path, row_group_size=max(1, n // 3) if kind == "multi_rg_flip" else None,
                   compression=rng.choice(["snappy", "none", "zstd"]))
    if kind in ("flip", "truncate", "nul", "multi_rg_flip"):
        corrupt_bytes(rng, path, kind)
    return n


def _write_ipc(path: Path, t: pa.Table, stream: bool, max_chunksize: int | None = None,
               compression: str | None = None) -> list[int]:
    """Write `t` as Arrow IPC (buffers compressed or not); return the offsets at which
    stream messages end."""
    sink = pa.BufferOutputStream()
    ends = []
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    w = (pa.ipc.new_stream(sink, t.schema, options=opts) if stream
         else pa.ipc.new_file(sink, t.schema, options=opts))
    ends.append(sink.tell())
    for b in t.to_batches(max_chunksize=max_chunksize):
        w.write_batch(b)
        ends.append(sink.tell())
    w.close()
    path.write_bytes(sink.getvalue().to_pybytes())
    return ends


def _write_arrow(path: Path, rng: random.Random, kind: str, n: int, huge: int) -> tuple[int, bool]:
    stream = kind.startswith("stream") or rng.random() < 0.3
    t = table(rng, kind, n, huge)
    ends = _write_ipc(path, t, stream, max_chunksize=max(1, n // 4) if n else None,
                      compression=rng.choice([None, None, "lz4", "zstd"]))
    if kind == "stream_trunc_msg":
        # Cut at a message boundary, EOS marker gone: a well-formed prefix of the stream.
        path.write_bytes(path.read_bytes()[: rng.choice(ends[:-1] or ends)])
    elif kind in ("flip", "truncate", "nul", "stream_flip", "stream_truncate"):
        corrupt_bytes(rng, path, kind)
    return n, stream


_HF_TEMPLATE: Path | None = None


def _hf_template(root: Path) -> Path:
    """One real `save_to_disk` dataset, whose layout the generated ones copy (fast)."""
    global _HF_TEMPLATE
    if _HF_TEMPLATE is None or not _HF_TEMPLATE.exists():
        import datasets

        datasets.disable_progress_bars()
        _HF_TEMPLATE = root / "_hf_template"
        datasets.Dataset.from_list(records(random.Random(0), 3)).save_to_disk(str(_HF_TEMPLATE))
    return _HF_TEMPLATE


def _write_hf(path: Path, rng: random.Random, kind: str, n: int) -> int:
    tmpl = _hf_template(path.parent)
    shutil.copytree(tmpl, path)
    data_files = sorted(path.glob("data-*.arrow"))
    schema = pa.ipc.open_stream(pa.memory_map(str(data_files[0]))).schema
    t = table(rng, kind, n)
    t = pa.Table.from_batches([b for b in t.to_batches()], schema=t.schema).cast(schema) if n else schema.empty_table()
    if n and kind == "badutf8_text":
        t = table(random.Random(rng.random()), kind, n)
        t = t.replace_schema_metadata(schema.metadata).select(schema.names)
    ends = _write_ipc(data_files[0], t, stream=True, max_chunksize=max(1, n // 3) if n else None)
    if kind == "trunc_msg_data":  # a well-formed prefix of the stream, EOS marker gone
        data_files[0].write_bytes(data_files[0].read_bytes()[: rng.choice(ends[:-1] or ends)])
    elif kind in ("flip_data", "truncate_data", "nul_data"):
        corrupt_bytes(rng, data_files[0], kind)
    elif kind == "flip_state":
        corrupt_bytes(rng, path / rng.choice(["state.json", "dataset_info.json"]), "flip")
    return n


def make_cases(root: Path, fmt: str, n: int, seed: int, huge_sizes: list[int] | None = None) -> list[dict]:
    """`n` corrupted files of format `fmt` under `root`; one case dict per file. The first
    "huge" files of a format get lines/values of `huge_sizes` (default 10 and 20 MiB), later
    ones 1 MiB."""
    huge_sizes = HUGE_SIZES if huge_sizes is None else huge_sizes
    root.mkdir(parents=True, exist_ok=True)
    kinds = KINDS[fmt]
    cases = []
    for idx in range(n):
        kind = kinds[idx % len(kinds)]
        nth = idx // len(kinds)  # the how-many-th file of this kind
        huge = huge_sizes[nth] if nth < len(huge_sizes) else HUGE_MORE
        case_seed = (seed * 1_000_003 + FORMATS.index(fmt) * 10_007 + idx) & 0xFFFFFFFF
        rng = random.Random(case_seed)
        n_rec = rng.choice([0, 1, 2, 5, 17, 60]) if kind not in ("deep20000", "huge") else rng.choice([1, 5])
        if kind != "clean" and n_rec == 0:
            n_rec = 3
        ext = {"jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz", "jsonl.zst": ".jsonl.zst", "csv": ".csv",
               "parquet": ".parquet", "arrow": ".arrow", "hf": ""}[fmt]
        if fmt == "csv" and kind.endswith("_truncate"):
            ext += "." + kind.split("_")[0]
        path = root / f"{fmt.replace('.', '_')}_{idx:03d}_{kind}{ext}"
        case = {"fmt": fmt, "kind": kind, "idx": idx, "seed": case_seed, "path": str(path),
                "batch_rows": rng.choice([3, 7, 4096]),
                "json_block": rng.choice([None, 4096]) if fmt.startswith("jsonl") else None}
        if fmt.startswith("jsonl"):
            written = _write_jsonl(path, rng, kind, fmt[6:], n_rec, huge)
        elif fmt == "csv":
            written = _write_csv(path, rng, kind, n_rec, huge)
        elif fmt == "parquet":
            written = _write_parquet(path, rng, kind, n_rec, huge)
        elif fmt == "arrow":
            written, case["stream"] = _write_arrow(path, rng, kind, n_rec, huge)
        else:
            written = _write_hf(path, rng, kind, n_rec)
        case["written"] = written
        cases.append(case)
    return cases
