"""Publish a finished run: build `manifest.json` and write it last, atomically.

The manifest is the contract with training jobs: it lists every shard with its rows, bytes
and sha256, the schema, the resolved recipe and its hash, the inputs (path, size, sha256),
and where every input row went (read = written + quarantined + dropped by each stage, per
source). A directory without `manifest.json` is an unfinished run.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
from typing import Any

import thresher
from thresher.load import read_shard
from thresher.pipelines.atomic import write_bytes_atomic
from thresher.pipelines.build import MANIFEST, WORK_DIR, RunResult, per_source_counts
from thresher.schemas.recipe import Recipe

MANIFEST_FORMAT = "thresher-manifest/1"


def build_manifest(recipe: Recipe, run: RunResult) -> dict[str, Any]:
    sources = [s.name for s in recipe.sources]
    by_source = per_source_counts(run.counters, sources, run.stage_names)
    totals = {k: sum(v[k] for v in by_source.values()) for k in ("read", "quarantined", "written")}
    stages: dict[str, Any] = {}
    for spec in recipe.stages:
        name = spec.name or spec.type
        prefix = f"{name}/"
        stage_counters = {k[len(prefix):]: v for k, v in run.counters.items() if k.startswith(prefix)}
        dropped: dict[str, int] = {}
        for k, v in stage_counters.items():
            if k.startswith("dropped/"):
                reason = k[len("dropped/"):].rsplit("/", 1)[0]
                dropped[reason] = dropped.get(reason, 0) + v
        stages[name] = {
            "type": spec.type,
            "params": spec.params,
            "rows_in": sum(v for k, v in stage_counters.items() if k.startswith("in/")),
            "dropped": dropped,
            "counters": stage_counters,
            "report": run.reports.get(name),
        }
    totals["dropped"] = sum(sum(s["dropped"].values()) for s in stages.values())
    schema = _shard_schema(run)
    return {
        "format": MANIFEST_FORMAT,
        "thresher_version": thresher.__version__,
        "name": recipe.name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe_sha256": run.recipe_hash,
        "recipe": json.loads(recipe.canonical_json()),
        "seed": recipe.seed,
        "runner": run.runner,
        "seconds": round(run.seconds, 3),
        "inputs": run.inputs,
        "counts": {"total": totals, "by_source": by_source,
                   "balanced": all(v["balanced"] for v in by_source.values())},
        "stages": stages,
        "num_rows": sum(s["rows"] for s in run.shards),
        "num_bytes": sum(s["bytes"] for s in run.shards),
        "ipc_format": recipe.output.ipc_format,
        "shards": run.shards,
        "schema": schema,
        "quarantine": run.quarantine,
        "artifacts": _artifacts(run),
        "dropped": run.dropped,
        "counters": run.counters,
    }


def _shard_schema(run: RunResult) -> dict[str, Any] | None:
    if not run.shards:
        return None
    path = os.path.join(run.out_dir, run.shards[0]["path"])
    schema = read_shard(path).schema
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "arrow_ipc_base64": base64.b64encode(schema.serialize().to_pybytes()).decode(),
    }


def publish(recipe: Recipe, run: RunResult) -> str:
    """Write the manifest (last), remove files no longer listed. Returns the manifest path."""
    manifest = build_manifest(recipe, run)
    for kind, listed in (("shards", run.shards), ("dropped", run.dropped), ("quarantine", run.quarantine)):
        _remove_unlisted(run.out_dir, kind, {s["path"] for s in listed})
    _remove_stale_indexes(run.out_dir, {a["path"] for a in manifest["artifacts"]})
    path = os.path.join(run.out_dir, MANIFEST)
    write_bytes_atomic(path, json.dumps(manifest, indent=2, sort_keys=False).encode())
    shutil.rmtree(os.path.join(run.out_dir, WORK_DIR), ignore_errors=True)
    return path


def _artifacts(run: RunResult) -> list[dict[str, Any]]:
    out = []
    for stage, report in sorted(run.reports.items()):
        for rel in (report or {}).get("artifacts", []) if isinstance(report, dict) else []:
            path = os.path.join(run.out_dir, rel)
            if os.path.isfile(path):
                out.append({"stage": stage, "path": rel, "bytes": os.path.getsize(path)})
    return out


def _remove_stale_indexes(out_dir: str, keep: set[str]) -> None:
    """Index files an earlier run into this directory left, that this run did not list."""
    d = os.path.join(out_dir, "indexes")
    if not os.path.isdir(d):
        return
    for f in os.listdir(d):
        if f"indexes/{f}" not in keep and os.path.isfile(os.path.join(d, f)):
            os.unlink(os.path.join(d, f))


def _remove_unlisted(out_dir: str, kind: str, keep: set[str]) -> None:
    """Shards a previous run wrote that this run did not (fewer partitions, say)."""
    d = os.path.join(out_dir, kind)
    if not os.path.isdir(d):
        return
    for f in os.listdir(d):
        if f.endswith(".arrow") and f"{kind}/{f}" not in keep:
            os.unlink(os.path.join(d, f))
