"""The Prefect artifacts built from a manifest, without a server: keys, the rows table, stage
report markdown, links, and what an "up to date" run shows."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from thresher.flows import artifacts as a

PREFECT_KEY = re.compile(r"^[a-z0-9-]+$")  # prefect.types.names: artifact keys

MANIFEST = {
    "name": "Web_Mix.v2",
    "snapshot": "20261126T170501Z",
    "recipe_sha256": "80a00d525549" + "0" * 52,
    "seconds": 6.25,
    "num_rows": 11,
    "shards": [{"path": "shards/part-00000-00000.arrow", "rows": 11}],
    "counts": {
        "total": {"read": 20, "quarantined": 2, "written": 11, "dropped": 7},
        "by_source": {
            "web": {"read": 12, "quarantined": 2, "written": 5, "balanced": True,
                    "dropped": {"exact_dedup": {"duplicate": 3}, "lang": {"language": 1, "too_short": 1}}},
            "books": {"read": 8, "quarantined": 0, "written": 6, "balanced": True,
                      "dropped": {"lang": {"language": 2}}},
        },
        "balanced": True,
    },
    "stages": {
        "exact_dedup": {"type": "exact_dedup", "version": 1, "kind": "selector", "rows_in": 18,
                        "dropped": {"duplicate": 3}, "report": None},
        "lang": {"type": "language_id", "version": 2, "kind": "selector", "rows_in": 15,
                 "dropped": {"language": 3, "too_short": 1},
                 "report": {"rows": 15, "kept": 11, "threshold": 0.512345, "passed": True,
                            "languages": {f"l{i:02d}": 20 - i for i in range(18)},
                            "kept_ids": [f"id{i}" for i in range(30)], "edges": [0.1, 0.5, 1.0],
                            "model": {"name": "lid.176", "dim": 16},
                            "artifacts": ["reports/lang_audit.arrow"], "note": None}},
        "embed": {"type": "embed", "version": 1, "kind": "feature", "rows_in": 0, "dropped": {},
                  "report": {"rows": 11}},
    },
}


def test_keys_are_valid_prefect_keys_and_stable():
    assert a.artifact_key("Web_Mix.v2", "stage", "exact_dedup") == "web-mix-v2-stage-exact-dedup"
    assert a.artifact_key("__", "rows") == "rows"
    assert a.artifact_key("", "") == "thresher"
    keys = a.stage_keys("r", ["a_b", "a-b", "A.B", "c"])
    assert keys == {"a_b": "r-stage-a-b", "a-b": "r-stage-a-b-2", "A.B": "r-stage-a-b-3", "c": "r-stage-c"}
    assert all(PREFECT_KEY.match(k) for k in keys.values())


def test_rows_table_has_a_column_per_stage_and_reason_and_a_total():
    table = a.rows_table(MANIFEST)
    assert table == [
        {"source": "web", "read": 12, "quarantined": 2, "dropped exact_dedup: duplicate": 3,
         "dropped lang: language": 1, "dropped lang: too_short": 1, "written": 5, "adds up": "yes"},
        {"source": "books", "read": 8, "quarantined": 0, "dropped exact_dedup: duplicate": 0,
         "dropped lang: language": 2, "dropped lang: too_short": 0, "written": 6, "adds up": "yes"},
        {"source": "total", "read": 20, "quarantined": 2, "dropped exact_dedup: duplicate": 3,
         "dropped lang: language": 3, "dropped lang: too_short": 1, "written": 11, "adds up": "yes"},
    ]
    assert [list(r) for r in table] == [list(table[0])] * 3  # every row has every column, in one order


def test_rows_table_says_when_a_source_does_not_add_up():
    m = copy.deepcopy(MANIFEST)
    m["counts"]["by_source"]["books"]["balanced"] = False
    m["counts"]["balanced"] = False
    assert [r["adds up"] for r in a.rows_table(m)] == ["yes", "NO", "NO"]


def test_stage_markdown_shows_counts_and_the_reports_key_numbers():
    md = a.stage_markdown("lang", MANIFEST["stages"]["lang"], "20261126T170501Z")
    lines = md.splitlines()
    assert lines[0] == "## lang (language_id)"
    assert "| 15 | 3 | language |" in lines and "| 15 | 1 | too_short |" in lines
    for row in ("| rows | 15 |", "| kept | 11 |", "| threshold | 0.5123 |", "| passed | yes |",
                "| kept_ids | 30 item(s) |", "| edges | 0.1, 0.5, 1 |", "| model.name | lid.176 |",
                "| model.dim | 16 |"):
        assert row in lines, row
    # A mapping of many numbers: its 15 largest, then how many more.
    assert [ln for ln in lines if ln.startswith("| languages.")] == [
        f"| languages.l{i:02d} | {20 - i} |" for i in range(15)]
    assert "| languages | … 3 more |" in lines
    assert "artifacts" not in md and "note" not in md  # file lists and nulls stay in manifest.json


def test_stage_markdown_of_a_feature_and_of_a_stage_without_report():
    feature = a.stage_markdown("embed", MANIFEST["stages"]["embed"], "s")
    assert "Adds columns; drops no rows." in feature and "| rows | 11 |" in feature
    dedup = a.stage_markdown("exact_dedup", MANIFEST["stages"]["exact_dedup"], "s")
    assert dedup.startswith("## exact_dedup\n") and "| 18 | 3 | duplicate |" in dedup and "(no report)" in dedup


def test_a_long_report_is_cut_with_a_pointer():
    report = {f"k{i:03d}": {"x": i} for i in range(100)}  # nested: not one mapping of numbers
    rows = a.report_lines(report)
    assert len(rows) == a.MAX_REPORT_LINES + 1
    assert rows[-1] == f"| … | {100 - a.MAX_REPORT_LINES} more in reports/ and manifest.json |"


def test_markdown_cells_escape_pipes_and_newlines():
    assert a.report_lines({"why": "a|b\nc"}) == ["| why | a\\|b c |"]


@pytest.fixture()
def snapshot_dir(tmp_path) -> Path:
    d = tmp_path / "out" / "snapshots" / "20261126T170501Z"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{}")
    (tmp_path / "out" / "latest").symlink_to("snapshots/20261126T170501Z")
    return d


def test_a_written_run_has_summary_rows_stages_and_links(snapshot_dir):
    # `latest` is resolved: an old run's links keep pointing at its own snapshot.
    arts = a.build_artifacts("written", MANIFEST, str(snapshot_dir.parent.parent / "latest"))
    assert [(x.kind, x.key) for x in arts] == [
        ("markdown", "web-mix-v2-summary"), ("table", "web-mix-v2-rows"),
        ("markdown", "web-mix-v2-stage-exact-dedup"), ("markdown", "web-mix-v2-stage-lang"),
        ("markdown", "web-mix-v2-stage-embed"), ("link", "web-mix-v2-manifest")]
    assert all(PREFECT_KEY.match(x.key) for x in arts)
    link = arts[-1]
    assert link.link == (snapshot_dir / "manifest.json").as_uri() and link.link.startswith("file:///")
    assert link.link_text == "20261126T170501Z/manifest.json"
    summary = arts[0].markdown
    assert "**Snapshot `20261126T170501Z` written** in 6.2 s: 11 rows in 1 shard(s)." in summary
    assert "20 read, 2 quarantined, 7 dropped, 11 written (adds up: yes)" in summary


def test_report_html_is_linked_only_when_the_snapshot_has_one(snapshot_dir):
    assert "web-mix-v2-report" not in [x.key for x in a.build_artifacts("written", MANIFEST, str(snapshot_dir))]
    (snapshot_dir / "report.html").write_text("<html></html>")
    link = a.build_artifacts("written", MANIFEST, str(snapshot_dir))[-1]
    assert (link.kind, link.key, link.link) == ("link", "web-mix-v2-report", (snapshot_dir / "report.html").as_uri())


def test_an_up_to_date_run_says_so_and_links_the_snapshot_it_kept(snapshot_dir):
    arts = a.build_artifacts("up_to_date", MANIFEST, str(snapshot_dir))
    assert [(x.kind, x.key) for x in arts] == [("markdown", "web-mix-v2-summary"), ("link", "web-mix-v2-manifest")]
    assert ("**Up to date**: snapshot `20261126T170501Z` already has this recipe's and inputs' fingerprint; "
            "nothing was run.") in arts[0].markdown


@pytest.mark.slow  # importing Prefect alone takes seconds
def test_publishing_logs_an_api_failure_and_goes_on(monkeypatch, caplog):
    import prefect.artifacts

    made = []

    def table(**kw):
        raise RuntimeError("API down")

    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", table)
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kw: made.append(kw["key"]))
    monkeypatch.setattr(prefect.artifacts, "create_link_artifact", lambda **kw: made.append(kw["key"]))
    arts = [a.Artifact("table", "r-rows", "d", table=[{"x": 1}]),
            a.Artifact("markdown", "r-summary", "d", markdown="m"),
            a.Artifact("link", "r-manifest", "d", link="file:///x", link_text="x")]
    with caplog.at_level("WARNING", logger="thresher.flows"):
        assert a.publish_artifacts(arts) == ["r-summary", "r-manifest"]
    assert made == ["r-summary", "r-manifest"]
    assert caplog.messages == ["could not publish the table artifact r-rows to Prefect: API down"]
