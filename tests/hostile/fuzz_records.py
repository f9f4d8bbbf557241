"""Corrupt-input fuzzing (issue 10), the building blocks of the generated files: random
records (as dicts or as an Arrow table of `SCHEMA`) and byte-level corruptions (bit flips,
truncation, inserted NULs).

Used by `tests.hostile.fuzz_files`, which writes the corrupted files.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa

HUGE_SIZES = [10 << 20, 20 << 20]  # the first "huge" files of a format: 10 MiB, 20 MiB lines/values
HUGE_MORE = 1 << 20  # later ones: 1 MiB (keeps the 200-file run small on disk and fast)

WORDS = ["alpha", "beta", "gamma", "delta", "caf\u00e9", "na\u0131ve", "\u65e5\u672c\u8a9e", "\U0001f600",
         "Stra\u00dfe", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "x", "42", "tab\tbed", "\u00a0nbsp"]
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("score", pa.float64()),
                    ("tags", pa.list_(pa.string())), ("meta", pa.struct([("k", pa.int64()), ("w", pa.string())]))])


def _text(rng: random.Random, csv_safe: bool = False) -> str:
    words = [w for w in WORDS if not (csv_safe and "\t" in w)]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))


def records(rng: random.Random, n: int, csv_safe: bool = False) -> list[dict]:
    return [{"id": f"r{i}", "text": _text(rng, csv_safe), "score": round(rng.random(), 4),
             "tags": [rng.choice(WORDS) for _ in range(rng.randint(0, 3))], "meta": {"k": i, "w": rng.choice(WORDS)}}
            for i in range(n)]


def flip(rng: random.Random, data: bytes, start: int = 0, end: int | None = None, n: int | None = None) -> bytes:
    b = bytearray(data)
    end = len(b) if end is None else end
    if end <= start:
        return data
    for _ in range(n or rng.randint(1, 8)):
        b[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
    return bytes(b)


def insert_nuls(rng: random.Random, data: bytes, start: int = 0) -> bytes:
    if len(data) <= start:
        return data + b"\x00"
    at = rng.randrange(start, len(data))
    return data[:at] + b"\x00" * rng.choice([1, 1, 4, 64]) + data[at:]


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))] if len(data) > 1 else b""


def table(rng: random.Random, kind: str, n: int, huge: int = HUGE_MORE) -> pa.Table:
    recs = records(rng, n)
    if n and kind == "huge":
        recs[rng.randrange(n)]["text"] = "h" * huge
    t = pa.Table.from_pylist(recs, schema=SCHEMA)
    if n and kind == "badutf8_text":
        vals = [r["text"].encode() for r in recs]
        vals[rng.randrange(n)] = b"ok \xff\xfe bad \xc3"
        bad = pa.array(vals, pa.binary()).view(pa.string())  # no UTF-8 check
        t = t.set_column(t.schema.get_field_index("text"), "text", bad)
    return t


def corrupt_bytes(rng: random.Random, path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind.endswith("flip"):
        data = flip(rng, data)
    elif kind.endswith("truncate") or kind.endswith("truncate_data"):
        data = truncate(rng, data)
    elif kind.startswith("nul"):
        data = insert_nuls(rng, data)
    path.write_bytes(data)
