"""Grades per second of the `math` reward through its time-bounded worker path, against calling
math-verify directly (`verify(parse(gold), parse(completion))`, in a plain loop in the main
thread, where its own signal-based timeouts work), on the same (completion, reference) pairs:
real model solutions from ../shared/data/rollouts/normalized.jsonl.gz.

    .venv/bin/python bench/rewards.py [--pairs 2000] [--rounds 4] [--per-pair 400]

Prints, in one command (the machine is shared: compare the ratios, not the absolute numbers):
  1. direct math-verify loop: grades/s, and its agreement with the rollouts' correctness labels;
  2. `reward.grade_many(pairs)` (one worker, batched): grades/s, ratio to 1., agreement;
  3. `reward.grade(c, r)` per pair (one round-trip per pair): grades/s, ratio to 1.;
  4. two threads each calling `grade_many` on half (two workers): grades/s, ratio to 1.;
  5. a fresh worker's start-up (import + warm-up), paid once per worker;
  6. for scale: `choice` (in-process) and `code` (HumanEval canonical solutions, one sandboxed
     subprocess each) grades/s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_pairs(n: int) -> tuple[list[tuple[str, str]], list[bool]]:
    """Every MATH sample, then GSM8K samples, up to n (a mix of LaTeX and plain answers)."""
    with gzip.open(DATA / "rollouts" / "normalized.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    rows.sort(key=lambda r: r["dataset"] != "math_test")
    pairs, labels = [], []
    for r in rows:
        for s in r["samples"]:
            pairs.append((s["response"], r["reference_answer"]))
            labels.append(bool(s["correct"]))
    return pairs[:n], labels[:n]


def agreement(scores: list[float], labels: list[bool]) -> float:
    return sum((s == 1.0) == lab for s, lab in zip(scores, labels, strict=True)) / len(labels)


def direct(pairs):
    from math_verify import parse, verify

    return [float(verify(parse(f"${r}$"), parse(c))) for c, r in pairs]


def two_threads(reward, pairs):
    halves = [pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]]
    threads = [threading.Thread(target=reward.grade_many, args=(h,)) for h in halves]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4, help="interleaved slices the methods take turns on")
    ap.add_argument("--per-pair", type=int, default=400, help="pairs graded one call each (3.)")
    args = ap.parse_args()

    from thresher.models.rewards import make_reward

    pairs, labels = load_pairs(args.pairs)
    n = len(pairs)
    warm = [("The answer is $\\frac{1}{2}$.", "0.5"), ("#### 12", "12")]
    reward = make_reward("math")

    _, startup = timed(reward.grade_many, warm)  # starts a worker: import + warm-up
    direct(warm)
    two_threads(reward, warm + warm)  # and the second worker

    # The machine is shared and its load drifts: the methods take turns on interleaved slices,
    # so each sees the same load on average.
    t_direct = t_many = t_two = t_one = t_dir_one = 0.0
    base, scores = [0.0] * n, [0.0] * n
    timeouts = 0
    for k in range(args.rounds):
        idx = range(k, n, args.rounds)
        part = [pairs[i] for i in idx]
        out, dt = timed(direct, part)
        t_direct += dt
        for i, s in zip(idx, out, strict=True):
            base[i] = s
        grades, dt = timed(reward.grade_many, part)
        t_many += dt
        timeouts += sum(g.failure == "timeout" for g in grades)
        for i, g in zip(idx, grades, strict=True):
            scores[i] = g.score
        t_two += timed(two_threads, reward, part)[1]
        few = part[: args.per_pair // args.rounds]
        t_one += timed(lambda few=few: [reward.grade(c, r) for c, r in few])[1]
        t_dir_one += timed(direct, few)[1]
    m = args.per_pair // args.rounds * args.rounds
    print(f"1. direct math-verify loop:      {n / t_direct:8.1f} grades/s   agreement {agreement(base, labels):.4f}")
    print(f"2. grade_many (1 worker):        {n / t_many:8.1f} grades/s   x{t_direct / t_many:.2f} of 1.   "
          f"agreement {agreement(scores, labels):.4f}   timeouts {timeouts}")
    print(f"3. grade() per pair ({m}):       {m / t_one:8.1f} grades/s   "
          f"x{t_dir_one / t_one:.2f} of direct on the same {m}")
    print(f"4. grade_many, 2 threads:        {n / t_two:8.1f} grades/s   x{t_direct / t_two:.2f} of 1.")
    print(f"5. first worker start-up:        {startup:8.2f} s (once per worker; not counted in a grade's time limit)")

    choice = make_reward("choice")
    cpairs = [("I think the answer is (C) because 12 apples", "C")] * 5000
    _, t_choice = timed(choice.grade_many, cpairs)
    print(f"6. choice (in-process):          {len(cpairs) / t_choice:8.1f} grades/s")
    from thresher.models.reward_code import humaneval_reference

    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        he = [json.loads(line) for line in fh]
    code_pairs = [(r["prompt"] + r["canonical_solution"], humaneval_reference(r)) for r in he]
    code_grades, t_code = timed(make_reward("code", reward_timeout_s=10).grade_many, code_pairs)
    passed = sum(g.score for g in code_grades)
    print(f"   code (HumanEval canonical):   {len(code_pairs) / t_code:8.1f} grades/s   "
          f"{passed:.0f}/{len(code_pairs)} pass")


if __name__ == "__main__":
    main()
