"""A bounded, mergeable sample of a selector's score columns, for the HTML report's histograms.

The selector template (`thresher.core.selector`) takes one `ScoreSample` per decided batch of
the numeric columns a stage's `score()`/`decide()` added, adds them up in its summary combiner
(`a + b` keeps the `size` rows with the smallest hash of their row key: a bottom-k sample, the
same rows whatever the batching or runner) and writes it to `reports/<stage>.score_sample.json`
beside the stage's report. The sample file is separate from `reports/<stage>.json` so stage
reports (and the manifest, which embeds them) stay small and keep their exact shape.

Per column the file holds exact totals over every row the stage saw (count of non-null values,
nulls, min, max, mean; rows kept, with or without a value, and the min/max of their values)
and the sampled values (non-null rows only), split into kept and dropped rows, sorted.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.io import fs
from thresher.io.atomic import write_bytes_atomic

FORMAT = "thresher-score-sample/1"
DEFAULT_SIZE = 4096
MAX_SIZE = 5000
SUFFIX = ".score_sample.json"

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(keys: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over uint64 keys: a stable, well-spread hash, vectorised in NumPy
    (xxhash would need one Python call per row)."""
    z = keys.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def row_hashes(batch: pa.RecordBatch, key_column: str, id_column: str) -> np.ndarray:
    """One uint64 hash per row: of the row key when the batch has one, else of the row id."""
    if key_column in batch.schema.names:
        return mix64(batch.column(key_column).to_numpy(zero_copy_only=False))
    import xxhash

    ids = batch.column(id_column).to_pylist()
    return np.fromiter((xxhash.xxh3_64_intdigest(str(i)) for i in ids), np.uint64, len(ids))


def is_score_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


@dataclass
class Column:
    """One column's exact totals and its bottom-k (hash, value, kept) sample."""

    count: int = 0
    nulls: int = 0
    finite: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    kept: int = 0
    kept_lo: float = math.inf
    kept_hi: float = -math.inf
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @classmethod
    def of(cls, values: np.ndarray, valid: np.ndarray, keep: np.ndarray, hashes: np.ndarray,
           size: int) -> Column:
        v, k, h = values[valid], keep[valid], hashes[valid]
        finite = np.isfinite(v)
        fv, kv = v[finite], v[finite & k]
        col = cls(count=int(len(v)), nulls=int((~valid).sum()), finite=int(len(fv)), total=float(fv.sum()),
                  lo=float(fv.min()) if len(fv) else math.inf, hi=float(fv.max()) if len(fv) else -math.inf,
                  kept=int(keep.sum()), kept_lo=float(kv.min()) if len(kv) else math.inf,
                  kept_hi=float(kv.max()) if len(kv) else -math.inf)
        col.hashes, col.values, col.keep = _bottom(h, v, k, size)
        return col

    def merged(self, other: Column, size: int) -> Column:
        h, v, k = _bottom(np.concatenate([self.hashes, other.hashes]),
                          np.concatenate([self.values, other.values]),
                          np.concatenate([self.keep, other.keep]), size)
        return Column(count=self.count + other.count, nulls=self.nulls + other.nulls,
                      finite=self.finite + other.finite, total=self.total + other.total,
                      lo=min(self.lo, other.lo), hi=max(self.hi, other.hi), kept=self.kept + other.kept,
                      kept_lo=min(self.kept_lo, other.kept_lo), kept_hi=max(self.kept_hi, other.kept_hi),
                      hashes=h, values=v, keep=k)

    def to_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else x

        return {
            "count": self.count, "nulls": self.nulls,
            "min": num(self.lo), "max": num(self.hi),
            "mean": num(self.total / self.finite) if self.finite else None,
            "kept": {"count": self.kept, "min": num(self.kept_lo), "max": num(self.kept_hi)},
            "sampled": int(len(self.values)),
            "sample": {"kept": _rounded(self.values[self.keep]), "dropped": _rounded(self.values[~self.keep])},
        }


def _bottom(h: np.ndarray, v: np.ndarray, k: np.ndarray, size: int):
    """The `size` entries with the smallest hashes. `mix64` is a bijection, so distinct row
    keys never tie and the choice does not depend on the order entries arrive in."""
    if len(h) <= size:
        return h, v, k
    order = np.argpartition(h, size - 1)[:size]
    return h[order], v[order], k[order]


def _rounded(values: np.ndarray) -> list[float | None]:
    """Sorted values at 6 significant digits (plenty for a histogram; keeps the file small);
    NaN and infinities become null, which JSON can hold."""
    return [float(f"{x:.6g}") if math.isfinite(x) else None for x in np.sort(values).tolist()]


class ScoreSample:
    """Columns -> `Column`; `a + b` merges (the summary combiner adds summaries with `+`).
    `problems`: why some batch could not be sampled (the sample is then incomplete, and says so)."""

    def __init__(self, columns: dict[str, Column], rows: int, size: int, problems: list[str] | None = None):
        self.columns, self.rows, self.size = columns, rows, size
        self.problems = problems or []

    @classmethod
    def failed(cls, batch: pa.RecordBatch, why: str, size: int = DEFAULT_SIZE) -> ScoreSample:
        return cls({}, batch.num_rows, size, [why])

    @classmethod
    def of_batch(cls, batch: pa.RecordBatch, keep: np.ndarray, names: list[str], hashes: np.ndarray,
                 size: int = DEFAULT_SIZE) -> ScoreSample:
        size = max(1, min(int(size), MAX_SIZE))
        keep = np.asarray(keep, dtype=bool)
        cols = {}
        for name in names:
            arr = batch.column(name)
            if not is_score_type(arr.type):
                continue
            valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
            # unsafe: an int64 past 2**53 rounds, which a histogram does not mind
            values = pc.cast(arr, pa.float64(), safe=False).fill_null(np.nan).to_numpy(zero_copy_only=False)
            cols[name] = Column.of(values, valid, keep, hashes, size)
        return cls(cols, batch.num_rows, size)

    def __add__(self, other: ScoreSample) -> ScoreSample:
        size = min(self.size, other.size)
        cols = dict(self.columns)
        for name, col in other.columns.items():
            cols[name] = cols[name].merged(col, size) if name in cols else col
        return ScoreSample(cols, self.rows + other.rows, size, (self.problems + other.problems)[:5])

    def __bool__(self) -> bool:
        return bool(self.columns or self.problems)

    def to_json(self, stage: str, thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
        out = {"format": FORMAT, "stage": stage, "size": self.size, "rows": self.rows,
               "columns": {name: self.columns[name].to_json() for name in sorted(self.columns)}}
        if self.problems:
            out["problems"] = self.problems
        for name, t in (thresholds or {}).items():
            if name in out["columns"] and t is not None:
                out["columns"][name]["thresholds"] = [float(x) for x in (t if isinstance(t, (list, tuple)) else [t])]
        return out


def sample_path(reports_dir: str, stage: str) -> str:
    return os.path.join(reports_dir, f"{stage}{SUFFIX}")


def write_sample(sample: ScoreSample | None, path: str, stage: str, thresholds: dict[str, Any] | None) -> None:
    if sample:
        data = json.dumps(sample.to_json(stage, thresholds), separators=(",", ":"), allow_nan=False)
        write_bytes_atomic(path, data.encode())


def read_sample(snapshot_dir: str, stage: str) -> dict[str, Any] | None:
    """A snapshot's sample file for `stage`, or None when the stage wrote none."""
    path = sample_path(fs.join(snapshot_dir, "reports"), stage)
    if not fs.isfile(path):
        return None
    return json.loads(fs.read_bytes(path))
