"""Issue 10, input accounting: hostile inputs are counted, quarantined with file, line and
reason, or fail their source with the file and offset — never a short read that balances.

One test per case of the issue (numbers as there); the reader-level tests run the readers
alone (fast), the `run` tests go through the CLI (slow).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
import zstandard
from typer.testing import CliRunner

from thresher.cli import app
from thresher.io.ingest import InputError, plan_reads, read_task
from thresher.io.readers import jsonl
from thresher.io.tasks import ReadTally, SourceReadError
from thresher.io.validity import MAX_NESTING
from thresher.load import load_manifest, read_shard
from thresher.recipe.load import validate_recipe


def _sha(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _lines(n: int, **extra) -> list[bytes]:
    return [json.dumps({"id": f"r{i}", "text": f"row {i} " * 5, **extra}).encode() for i in range(1, n + 1)]


def _read(tmp_path: Path, source: dict) -> tuple[list[dict], list[dict], int]:
    """(rows, quarantined rows, records counted) of one source, by the readers alone."""
    recipe = validate_recipe({"sources": [source]}, base_dir=str(tmp_path))
    tasks, _ = plan_reads(recipe)
    good: list[dict] = []
    bad: list[dict] = []
    read = 0
    for task in tasks:
        tally = ReadTally()
        for batch, q in read_task(task, 4096, tally):
            good += batch.to_pylist() if batch is not None else []
            bad += q.to_pylist() if q is not None else []
        read += tally.records if tally.counts else 0
    return good, bad, read


def _run(tmp_path: Path, sources: list[dict]):
    """`thresher run` on a recipe of `sources`: (exit code, output, manifest or None)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"sources": sources, "output": {"dir": "out"}}))
    res = CliRunner().invoke(app, ["run", str(recipe), "--no-prefect"])
    out = tmp_path / "out"
    manifest = load_manifest(str(out)) if (out / "latest" / "manifest.json").exists() else None
    return res.exit_code, res.output, manifest


def _quarantine(tmp_path: Path) -> list[dict]:
    """The newest snapshot's quarantine (the latest's, or a failed run's unfinished one)."""
    newest = sorted((tmp_path / "out" / "snapshots").iterdir())[-1]
    return read_shard(str(newest / "quarantine" / "part-00000-00000.arrow")).to_pylist()


# --- case 1: invalid UTF-8 in `text` quarantines its line; reading goes on -------------------


def test_1_invalid_utf8_in_text_quarantines_one_line_and_reads_on(tmp_path):
    lines = _lines(3000)
    lines[1500] = lines[1500].replace(b"row 1501 ", b"row 1501 \xe9", 1)  # line 1,501
    f = tmp_path / "pool.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    before = _sha([f])
    good, bad, read = _read(tmp_path, {"name": "p", "paths": ["pool.jsonl"], "id_field": "id"})
    assert (read, len(good), len(bad)) == (3000, 2999, 1)
    at = lines[1500].index(b"\xe9")
    assert [(r["source_row"], r["reason"], r["raw"]) for r in bad] == [
        (1501, f"invalid UTF-8 at byte {at}", lines[1500])]
    assert good[-1]["source_row"] == 3000 and good[1499]["source_row"] == 1500 and good[1500]["source_row"] == 1502
    assert _sha([f]) == before


def test_1_a_block_that_fails_after_parsing_is_read_line_by_line(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(_lines(50)) + b"\n")

    def broken(*a, **k):
        raise ValueError("normalisation blew up")

    monkeypatch.setattr(jsonl, "table_to_batches", broken)
    good, bad, read = _read(tmp_path, {"name": "a", "paths": ["a.jsonl"]})
    assert (read, len(good), len(bad)) == (50, 50, 0)
    assert [r["source_row"] for r in good] == list(range(1, 51))


@pytest.mark.slow
def test_1_run_counts_what_the_file_holds(tmp_path):
    lines = _lines(3000)
    lines[1500] = lines[1500].replace(b"row 1501 ", b"row 1501 \xe9", 1)
    (tmp_path / "pool.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, output, m = _run(tmp_path, [{"name": "p", "paths": ["pool.jsonl"], "id_field": "id"}])
    assert code == 0, output
    c = m["counts"]["by_source"]["p"]
    assert (c["read"], c["quarantined"], c["written"], c["balanced"]) == (3000, 1, 2999, True)


# --- case 3: truncated / corrupt .zst ----------------------------------------------------------


def _zst_cut_at_block(tmp_path: Path) -> tuple[Path, int]:
    """2,000 lines in one frame; the file cut at the block boundary after line 1,000."""
    sink = io.BytesIO()
    w = zstandard.ZstdCompressor().stream_writer(sink, closefd=False)
    w.write(b"\n".join(_lines(1000)) + b"\n")
    w.flush(zstandard.FLUSH_BLOCK)
    cut = sink.tell()
    w.write(b"\n".join(_lines(2000)[1000:]) + b"\n")
    w.close()
    f = tmp_path / "cut.jsonl.zst"
    f.write_bytes(sink.getvalue()[:cut])
    return f, cut


def test_3_truncated_zst_is_a_failed_read_after_its_rows(tmp_path):
    f, cut = _zst_cut_at_block(tmp_path)
    (task,) = plan_reads(validate_recipe({"sources": [{"name": "z", "paths": [f.name]}]}, base_dir=str(tmp_path)))[0]
    rows = []
    with pytest.raises(SourceReadError) as exc:
        for batch, _q in read_task(task, 4096):
            rows += batch.column("source_row").to_pylist()
    assert rows == list(range(1, 1001))
    assert str(exc.value) == (f"{f}: cannot be read past line 1000 (file byte {cut}): "
                              f"truncated zstd stream: it ends inside a frame, at byte {cut}")


def test_3_corrupt_zst_is_a_failed_read_not_a_crash(tmp_path):
    data = bytearray(zstandard.ZstdCompressor().compress(b"\n".join(_lines(100)) + b"\n"))
    data[10] ^= 0xFF
    (tmp_path / "bad.jsonl.zst").write_bytes(bytes(data))
    (task,) = plan_reads(validate_recipe({"sources": [{"name": "z", "paths": ["bad.jsonl.zst"]}]},
                                         base_dir=str(tmp_path)))[0]
    with pytest.raises(SourceReadError, match=r"bad\.jsonl\.zst: cannot be read past line 0 \(file byte \d+\): "
                                              r"corrupt zstd stream near byte \d+: zstd decompressor error"):
        list(read_task(task, 4096))


@pytest.mark.slow
def test_3_run_with_a_truncated_zst_exits_1_naming_the_file(tmp_path):
    f, _ = _zst_cut_at_block(tmp_path)
    before = _sha([f])
    code, output, m = _run(tmp_path, [{"name": "z", "paths": [f.name]}])
    assert code == 1 and m is None
    assert "source 'z'" in output and "cut.jsonl.zst" in output.replace("\n", "")
    (q,) = _quarantine(tmp_path)
    assert q["source_row"] == -1 and "cannot be read past line 1000" in q["reason"]
    assert _sha([f]) == before


# --- case 4: invalid UTF-8 in any field -------------------------------------------------------


def test_4_invalid_utf8_in_another_jsonl_field_is_quarantined(tmp_path):
    lines = _lines(20)
    lines[4] = lines[4][:-1] + b', "title": "caf\xe9"}'
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good, bad, read = _read(tmp_path, {"name": "a", "paths": ["a.jsonl"]})
    assert (read, len(good), len(bad)) == (20, 19, 1)
    at = lines[4].index(b"\xe9")
    assert (bad[0]["source_row"], bad[0]["reason"]) == (5, f"invalid UTF-8 at byte {at}")


def _arrow_with_bad_utf8(path: Path) -> None:
    titles = pa.array([b"ok", b"caf\xe9", b"fine", None], pa.binary()).view(pa.string())  # unchecked bytes
    nested = pa.StructArray.from_arrays([pa.array([b"a", b"b", b"c", b"\xff"], pa.binary()).view(pa.string())], ["x"])
    t = pa.table({"text": ["one", "two", "three", "four"], "title": titles, "meta": nested})
    with pa.OSFile(str(path), "wb") as fh, pa.ipc.new_file(fh, t.schema) as w:
        w.write_table(t)


def test_4_invalid_utf8_in_a_columnar_file_is_quarantined_by_row_and_field(tmp_path):
    _arrow_with_bad_utf8(tmp_path / "t.arrow")
    good, bad, _ = _read(tmp_path, {"name": "t", "paths": ["t.arrow"]})
    assert [r["text"] for r in good] == ["one", "three"]
    assert [(r["source_row"], r["reason"], r["field"]) for r in bad] == [
        (1, "invalid UTF-8", "title"), (3, "invalid UTF-8", "meta")]
    assert bad[0]["raw"] == b"two,caf\xe9,<struct<x: string>>"


def test_4_a_malformed_csv_row_that_is_not_utf8_is_quarantined_by_line(tmp_path):
    # pyarrow's handler for malformed rows fails on one that is not UTF-8 (it decodes it first).
    (tmp_path / "m.csv").write_bytes(b"id,text,score\nr0,hello,0.1\nr1,caf\xe9 beta\xac0.2\nr2,world,0.3\n")
    good, bad, _ = _read(tmp_path, {"name": "m", "paths": ["m.csv"], "id_field": "id"})
    assert [(r["source_row"], r["id"], r["text"]) for r in good] == [(2, "r0", "hello"), (4, "r2", "world")]
    assert [(r["source_row"], r["reason"], r["raw"]) for r in bad] == [
        (3, "expected 3 fields, got 2", b"r1,caf\xe9 beta\xac0.2")]


@pytest.mark.slow
def test_4_run_writes_only_shards_a_training_job_can_read(tmp_path):
    _arrow_with_bad_utf8(tmp_path / "t.arrow")
    code, output, m = _run(tmp_path, [{"name": "t", "paths": ["t.arrow"], "max_bad_fraction": 0.5}])
    assert code == 0, output
    rows = [r for s in m["shards"] for r in read_shard(str(tmp_path / "out" / "latest" / s["path"])).to_pylist()]
    assert sorted(r["text"] for r in rows) == ["one", "three"]
    c = m["counts"]["by_source"]["t"]
    assert (c["read"], c["quarantined"], c["written"]) == (4, 2, 2)


# --- case 5: deep nesting ---------------------------------------------------------------------


def _deep(depth: int) -> bytes:
    """A record nested `depth` levels (the record object is level 1)."""
    inner = "[" * (depth - 1) + "1" + "]" * (depth - 1)
    return f'{{"text": "deep {depth}", "d": {inner}}}'.encode()


@pytest.mark.parametrize("fast", [True, False])
def test_5_deep_records_are_quarantined_without_crashing(tmp_path, monkeypatch, fast):
    monkeypatch.setattr(jsonl, "FAST_JSON", fast)
    lines = _lines(10) + [_deep(MAX_NESTING), _deep(MAX_NESTING + 1), _deep(64), _deep(30_000)] + _lines(12)[10:]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good, bad, read = _read(tmp_path, {"name": "d", "paths": ["d.jsonl"]})
    assert (read, len(good), len(bad)) == (16, 13, 3)
    assert [r["source_row"] for r in good] == [*range(1, 12), 15, 16]
    assert [(r["source_row"], r["reason"].split(":")[0]) for r in bad] == [
        (12, f"nested deeper than {MAX_NESTING} levels"), (13, f"nested deeper than {MAX_NESTING} levels"),
        (14, "invalid JSON")]
    assert "depth limit exceeded" in bad[2]["reason"]


@pytest.mark.slow
def test_5_run_with_deep_records_goes_on(tmp_path):
    lines = _lines(400) + [_deep(64), _deep(20_000)]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, output, m = _run(tmp_path, [{"name": "d", "paths": ["d.jsonl"]}])
    assert code == 0, output
    c = m["counts"]["by_source"]["d"]
    assert (c["read"], c["quarantined"], c["written"], c["balanced"]) == (402, 2, 400, True)


# --- case 9: text_template checked at validate --------------------------------------------------


def test_9_a_misspelt_template_field_fails_validate(tmp_path):
    (tmp_path / "qa.jsonl").write_bytes(b'{"question": "q", "answer": "a"}\n')
    source = {"name": "qa", "paths": ["qa.jsonl"], "text_template": "{questoin} {answer}"}
    recipe = validate_recipe({"sources": [source]}, base_dir=str(tmp_path))
    with pytest.raises(InputError) as exc:
        plan_reads(recipe)
    assert exc.value.problems == [f"sources.qa: {tmp_path / 'qa.jsonl'}: text_template field 'questoin' is not in "
                                  "the records (fields: ['answer', 'question'])"]


def test_9_unbounded_format_specs_fail_validate(tmp_path):
    (tmp_path / "qa.jsonl").write_bytes(b'{"question": "q", "answer": "a"}\n')
    recipe = validate_recipe({"sources": [{"name": "qa", "paths": ["qa.jsonl"],
                                           "text_template": "{question:>30000000} {answer:{question}}"}]},
                             base_dir=str(tmp_path))
    with pytest.raises(InputError) as exc:
        plan_reads(recipe)
    assert exc.value.problems == [
        "sources.qa: text_template field 'question': format spec '>30000000' asks for a width or precision over 1000",
        "sources.qa: text_template field 'answer': format spec '{question}' takes a value from the record; "
        "write it out",
    ]


def test_several_local_workers_are_refused_with_the_way_out(tmp_path):
    """Beam's local runner with several workers lost record batches (recipe/output.py): the
    recipe is refused before anything runs, naming the local parallel path that works."""
    recipe = {"sources": [{"name": "a", "paths": ["a.jsonl"]}], "output": {"dir": "out"},
              "runner": {"options": {"direct_num_workers": 2, "direct_running_mode": "multi_processing"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(path), "--no-prefect"])
    assert res.exit_code == 2, res.output
    assert "runner.options: direct_num_workers: 2 is refused" in res.output
    assert "use `runner: dask` with `dask_workers: 2`" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_9_cli_validate_exits_2(tmp_path):
    (tmp_path / "qa.jsonl").write_bytes(b'{"question": "q", "answer": "a"}\n')
    recipe = tmp_path / "r.yaml"
    source = {"name": "qa", "paths": ["qa.jsonl"], "text_template": "{questoin}"}
    recipe.write_text(yaml.safe_dump({"sources": [source]}))
    res = CliRunner().invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 2 and "text_template field 'questoin' is not in the records" in res.output


# --- case 12: hub offline ---------------------------------------------------------------------


def test_12_hub_offline_is_a_failed_source_not_a_malformed_record(tmp_path, monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'org/qa' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = validate_recipe({"sources": [{"name": "hub", "format": "hf_hub", "hf_name": "org/qa"}]},
                             base_dir=str(tmp_path))
    (task,) = plan_reads(recipe)[0]
    with pytest.raises(SourceReadError) as exc:
        list(read_task(task, 4096))
    assert str(exc.value) == ("hf://org/qa: the hub dataset cannot be read (HF_HUB_OFFLINE is set), after 0 rows: "
                              "ConnectionError: Couldn't reach 'org/qa' on the Hub (LocalEntryNotFoundError)")


# --- case 13: a file changed during the run ---------------------------------------------------


def test_13_a_file_appended_during_its_read_fails_it(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "JSON_BLOCK", 1000)  # a block per 64 KiB piece read
    f = tmp_path / "a.jsonl"
    f.write_bytes(b"\n".join(_lines(3000)) + b"\n")
    planned = hashlib.sha256(f.read_bytes()).hexdigest()
    (task,) = plan_reads(validate_recipe({"sources": [{"name": "a", "paths": ["a.jsonl"]}]}, base_dir=str(tmp_path)))[0]
    rows = 0
    with pytest.raises(SourceReadError) as exc:
        for batch, _q in read_task(task, 10):
            if rows == 0:
                with open(f, "ab") as fh:  # appended while the reader is part-way through
                    fh.write(b"\n".join(_lines(3005)[3000:]) + b"\n")
            rows += batch.num_rows
    read = f.read_bytes()
    assert str(exc.value) == (f"{f}: changed during the run: planned {task.expect[0]} bytes (sha256 {planned}), "
                              f"read {len(read)} bytes (sha256 {hashlib.sha256(read).hexdigest()})")


def test_13_the_hash_is_of_the_bytes_read(tmp_path):
    f = tmp_path / "a.jsonl.zst"
    f.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(_lines(100)) + b"\n"))
    (task,) = plan_reads(validate_recipe({"sources": [{"name": "a", "paths": [f.name]}]}, base_dir=str(tmp_path)))[0]
    tally = ReadTally()
    assert sum(b.num_rows for b, _ in read_task(task, 4096, tally)) == 100
    assert (tally.nbytes, tally.sha.hexdigest()) == task.expect == (f.stat().st_size, _sha([f])[f.name])


@pytest.mark.slow
def test_13_run_fails_when_a_file_changed(tmp_path, monkeypatch):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b"\n".join(_lines(100)) + b"\n")
    real = jsonl.JsonlReader.read

    def append_then_read(self, task, batch_rows, tally):
        with open(task.path, "ab") as fh:
            fh.write(_lines(101)[100] + b"\n")
        yield from real(self, task, batch_rows, tally)

    monkeypatch.setattr(jsonl.JsonlReader, "read", append_then_read)
    code, output, m = _run(tmp_path, [{"name": "a", "paths": ["a.jsonl"]}])
    assert code == 1 and m is None and "a.jsonl" in output
    (q,) = _quarantine(tmp_path)
    assert re.search(r"changed during the run: planned \d+ bytes", q["reason"])
