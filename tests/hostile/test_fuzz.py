"""Fuzzing the readers with corrupt inputs (issue 10).

Random corruption — byte flips, truncation (mid-record, and at a gzip flush point / zstd block
or member/frame boundary), inserted NULs, deep nesting (100 and 20,000 levels), huge lines
(10 and 20 MiB), invalid UTF-8 in the text, in other fields and in keys, wrong types, blank
and CRLF lines, wrong field counts — of generated files of every input format (JSONL plain,
.gz, .zst; CSV; Parquet; Arrow IPC file and stream; `datasets` save_to_disk). For every file:

    either the run fails with a one-line message naming the file,
    or every record the file really holds is written or quarantined (with file, line and
    reason) — never fewer rows in silence — each once, under its own row number (JSONL: its
    line; columnar formats: 0..n-1), and no written row is invalid Arrow (bad UTF-8).

"What the file really holds" is worked out without the project's readers (`fuzz_truth.truth`):
JSONL, the non-blank lines of the bytes as far as they decompress (a compressed stream that
does not decompress to its end must fail the file); CSV, the records the standard library's
csv module finds; Parquet/Arrow/`datasets`, the rows when the container reads and validates
(else the file must fail). Files are read the way a run reads them (`plan_reads`, then the
read DoFn, without Beam), in a worker process: a segfault or hang counts against its file
instead of killing pytest.

The seed is fixed (THRESHER_FUZZ_SEED overrides it); a failure prints the seed and, per
broken file, its name, corruption kind and case seed. Reproduce with
`python -m tests.hostile.fuzz_read <n_per_format> <seed> [formats]`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hostile.fuzz_files import FORMATS, KINDS, make_cases
from tests.hostile.fuzz_read import overfailures, run_cases, summarize, violations
from tests.hostile.fuzz_truth import truth

SEED = int(os.environ.get("THRESHER_FUZZ_SEED", "20261126"))
# Formats whose records are lines of text: a bad record there is quarantined on its own, and
# reading goes on (issue 10); only a broken compressed stream may fail such a file.
TEXT_FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "csv")


def _fuzz(root: Path, n_per_format: int | None, huge_sizes: list[int] | None = None,
          workers: int = 1) -> tuple[list[dict], dict]:
    """`n_per_format` files of each format (None: one per corruption kind), read like a run
    by `workers` reader processes side by side."""
    cases = [c for fmt in FORMATS
             for c in make_cases(root / "files", fmt, n_per_format or len(KINDS[fmt]), SEED, huge_sizes)]
    return cases, run_cases(cases, root, workers=workers)


def _explain(cases: list[dict], results: dict, problems: list[dict], what: str) -> str:
    lines = [f"seed {SEED} (THRESHER_FUZZ_SEED): {len(problems)} of {len(cases)} files {what}:"]
    for v in problems[:40]:
        lines.append(f"  [{v['fmt']} {v['kind']}] {Path(v['path']).name} (case seed {v['seed']}): "
                     f"{v.get('category', '')} {v.get('detail', v.get('msg', ''))[:300]}")
    return "\n".join(lines + ["", summarize(cases, results)])


def _check_promise(cases: list[dict], results: dict) -> None:
    print(summarize(cases, results))
    problems = violations(cases, results)
    assert not problems, _explain(cases, results, problems, "break the promise (fail loudly, or all rows accounted)")


def _check_no_whole_file_failures(cases: list[dict], results: dict) -> None:
    """A text file whose bytes are all there (plain, or a compressed stream that decompresses
    to its end) must not fail as a whole: its bad records are quarantined one by one. A CSV
    header that lost the text column may fail at planning."""
    over = [o for o in overfailures(cases, results) if o["fmt"] in TEXT_FORMATS and o["where"] != "plan"]
    assert not over, _explain(cases, results, over, "with intact bytes failed as a whole instead of quarantining")


@pytest.fixture(scope="module")
def fuzz_small(tmp_path_factory):
    # Huge lines of 1 MiB only; the 200-file run has the 10 and 20 MiB ones.
    return _fuzz(tmp_path_factory.mktemp("fuzz_small"), None, huge_sizes=[])


@pytest.fixture(scope="module")
def fuzz_200(tmp_path_factory):
    # 1,400 independent files: two readers side by side use both cores of a CI machine.
    return _fuzz(tmp_path_factory.mktemp("fuzz_200"), 200, workers=max(1, min(2, os.cpu_count() or 1)))


def test_fuzz_small_every_record_accounted_or_file_fails(fuzz_small):
    """One file per format and corruption kind (~80 files)."""
    _check_promise(*fuzz_small)


def test_fuzz_small_intact_text_files_do_not_fail_whole(fuzz_small):
    _check_no_whole_file_failures(*fuzz_small)


@pytest.mark.slow
def test_fuzz_200_every_record_accounted_or_file_fails(fuzz_200):
    """The issue's fuzz test: 200 corrupted files of each format."""
    _check_promise(*fuzz_200)


@pytest.mark.slow
def test_fuzz_200_intact_text_files_do_not_fail_whole(fuzz_200):
    _check_no_whole_file_failures(*fuzz_200)


def test_harness_ground_truth(tmp_path):
    """The oracle itself: intact files hold what was written; broken containers are seen."""
    cases = [c for fmt in FORMATS for c in make_cases(tmp_path / fmt.replace(".", "_"), fmt, 1, SEED)]
    for c in cases:  # kind "clean" or the first kind of the format
        if c["kind"] == "clean":
            assert truth(c) == c["written"], c
    gz = [c for c in make_cases(tmp_path / "gz", "jsonl.gz", 6, SEED)]
    assert [truth(c) is None for c in gz[:3]] == [True, True, True]  # zflip, ztrunc_mid, ztrunc_block
    assert truth(gz[3]) == gz[3]["written"]  # zmulti: every member counts
    zst = [c for c in make_cases(tmp_path / "zst", "jsonl.zst", 4, SEED)]
    assert [truth(c) is None for c in zst[:3]] == [True, True, True]
    assert truth(zst[3]) == zst[3]["written"]


@pytest.mark.slow
def test_cli_run_fails_naming_each_broken_file(tmp_path):
    """End to end: a run over good files plus JSONL files whose compressed stream breaks part
    way (they pass planning) exits 1, naming each broken file and the byte offset on one line
    (the issue: 'exit 1 with one line naming the file and offset')."""
    data = tmp_path / "data"
    sources, bad_files = [], []
    for fmt, broken in (("jsonl", ()), ("jsonl.gz", ("ztrunc_mid",)), ("jsonl.zst", ("ztrunc_block", "zflip")),
                        ("parquet", ()), ("arrow", ())):
        cases = make_cases(data / fmt.replace(".", "_"), fmt, len(KINDS[fmt]), SEED)
        for c in cases:
            if c["kind"] in broken:
                assert truth(c) is None, c  # really broken
                bad_files.append(c["path"])
            elif c["kind"] != "clean":
                continue
            sources.append({"name": f"{fmt.replace('.', '_')}_{c['kind']}", "paths": [c["path"]],
                            "text_field": "text"})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"sources": sources, "output": {"dir": str(tmp_path / "out")}}))
    exe = Path(sys.executable).with_name("thresher")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from thresher.cli import main; main()"]
    res = subprocess.run([*cmd, "run", str(recipe), "--no-prefect"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, f"exit {res.returncode}, expected 1 (a source failed):\n{out[-3000:]}"
    for f in bad_files:
        named = [ln for ln in out.splitlines() if Path(f).name in ln]
        assert named, f"no line names {f}:\n{out[-3000:]}"
        assert any(re.search(r"(byte|offset)\D{0,3}\d+", ln.split(Path(f).name, 1)[1]) for ln in named), \
            f"no offset in the lines naming {Path(f).name}: {named}"


def test_checker_flags_each_kind_of_break():
    """The invariant checker is not vacuous: each way of breaking the promise is flagged."""
    def result(**kw):
        base = {"truth": 3, "expect_rows": [1, 2, 3], "rows": 2, "quarantined": 1, "fail": None, "uncaught": None,
                "bad_q": [], "invalid_written": 0, "q_reasons": ["invalid JSON"], "row_nos": [1, 2, 3]}
        return {**base, **kw}

    cases_results = {
        None: result(),  # all accounted for: fine
        "count": result(rows=1, row_nos=[1, 3]),
        "silent-corrupt": result(truth=None, expect_rows=None),
        "unnamed-failure": result(fail={"where": "quarantine", "msg": "boom\nmore", "names_file": False}),
        "crash": {"crash": "exit -11 while reading"},
        "uncaught": result(uncaught="SystemError: Negative size passed to PyUnicode_New"),
        "row-numbers": result(row_nos=[1, 2, 2]),
        "quarantine-record": result(bad_q=[{"file": None, "line": None, "reason": "x"}]),
        "invalid-utf8-written": result(invalid_written=1),
    }
    for i, (want, r) in enumerate(cases_results.items()):
        case = {"fmt": "jsonl", "kind": "k", "idx": i, "seed": i, "path": f"/x/{i}.jsonl", "written": 3}
        got = [v["category"] for v in violations([case], {("jsonl", i): r})]
        assert got == ([] if want is None else [want]), (want, got)
    # A loud failure excuses a short read; a failure on intact text is reported as a whole-file failure.
    case = {"fmt": "jsonl", "kind": "k", "idx": 0, "seed": 0, "path": "/x/0.jsonl", "written": 3}
    loud = result(rows=0, quarantined=0, fail={"where": "quarantine", "msg": "/x/0.jsonl: bad", "names_file": True})
    assert violations([case], {("jsonl", 0): loud}) == []
    assert [o["category"] for o in overfailures([case], {("jsonl", 0): loud})] == ["whole-file-failure"]
