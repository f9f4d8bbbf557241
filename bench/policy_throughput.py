"""Policy throughput against a local OpenAI-compatible stub server that answers every request
after a fixed 100 ms (`thresher.testing.stub_openai`, started here as a subprocess), so the
numbers measure the client, not a model.

1. The same N requests (default 5,000) at concurrency 256: thresher's `OpenAIPolicy`, the
   same client in lock-step groups of 64 (what `CachedPolicy` did before), `CachedPolicy` with
   a rollout store, a plain asyncio + httpx loop (the baseline) and the same loop on aiohttp
   (what thresher's client is built on) — ratios against the baseline, best of `--repeat` runs
   each (the httpx baseline: `--baseline-repeat`, as it takes minutes), alternated so that
   load on the machine hits all alike.
   The ideal is N / 256 x 0.1 s.
2. `mcts_difficulty` over 200 problems through a real Beam pipeline (`run_stage`): the mean
   share of `max_concurrency` slots busy while it searched, from the stage's report; and the
   same search driven in lock-step rounds (every tree waits for the slowest), for contrast.
   A tree has at most `children` (3) requests in flight, and fewer as trees finish, so 200
   problems can keep 64 slots full but not 256: the 256 line shows that demand bound.

    .venv/bin/python bench/policy_throughput.py [--requests 5000] [--concurrency 256]
        [--problems 200] [--mcts-concurrency 64,256] [--max-iterations 10] [--delay 0.1]
        [--repeat 3] [--baseline-repeat 1] [--parts calls,mcts]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

import httpx

from thresher.models.cached_policy import CachedPolicy
from thresher.models.openai_policy import OpenAIPolicy
from thresher.models.policy import PolicyParams, Request, SamplingParams, request_seed
from thresher.models.rewards import make_reward
from thresher.models.rollout_store import RolloutStore
from thresher.stages.selection.mcts_difficulty import MctsDifficulty, MctsParams
from thresher.stages.selection.mcts_search import Search, new_tree
from thresher.testing.harness import run_stage
from thresher.testing.stub_openai import StubServer

SAMPLING = SamplingParams(temperature=0.7, max_tokens=64)


def _bodies(reqs: list[Request]) -> list[dict]:
    return [{"model": "stub", "prompt": r.problem + "\n", "temperature": SAMPLING.temperature,
             "top_p": SAMPLING.top_p, "max_tokens": SAMPLING.max_tokens, "seed": request_seed(0, r.sample)}
            for r in reqs]


def baseline_aiohttp(base_url: str, reqs: list[Request], conc: int) -> list[str]:
    """The same loop on aiohttp (what thresher's client uses underneath)."""
    import aiohttp

    bodies = _bodies(reqs)

    async def run() -> list[str]:
        conn = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=conn) as session:
            sem = asyncio.Semaphore(conc)

            async def one(body):
                async with sem, session.post(base_url + "/completions", json=body) as resp:
                    resp.raise_for_status()
                    data = await resp.json()
                return data["choices"][0]["text"]

            return await asyncio.gather(*(one(b) for b in bodies))

    return asyncio.run(run())


def baseline(base_url: str, reqs: list[Request], conc: int) -> list[str]:
    """A plain asyncio + httpx loop: one pooled client, a semaphore, gather."""
    bodies = _bodies(reqs)

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
            sem = asyncio.Semaphore(conc)

            async def one(body):
                async with sem:
                    resp = await client.post("/completions", json=body)
                resp.raise_for_status()
                return resp.json()["choices"][0]["text"]

            return await asyncio.gather(*(one(b) for b in bodies))

    return asyncio.run(run())


def problems(n: int) -> list[dict]:
    # Success probabilities from easy to never; three steps before the answer.
    ps = (0.5, 0.2, 0.1, 0.05, 0.0)
    return [{"text": f"Problem {i}: p={ps[i % len(ps)]} answer={i} steps=3", "answer": str(i)} for i in range(n)]


def mcts(base_url: str, rows: list[dict], mconc: int, args, out_dir: str) -> None:
    mp = {"policy": {"base_url": base_url, "model": "stub", "max_concurrency": mconc, "timeout_s": 60},
          "reward": "normalized", "max_iterations": args.max_iterations, "min_difficulty": 0,
          "sampling": SAMPLING.model_dump()}
    t = time.perf_counter()
    res = run_stage(MctsDifficulty, rows, mp, batch_rows=len(rows), seed=0, out_dir=out_dir)
    dt = time.perf_counter() - t
    rep = res.report
    print(f"mcts_difficulty, {len(rows)} problems, max_concurrency {mconc}, max_iterations {args.max_iterations}: "
          f"{rep['model_calls']} calls in {dt:.1f} s (with pipeline start-up); status {rep['status']}")
    print(f"  slot occupancy (stage report, mean in flight / max_concurrency): {rep['slot_occupancy']:.3f}")

    mpol = OpenAIPolicy(PolicyParams(**mp["policy"]))
    cp = CachedPolicy(mpol, None, SAMPLING, seed=0)
    trees = [new_tree(r["text"], r["answer"]) for r in rows]
    b0, t0 = mpol.slot_clock(), time.perf_counter()
    Search(MctsParams(**{k: v for k, v in mp.items() if k != "policy"}), make_reward("normalized"),
           cp.generate).run(trees)
    b1, t1 = mpol.slot_clock(), time.perf_counter()
    print(f"  lock-step rounds (each round waits for its slowest tree): {(b1 - b0) / (mpol.slots * (t1 - t0)):.3f}"
          f" in {t1 - t0:.1f} s, {cp.stats.calls} calls")
    mpol.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--mcts-concurrency", default="64,256", help="max_concurrency values, comma-separated")
    ap.add_argument("--max-iterations", type=int, default=10)
    ap.add_argument("--delay", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each client but the httpx baseline (best kept)")
    ap.add_argument("--baseline-repeat", type=int, default=1, help="runs of the httpx baseline (minutes each here)")
    ap.add_argument("--parts", default="calls,mcts", help="which parts to run (calls, mcts)")
    args = ap.parse_args()
    conc = args.concurrency
    reqs = [Request(f"Question {i}: p=0.5 answer={i} steps=2", sample=str(i)) for i in range(args.requests)]

    with StubServer(delay=args.delay) as srv, tempfile.TemporaryDirectory() as tmp:
        params = PolicyParams(base_url=srv.base_url, model="stub", max_concurrency=conc, timeout_s=60)
        pol = OpenAIPolicy(params)
        baseline(srv.base_url, reqs[:conc], conc)  # warm both: connections, imports
        pol.generate(reqs[:conc], SAMPLING, 0)

        if "calls" in args.parts:
            calls(srv.base_url, reqs, conc, pol, tmp, args)
        # MCTS through the stage (one batch of all problems), then the lock-step contrast.
        rows = problems(args.problems)
        for mconc in [int(x) for x in args.mcts_concurrency.split(",")] if "mcts" in args.parts else []:
            mcts(srv.base_url, rows, mconc, args, os.path.join(tmp, f"m{mconc}"))
        pol.close()


def calls(base_url: str, reqs: list[Request], conc: int, pol: OpenAIPolicy, tmp: str, args) -> None:
    def ours():
        gens = pol.generate(reqs, SAMPLING, 0)
        assert all(g.text is not None for g in gens)

    def lockstep():
        for i in range(0, len(reqs), 64):
            pol.generate(reqs[i:i + 64], SAMPLING, 0)

    def cached():
        store = RolloutStore(os.path.join(tmp, f"r{time.perf_counter_ns()}.sqlite"))
        cp = CachedPolicy(pol, store, SAMPLING, seed=0)
        gens = cp.generate(reqs)
        assert cp.stats.calls == len(reqs) and len(store) == len(reqs) and all(g.text for g in gens)

    runs = {"plain asyncio + httpx (baseline)": lambda: baseline(base_url, reqs, conc),
            "plain asyncio + aiohttp": lambda: baseline_aiohttp(base_url, reqs, conc),
            "thresher OpenAIPolicy": ours, "thresher CachedPolicy + store": cached,
            "lock-step groups of 64": lockstep}
    best = dict.fromkeys(runs, float("inf"))
    for k in range(max(args.repeat, args.baseline_repeat)):
        for name, fn in runs.items():
            if k >= (args.baseline_repeat if "httpx" in name else args.repeat):
                continue
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    ideal = args.requests / conc * args.delay
    print(f"{args.requests} requests, concurrency {conc}, stub server answering after {args.delay * 1000:.0f} ms "
          f"(ideal {ideal:.2f} s), {os.cpu_count()} cores, best of {args.repeat} (httpx: {args.baseline_repeat})")
    base = args.requests / best["plain asyncio + httpx (baseline)"]
    aio = args.requests / best["plain asyncio + aiohttp"]
    for name, dt in best.items():
        rate = args.requests / dt
        print(f"  {name:<34} {rate:8.0f} calls/s  {dt:6.2f} s   x{rate / base:.2f} vs baseline   "
              f"x{rate / aio:.2f} vs aiohttp loop")


if __name__ == "__main__":
    main()
