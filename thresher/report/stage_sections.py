"""The per-stage sections of `report.html`, each `(manifest, snapshot_dir) -> HTML`: score
histograms (from each selector's score sample, kept and dropped rows stacked, thresholds
marked), DSIR's KL reduction per target and decontamination hits per benchmark with sample
spans from the audit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from thresher.io import fs
from thresher.load import read_shard
from thresher.report import svg
from thresher.report.markup import esc, figure, note, table
from thresher.report.sample import read_sample

BINS = 30
SPANS_PER_BENCHMARK = 5


def stage_reports(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, stage entry, report dict) for every stage, in run order."""
    return [(name, s, s["report"] if isinstance(s.get("report"), dict) else {})
            for name, s in (manifest.get("stages") or {}).items()]


def fallback_thresholds(stage_type: str, params: dict[str, Any], report: dict[str, Any]) -> dict[str, list[float]]:
    """Thresholds of built-in stages that do not (yet) say them in their score sample
    (`Selector.score_thresholds`), read from their report or recipe params. Params in the
    manifest are the recipe's as written, so defaults are repeated here."""
    out: dict[str, list[float]] = {}
    if stage_type == "decontaminate":
        ngram = report.get("ngram") or {}
        if ngram.get("mode", "fraction") == "fraction" and ngram.get("threshold") is not None:
            out["decontam_ngram_score"] = [float(ngram["threshold"])]
        emb = report.get("embedding") or {}
        if emb.get("threshold") is not None:
            out["decontam_embed_score"] = [float(emb["threshold"])]
    elif stage_type == "variance_filter":
        if float(params.get("min_variance") or 0) > 0:
            out["reward_variance"] = [float(params["min_variance"])]
        if params.get("solve_rate_band"):
            out["solve_rate"] = [float(x) for x in params["solve_rate_band"]]
    elif stage_type == "mcts_difficulty":
        out["mcts_difficulty"] = [float(params.get("min_difficulty", 5))]
    return out


def bins(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Bin edges: one per integer for integer scores with few values, else BINS equal bins."""
    if values.size and np.all(values == np.round(values)) and hi - lo <= BINS:
        return np.arange(math.floor(lo) - 0.5, math.ceil(hi) + 1.0, 1.0)
    if hi <= lo:
        return np.array([lo - 0.5, hi + 0.5])
    return np.linspace(lo, hi, BINS + 1)


def score_plot(stage: str, column: str, col: dict[str, Any], thresholds: list[float]) -> str:
    kept = np.array([v for v in col["sample"]["kept"] if v is not None], float)
    dropped = np.array([v for v in col["sample"]["dropped"] if v is not None], float)
    both = np.concatenate([kept, dropped])
    if both.size == 0:
        return note(f"{column}: no values to draw (all {col.get('nulls', 0):,} null).")
    edges = bins(both, float(both.min()), float(both.max()))
    k, _ = np.histogram(kept, edges)
    d, _ = np.histogram(dropped, edges)
    total = k + d
    nonzero = total[total > 0]
    log = bool(nonzero.size and nonzero.max() > 50 * nonzero.min())  # skewed: small bins would vanish
    markers = [(t, f"threshold {svg.fmt(t)}", svg.THRESHOLD) for t in thresholds]
    kinfo = col.get("kept") or {}
    if not thresholds and dropped.size and kept.size and kinfo.get("min") is not None \
            and col.get("min") is not None and kinfo["min"] > col["min"]:
        markers.append((float(kinfo["min"]), f"lowest kept {svg.fmt(kinfo['min'])}", svg.MUTED))
    plot = svg.histogram(f"hist:{stage}:{column}", f"{stage}: {column}", edges.tolist(),
                         {"kept": k.tolist(), "dropped": d.tolist()}, [svg.KEPT, svg.DROPPED], markers,
                         xlabel=column, log=log)
    caption = (f"{col.get('sampled', both.size):,} of {col.get('count', 0):,} rows sampled "
               f"({col.get('nulls', 0):,} null); min {svg.fmt(col.get('min'))}, mean {svg.fmt(col.get('mean'))}, "
               f"max {svg.fmt(col.get('max'))}; kept {kinfo.get('count', 0):,} rows"
               + (f" ({svg.fmt(kinfo.get('min'))} … {svg.fmt(kinfo.get('max'))})" if kinfo.get("count") else "")
               + ".")
    return figure(plot, caption)


def scores(manifest: dict[str, Any], snapshot_dir: str) -> str:
    parts = []
    for name, s, rep in stage_reports(manifest):
        if s.get("kind") != "selector":
            continue
        sample = read_sample(snapshot_dir, name)
        if not sample or not (sample.get("columns") or sample.get("problems")):
            continue
        fallback = fallback_thresholds(str(s.get("type")), s.get("params") or {}, rep)
        plots = [score_plot(name, column, col, col.get("thresholds") or fallback.get(column, []))
                 for column, col in (sample.get("columns") or {}).items()]
        problems = sample.get("problems") or []
        warn = note("Incomplete sample: " + "; ".join(map(str, problems)), "error") if problems else ""
        parts.append(f"<h3>{esc(name)} <small>({esc(s.get('type'))})</small></h3>{warn}"
                     f'<div class="grid">{"".join(plots)}</div>')
    return "".join(parts) or note("No selector wrote a score sample (stages without numeric score columns).")


def kl(manifest: dict[str, Any], snapshot_dir: str) -> str:
    parts = []
    for name, _s, rep in stage_reports(manifest):
        targets = rep.get("targets")
        if not isinstance(targets, dict) or "kl_target_raw" not in rep:
            continue
        entries = dict(targets)
        if len(entries) > 1:
            entries["(pooled)"] = rep
        labels, raw, sel = [], [], []
        for t, e in entries.items():
            labels += [f"{t} · vs pool", f"{t} · vs selection"]
            raw += [float(e["kl_target_raw"]), 0.0]
            sel += [0.0, float(e["kl_target_selected"])]
        plot = svg.horizontal_bars(f"kl:{name}", f"{name}: KL(target ‖ data) per target", labels,
                                   {"KL(target‖pool)": raw, "KL(target‖selection)": sel}, xlabel="KL (nats)")
        rows = [(t, e["kl_target_raw"], e["kl_target_selected"], e["kl_reduction"],
                 f"{100 * e['kl_reduction'] / e['kl_target_raw']:.1f} %" if e["kl_target_raw"] else "")
                for t, e in entries.items()]
        parts.append(f"<h3>{esc(name)}</h3>" + figure(plot, "Lower is closer to the target: the selection "
                                                            "should sit well below the pool.")
                     + table(["target", "KL(target‖pool)", "KL(target‖selection)", "reduction", "relative"], rows))
    return "".join(parts) or note("No importance-resampling stage in this run.")


def audit_spans(snapshot_dir: str, report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per benchmark, its highest-scoring audit entries (the matched spans)."""
    path = next((a for a in report.get("artifacts") or [] if str(a).endswith("-audit.arrow")), None)
    if path is None or not fs.isfile(fs.join(snapshot_dir, path)):
        return {}
    t = read_shard(fs.join(snapshot_dir, path))
    cols = [c for c in ("row_id", "source", "benchmark", "item_id", "method", "score", "span") if c in t.column_names]
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(t.select(cols).to_pylist(), key=lambda r: (-(r.get("score") or 0), str(r.get("row_id")))):
        mine = out.setdefault(str(r.get("benchmark")), [])
        if len(mine) < SPANS_PER_BENCHMARK:
            mine.append(r)
    return out


def _by_method(entry: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in (entry.get("items_found_by_method") or {}).items())


def decontamination(manifest: dict[str, Any], snapshot_dir: str) -> str:
    parts = []
    for name, _s, rep in stage_reports(manifest):
        benchmarks = rep.get("benchmarks")
        if not isinstance(benchmarks, dict) or not all(isinstance(b, dict) for b in benchmarks.values()):
            continue
        names = list(benchmarks)
        sources = sorted({src for b in benchmarks.values() for src in (b.get("rows_flagged_by_source") or {})})
        head = f"<h3>{esc(name)} <small>(action: {esc(rep.get('action', '?'))})</small></h3>"
        if sources:
            series = {src: [int((benchmarks[b].get("rows_flagged_by_source") or {}).get(src, 0)) for b in names]
                      for src in sources}
            head += figure(svg.horizontal_bars(f"decontam:{name}", f"{name}: rows flagged per benchmark", names,
                                               series, label_width=180), "Stacked by source.")
        else:
            head += note("No row matched any benchmark.")
        rows = [(b, e.get("items"), e.get("items_found"), f"{100 * float(e.get('contamination_rate') or 0):.2f} %",
                 e.get("rows_flagged"), _by_method(e)) for b, e in benchmarks.items()]
        head += table(["benchmark", "items", "items found", "items found %", "rows flagged", "by method"], rows)
        spans = audit_spans(snapshot_dir, rep)
        for bench, entries in spans.items():
            head += (f"<h4>{esc(bench)}: sample matches</h4>"
                     + table(["row", "source", "item", "method", "score", "matched span"],
                             [(e.get("row_id"), e.get("source"), e.get("item_id"), e.get("method"),
                               round(float(e.get("score") or 0), 3), e.get("span")) for e in entries], cls="spans"))
        parts.append(head)
    return "".join(parts) or note("No decontamination stage in this run.")
