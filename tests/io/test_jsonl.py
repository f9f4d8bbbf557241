"""JSONL: the block parser and the per-line path give the same rows; bad lines are quarantined
with their line numbers; a file that breaks keeps the rows read before the break."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from tests.conftest import demo_pool_rows, run_recipe
from thresher.engine.build import BadInputError
from thresher.io.ingest import plan_reads, read_task
from thresher.io.readers import READERS, jsonl
from thresher.load import read_shard
from thresher.recipe.load import validate_recipe
from thresher.recipe.schema import Source


def _tasks(tmp_path: Path, source: dict):
    recipe = validate_recipe({"sources": [source]}, base_dir=str(tmp_path))
    return plan_reads(recipe, with_hashes=False)[0]


def _read_all(tasks, batch_rows: int = 4096):
    return [pair for t in tasks for pair in read_task(t, batch_rows)]


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and x.equals(y) and x.schema.equals(y.schema))
        for pa_, pb in zip(a, b, strict=True) for x, y in zip(pa_, pb, strict=True))


def _truncated_gzip(tmp_path: Path) -> None:
    good = "".join(json.dumps({"text": f"row {i} " * 20}) + "\n" for i in range(2000)).encode()
    data = gzip.compress(good)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_truncated_gzip_fails_the_source_and_says_where(tmp_path):
    # Was: quarantined, and the run passed under max_bad_fraction. A file read only part-way
    # is a failed source now (issue 10), whatever the fraction.
    _truncated_gzip(tmp_path)
    with pytest.raises(BadInputError, match=r"source 'c': .*cut\.jsonl\.gz"):
        run_recipe({"sources": [{"name": "c", "paths": ["cut.jsonl.gz"], "max_bad_fraction": 0.01}],
                    "output": {"dir": "out"}}, tmp_path)
    # The failed run never became `latest`; its unfinished snapshot keeps the quarantine.
    assert not (tmp_path / "out" / "latest").exists()
    (q_file,) = (tmp_path / "out" / "snapshots").glob("*/quarantine/part-00000-00000.arrow")
    q = read_shard(str(q_file)).to_pylist()
    assert len(q) == 1 and q[0]["source_row"] == -1
    assert re.fullmatch(r"file unreadable: .*cut\.jsonl\.gz: cannot be read past line \d+ \(file byte \d+\): "
                        r"truncated gzip stream near byte \d+: Compressed file ended before the end-of-stream "
                        r"marker was reached", q[0]["reason"])


def test_truncated_gzip_yields_the_rows_before_the_break_then_raises(tmp_path):
    _truncated_gzip(tmp_path)
    (task,) = _tasks(tmp_path, {"name": "c", "paths": ["cut.jsonl.gz"]})
    got = []
    with pytest.raises((OSError, EOFError)):
        for batch, q in read_task(task, 100):
            assert q is None
            got += batch.column("source_row").to_pylist()
    assert 0 < len(got) < 2000 and got == list(range(1, len(got) + 1))


def _block_test_files(tmp_path: Path) -> list[dict]:
    rows = [dict(r, n=i if i % 3 else i + 0.5, meta={"k": [i, i + 1], "tag": r["source"]},
                 day=f"2021-03-{1 + i % 28:02d}") for i, r in enumerate(demo_pool_rows(600))]
    lines = [json.dumps(r, ensure_ascii=bool(i % 2)) for i, r in enumerate(rows)]
    (tmp_path / "clean.jsonl").write_text("\n".join(lines[:300]) + "\n")   # `day` looks like dates
    (tmp_path / "gaps.jsonl").write_text("\n".join(lines[300:400]) + "\n\n  \n" + "\n".join(lines[400:]) + "\n")
    (tmp_path / "plain.jsonl").write_text("\n".join(json.dumps({k: r[k] for k in ("id", "text", "n", "meta")})
                                                    for r in rows[:200]) + "\n")
    return rows


def _record_block_parses(monkeypatch) -> list:
    parsed: list = []
    real_parse = jsonl.parse_json_block
    monkeypatch.setattr(jsonl, "parse_json_block", lambda *a: parsed.append(real_parse(*a)) or parsed[-1])
    return parsed


def _check_block_rows(out: list[dict]) -> None:
    gaps = [r for r in out if r["source_file"].endswith("gaps.jsonl")]
    assert [r["source_row"] for r in gaps] == list(range(1, 101)) + list(range(103, 303))  # blank lines counted
    # Date-like strings stay strings.
    assert {r["day"] for r in out if r.get("day") is not None} == {f"2021-03-{d:02d}" for d in range(1, 29)}
    plain = [r for r in out if r["source_file"].endswith("plain.jsonl")]
    assert len(plain) == 200 and plain[0]["meta"]["k"] == [0, 1]


@pytest.mark.slow
def test_block_json_parser_and_per_line_path_give_identical_shards(tmp_path, monkeypatch, shard_rows):
    _block_test_files(tmp_path)
    recipe = {"sources": [{"name": "s", "paths": ["clean.jsonl", "gaps.jsonl", "plain.jsonl"], "id_field": "id"}],
              "output": {"dir": "fast"}}
    parsed = _record_block_parses(monkeypatch)
    fast = run_recipe(recipe, tmp_path)
    # plain.jsonl went through the block parser; the date-like string and the blank lines did not.
    assert sorted(t is not None for t in parsed) == [False, False, True]
    monkeypatch.setattr(jsonl, "FAST_JSON", False)
    recipe["output"]["dir"] = "slow"
    slow = run_recipe(recipe, tmp_path)
    assert [s["sha256"] for s in fast.shards] == [s["sha256"] for s in slow.shards]
    _check_block_rows(shard_rows(Path(fast.out_dir)))


def test_block_json_parser_and_per_line_path_give_identical_batches(tmp_path, monkeypatch):
    _block_test_files(tmp_path)
    tasks = _tasks(tmp_path, {"name": "s", "paths": ["clean.jsonl", "gaps.jsonl", "plain.jsonl"], "id_field": "id"})
    parsed = _record_block_parses(monkeypatch)
    fast = _read_all(tasks)
    assert [t is not None for t in parsed] == [False, False, True]
    monkeypatch.setattr(jsonl, "FAST_JSON", False)
    slow = _read_all(tasks)
    assert _same_batches(fast, slow)
    _check_block_rows([r for b, _ in fast for r in b.to_pylist()])


def test_blocks_split_at_line_ends_and_a_line_longer_than_a_block_is_read_whole(tmp_path, monkeypatch):
    # Blocks are read in 64 KiB pieces: 1 KiB blocks make every piece a block, and line 8
    # spans three of them.
    lines = [json.dumps({"text": f"line {i} " + "x" * (150_000 if i == 7 else 500 + i)}) for i in range(300)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))  # no newline at the end
    tasks = _tasks(tmp_path, {"name": "a", "paths": ["a.jsonl"]})
    whole = _read_all(tasks)
    monkeypatch.setattr(jsonl, "JSON_BLOCK", 1024)
    small = _read_all(tasks)
    assert len(small) > len(whole)
    texts = [t for b, _ in small for t in b.column("text").to_pylist()]
    assert texts == [json.loads(x)["text"] for x in lines]
    assert [r for b, _ in small for r in b.column("source_row").to_pylist()] == list(range(1, 301))


MESSY = [
    b'{"text": "ok one", "id": 1}',
    b'{bad json',
    b'{"text": "caf\xff"}',
    b'[1, 2]',
    b'{"nottext": 1}',
    b'{"text": 5}',
    b'{"text": "   "}',
    b'{"text": "ok two", "id": "x"}\r',
    b'',
    b'{"text": "last", "extra": {"a": 1}}',
]


@pytest.mark.parametrize("fast", [True, False])
def test_bad_lines_are_quarantined_with_line_numbers_and_bytes(tmp_path, monkeypatch, fast):
    monkeypatch.setattr(jsonl, "FAST_JSON", fast)
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(MESSY) + b"\n")
    out = _read_all(_tasks(tmp_path, {"name": "m", "paths": ["m.jsonl"], "id_field": "id"}))
    good = [r for b, _ in out if b is not None for r in b.to_pylist()]
    bad = [r for _, q in out if q is not None for r in q.to_pylist()]
    assert [(r["source_row"], r["text"]) for r in good] == [(1, "ok one"), (8, "ok two"), (10, "last")]
    assert good[0]["id"] == "1" and len(good[2]["id"]) == 16  # no id: content hash
    assert [(r["source_row"], r["reason"].split(":")[0], r["field"]) for r in bad] == [
        (2, "invalid JSON", None),
        (3, "invalid UTF-8 at byte 13", None),
        (4, "not a JSON object (got list)", None),
        (5, "missing text field 'text'", "text"),
        (6, "text field 'text' is not a string (got int)", "text"),
        (7, "empty text", "text"),
    ]
    assert bad[0]["raw"] == b"{bad json" and bad[1]["raw"] == MESSY[2]


def test_peek_fields_reads_the_first_record(tmp_path):
    reader, src = READERS["jsonl"], Source(name="a", paths=["a.jsonl"])
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'\n{"question": "q", "answer": 1}\n{"other": 2}\n'))
    (tmp_path / "b.jsonl").write_bytes(b"[1]\n")
    (tmp_path / "c.jsonl").write_bytes(b"\n  \n")
    assert reader.peek_fields(src, str(tmp_path / "a.jsonl.gz")) == {"question", "answer"}
    assert reader.peek_fields(src, str(tmp_path / "b.jsonl")) == set()
    assert reader.peek_fields(src, str(tmp_path / "c.jsonl")) is None
