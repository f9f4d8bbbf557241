"""CSV: the header is read the way pyarrow's reader will read it (delimiter, quoting, BOM) and
checked before the run; malformed rows and bytes that are not UTF-8 are quarantined by line."""

from __future__ import annotations

import gzip
import io

import pyarrow.csv as pcsv
import pytest

from thresher.io.ingest import InputError, plan_reads
from thresher.io.readers.csv import read_header
from thresher.recipe.load import validate_recipe
from thresher.stages.decontam.benchmarks import Benchmark, check_benchmarks


def _plan(tmp_path, **source):
    recipe = validate_recipe({"sources": [{"name": "c", **source}]}, base_dir=str(tmp_path))
    return plan_reads(recipe, with_hashes=False)


def test_header_check_honours_csv_delimiter(tmp_path, read_source):
    with gzip.open(tmp_path / "semi.csv.gz", "wb") as fh:
        fh.write(b"text;n\nalpha;1\nbeta;2\n")
    tasks, _ = _plan(tmp_path, paths=["semi.csv.gz"], csv_delimiter=";")
    assert len(tasks) == 1
    good, bad = read_source({"name": "c", "paths": ["semi.csv.gz"], "csv_delimiter": ";"})
    assert [(r["source_row"], r["text"], r["n"]) for r in good] == [(2, "alpha", 1), (3, "beta", 2)] and bad == []
    # Read with the wrong delimiter, the header is one column named "text;n".
    with pytest.raises(InputError) as exc:
        _plan(tmp_path, paths=["semi.csv.gz"])
    assert exc.value.problems == [
        f"sources.c: {tmp_path / 'semi.csv.gz'}: header has no column 'text' (columns: ['text;n'])"]


@pytest.mark.parametrize("data,delimiter", [
    (b'\xef\xbb\xbftext,b\n1,2\n', ","),           # a UTF-8 byte-order mark
    (b' text ,"a,b"\nx,y\n', ","),                   # spaces kept, a quoted delimiter
    (b'"te""xt";b\nx;y\n', ";"),                     # an escaped quote
    (b'"multi\nline",text\nx,y\n', ","),             # a quoted newline
    (b'\n\ntext\tb\nx\ty\n', "\t"),                  # blank lines before the header
])
def test_read_header_agrees_with_pyarrow(tmp_path, data, delimiter):
    (tmp_path / "h.csv").write_bytes(data)
    want = pcsv.read_csv(io.BytesIO(data), parse_options=pcsv.ParseOptions(delimiter=delimiter,
                                                                           newlines_in_values=True)).column_names
    assert read_header(str(tmp_path / "h.csv"), delimiter) == want


def test_empty_file_has_no_header(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    assert read_header(str(tmp_path / "e.csv")) is None
    with pytest.raises(InputError, match=r"header has no column 'text' \(columns: \[\]\)"):
        _plan(tmp_path, paths=["e.csv"])


def test_bad_rows_and_invalid_utf8_are_quarantined_by_line(tmp_path, read_source):
    (tmp_path / "m.csv").write_bytes(b'id,text,other\n1,hello,a\n2,wor\xffld,b\n4,"quoted, with comma",c\n5,,d\n'
                                     b'6,too,many,fields\n')
    good, bad = read_source({"name": "m", "paths": ["m.csv"], "id_field": "id"})
    assert [(r["source_row"], r["id"], r["text"]) for r in good] == [(2, "1", "hello"), (4, "4", "quoted, with comma")]
    assert [(r["source_row"], r["reason"], r["field"]) for r in bad] == [
        (6, "expected 3 fields, got 4", None),
        (3, "invalid UTF-8", "text"),
        (5, "empty text", "text"),
    ]
    assert bad[0]["raw"] == b"6,too,many,fields" and bad[1]["raw"] == b"2,wor\xffld,b"


def test_rows_after_a_malformed_row_keep_their_line_numbers(tmp_path, read_source):
    (tmp_path / "m.csv").write_bytes(b"id,text\n1,a\n2,b,extra\n3,c\n")
    good, _ = read_source({"name": "m", "paths": ["m.csv"], "id_field": "id"})
    assert [(r["id"], r["source_row"]) for r in good] == [("1", 2), ("3", 4)]


def test_benchmark_check_reads_a_quoted_csv_header(tmp_path):
    (tmp_path / "b.csv").write_text('"question","answer"\n"What, then?",5\n')
    recipe = validate_recipe({"sources": [{"name": "s", "paths": ["b.csv"]}]}, base_dir=str(tmp_path))
    ok = Benchmark(name="b", paths=["b.csv"], fields=["question", "{question} {answer}"])
    assert check_benchmarks(recipe, [ok]) == []
    missing = Benchmark(name="b", paths=["b.csv"], fields=["problem"])
    (problem,) = check_benchmarks(recipe, [missing])
    assert problem.startswith("benchmarks.0 (b): sources.b: ") and "header has no column 'problem'" in problem
