"""The run-level sections of `report.html`, each `(manifest, snapshot_dir) -> HTML`: header,
rows per source through the stages, drops per stage and reason, token totals, quarantine and
links. Numbers come from the manifest; only token totals and quarantine reasons read files
(memory-mapped Arrow, only the columns they need)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from thresher.load import read_shard
from thresher.report import svg
from thresher.report import tokens as token_info
from thresher.report.markup import Raw, esc, figure, link, note, table

# Reading shards for token totals touches one column per row: bounded so the report stays fast
# on a big snapshot (the limit is in rows; counting words of `text` instead of summing
# `n_tokens` / `n_words` reads the text itself, so it gets a byte limit).
MAX_TOKEN_ROWS = 5_000_000
MAX_WORD_COUNT_BYTES = 64 << 20
SAMPLE_QUARANTINE = 8


def sources_of(manifest: dict[str, Any]) -> list[str]:
    return list((manifest.get("counts") or {}).get("by_source") or {})


def header(manifest: dict[str, Any], snapshot_dir: str) -> str:
    total = (manifest.get("counts") or {}).get("total") or {}
    rows = [
        ("name", manifest.get("name")), ("snapshot", manifest.get("snapshot")),
        ("created", manifest.get("created_at")), ("recipe sha256", manifest.get("recipe_sha256")),
        ("rows written", manifest.get("num_rows")), ("bytes written", manifest.get("num_bytes")),
        ("rows read", total.get("read")), ("quarantined", total.get("quarantined")),
        ("dropped", total.get("dropped")), ("seconds", manifest.get("seconds")),
        ("runner", manifest.get("runner")), ("thresher", manifest.get("thresher_version")),
    ]
    return table(["", ""], [(k, v) for k, v in rows if v is not None], cls="kv")


def selector_stages(manifest: dict[str, Any]) -> list[str]:
    return [name for name, s in (manifest.get("stages") or {}).items() if s.get("kind") == "selector"]


def flow_steps(manifest: dict[str, Any]) -> tuple[list[str], dict[str, list[int]]]:
    """Steps (read, valid, after each selector, written) and rows per source at each."""
    by_source = (manifest.get("counts") or {}).get("by_source") or {}
    steps = ["read", "valid", *selector_stages(manifest), "written"]
    series: dict[str, list[int]] = {}
    for src, c in by_source.items():
        here = int(c.get("read", 0))
        values = [here]
        here -= int(c.get("quarantined", 0))
        values.append(here)
        for stage in steps[2:-1]:
            here -= sum(int(v) for v in ((c.get("dropped") or {}).get(stage) or {}).values())
            values.append(here)
        values.append(int(c.get("written", here)))
        series[src] = values
    return steps, series


def flow(manifest: dict[str, Any], snapshot_dir: str) -> str:
    steps, series = flow_steps(manifest)
    if not series:
        return note("The manifest has no per-source counts.")
    plot = svg.stacked_bars("flow", "Rows per source through the stages", steps, series,
                            width=max(480, 110 * len(steps)))
    rows = [(src, *values) for src, values in series.items()]
    return figure(plot, "Rows left after each step, stacked by source.") + table(["source", *steps], rows)


def drops(manifest: dict[str, Any], snapshot_dir: str) -> str:
    by_source = (manifest.get("counts") or {}).get("by_source") or {}
    cats: list[tuple[str, str]] = []
    for stage, s in (manifest.get("stages") or {}).items():
        cats += [(stage, reason) for reason in sorted(s.get("dropped") or {})]
    if not cats:
        return note("No stage dropped a row.")
    series = {src: [int(((c.get("dropped") or {}).get(st) or {}).get(r, 0)) for st, r in cats]
              for src, c in by_source.items()}
    labels = [f"{st} · {r}" for st, r in cats]
    plot = svg.horizontal_bars("drops", "Rows dropped per stage and reason", labels, series)
    rows = [(st, r, *[series[src][i] for src in series], sum(series[src][i] for src in series))
            for i, (st, r) in enumerate(cats)]
    return figure(plot, "Stacked by source.") + table(["stage", "reason", *series, "total"], rows)


class _Skip(Exception):
    """A section that deliberately draws nothing, with the reason to show."""


def token_totals(manifest: dict[str, Any], snapshot_dir: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """(what was counted, rows per source, count per source) over the written shards: the
    manifest's `tokens` totals (`report.tokens`, with the tokenizer that counted them) when it
    has them, else counted here from the shards (bounded)."""
    shards = manifest.get("shards") or []
    if not shards:
        return "tokens", {}, {}
    info = manifest.get("tokens") if isinstance(manifest.get("tokens"), dict) else {}
    counted = info.get("counted_by")
    if isinstance(info.get("by_source"), dict) and info["by_source"]:
        unit = "tokens" if isinstance(counted, dict) else "words"
        what = f"{unit} (`{info.get('column')}`: {token_info.unit_label(counted)})"
        by = info["by_source"]
        return what, {s: int(v["rows"]) for s, v in by.items()}, {s: int(v["tokens"]) for s, v in by.items()}
    fields = {f["name"] for f in ((manifest.get("schema") or {}).get("fields") or [])}
    if "source" not in fields:
        # Packed shards (or `output.columns` without `source`): rows no longer carry their
        # source, but a `tokenize` stage counted tokens per source on the way.
        return _tokenize_counters(manifest)
    if int(manifest.get("num_rows") or 0) > MAX_TOKEN_ROWS:
        raise _Skip(f"more than {MAX_TOKEN_ROWS:,} rows: not counted here (sum `n_tokens` or `n_words` with "
                    "thresher.load)")
    if info.get("column") is None and "n_tokens" in fields and not counted:
        # A manifest from before `tokens` was recorded: its `n_tokens` were words.
        what, column = "words (n_tokens of a run before tokenizers: word/punctuation tokens)", "n_tokens"
    elif int(manifest.get("num_bytes") or 0) <= MAX_WORD_COUNT_BYTES:
        what, column = "words (no count column in the shards: whitespace-separated words of text)", "text"
    else:
        raise _Skip("the shards have no n_tokens / n_words column and are too big to count words in here")
    rows: Counter = Counter()
    counts: Counter = Counter()
    for shard in shards:
        t = read_shard(os.path.join(snapshot_dir, shard["path"])).select(["source", column])
        values = t.column(column) if column != "text" else pc.count_substring_regex(t.column("text"), r"\S+")
        grouped = pa.table({"source": t.column("source"), "v": values}).group_by("source").aggregate(
            [("v", "sum"), ([], "count_all")])
        for g in grouped.to_pylist():
            counts[g["source"]] += int(g["v_sum"] or 0)
            rows[g["source"]] += int(g["count_all"])
    return what, dict(rows), dict(counts)


def _tokenize_counters(manifest: dict[str, Any]) -> tuple[str, dict[str, int], dict[str, int]]:
    counters = manifest.get("counters") or {}
    rows: Counter = Counter()
    counts: Counter = Counter()
    for key, value in counters.items():
        stage, _, rest = key.partition("/")
        kind, _, source = rest.partition("/")
        if kind == "tokens_by_source" and source:
            counts[source] += int(value)
        elif kind == "tokenized" and source:
            rows[source] += int(value)
    if not counts:
        raise _Skip("the shards have no `source` column and no tokenize stage counted tokens per source")
    return "tokens (counted by the tokenize stage, before packing)", dict(rows), dict(counts)


def tokens(manifest: dict[str, Any], snapshot_dir: str) -> str:
    parts = []
    info = manifest.get("tokens") if isinstance(manifest.get("tokens"), dict) else {}
    if "counted_by" in info:
        parts.append(note(token_info.counted_by_line(info["counted_by"])))
    try:
        what, rows, counts = token_totals(manifest, snapshot_dir)
    except _Skip as why:
        parts.append(note(str(why)))
        rows, counts, what = {}, {}, "tokens"
    if counts:
        order = sorted(counts)
        unit = what.split(" ")[0]
        plot = svg.horizontal_bars("tokens", f"Written {unit} per source", order, {unit: [counts[s] for s in order]},
                                   xlabel=unit, label_width=160)
        body = [(s, rows[s], counts[s], round(counts[s] / rows[s], 1) if rows[s] else 0) for s in order]
        body.append(("total", sum(rows.values()), sum(counts.values()), ""))
        parts.append(figure(plot, f"Counted over the written shards: {what}."))
        parts.append(table(["source", "rows", unit, "per row"], body))
    elif not parts:
        parts.append(note("No rows were written."))
    reported = []
    for stage, s in (manifest.get("stages") or {}).items():
        rep = s.get("report") if isinstance(s.get("report"), dict) else {}
        for part in ("pool", "selected"):
            if isinstance(rep.get(part), dict) and "tokens" in rep[part]:
                unit = token_info.short_unit(rep.get("counted_by"))
                reported.append((stage, part, rep[part].get("rows"), rep[part]["tokens"], unit))
    if reported:
        parts.append("<h3>Token counts in stage reports</h3>"
                     + table(["stage", "part", "rows", "tokens", "counted in"], reported))
    return "".join(parts)


def quarantine(manifest: dict[str, Any], snapshot_dir: str) -> str:
    by_source = (manifest.get("counts") or {}).get("by_source") or {}
    counts = {s: int(c.get("quarantined", 0)) for s, c in by_source.items()}
    if not any(counts.values()):
        return note("No record was quarantined.")
    reasons: Counter = Counter()
    samples = []
    for f in manifest.get("quarantine") or []:
        t = read_shard(os.path.join(snapshot_dir, f["path"]))
        keep = [c for c in ("source", "source_file", "source_row", "reason", "field") if c in t.column_names]
        t = t.select(keep)
        for r in t.column("reason").to_pylist():
            reasons[r] += 1
        samples += t.slice(0, SAMPLE_QUARANTINE - len(samples)).to_pylist() if len(samples) < SAMPLE_QUARANTINE else []
    order = [s for s in counts if counts[s]]
    plot = svg.horizontal_bars("quarantine", "Quarantined records per source", order,
                               {"quarantined": [counts[s] for s in order]}, xlabel="records", label_width=160)
    parts = [figure(plot), table(["source", "quarantined"], [(s, counts[s]) for s in order])]
    if reasons:
        parts.append("<h3>Reasons</h3>" + table(["reason", "records"], reasons.most_common(20)))
    if samples:
        parts.append("<h3>Examples</h3>" + table(
            ["source", "file", "row", "reason", "field"],
            [(r.get("source"), os.path.basename(str(r.get("source_file"))), r.get("source_row"), r.get("reason"),
              r.get("field")) for r in samples]))
    return "".join(parts)


def links(manifest: dict[str, Any], snapshot_dir: str) -> str:
    files = list(manifest.get("files") or [])
    items = [link("manifest.json")]
    groups: dict[str, list[str]] = {}
    for path in files:
        groups.setdefault(path.split("/", 1)[0] if "/" in path else "", []).append(path)
    parts = ["<ul>" + "".join(f"<li>{x}</li>" for x in items) + "</ul>"]
    shard_rows = [(Raw(link(s["path"])), s.get("rows"), s.get("bytes")) for s in manifest.get("shards") or []]
    if shard_rows:
        parts.append("<h3>Shards</h3>" + table(["shard", "rows", "bytes"], shard_rows))
    for group in sorted(g for g in groups if g != "shards"):
        parts.append(f"<h3>{esc(group or 'other')}</h3><ul>"
                     + "".join(f"<li>{link(p)}</li>" for p in groups[group]) + "</ul>")
    return "".join(parts)
