"""What the CLI prints about a finished snapshot: counts per source and stage, stage reports,
shards, quarantine, sample rows."""

from __future__ import annotations

import os
from typing import Any

from rich.table import Table

from thresher.cli.app import console


def print_summary(out_dir: str, sample_rows: int = 0) -> None:
    from thresher.load import load_manifest, read_shard, shard_paths

    m = load_manifest(out_dir)
    total = m["counts"]["total"]
    console.print(f"[bold]{m['name']}[/]  {out_dir}  (recipe {m['recipe_sha256'][:12]}, seed {m['seed']}, "
                  f"{m['seconds']:.1f} s on {m['runner'].rsplit('.', 1)[-1]})")
    t = Table(title="rows by source", title_justify="left")
    for c in ("source", "read", "quarantined", "dropped", "written", "adds up"):
        t.add_column(c, justify="right" if c != "source" else "left")
    for s, v in m["counts"]["by_source"].items():
        dropped = sum(n for d in v["dropped"].values() for n in d.values())
        t.add_row(s, f"{v['read']:,}", f"{v['quarantined']:,}", f"{dropped:,}", f"{v['written']:,}",
                  "yes" if v["balanced"] else "[red]NO[/]")
    t.add_row("[bold]total", f"{total['read']:,}", f"{total['quarantined']:,}", f"{total['dropped']:,}",
              f"{total['written']:,}", "yes" if m["counts"]["balanced"] else "[red]NO[/]")
    console.print(t)
    if m["stages"]:
        st = Table(title="stages", title_justify="left")
        for c in ("stage", "rows in", "dropped"):
            st.add_column(c, overflow="fold")
        for name, s in m["stages"].items():
            label = name if name == s["type"] else f"{name} ({s['type']})"
            if s["rows_in"] or s["dropped"]:
                dropped = ", ".join(f"{r}: {n:,}" for r, n in s["dropped"].items()) or "0"
                st.add_row(label, f"{s['rows_in']:,}", dropped)
            else:
                st.add_row(label, "—", "— (adds columns)")
        console.print(st)
        for name, s in m["stages"].items():
            lines = report_lines(s.get("report"))
            if lines:
                console.print(f"[bold]{name}[/] report:")
                for line in lines:
                    console.print(f"  {line}", soft_wrap=True)
    console.print(f"shards: {len(m['shards'])} file(s), {m['num_rows']:,} rows, {m['num_bytes'] / 1e6:.1f} MB"
                  f" in {os.path.join(out_dir, 'shards')}")
    if m["quarantine"]:
        console.print(f"quarantine: {sum(q['rows'] for q in m['quarantine'])} record(s) in "
                      f"{os.path.join(out_dir, 'quarantine')}")
        print_quarantine(out_dir, m, limit=5)
    if sample_rows and m["shards"]:
        table = read_shard(shard_paths(out_dir, m)[0]).slice(0, sample_rows)
        console.print(f"[bold]first {table.num_rows} rows of {m['shards'][0]['path']}[/]")
        for i, r in enumerate(table.to_pylist()):
            console.print(f"[dim]── row {i}[/]")
            for k, v in r.items():
                if k == "source_file" or isinstance(v, (list, dict)) and len(str(v)) > 80:
                    continue  # long feature columns (embeddings, n-gram buckets) say little here
                shown = short(f"{v:.4g}" if isinstance(v, float) else v, 160)
                console.print(f"  [cyan]{k}[/]: {shown}", soft_wrap=True)


def print_quarantine(out_dir: str, m: dict[str, Any], limit: int) -> None:
    from thresher.load import read_shard

    q = read_shard(os.path.join(out_dir, m["quarantine"][0]["path"]))
    for r in q.slice(0, limit).to_pylist():
        console.print(f"  {os.path.basename(r['source_file'])}:{r['source_row']}  {r['reason']}")
    if q.num_rows > limit:
        console.print(f"  … {q.num_rows - limit} more")


REPORT_SKIP = {"settings", "artifacts"}


def report_lines(report: Any, limit: int = 14) -> list[str]:
    """A stage report's numbers as `dotted.key: value` lines (nested dicts flattened)."""
    if not isinstance(report, dict):
        return []
    out: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in REPORT_SKIP:
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, str, bool)) and not isinstance(node, type(None)):
            out.append(f"{prefix}: {node:.4g}" if isinstance(node, float) else f"{prefix}: {node}")

    walk("", report)
    if len(out) > limit:
        out = out[:limit] + [f"… {len(out) - limit} more in reports/ and manifest.json"]
    return out


def short(v: Any, n: int = 200) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 1] + "…"
