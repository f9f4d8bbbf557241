"""`report.html` and the score sample it draws from: the sample's merge (same rows for any
batching), the selector template writing it (row-local and global stages), the page drawn
from a hand-made snapshot (every section, exact numbers, thresholds, escaping, a broken
section) and — slow — a real run's snapshot rendered in headless Chromium, where every plot
must lay out and put coloured pixels on screen."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import DEMO_DATA, demo_pool_rows, run_recipe
from thresher.core import Selector
from thresher.report import sample as ss
from thresher.report.html import REPORT, write_report
from thresher.testing.harness import make_batch, run_stage

# ---------------------------------------------------------------------------------------
# Reading the page back


class Plots(HTMLParser):
    """data-plot id -> number of data marks (`rect.mark` with positive width and height)."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, int] = {}
        self.current: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and "plot" in (a.get("class") or "").split():
            self.current = a["data-plot"]
            assert self.current not in self.plots, f"two plots named {self.current}"
            self.plots[self.current] = 0
        elif tag == "rect" and a.get("class") == "mark" and self.current is not None:
            if float(a["width"]) > 0 and float(a["height"]) > 0:
                self.plots[self.current] += 1

    def handle_endtag(self, tag):
        if tag == "svg":
            self.current = None


def plots_of(page: str) -> dict[str, int]:
    p = Plots()
    p.feed(page)
    return p.plots


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


# ---------------------------------------------------------------------------------------
# The sample


def _batch(values, keys, keep):
    b = pa.record_batch({"__row_key": pa.array(keys, pa.uint64()), "id": pa.array([str(k) for k in keys]),
                         "score": pa.array(values, pa.float64())})
    return b, np.asarray(keep, bool)


def test_score_sample_is_the_same_for_any_batching_and_merge_order():
    n = 1000
    values = [None if i % 100 == 7 else float(i) for i in range(n)]
    keep = [i % 3 == 0 for i in range(n)]

    def sample(sizes, reverse=False):
        parts, start = [], 0
        for size in sizes:
            b, k = _batch(values[start:start + size], list(range(start, start + size)), keep[start:start + size])
            parts.append(ss.ScoreSample.of_batch(b, k, ["score", "id"], ss.row_hashes(b, "__row_key", "id"), 100))
            start += size
        out = parts[::-1] if reverse else parts
        total = out[0]
        for p in out[1:]:
            total = total + p
        return total.to_json("s", {"score": 500})

    one = sample([n])
    assert sample([1] * 200 + [800]) == one == sample([7, 300, 693], reverse=True)
    col = one["columns"]["score"]
    assert list(one["columns"]) == ["score"]  # `id` is a string: not a score
    assert (one["rows"], col["count"], col["nulls"], col["sampled"]) == (1000, 990, 10, 100)
    assert (col["min"], col["max"]) == (0.0, 999.0)
    assert col["mean"] == pytest.approx(sum(v for v in values if v is not None) / 990)
    assert col["kept"] == {"count": 334, "min": 0.0, "max": 999.0}  # kept rows, null or not
    assert col["thresholds"] == [500.0]
    # the sample is exactly the 100 non-null rows with the smallest hash of their row key
    valid = np.array([v is not None for v in values])
    h = ss.mix64(np.arange(n, dtype=np.uint64))
    chosen = np.arange(n)[valid][np.argsort(h[valid])[:100]]
    assert col["sample"]["kept"] == sorted(float(i) for i in chosen if keep[i])
    assert col["sample"]["dropped"] == sorted(float(i) for i in chosen if not keep[i])


class MinLength(Selector):
    """Row-local: keep texts of 3+ characters; a score column from score(), one from decide()."""

    type_name = "min_length"

    def score(self, batch):
        return {"length": pc.utf8_length(batch.column("text"))}

    def decide(self, batch):
        length = batch.column("length").to_numpy()
        return length >= 3, "short", {"ratio": pa.array(length / 10.0), "tag": pa.array(["x"] * len(length))}

    def score_thresholds(self):
        return {"length": 3}


class Longest(Selector):
    """Global: keep the two longest texts (score in score(), the cut in select())."""

    type_name = "longest"

    def score(self, batch):
        return {"length": pc.utf8_length(batch.column("text")), "__scratch": pa.array([1] * batch.num_rows)}

    def select(self, scored):
        import apache_beam as beam

        def best(batches):
            pairs = sorted((-ln, int(k)) for b in batches for ln, k in
                           zip(b.column("length").to_pylist(), b.column("__row_key").to_numpy(), strict=True))
            return np.sort(np.array([k for _, k in pairs[:2]], np.uint64))

        return scored | "All" >> beam.combiners.ToList() | "Best" >> beam.Map(best)

    def decide(self, batch, selected):
        return np.isin(batch.column("__row_key").to_numpy(), selected), "not_top"

    def report(self, summary, selected=None):
        return {"kept_keys": len(selected)}


TEXTS = ["a", "abcd", "ab", "abcdef", "abc", "", "abcde"]


# The global path is also run (slow) by the real snapshot below: variance_filter and
# importance_resample are global selectors.
@pytest.mark.parametrize("stage, kept, thresholds", [
    (MinLength, 4, [3.0]), pytest.param(Longest, 2, None, marks=pytest.mark.slow)])
def test_the_template_samples_score_and_decide_columns_and_leaves_reports_alone(tmp_path, stage, kept, thresholds):
    res = run_stage(stage, [{"text": t} for t in TEXTS], batch_rows=3, out_dir=str(tmp_path))
    files = list(tmp_path.rglob(f"*{ss.SUFFIX}"))
    assert [f.name for f in files] == [f"{stage.type_name}{ss.SUFFIX}"]
    data = json.loads(files[0].read_text())
    cols = data["columns"]
    # numeric columns that score()/decide() added; not strings, internal columns or inputs
    assert sorted(cols) == (["length", "ratio"] if stage is MinLength else ["length"])
    length = cols["length"]
    assert (data["rows"], length["count"], length["min"], length["max"]) == (7, 7, 0.0, 6.0)
    assert length["kept"]["count"] == kept == res.kept.num_rows
    assert sorted(length["sample"]["kept"] + length["sample"]["dropped"]) == sorted(float(len(t)) for t in TEXTS)
    assert length.get("thresholds") == thresholds
    # the decisions' bookkeeping never reaches the rows or the stage's own report
    assert not (res.kept.schema.metadata or {}) and "__keep" not in res.kept.column_names
    if stage is Longest:
        assert res.report == {"kept_keys": 2}
    else:
        assert res.report is None  # no summarise/report: still no report file


# ---------------------------------------------------------------------------------------
# The page, from a hand-made snapshot


def _write_arrow(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as fh, pa.ipc.new_stream(fh, table.schema) as w:
        w.write_table(table)


def _sample(snap: Path, stage: str, columns: dict[str, list], keep: list[bool], thresholds=None) -> None:
    n = len(keep)
    b = make_batch([{"text": "x", **{c: v[i] for c, v in columns.items()}} for i in range(n)])
    s = ss.ScoreSample.of_batch(b, np.array(keep), list(columns), ss.row_hashes(b, "__row_key", "id"))
    ss.write_sample(s, ss.sample_path(str(snap / "reports"), stage), stage, thresholds)


EVIL = "<script>alert(1)</script>"


def _stage(kind, type_, rows_in, dropped, report=None, params=None):
    return {"type": type_, "kind": kind, "params": params or {}, "rows_in": rows_in, "dropped": dropped,
            "report": report}


def synthetic_snapshot(snap: Path) -> dict:
    _write_arrow(snap / "shards" / "part-0.arrow", pa.table({
        "id": ["a", "b", "c"], "text": ["x", "y", "z"], "source": ["web", "web", EVIL], "n_tokens": [10, 20, 7]}))
    _write_arrow(snap / "quarantine" / "part-0.arrow", pa.table({
        "source": ["web"], "source_file": ["/data/web.jsonl"], "source_row": [5], "reason": ["invalid JSON"],
        "field": [None], "raw": [b"{"]}, schema=pa.schema([("source", pa.string()), ("source_file", pa.string()),
                                                            ("source_row", pa.int64()), ("reason", pa.string()),
                                                            ("field", pa.string()), ("raw", pa.binary())])))
    _write_arrow(snap / "reports" / "decon-audit.arrow", pa.table({
        "row_id": ["m1", "m2"], "source": [EVIL, EVIL], "benchmark": ["gsm8k", "gsm8k"], "item_id": ["g/1", "g/2"],
        "method": ["ngram", "ngram"], "score": [1.0, 0.75], "span": [f"tom gets {EVIL} car washes", "second span"]}))
    _sample(snap, "decon", {"decontam_ngram_score": [0.0] * 8 + [0.75, 1.0]}, [True] * 8 + [False] * 2)
    _sample(snap, "vf", {"solve_rate": [0.0, 0.25, 0.5, 0.75, 1.0, 0.5],
                         "reward_variance": [0, .1875, .25, .1875, 0, .25]}, [False, False, True, True, False, True])
    _sample(snap, "mcts", {"mcts_difficulty": [2, 6, 9, None]}, [False, True, True, True])
    _sample(snap, "dsir", {"dsir_log_weight": [-5.0, -1.0, 2.0, 3.5]}, [False, False, True, True])
    by_source = {
        "web": {"read": 12, "quarantined": 1, "written": 2,
                "dropped": {"vf": {"all_wrong": 4}, "dsir": {"not_selected": 5}}},
        EVIL: {"read": 5, "quarantined": 0, "written": 1,
               "dropped": {"decon": {"contaminated:gsm8k": 2}, "mcts": {"too_easy": 1}, "dsir": {"not_selected": 1}}},
    }
    return {
        "format": "thresher-manifest/1", "name": "synthetic", "snapshot": "20260101T000000Z",
        "created_at": "2026-01-01T00:00:00+00:00", "recipe_sha256": "ab" * 32, "num_rows": 3, "num_bytes": 999,
        "counts": {"total": {"read": 17, "quarantined": 1, "written": 3, "dropped": 13}, "by_source": by_source},
        "stages": {
            "decon": _stage("selector", "decontaminate", 16, {"contaminated:gsm8k": 2}, {
                "action": "drop", "ngram": {"mode": "fraction", "threshold": 0.5},
                "artifacts": ["reports/decon-audit.arrow"],
                "benchmarks": {"gsm8k": {"items": 1319, "items_found": 2, "contamination_rate": 2 / 1319,
                                         "rows_flagged": 2, "rows_flagged_by_source": {EVIL: 2},
                                         "items_found_by_method": {"ngram": 2}}}}),
            "feats": _stage("feature", "ngram_features", 0, {}),
            "vf": _stage("selector", "variance_filter", 14, {"all_wrong": 4}, {"rows": 14},
                         {"precomputed_rewards": ["r"], "solve_rate_band": [0.3, 0.8]}),
            "mcts": _stage("selector", "mcts_difficulty", 10, {"too_easy": 1}, {"rows": 10}),
            "dsir": _stage("selector", "importance_resample", 9, {"not_selected": 6}, {
                "kl_target_raw": 0.4, "kl_target_selected": 0.1, "kl_reduction": 0.3,
                "targets": {"math": {"kl_target_raw": 0.5, "kl_target_selected": 0.1, "kl_reduction": 0.4},
                            "code": {"kl_target_raw": 0.3, "kl_target_selected": 0.2, "kl_reduction": 0.1}},
                "pool": {"rows": 9, "tokens": 900}, "selected": {"rows": 3, "tokens": 37}}),
        },
        "shards": [{"path": "shards/part-0.arrow", "rows": 3, "bytes": 999}],
        "schema": {"fields": [{"name": n} for n in ("id", "text", "source", "n_tokens")]},
        "quarantine": [{"path": "quarantine/part-0.arrow", "rows": 1}],
        "files": ["shards/part-0.arrow", "quarantine/part-0.arrow", "reports/decon-audit.arrow", "reports/dsir.json"],
    }


EXPECTED_SYNTHETIC = {"flow", "drops", "tokens", "quarantine", "kl:dsir", "decontam:decon",
                      "hist:decon:decontam_ngram_score", "hist:vf:solve_rate", "hist:vf:reward_variance",
                      "hist:mcts:mcts_difficulty", "hist:dsir:dsir_log_weight"}


def test_the_report_draws_every_section_of_a_snapshot(tmp_path):
    manifest = synthetic_snapshot(tmp_path)
    assert write_report(str(tmp_path), manifest) == REPORT
    page = (tmp_path / REPORT).read_text()
    plots = plots_of(page)
    assert set(plots) == EXPECTED_SYNTHETIC and all(plots.values()), plots
    # marks: flow = 7 steps x 2 sources; drops = 5 (stage, reason) rows, one source each; KL = 2 per
    # target and pooled
    assert [plots[p] for p in ("flow", "drops", "kl:dsir", "tokens", "decontam:decon")] == [14, 5, 6, 2, 1]
    assert plots["hist:mcts:mcts_difficulty"] == 3  # integer bins 2, 6, 9 (the null is counted, not drawn)
    text = text_of(page)
    # rows per source after each step: read, valid, decon, vf, mcts, dsir, written
    assert "web 12 11 11 7 7 2 2" in " ".join(text.split())
    assert f"{EVIL} 5 5 3 3 2 1 1" in " ".join(text.split())
    # tokens summed from the shard per source, and the stage report's counts
    assert "web 2 30 15" in " ".join(text.split()) and "total 3 37" in " ".join(text.split())
    # thresholds: from the decontaminate report, variance_filter's band, mcts's default 5
    for label in ("threshold 0.5", "threshold 0.3", "threshold 0.8", "threshold 5"):
        assert label in text, label
    assert "lowest kept 2" in text  # DSIR has no threshold: where the selection starts
    assert "tom gets <script>alert(1)</script> car washes" in text and "g/2" in text  # spans, escaped
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "invalid JSON" in text and 'href="manifest.json"' in page and 'href="shards/part-0.arrow"' in page
    assert "Could not draw" not in page


def test_a_section_that_fails_says_why_and_the_rest_still_draws(tmp_path, caplog):
    manifest = synthetic_snapshot(tmp_path)
    manifest["stages"]["dsir"]["report"]["targets"]["math"]["kl_target_raw"] = "oops"
    assert write_report(str(tmp_path), manifest) == REPORT
    page = (tmp_path / REPORT).read_text()
    assert set(plots_of(page)) == EXPECTED_SYNTHETIC - {"kl:dsir"}
    assert "Could not draw this section: ValueError" in page
    assert any("could not draw" in r.message and "KL reduction" in r.message for r in caplog.records)
    # a manifest that is not one at all still gets a page saying so; an unwritable folder, None
    assert write_report(str(tmp_path), {"stages": "nonsense", "counts": 3}) == REPORT
    assert "Could not draw" in (tmp_path / REPORT).read_text()
    assert write_report(str(tmp_path / REPORT / "sub"), manifest) is None


# ---------------------------------------------------------------------------------------
# A real run, rendered in Chromium (slow)

CHECK_SCRIPT = """<script>
const out = {}; const plots = [...document.querySelectorAll("svg.plot")]; let pending = plots.length;
function finish() { if (--pending > 0) return; const p = document.createElement("pre");
  p.id = "plotcheck"; p.textContent = JSON.stringify(out); document.body.appendChild(p); }
for (const s of plots) {
  const r = s.getBoundingClientRect();
  const marks = [...s.querySelectorAll(".marks > *")].filter(m => {
    const b = m.getBoundingClientRect(); return b.width > 0 && b.height > 0; }).length;
  const rec = out[s.dataset.plot] = {svg: s instanceof SVGSVGElement, w: r.width, h: r.height, marks: marks};
  const img = new Image();
  img.onload = () => { const c = document.createElement("canvas"); c.width = r.width; c.height = r.height;
    const g = c.getContext("2d"); g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data;
    let ink = 0; for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 40) ink++; }
    rec.ink = ink; finish(); };
  img.onerror = () => { rec.ink = -1; finish(); };
  img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(new XMLSerializer().serializeToString(s));
}
if (!plots.length) { pending = 1; finish(); }
</script>"""


def render_in_chromium(page: Path, tmp_path: Path) -> dict:
    """Each plot as Chromium laid it out: its size, data marks with a non-empty box, and
    coloured (non-grey) pixels when the SVG is drawn onto a canvas."""
    chromium = shutil.which("chromium")
    checked = tmp_path / "checked.html"
    # A control that must come back empty: a plot whose only mark is white on white.
    control = ('<svg class="plot" data-plot="control" xmlns="http://www.w3.org/2000/svg" width="50" height="50">'
               '<g class="marks"><rect x="0" y="0" width="0" height="9" fill="#0072B2"/>'
               '<rect x="5" y="5" width="20" height="20" fill="#fff"/></g></svg>')
    checked.write_text(page.read_text().replace("</body>", control + CHECK_SCRIPT + "</body>"))
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000", "--dump-dom",
                          checked.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="plotcheck">(.*?)</pre>', out.stdout, re.S)
    assert found, f"chromium printed no plot check (rc {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _rewards(i: int) -> list[float]:
    return [1.0 if j < i % 5 else 0.0 for j in range(4)]  # solve rates 0, .25, .5, .75, 1 in turn


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_real_snapshot_report_renders_every_plot_in_chromium(tmp_path):
    with open(tmp_path / "pool.jsonl", "w") as fh:
        for i, r in enumerate(demo_pool_rows(240)):
            fh.write(json.dumps({"id": r["id"], "text": r["text"], "rewards": _rewards(i)}) + "\n")
            if i == 100:
                fh.write('{"id": "broken", "text": \n')  # quarantined
    with open(tmp_path / "math.jsonl", "w") as fh:
        for i, r in enumerate(pq.read_table(DEMO_DATA / "math_sample.parquet").select(["id", "text"]).to_pylist()):
            fh.write(json.dumps({**r, "rewards": _rewards(i + 2)}) + "\n")
    run = run_recipe({
        "name": "report-test",
        "sources": [{"name": "pool", "paths": [str(tmp_path / "pool.jsonl")], "id_field": "id"},
                    {"name": "math", "paths": [str(tmp_path / "math.jsonl")], "id_field": "id"}],
        "stages": [
            {"type": "decontaminate",
             "params": {"benchmarks": [{"preset": "gsm8k", "paths": [str(DEMO_DATA / "gsm8k_test.jsonl.gz")]}]}},
            {"type": "variance_filter", "params": {"precomputed_rewards": ["rewards"], "solve_rate_band": [0.3, 0.8]}},
            {"type": "importance_resample", "params": {
                "target": [{"name": "math_target", "paths": [str(DEMO_DATA / "math_target.jsonl.gz")]}],
                "k": 100, "num_buckets": 1000}},
        ],
        "output": {"dir": str(tmp_path / "out")},
    }, tmp_path)
    snap = run.out_dir
    manifest = json.loads(Path(snap, "manifest.json").read_text())
    assert write_report(snap, manifest) == REPORT
    # the samples saw every row each stage saw, and kept what the stage kept
    for name, s in manifest["stages"].items():
        sample = ss.read_sample(snap, name)
        assert sample["rows"] == s["rows_in"], name
        for col in sample["columns"].values():
            assert col["count"] + col["nulls"] == s["rows_in"]
            assert col["kept"]["count"] == s["rows_in"] - sum(s["dropped"].values())
    assert manifest["stages"]["variance_filter"]["dropped"] == {
        "all_wrong": 107, "all_correct": 108, "solve_rate_out_of_band": 107}
    assert manifest["stages"]["decontaminate"]["dropped"] == {"contaminated:gsm8k": 10}
    page = Path(snap, REPORT).read_text()
    expected = {"flow", "drops", "tokens", "quarantine", "kl:importance_resample", "decontam:decontaminate",
                "hist:decontaminate:decontam_ngram_score", "hist:importance_resample:dsir_log_weight",
                *(f"hist:variance_filter:{c}"
                  for c in ("n_rollouts", "reward_variance", "rollout_failures", "solve_rate"))}
    assert set(plots_of(page)) == expected
    text = " ".join(text_of(page).split())
    assert "math 310 310 300 122 99 99" in text and "pool 241 240 240 96 1 1" in text
    assert "threshold 0.3" in text and "threshold 0.8" in text and "threshold 0.5" in text
    assert "forum:0 math gsm8k/135 ngram 1 tom gets 4 car washes a month" in text  # a span of a contaminated row
    drawn = render_in_chromium(Path(snap, REPORT), tmp_path)
    assert drawn.pop("control") == {"svg": True, "w": 50, "h": 50, "marks": 1, "ink": 0}  # the check can fail
    assert set(drawn) == expected
    for plot, d in drawn.items():
        assert d["svg"] and d["w"] > 0 and d["h"] > 0, (plot, d)
        assert d["marks"] > 0 and d["ink"] > 0, (plot, d)
    assert os.path.getsize(Path(snap, REPORT)) < 200_000
