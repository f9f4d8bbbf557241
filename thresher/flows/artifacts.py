"""What a `curate` flow run shows in the Prefect UI: artifacts built from the snapshot's manifest.

Per run: a table of rows per source (read, quarantined, dropped per stage and reason,
written), one markdown artifact per stage report, a summary (or "up to date"), and links to
the snapshot's `manifest.json` and, when present, its `report.html`. Keys are stable per
recipe (`<recipe>-rows`, `<recipe>-stage-<stage>`, ...) so the UI's artifact page shows each
one's history across runs.

`build_artifacts` is pure (manifest dict -> `Artifact`s, tested without a server);
`publish_artifacts` hands them to `prefect.artifacts` inside a flow run.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.io import fs

log = logging.getLogger("thresher.flows")

REPORT_HTML = "report.html"
REPORT_SKIP = {"artifacts", "settings"}  # file lists and echoed params: in manifest.json already
MAX_REPORT_LINES = 40
MAX_MAPPING_ROWS = 15


@dataclass
class Artifact:
    kind: str  # "table" | "markdown" | "link"
    key: str
    description: str
    table: list[dict[str, Any]] = field(default_factory=list)
    markdown: str = ""
    link: str = ""
    link_text: str = ""


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from names that may hold
    `_` `.` or capitals: `artifact_key("My_Recipe", "stage", "exact_dedup")` -> "my-recipe-stage-exact-dedup"."""
    slug = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts)
    slug = re.sub(r"-+", "-", slug).strip("-")
    return slug or "thresher"


def stage_keys(recipe: str, stages: list[str]) -> dict[str, str]:
    """One key per stage; two names that slug alike (`a_b`, `a-b`) get `-2`, `-3` in stage order."""
    out: dict[str, str] = {}
    for name in stages:
        key, n = artifact_key(recipe, "stage", name), 1
        while key in out.values():
            n += 1
            key = artifact_key(recipe, "stage", name, str(n))
        out[name] = key
    return out


def rows_table(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows per source and a total row: read, quarantined, one column per (stage, reason) that
    dropped rows anywhere, written, and whether the source adds up."""
    by_source = manifest["counts"]["by_source"]
    stage_order = list(manifest.get("stages", {}))
    reasons: list[tuple[str, str]] = []
    for v in by_source.values():
        for stage, per in v.get("dropped", {}).items():
            reasons += [(stage, r) for r in per if (stage, r) not in reasons]
    reasons.sort(key=lambda sr: (stage_order.index(sr[0]) if sr[0] in stage_order else len(stage_order), sr[1]))
    rows = []
    for source, v in by_source.items():
        row: dict[str, Any] = {"source": source, "read": v["read"], "quarantined": v["quarantined"]}
        for stage, reason in reasons:
            row[f"dropped {stage}: {reason}"] = v.get("dropped", {}).get(stage, {}).get(reason, 0)
        row["written"] = v["written"]
        row["adds up"] = "yes" if v.get("balanced", True) else "NO"
        rows.append(row)
    total: dict[str, Any] = {"source": "total"}
    for k in rows[0] if rows else ("read", "quarantined", "written"):
        if k not in ("source", "adds up"):
            total[k] = sum(r[k] for r in rows)
    total["adds up"] = "yes" if manifest["counts"].get("balanced", True) else "NO"
    return rows + [total]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def report_lines(report: Any) -> list[str]:
    """A report's numbers as markdown table rows `| key | value |`: nested dicts flattened to
    dotted keys; a mapping of many numbers (languages, buckets) shows its largest entries; a
    list shows its length, not its items."""
    out: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            items = [(k, v) for k, v in node.items() if k not in REPORT_SKIP]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in items)
            if prefix and numeric and len(items) > MAX_MAPPING_ROWS:  # a distribution, not the top level
                shown = sorted(items, key=lambda kv: -kv[1])[:MAX_MAPPING_ROWS]
                for k, v in shown:
                    out.append(f"| {_fmt(f'{prefix}.{k}' if prefix else k)} | {_fmt(v)} |")
                out.append(f"| {_fmt(prefix)} | … {len(items) - len(shown)} more |")
                return
            for k, v in items:
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (list, tuple)):
            if all(isinstance(x, (int, float, str, bool)) for x in node) and len(node) <= 8:
                out.append(f"| {_fmt(prefix)} | {', '.join(_fmt(x) for x in node) or '(none)'} |")
            else:
                out.append(f"| {_fmt(prefix)} | {len(node):,} item(s) |")
        elif node is not None:
            out.append(f"| {_fmt(prefix)} | {_fmt(node)} |")

    walk("", report)
    if len(out) > MAX_REPORT_LINES:
        out = out[:MAX_REPORT_LINES] + [f"| … | {len(out) - MAX_REPORT_LINES} more in reports/ and manifest.json |"]
    return out


def stage_markdown(name: str, stage: dict[str, Any], snapshot: str) -> str:
    """One stage's counts (rows in, dropped per reason) and its report's key numbers."""
    label = name if name == stage.get("type") else f"{name} ({stage.get('type')})"
    lines = [f"## {label}", "", f"Snapshot `{snapshot}` · {stage.get('kind', 'stage')} v{stage.get('version')}", ""]
    dropped = stage.get("dropped") or {}
    if stage.get("rows_in") or dropped:
        lines += ["| rows in | dropped | reason |", "| ---: | ---: | --- |"]
        lines += [f"| {_fmt(stage.get('rows_in', 0))} | {_fmt(n)} | {_fmt(r)} |" for r, n in dropped.items()]
        if not dropped:
            lines.append(f"| {_fmt(stage.get('rows_in', 0))} | 0 | |")
    else:
        lines.append("Adds columns; drops no rows.")
    report_rows = report_lines(stage.get("report"))
    lines += ["", "### Report", ""]
    lines += ["| key | value |", "| --- | ---: |", *report_rows] if report_rows else ["(no report)"]
    return "\n".join(lines) + "\n"


def summary_markdown(status: str, manifest: dict[str, Any], snapshot_dir: str) -> str:
    total = manifest["counts"]["total"]
    counts = (f"{_fmt(total['read'])} read, {_fmt(total['quarantined'])} quarantined, "
              f"{_fmt(total.get('dropped', 0))} dropped, {_fmt(total['written'])} written")
    if status == "up_to_date":
        head = (f"**Up to date**: snapshot `{manifest.get('snapshot')}` already has this recipe's and inputs' "
                "fingerprint; nothing was run.")
    else:
        head = (f"**Snapshot `{manifest.get('snapshot')}` written** in {manifest.get('seconds', 0):.1f} s: "
                f"{_fmt(manifest.get('num_rows', 0))} rows in {len(manifest.get('shards', []))} shard(s).")
    return (f"# {manifest.get('name')}\n\n{head}\n\n"
            f"- rows: {counts} (adds up: {_fmt(bool(manifest['counts'].get('balanced', True)))})\n"
            f"- recipe sha256: `{str(manifest.get('recipe_sha256', ''))[:12]}`\n"
            f"- snapshot: `{snapshot_dir}`\n")


def file_uri(path: str) -> str:
    return path if fs.is_remote(path) else Path(os.path.realpath(path)).as_uri()


def build_artifacts(status: str, manifest: dict[str, Any], snapshot_dir: str) -> list[Artifact]:
    """The artifacts of one run. `snapshot_dir` is the snapshot's own folder (not `latest`,
    which moves on), so an old run's links keep pointing at what that run wrote."""
    snapshot_dir = snapshot_dir if fs.is_remote(snapshot_dir) else os.path.realpath(snapshot_dir)
    recipe = manifest.get("name") or "thresher"
    sid = manifest.get("snapshot") or os.path.basename(snapshot_dir)
    out = [Artifact("markdown", artifact_key(recipe, "summary"), f"{recipe}: run summary",
                    markdown=summary_markdown(status, manifest, snapshot_dir))]
    if status != "up_to_date":  # a run that did nothing has no new numbers: its snapshot's are already shown
        out.append(Artifact("table", artifact_key(recipe, "rows"), f"{recipe} snapshot {sid}: rows per source",
                            table=rows_table(manifest)))
        keys = stage_keys(recipe, list(manifest.get("stages", {})))
        for name, stage in manifest.get("stages", {}).items():
            out.append(Artifact("markdown", keys[name], f"{recipe} snapshot {sid}: stage {name}",
                                markdown=stage_markdown(name, stage, sid)))
    manifest_path = fs.join(snapshot_dir, "manifest.json")
    out.append(Artifact("link", artifact_key(recipe, "manifest"), f"{recipe}: manifest of snapshot {sid}",
                        link=file_uri(manifest_path), link_text=f"{sid}/manifest.json"))
    html = fs.join(snapshot_dir, REPORT_HTML)
    if fs.isfile(html):
        out.append(Artifact("link", artifact_key(recipe, "report"), f"{recipe}: report of snapshot {sid}",
                            link=file_uri(html), link_text=f"{sid}/{REPORT_HTML}"))
    return out


def publish_artifacts(artifacts: list[Artifact]) -> list[str]:
    """Create the artifacts in the current flow run; returns their keys. Prefect API errors are
    logged, not raised: the snapshot is already published, and failing the run over its UI
    decoration would tell the operator the data is not there."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    done = []
    for a in artifacts:
        try:
            if a.kind == "table":
                create_table_artifact(table=a.table, key=a.key, description=a.description)
            elif a.kind == "markdown":
                create_markdown_artifact(markdown=a.markdown, key=a.key, description=a.description)
            else:
                create_link_artifact(link=a.link, link_text=a.link_text, key=a.key, description=a.description)
            done.append(a.key)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("could not publish the %s artifact %s to Prefect: %s", a.kind, a.key, exc)
    return done
