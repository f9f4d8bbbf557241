"""`CachedPolicy`: the rollout store in front of any policy backend.

Each request is answered from disk when it was made before (same model, prompt, sampling,
sample, seed), else by the backend; new generations are stored a chunk at a time as they
arrive (`submit` returns futures; `flush` stores what arrived), so a run killed mid-batch
loses at most one chunk of work. Calls, cache hits and failures by kind are counted in
`stats`. Failed requests are never stored: a rerun retries them. With `allow_calls`, requests
beyond that many backend calls fail as `budget_exhausted`.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from queue import SimpleQueue
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
        self._lock = threading.Lock()  # backend calls finish on the backend's own thread
        self._inflight: dict[str, Future] = {}
        self._unsaved: list[dict[str, Any]] = []

    def key(self, req: Request) -> str:
        params = {**self.sampling.model_dump(), "max_tokens": req.max_tokens or self.sampling.max_tokens,
                  "stop": list(req.stop), "backend": self._ident}
        return rollout_key(self.policy.model_id, req.problem + "\x00" + req.prefix, params, req.sample, self.seed)

    def misses(self, requests: list[Request]) -> int:
        """How many backend calls `submit(requests)` would make (distinct keys neither stored
        nor already in flight): what a run budget must grant."""
        keys = {self.key(r) for r in requests}
        with self._lock:
            keys -= self._inflight.keys()
        if self.store is not None and keys:
            keys -= self.store.get_many(list(keys)).keys()
        return len(keys)

    def submit(self, requests: list[Request], allow_calls: int | None = None) -> list[Future]:
        """Start answering `requests`: a future per request (done at once for cache hits and
        refusals); at most `allow_calls` new backend calls, the rest fail `budget_exhausted`.
        A request equal to one in flight shares its future. Finished generations wait in
        memory until `flush()` stores them."""
        keys = [self.key(r) for r in requests]
        with self._lock:
            flying = {k: self._inflight[k] for k in keys if k in self._inflight}
        new = [k for k in dict.fromkeys(keys) if k not in flying]
        found = self.store.get_many(new) if self.store is not None and new else {}
        out: list[Future | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            hit = found.get(k)
            if k in flying:
                out[i] = flying[k]
            elif hit is not None:
                out[i] = _done(Generation(hit.text, hit.finish_reason, cached=True))
                self.stats.cache_hits += 1
            else:
                todo.setdefault(k, []).append(i)
        miss_keys = list(todo)
        if allow_calls is not None and len(miss_keys) > allow_calls:
            refused = _done(Generation(None, None, BUDGET))
            for k in miss_keys[max(allow_calls, 0):]:
                for i in todo[k]:
                    out[i] = refused
                self.stats.failures[BUDGET] += len(todo[k])
            miss_keys = miss_keys[: max(allow_calls, 0)]
        if miss_keys:
            reqs = [requests[todo[k][0]] for k in miss_keys]
            inner = self.policy.submit(reqs, self.sampling, self.seed)
            self.stats.calls += len(miss_keys)
            # The caller's future resolves only after the bookkeeping in `_landed` (a bare
            # backend future wakes its waiters before running its callbacks).
            outer: list[Future] = [Future() for _ in miss_keys]
            with self._lock:
                self._inflight.update(zip(miss_keys, outer, strict=True))
            for k, r, f, o in zip(miss_keys, reqs, inner, outer, strict=True):
                for i in todo[k]:
                    out[i] = o
                f.add_done_callback(partial(self._landed, k, r, o))
        return out  # type: ignore[return-value]

    def _landed(self, k: str, r: Request, outer: Future, f: Future) -> None:
        """A backend call finished (on whatever thread finished it): count a failure, or
        queue the generation for the store; then resolve the caller's future."""
        try:
            g = f.result()
        except Exception:  # a backend's bug must not hang the caller
            g = Generation(None, None, BACKEND)
        with self._lock:
            self._inflight.pop(k, None)
            if g.text is None:
                self.stats.failures[g.error or BACKEND] += 1
            elif self.store is not None:
                self._unsaved.append({
                    "key": k, "model": self.policy.model_id, "prompt": r.problem + "\x00" + r.prefix,
                    "params": {**self.sampling.model_dump(), "stop": list(r.stop),
                               "max_tokens": r.max_tokens or self.sampling.max_tokens},
                    "sample": r.sample, "seed": self.seed, "text": g.text, "finish_reason": g.finish_reason})
        outer.set_result(g)

    def flush(self, force: bool = True) -> None:
        """Store the generations that arrived since the last flush (one transaction), from
        the caller's thread: SQLite connections do not cross threads. Without `force`, only
        once a whole `chunk` has arrived (callers that flush often, like the MCTS driver)."""
        with self._lock:
            if not force and len(self._unsaved) < self.chunk:
                return
            records, self._unsaved = self._unsaved, []
        if records and self.store is not None:
            self.store.put_many(records)

    def generate(self, requests: list[Request], allow_calls: int | None = None) -> list[Generation]:
        """Answer every request; at most `allow_calls` go to the backend (the rest fail with
        `budget_exhausted`). Generations are stored `chunk` at a time as they complete, so a
        run killed mid-batch loses at most a chunk of work."""
        futs = self.submit(requests, allow_calls)
        # A queue of completions rather than `wait(FIRST_COMPLETED)` in a loop, which
        # re-registers on every pending future each time (quadratic in the batch).
        landed: SimpleQueue = SimpleQueue()
        pending = {id(f): f for f in futs if not f.done()}
        for f in pending.values():
            f.add_done_callback(landed.put)
        for _ in range(len(pending)):
            landed.get()
            self.flush(force=False)
        self.flush()
        return [f.result() for f in futs]

    def snapshot(self) -> tuple[int, int, Counter]:
        """(calls, cache hits, failures by kind) so far, read consistently."""
        with self._lock:
            return self.stats.calls, self.stats.cache_hits, Counter(self.stats.failures)


def _done(g: Generation) -> Future:
    f: Future = Future()
    f.set_result(g)
    return f
