"""Publish a finished run: write its snapshot's `manifest.json` last, then move `latest` to it.

The manifest is the contract with training jobs: it lists every shard with its rows, bytes
and sha256, the schema, the resolved recipe and its hash, the inputs (path, size, sha256),
and where every input row went (read = written + quarantined + dropped by each stage, per
source), the run's fingerprint (what an unchanged rerun compares) and the row cache's hits
and misses per stage. A snapshot without `manifest.json` is an unfinished run; `latest` never
points at one.

Beside the manifest, `README.md` dataset cards (`io.dataset_card`) in the snapshot and at the
output root make `datasets.load_dataset(OUT)` load exactly the shards.

`files` lists every path the run wrote in its snapshot; pruning an old snapshot deletes only
those (`engine.snapshots`), never anything else (a user's notes).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import thresher
from thresher.core import counters as names
from thresher.core.errors import UserError
from thresher.engine import snapshots
from thresher.engine.build import RunResult
from thresher.engine.fingerprint import fingerprint
from thresher.engine.plan import RunPlan
from thresher.io import dataset_card, fs, row_cache
from thresher.io.atomic import write_bytes_atomic
from thresher.load import read_schema
from thresher.report.html import write_report
from thresher.report.tokens import manifest_tokens

MANIFEST_FORMAT = "thresher-manifest/1"


def build_manifest(plan: RunPlan, run: RunResult) -> dict[str, Any]:
    recipe = plan.recipe
    by_source = names.per_source(run.counters, plan.source_names, plan.stage_names)
    totals = {k: sum(v[k] for v in by_source.values()) for k in ("read", "quarantined", "written")}
    stages: dict[str, Any] = {}
    for spec, stage in zip(recipe.stages, plan.stages, strict=True):
        stages[stage.name] = {
            "type": spec.type,
            "version": stage.version,
            "kind": stage.kind,
            "params": spec.params,
            "rows_in": names.rows_in(run.counters, stage.name),
            "dropped": {r: sum(per.values()) for r, per in names.drops(run.counters, stage.name).items()},
            "counters": names.stage_counters(run.counters, stage.name),
            "report": run.reports.get(stage.name),
        }
    totals["dropped"] = sum(sum(s["dropped"].values()) for s in stages.values())
    schema = _shard_schema(run)
    return {
        "format": MANIFEST_FORMAT,
        "thresher_version": thresher.__version__,
        "name": recipe.name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "snapshot": plan.snapshot,
        "recipe_sha256": recipe.hash(),
        "fingerprint": fingerprint(plan),
        "recipe": json.loads(recipe.canonical_json()),
        "seed": recipe.seed,
        "runner": plan.runner,
        "seconds": round(run.seconds, 3),
        "inputs": [x.__dict__ for x in plan.inputs],
        "counts": {"total": totals, "by_source": by_source,
                   "balanced": all(v["balanced"] for v in by_source.values()),
                   # rows whose id an earlier row had (engine.duplicate_ids); renamed under `rename`
                   "duplicate_ids": {s: run.counters.get(f"duplicate_ids/{s}", 0) for s in plan.source_names}},
        "stages": stages,
        "num_rows": sum(s["rows"] for s in run.shards),
        "num_bytes": sum(s["bytes"] for s in run.shards),
        "ipc_format": recipe.output.ipc_format,
        "shard_format": recipe.output.format,  # arrow | parquet
        # output.splits: rows (or packed sequences) per split, in recipe order.
        "splits": ({name: sum(s["rows"] for s in run.shards if s.get("split") == name) for name in recipe.output.splits}
                   if recipe.output.splits else None),
        "num_shards": recipe.output.num_shards,  # set: len(shards) == num_shards, sizes within one
        "shards": run.shards,
        "schema": schema,
        # which tokenizer counted (name + sha256) or "words", and the written totals
        "tokens": manifest_tokens(recipe, run.counters, totals["written"]),
        "quarantine": run.quarantine,
        "artifacts": _artifacts(run),
        "dropped": run.dropped,
        "counters": run.counters,
        "cache": {"dir": plan.cache_dir, "by_stage": names.cache_counts(run.counters)},
        "files": _files(run),
    }


def _files(run: RunResult) -> list[str]:
    """Every file this run wrote under OUT (relative paths): what the next run may delete."""
    listed = [x["path"] for k in (run.shards, run.dropped, run.quarantine) for x in k]
    listed += [a["path"] for a in _artifacts(run)]
    listed += [f"reports/{name}.json" for name in run.reports]  # copied there by engine.build
    return sorted(set(listed))


def _shard_schema(run: RunResult) -> dict[str, Any] | None:
    if not run.shards:
        return None
    path = fs.join(run.out_dir, run.shards[0]["path"])
    schema = read_schema(path)
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "arrow_ipc_base64": base64.b64encode(schema.serialize().to_pybytes()).decode(),
    }


class RowsUnaccountedError(UserError):
    """A source's rows read (counted from its files) differ from written + quarantined + dropped:
    rows were lost or counted twice on the way, so the snapshot is not published."""


def check_balanced(manifest: dict[str, Any]) -> None:
    """Refuse to publish a snapshot whose counts do not prove every input row's fate."""
    bad = []
    for source, c in manifest["counts"]["by_source"].items():
        if not c["balanced"]:
            dropped = sum(sum(r.values()) for r in c["dropped"].values())
            accounted = c["written"] + c["quarantined"] + dropped
            bad.append(f"source {source!r}: {c['read']:,} rows read, {accounted:,} written, quarantined or dropped "
                       f"({c['read'] - accounted:+,} unaccounted)")
    if bad:
        raise RowsUnaccountedError("; ".join(bad) + "; the snapshot was not published and `latest` is unchanged. "
                                   "Rerun; if it happens again, report it with the output of `thresher --debug`")


def publish(plan: RunPlan, run: RunResult) -> str:
    """Write the snapshot's manifest (last of its files), move `latest` to it, then prune old
    snapshots and the row cache. Returns the manifest path. Safe to retry (the flow's task
    retries it). A snapshot whose counts do not balance is not published."""
    manifest = build_manifest(plan, run)
    check_balanced(manifest)
    fs.remove(plan.work_dir, recursive=True)
    # The selection report never fails a run: it returns None only when it cannot be written.
    html = write_report(plan.out_dir, manifest)
    if html:
        manifest["files"] = sorted({*manifest["files"], html})
    # Dataset cards: `load_dataset(OUT/latest)` and `load_dataset(OUT)` load exactly the shards.
    if dataset_card.write_card(plan.out_dir, manifest):
        manifest["files"] = sorted({*manifest["files"], dataset_card.README})
    write_bytes_atomic(plan.manifest_path, json.dumps(manifest, indent=2, sort_keys=False).encode())
    dataset_card.write_card(plan.root_dir, manifest, prefix=f"{snapshots.SNAPSHOTS}/{plan.snapshot}/")
    snapshots.point_latest(plan.root_dir, plan.snapshot)
    snapshots.prune(plan.root_dir, keep=plan.recipe.output.keep_snapshots, current=plan.snapshot)
    if plan.cache_dir:
        row_cache.prune(plan.cache_dir, plan.recipe.cache.max_bytes)
    return plan.manifest_path


def _artifacts(run: RunResult) -> list[dict[str, Any]]:
    out = []
    for stage, report in sorted(run.reports.items()):
        for rel in (report or {}).get("artifacts", []) if isinstance(report, dict) else []:
            path = fs.join(run.out_dir, rel)
            if fs.isfile(path):
                out.append({"stage": stage, "path": rel, "bytes": fs.size(path)})
    return out
