"""The worker pool behind `math` and user rewards: the same grades as in-process, a time limit
that holds in any thread (math-verify's own does not outside the main thread), a timed-out or
dead worker replaced without leaving a process behind. Slow: workers import sympy (~2 s)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from thresher.models.reward_grade import Grade
from thresher.models.reward_math import MathReward
from thresher.models.reward_timeout import POOL_SIZE
from thresher.models.rewards import make_reward

pytestmark = pytest.mark.slow

HANGS = "The answer is $9^{9^{9^{9}}}$."  # sympy tries to evaluate the power tower


def slow_reward(completion: str, reference: str) -> float:
    time.sleep(float(completion))
    return 1.0


def failing_reward(completion: str, reference: str) -> float:
    if completion == "die":
        os._exit(3)
    raise ValueError("boom")


def reward_workers() -> dict[int, str]:
    """Live child processes of this process that are reward workers: pid -> state letter."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and b"reward_timeout" in cmd:
            out[int(name)] = state
    return out


def test_a_hanging_expression_times_out_in_a_worker_thread_and_the_worker_is_replaced():
    reward = MathReward(timeout_s=2.0)  # room for the other two pairs on a busy machine
    reward.grade("\\boxed{1}", "1")  # a warm worker
    before = reward_workers()
    # Precondition, not a formality: with no live worker (or a leaked extra one) the kill-and-
    # replace check below would prove nothing. The pool is per process, so earlier tests may
    # have started up to POOL_SIZE; each must be running, none a zombie.
    assert before, "grading a pair left no worker process running"
    assert len(before) <= POOL_SIZE and "Z" not in before.values(), before
    result = []
    th = threading.Thread(target=lambda: result.append(
        reward.grade_many([("\\boxed{2}", "2"), (HANGS, "1"), ("The answer is 5.", "5")])))
    th.start()
    th.join(timeout=120)
    assert not th.is_alive()
    assert result == [[Grade(1.0, "2", None), Grade(0.0, None, "timeout"), Grade(1.0, "5", None)]]
    after = reward_workers()
    killed = set(before) - set(after)
    assert len(killed) == 1 and not any(os.path.exists(f"/proc/{pid}") for pid in killed)
    assert len(after) <= POOL_SIZE and "Z" not in after.values()


def test_threads_share_the_pool_and_each_gets_its_own_grades():
    reward = make_reward("tests.models.test_rewards:length_reward")
    batches = [[("x" * (i + j), "") for j in range(10)] for i in range(4)]
    results: dict[int, list[float]] = {}

    def grade(i: int) -> None:
        results[i] = [g.score for g in reward.grade_many(batches[i])]

    threads = [threading.Thread(target=grade, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert results == {i: [(i + j) / 10 for j in range(10)] for i in range(4)}
    assert len(reward_workers()) <= POOL_SIZE


def test_user_rewards_run_in_the_pool_with_the_same_bound():
    assert make_reward("tests.models.test_rewards:length_reward").grade("abcd", "x") == Grade(0.4, None, None)
    slow = make_reward("tests.models.test_reward_timeout:slow_reward", reward_timeout_s=1.0)
    assert [g.failure for g in slow.grade_many([("0", ""), ("30", ""), ("0.01", "")])] == [None, "timeout", None]
    failing = make_reward("tests.models.test_reward_timeout:failing_reward")
    assert failing.grade_many([("raise", ""), ("die", ""), ("raise", "")]) == [
        Grade(0.0, None, "error"), Grade(0.0, None, "worker_died"), Grade(0.0, None, "error")]
    assert "Z" not in reward_workers().values()


ORPHAN = """
import os, threading, time
from tests.models.test_reward_timeout import reward_workers
from thresher.models.rewards import make_reward
reward = make_reward("tests.models.test_reward_timeout:slow_reward", reward_timeout_s=60)
threading.Thread(target=reward.grade, args=("60", ""), daemon=True).start()
while not reward_workers():
    time.sleep(0.05)
time.sleep(0.5)
print(*reward_workers(), flush=True)
os._exit(0)  # dies while its worker is busy: no EOF will reach it before the grade ends
"""


def test_a_worker_dies_with_its_parent_even_mid_grade():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", ORPHAN], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)})
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, out.stderr
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pids[0]}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pids[0]}")
