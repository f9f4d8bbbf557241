"""Policy throughput: model calls per second against a real local server (SmolLM2-135M on
llama.cpp's OpenAI-compatible server, CPU), with concurrency 1 and 8, and the rollout-cache
hit path. Ratios are against concurrency 1 in the same command.

    .venv/bin/python bench/policy_throughput.py [--calls 24] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from thresher.models.cached_policy import CachedPolicy
from thresher.models.openai_policy import OpenAIPolicy
from thresher.models.policy import PolicyParams, Request, SamplingParams
from thresher.models.rollout_store import RolloutStore
from thresher.testing import llama_server as local_server
from thresher.testing.arith import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    why = local_server.unavailable()
    if why:
        raise SystemExit(f"cannot run: {why}")
    probs = generate(args.calls, seed=0, levels=(2,))
    sampling = SamplingParams(temperature=0.7, max_tokens=args.max_tokens)
    with local_server.LlamaServer(n_ctx=1024) as srv, tempfile.TemporaryDirectory() as tmp:
        base = dict(base_url=srv.base_url, model="smollm2", api="chat", prompt_template="{problem}")
        warm = OpenAIPolicy(PolicyParams(**base))
        warm.generate([Request("What is 1 + 1?")], sampling, 0)  # load weights, first-call costs
        warm.close()
        results = {}
        chars = {}
        for conc in (1, 8):
            pol = OpenAIPolicy(PolicyParams(**base, max_concurrency=conc))
            # The same requests and seeds in both settings: the same generations (and lengths).
            reqs = [Request(p["question"], sample="0") for p in probs]
            t = time.perf_counter()
            gens = pol.generate(reqs, sampling, seed=0)
            dt = time.perf_counter() - t
            pol.close()
            assert all(g.text is not None for g in gens)
            chars[conc] = sum(len(g.text) for g in gens)
            results[f"http concurrency {conc}"] = len(reqs) / dt

        # Cache hit path: fill the store once, then answer everything from it.
        store = RolloutStore(os.path.join(tmp, "r.sqlite"))
        pol = OpenAIPolicy(PolicyParams(**base, max_concurrency=8))
        cp = CachedPolicy(pol, store, sampling, seed=99)
        reqs = [Request(p["question"], sample="c") for p in probs]
        cp.generate(reqs)
        hits_reqs = reqs * 200  # enough work to time
        t = time.perf_counter()
        cp2 = CachedPolicy(pol, store, sampling, seed=99)
        gens = cp2.generate(hits_reqs)
        dt = time.perf_counter() - t
        pol.close()
        assert cp2.stats.calls == 0 and cp2.stats.cache_hits == len(hits_reqs)
        results["cache hits"] = len(hits_reqs) / dt

    base_rate = results["http concurrency 1"]
    print(f"generated characters: concurrency 1: {chars[1]}, concurrency 8: {chars[8]} (same requests)")
    print(f"{args.calls} calls per setting, max_tokens={args.max_tokens}, SmolLM2-135M Q4_1 on CPU "
          f"({os.cpu_count()} cores)")
    for name, rate in results.items():
        print(f"  {name:<22} {rate:10.2f} calls/s   x{rate / base_rate:.1f} vs concurrency 1")


if __name__ == "__main__":
    main()
