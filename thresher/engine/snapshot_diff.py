"""What changed between two snapshots' manifests: rows per source (read, quarantined, dropped,
written) and per stage (rows in, drops per reason), plus the inputs that differ."""

from __future__ import annotations

from typing import Any


def _source_counts(m: dict[str, Any]) -> dict[str, dict[str, int]]:
    out = {}
    for s, v in m["counts"]["by_source"].items():
        out[s] = {"read": v["read"], "quarantined": v["quarantined"],
                  "dropped": sum(n for d in v["dropped"].values() for n in d.values()), "written": v["written"]}
    return out


def _stage_counts(m: dict[str, Any]) -> dict[str, dict[str, int]]:
    out = {}
    for name, s in m["stages"].items():
        row = {"rows_in": s["rows_in"]}
        row.update({f"dropped/{r}": n for r, n in s["dropped"].items()})
        out[name] = row
    return out


def _delta(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, list[int]]]:
    """{key: {field: [a, b, b - a]}} for every key and field in either side."""
    out: dict[str, dict[str, list[int]]] = {}
    for k in sorted(set(a) | set(b)):
        fa, fb = a.get(k, {}), b.get(k, {})
        out[k] = {f: [fa.get(f, 0), fb.get(f, 0), fb.get(f, 0) - fa.get(f, 0)] for f in sorted(set(fa) | set(fb))}
    return out


def diff_manifests(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    inputs_a = {x["path"]: x.get("sha256") for x in a.get("inputs", [])}
    inputs_b = {x["path"]: x.get("sha256") for x in b.get("inputs", [])}
    return {
        "snapshots": [a.get("snapshot"), b.get("snapshot")],
        "rows": [a["num_rows"], b["num_rows"], b["num_rows"] - a["num_rows"]],
        "recipe_changed": a.get("recipe_sha256") != b.get("recipe_sha256"),
        "inputs": {"added": sorted(set(inputs_b) - set(inputs_a)), "removed": sorted(set(inputs_a) - set(inputs_b)),
                   "changed": sorted(p for p in set(inputs_a) & set(inputs_b) if inputs_a[p] != inputs_b[p])},
        "by_source": _delta(_source_counts(a), _source_counts(b)),
        "by_stage": _delta(_stage_counts(a), _stage_counts(b)),
    }
