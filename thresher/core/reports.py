"""Stage reports: per-batch summaries added up by a combiner, then finished into one dict
that lands in `OUT/reports/<stage>.json` and the manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import numpy as np

from thresher.io.atomic import write_bytes_atomic


def add_nested(a: dict, b: dict) -> dict:
    """Merge summaries: numbers and arrays add, lists concatenate, dicts merge key by key."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = add_nested(out.get(k, {}), v)
        elif isinstance(v, list):
            out[k] = out.get(k, []) + v
        elif k in out:
            if isinstance(v, np.ndarray) and np.shape(out[k]) != v.shape:
                # NumPy would broadcast and silently give a wrong total.
                raise ValueError(f"summary key {k!r}: cannot add arrays of shapes {np.shape(out[k])} and "
                                 f"{v.shape}; a summary array is a fixed-size vector (e.g. bucket counts) — "
                                 "return a list to concatenate per-row values")
            out[k] = out[k] + v
        else:
            out[k] = v.copy() if isinstance(v, np.ndarray) else v
    return out


class SumSummaries(beam.CombineFn):
    """Per-element summary dicts (`summarise(element)`) -> one dict, added up."""

    def __init__(self, summarise: Callable[[Any], dict]):
        self.summarise = summarise

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        return add_nested(acc, self.summarise(element) or {})

    def merge_accumulators(self, accs):
        out: dict = {}
        for a in accs:
            out = add_nested(out, a)
        return out

    def extract_output(self, acc):
        return acc


def histogram(values: np.ndarray, edges: np.ndarray) -> dict[str, int]:
    values = values[~np.isnan(values)]
    counts, _ = np.histogram(values, bins=edges)
    return {f"{lo:.3g}-{hi:.3g}": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)}


def json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def report_path(work_dir: str, stage: str) -> str:
    return os.path.join(work_dir, "reports", f"{stage}.json")


def write_report(report: dict[str, Any], path: str) -> str:
    write_bytes_atomic(path, json.dumps(report, indent=2, sort_keys=True, default=json_default).encode())
    return path
