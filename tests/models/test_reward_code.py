"""The `code` reward: HumanEval tests run against a completion's code in the sandbox."""

from __future__ import annotations

import gzip
import json
import textwrap
import time

import pytest

from thresher.models.reward_code import CodeReward, build_program, extract_code, humaneval_reference

ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
ADD_REF = json.dumps({"test": ADD_TEST, "entry_point": "add", "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n"})


def _he(shared_data) -> list[dict]:
    with gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_extract_code_takes_the_last_python_block():
    text = "First try:\n```python\ndef f(): return 1\n```\nBetter:\n```python\ndef f(): return 2\n```\nDone."
    assert extract_code(text) == "def f(): return 2\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("def f():\n    return 3") == "def f():\n    return 3"
    assert extract_code("Here:\n```python\ndef f():\n    return 4\n") == "def f():\n    return 4\n"  # cut off


def test_build_program_joins_code_tests_and_the_check_call():
    # a whole function: the prompt is not repeated
    assert build_program("def add(a, b):\n    return a + b\n", ADD_REF).endswith("check(add)\n")
    assert build_program("def add(a, b):\n    return a + b\n", ADD_REF).count("def add") == 1
    # a body only (a base model continuing the prompt): the prompt comes first
    body = build_program("    return a + b\n", ADD_REF)
    assert body.startswith("def add(a, b):\n") and "    return a + b\n" in body
    # plain test code that never calls check: the completion's last function is checked
    assert build_program("def helper(): pass\ndef add(a, b): return a + b", ADD_TEST).endswith("check(add)\n")
    assert build_program("x = 1", "assert x == 1\n") == "x = 1\n\nassert x == 1\n\n"
    assert build_program("x", json.dumps({"test": ADD_TEST})) is None  # no entry point


def test_passing_and_failing_code():
    reward = CodeReward(timeout_s=10)
    good = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```"
    wrong, syntax = "```python\ndef add(a, b):\n    return a - b\n```", "def add(a, b):\n    return ("
    grades = reward.grade_many([(good, ADD_REF), (wrong, ADD_REF), ("    return a + b\n", ADD_REF), ("", ADD_REF),
                                (syntax, ADD_REF), ("def add(a, b): return a + b", "{not json"),
                                # exiting early with status 0 is not passing: the tests never ran
                                ("import os\nos._exit(0)", ADD_REF), ("import sys\nsys.exit(0)", ADD_REF)])
    assert [(g.score, g.failure) for g in grades] == [
        (1.0, None), (0.0, "tests_failed"), (1.0, None), (0.0, "no_answer"), (0.0, "runtime_error"),
        (0.0, "runtime_error"), (0.0, "runtime_error"), (0.0, "runtime_error")]
    assert grades[0].extracted == "def add(a, b):\n    return a + b\n"  # the code that ran


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_broken_ones_fail(shared_data):
    rows = _he(shared_data)[::16]  # 11 problems, every 16th
    reward = CodeReward(timeout_s=10)
    chat = [(f"Here is the function:\n```python\n{r['prompt']}{r['canonical_solution']}```\n", humaneval_reference(r))
            for r in rows]
    body = [(r["canonical_solution"], humaneval_reference(r)) for r in rows]
    broken = [(r["prompt"] + "    return None\n", humaneval_reference(r)) for r in rows]
    off_by_one = [(rows[0]["canonical_solution"].replace("distance < threshold", "distance <= threshold - 1"),
                   humaneval_reference(rows[0]))]
    grades = reward.grade_many(chat + body + broken + off_by_one)
    n = len(rows)
    assert [g.score for g in grades[: 2 * n]] == [1.0] * (2 * n)
    assert [g.score for g in grades[2 * n:]] == [0.0] * (n + 1)
    assert {g.failure for g in grades[2 * n:]} <= {"tests_failed", "runtime_error"}


@pytest.mark.slow
def test_an_infinite_loop_times_out_and_leaves_nothing_running(tmp_path):
    marker = tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import subprocess
        p = subprocess.Popen(["sleep", "60"])
        open({str(marker)!r}, "w").write(str(p.pid))
        def add(a, b):
            while True:
                pass
    """)
    t = time.monotonic()
    grade = CodeReward(timeout_s=3.0).grade(code, ADD_REF)  # time to start the child on a busy machine
    assert grade.failure == "timeout" and grade.score == 0.0
    assert time.monotonic() - t < 30  # bounded (generous: the machine is shared)
    child = int(marker.read_text())
    # The sandbox's whole process group got SIGKILL: the child dies (SIGKILL is delivered
    # asynchronously, and init reaps the orphan, so allow a moment) instead of sleeping 60 s.
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
def test_a_memory_bomb_fails_within_the_limit():
    reward = CodeReward(timeout_s=10, memory_mb=256)
    bombs = ["x = bytearray(10 ** 10)", "a = []\nwhile True:\n    a.append(' ' * 10 ** 6)"]
    assert [reward.grade(b, ADD_REF).failure for b in bombs] == ["memory_limit", "memory_limit"]


@pytest.mark.slow
def test_network_access_is_blocked():
    reward = CodeReward(timeout_s=10)
    probe = textwrap.dedent("""
        import socket, urllib.request
        blocked = []
        for attempt in (lambda: socket.socket(), lambda: socket.create_connection(("127.0.0.1", 9)),
                        lambda: urllib.request.urlopen("http://127.0.0.1:9/", timeout=1)):
            try:
                attempt()
            except Exception as exc:
                blocked.append("blocked in the thresher code sandbox" in str(exc))
        assert blocked == [True, True, True], blocked
        def add(a, b):
            return a + b
    """)
    assert reward.grade(probe, ADD_REF) == reward.grade(probe, ADD_REF)
    assert reward.grade(probe, ADD_REF).score == 1.0
    assert reward.grade("import socket\nsocket.socket()\n", ADD_REF).failure == "runtime_error"
