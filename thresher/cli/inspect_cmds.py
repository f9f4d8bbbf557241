"""`thresher inspect` (an output folder's snapshots, and the latest one's summary) and
`thresher diff A B` (count changes between two snapshots)."""

from __future__ import annotations

import json
import os

import typer
from rich.markup import escape
from rich.table import Table

from thresher.cli.app import app, console, one_line, reported
from thresher.cli.summary import print_summary


def _manifest_dir(path: str) -> str:
    """A snapshot folder, an output folder (-> its latest snapshot), or an id under OUT/snapshots."""
    from thresher.core.errors import UserError
    from thresher.engine import snapshots

    folder = snapshots.resolve(path)
    if os.path.isfile(os.path.join(folder, snapshots.MANIFEST)):
        return folder
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, snapshots.SNAPSHOTS)):
        raise UserError(f"{path}: no finished snapshot yet (`latest` is not set); run the recipe, or name a snapshot")
    raise UserError(f"{os.path.join(path, snapshots.MANIFEST)} not found: {path} is not a finished thresher run "
                    "(give an output folder, a snapshot folder OUT/snapshots/<id>, or OUT/latest)")


def _print_snapshots(root: str) -> None:
    from thresher.engine import snapshots

    snaps = snapshots.list_snapshots(root)
    if not snaps:
        return
    t = Table(title=f"snapshots in {root}", title_justify="left")
    for c in ("snapshot", "status", "rows", "created", "report"):
        t.add_column(c)
    for s in snaps:
        m = s.manifest or {}
        status = "latest" if s.latest else "complete" if s.complete else "[yellow]unfinished[/]"
        html = os.path.join(s.path, "report.html")
        t.add_row(s.id, status, f"{s.rows:,}" if s.rows is not None else "—", m.get("created_at", "—"),
                  html if os.path.isfile(html) else "—")
    console.print(t)


@app.command()
def inspect(out_dir: str = typer.Argument(..., help="An output folder (its snapshots and latest) or a snapshot."),
            rows: int = typer.Option(3, help="Sample rows to show.")) -> None:
    """Show an output folder's snapshots and the latest one: counts per source and stage, sample rows."""
    from thresher.core.errors import UserError

    with reported():
        _print_snapshots(out_dir)
        folder = _manifest_dir(out_dir)
        try:
            print_summary(folder, sample_rows=rows)
        except FileNotFoundError as exc:
            raise UserError(one_line(exc)) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A manifest cut short, edited by hand or from another tool.
            path = os.path.join(folder, "manifest.json")
            what = f"no key {exc}" if isinstance(exc, KeyError) else one_line(exc)
            raise UserError(f"{path} is not a readable thresher manifest ({what}); rerun the recipe "
                            "to write it again") from exc


def _fmt(v: list[int]) -> str:
    a, b, d = v
    return f"{a:,} → {b:,} ({d:+,})" if d else f"{b:,}"


@app.command()
def diff(a: str = typer.Argument(..., help="Older snapshot: a snapshot folder, OUT/latest, or an output folder."),
         b: str = typer.Argument(..., help="Newer snapshot (same forms)."),
         as_json: bool = typer.Option(False, "--json", help="Print the differences as JSON.")) -> None:
    """Per-source and per-stage count changes between two snapshots."""
    from thresher.engine.snapshot_diff import diff_manifests
    from thresher.load import load_manifest

    with reported():
        d = diff_manifests(load_manifest(_manifest_dir(a)), load_manifest(_manifest_dir(b)))
    if as_json:
        print(json.dumps(d, indent=2))
        return
    console.print(f"[bold]{d['snapshots'][0]} → {d['snapshots'][1]}[/]: rows {_fmt(d['rows'])}"
                  + ("; recipe changed" if d["recipe_changed"] else ""))
    for k in ("added", "removed", "changed"):
        for p in d["inputs"][k]:
            console.print(f"  input {k}: {escape(p)}")
    for title, section in (("by source", d["by_source"]), ("by stage", d["by_stage"])):
        fields = sorted({f for v in section.values() for f in v})
        if not fields:
            continue
        t = Table(title=title, title_justify="left")
        t.add_column("")
        for f in fields:
            t.add_column(f, justify="right")
        for key, v in section.items():
            t.add_row(key, *(_fmt(v[f]) if f in v else "—" for f in fields))
        console.print(t)
