"""`CachedPolicy`: the rollout store in front of any policy backend.

Each request is answered from disk when it was made before (same model, prompt, sampling,
sample, seed), else by the backend; new generations are stored a chunk at a time as they
arrive, so a run killed mid-batch loses at most one chunk of work. Calls, cache hits and
failures by kind are counted in `stats`. Failed requests are never stored: a rerun retries
them. With `allow_calls`, requests beyond that many backend calls fail as `budget_exhausted`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from thresher.models.policy import BACKEND, BUDGET, Generation, Policy, Request, SamplingParams
from thresher.models.rollout_store import RolloutStore, rollout_key


@dataclass
class PolicyStats:
    calls: int = 0  # requests sent to the backend
    cache_hits: int = 0
    failures: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cache_hits": self.cache_hits, "failures": dict(self.failures)}


class CachedPolicy:
    """A policy with the rollout store in front (`store=None`: no cache, every request calls)."""

    def __init__(self, policy: Policy, store: RolloutStore | None, sampling: SamplingParams, seed: int,
                 chunk: int = 64):
        self.policy = policy
        self.chunk = chunk
        self.store = store
        self.sampling = sampling
        self.seed = seed
        self.stats = PolicyStats()
        self._ident = policy.cache_identity()

    def key(self, req: Request) -> str:
        params = {**self.sampling.model_dump(), "max_tokens": req.max_tokens or self.sampling.max_tokens,
                  "stop": list(req.stop), "backend": self._ident}
        return rollout_key(self.policy.model_id, req.problem + "\x00" + req.prefix, params, req.sample, self.seed)

    def generate(self, requests: list[Request], allow_calls: int | None = None) -> list[Generation]:
        """Answer every request; at most `allow_calls` go to the backend (the rest fail with
        `budget_exhausted`)."""
        keys = [self.key(r) for r in requests]
        found = self.store.get_many(list(dict.fromkeys(keys))) if self.store is not None else {}
        out: list[Generation | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            hit = found.get(k)
            if hit is not None:
                out[i] = Generation(hit.text, hit.finish_reason, cached=True)
                self.stats.cache_hits += 1
            else:
                todo.setdefault(k, []).append(i)
        miss_keys = list(todo)
        if allow_calls is not None and len(miss_keys) > allow_calls:
            for k in miss_keys[allow_calls:]:
                for i in todo[k]:
                    out[i] = Generation(None, None, BUDGET)
                self.stats.failures[BUDGET] += len(todo[k])
            miss_keys = miss_keys[: max(allow_calls, 0)]
        # In chunks, each stored as soon as it is done: a run killed mid-batch loses at most
        # one chunk of work.
        for c0 in range(0, len(miss_keys), self.chunk):
            self._call([(k, requests[todo[k][0]]) for k in miss_keys[c0:c0 + self.chunk]], todo, out)
        return out  # type: ignore[return-value]

    def _call(self, items, todo, out) -> None:
        miss_keys = [k for k, _ in items]
        if miss_keys:
            gens = self.policy.generate([r for _, r in items], self.sampling, self.seed)
            self.stats.calls += len(miss_keys)
            records = []
            for (k, r), g in zip(items, gens, strict=True):
                if g.text is None:
                    self.stats.failures[g.error or BACKEND] += 1
                else:
                    records.append({"key": k, "model": self.policy.model_id, "prompt": r.problem + "\x00" + r.prefix,
                                    "params": {**self.sampling.model_dump(), "stop": list(r.stop),
                                               "max_tokens": r.max_tokens or self.sampling.max_tokens},
                                    "sample": r.sample, "seed": self.seed, "text": g.text,
                                    "finish_reason": g.finish_reason})
                for i in todo[k]:
                    out[i] = g
            if self.store is not None:
                self.store.put_many(records)
