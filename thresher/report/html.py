"""`report.html`: one self-contained page per snapshot (inline CSS and SVG, no script, no
network) that shows where the rows went and why.

    from thresher.report.html import write_report
    write_report(snapshot_dir, manifest)   # -> "report.html", written atomically

Sections: header, rows per source through the stages, drops per stage and reason, score
histograms with thresholds, KL reduction per target, decontamination hits with sample spans,
token totals, quarantine, links. A section that fails to draw says why in the page (and in a
warning in the log) and the others still draw: the report never fails a run.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from thresher.io.atomic import write_bytes_atomic
from thresher.report import sections, stage_sections
from thresher.report.markup import esc

log = logging.getLogger(__name__)

REPORT = "report.html"

Section = Callable[[dict[str, Any], str], str]
SECTIONS: list[tuple[str, str, Section]] = [
    ("summary", "Snapshot", sections.header),
    ("flow", "Rows per source through the stages", sections.flow),
    ("drops", "Drops per stage and reason", sections.drops),
    ("scores", "Score distributions", stage_sections.scores),
    ("kl", "Importance resampling: KL reduction per target", stage_sections.kl),
    ("decontamination", "Decontamination hits per benchmark", stage_sections.decontamination),
    ("tokens", "Token totals", sections.tokens),
    ("quarantine", "Quarantine", sections.quarantine),
    ("files", "Files", sections.links),
]

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 24px 48px;color:#222}
h1{font-size:22px;margin:24px 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:20px 0 6px}h4{font-size:13px;margin:14px 0 4px}small{color:#666;font-weight:normal}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}td.num{text-align:right}
th{background:#f4f4f4}table.kv th{display:none}table.spans td:last-child{font-family:monospace;max-width:640px}
figure{margin:8px 0;display:inline-block}figcaption{font-size:12px;color:#555;max-width:720px}
.grid{display:flex;flex-wrap:wrap;gap:8px 24px}.grid figcaption{max-width:460px}
p.error{background:#fde8e8;border:1px solid #e99;padding:6px 10px}.note{color:#555}
"""


def render(snapshot_dir: str, manifest: dict[str, Any]) -> tuple[str, list[str]]:
    """The page, and the sections that could not be drawn (with why)."""
    problems: list[str] = []
    body = []
    for key, title, build in SECTIONS:
        try:
            html = build(manifest, snapshot_dir)
        except Exception as exc:  # one broken section must not cost the others (or the run)
            problems.append(f"{title}: {type(exc).__name__}: {exc}")
            log.warning("report.html: could not draw %r for snapshot %s: %s\n%s", title, snapshot_dir, exc,
                        traceback.format_exc(limit=3))
            html = f'<p class="error">Could not draw this section: {esc(type(exc).__name__)}: {esc(exc)}</p>'
        body.append(f'<section id="{key}"><h2>{esc(title)}</h2>{html}</section>')
    return page(manifest, "".join(body), problems), problems


def page(manifest: dict[str, Any], body: str, problems: list[str]) -> str:
    name, sid = manifest.get("name", "?"), manifest.get("snapshot", "?")
    nav = "".join(f'<a href="#{key}">{esc(title.split(":")[0])}</a>' for key, title, _ in SECTIONS)
    warn = ""
    if problems:
        warn = ('<p class="error">Some parts could not be drawn:</p><ul>'
                + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="thresher report.html">'
            f"<title>{esc(name)} · snapshot {esc(sid)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(name)} <small>snapshot {esc(sid)}</small></h1><nav>{nav}</nav>{warn}{body}</body></html>")


def write_report(snapshot_dir: str, manifest: dict[str, Any]) -> str | None:
    """Write `report.html` into `snapshot_dir` (atomically) and return "report.html", or None
    when not even a minimal page could be written (the disk): never raises."""
    start = time.perf_counter()
    try:
        html, problems = render(snapshot_dir, manifest)
    except Exception as exc:
        log.warning("report.html: could not draw the report of snapshot %s: %s", snapshot_dir, exc)
        problems = [f"the whole report: {type(exc).__name__}: {exc}"]
        html = page(manifest if isinstance(manifest, dict) else {}, "", problems)
    try:
        write_bytes_atomic(os.path.join(snapshot_dir, REPORT), html.encode("utf-8"))
    except Exception as exc:
        log.warning("report.html: could not write %s: %s (the snapshot is fine without it)",
                    os.path.join(snapshot_dir, REPORT), exc)
        return None
    log.info("report.html written in %.2f s%s", time.perf_counter() - start,
             f" ({len(problems)} part(s) could not be drawn)" if problems else "")
    return REPORT
