"""`ModelSession`: what a model-in-the-loop selector holds on a worker.

The policy client behind the rollout store (`CachedPolicy`), the reward, and the run's call
budget. Built on the driver with plain settings (so it pickles to workers), opened on the
worker in the stage's `setup()`: nothing with a socket, a thread or a file handle is pickled.
`with session.counting():` around a batch's work adds what it cost to the stage's counters
`<stage>/model_calls`, `<stage>/cache_hits` and `<stage>/failures/<kind>`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager

from thresher.core.counters import stage_counter
from thresher.models.cached_policy import CachedPolicy
from thresher.models.policy import Generation, PolicyParams, Request, SamplingParams
from thresher.models.policy_backends import make_policy
from thresher.models.rewards import Reward, make_reward
from thresher.models.rollout_store import RolloutStore


class ModelSession:
    """Worker-side: policy client + rollout store + reward. `open()` it in `setup()`."""

    def __init__(self, *, stage: str, seed: int, policy: PolicyParams, sampling: SamplingParams, reward: str,
                 last_number: bool, store_path: str, max_calls_per_run: int | None, reward_timeout_s: float = 5.0):
        self.stage = stage
        self.seed = seed
        self.policy = policy
        self.sampling = sampling
        self.reward_spec = reward
        self.last_number = last_number
        self.reward_timeout_s = reward_timeout_s
        self.path = store_path
        self.max_calls_per_run = max_calls_per_run
        # One scope per session, and a stage builds its session once per run (on the driver,
        # so every worker shares it): a rerun gets a fresh run budget (its cache hits cost
        # nothing anyway).
        self.budget_scope = f"{stage}:{uuid.uuid4().hex}"
        self.reward: Reward | None = None
        self.cp: CachedPolicy | None = None

    def __getstate__(self):
        d = self.__dict__.copy()
        d["cp"] = None  # a client and a SQLite connection: reopened on the worker
        return d

    def open(self, with_policy: bool = True) -> None:
        """Load the reward; with the policy, also connect the client and open the store."""
        self.reward = make_reward(self.reward_spec, self.last_number, reward_timeout_s=self.reward_timeout_s)
        if self.cp is not None or not with_policy:
            return
        self.cp = CachedPolicy(make_policy(self.policy), RolloutStore(self.path), self.sampling, self.seed)

    def generate(self, requests: list[Request]) -> list[Generation]:
        """Answer `requests` (from the store where possible) within the run budget. Calls
        reserved but then not made are not refunded: which requests hit the cache is known
        only after the lookup, so only what might miss is reserved."""
        return self.cp.generate(requests, allow_calls=self._allowed(requests))

    def submit(self, requests: list[Request]) -> list[Future]:
        """`generate` without waiting: a future per request (see `CachedPolicy.submit`); call
        `flush()` now and then to store what arrived."""
        return self.cp.submit(requests, allow_calls=self._allowed(requests))

    def flush(self, force: bool = True) -> None:
        self.cp.flush(force)

    def _allowed(self, requests: list[Request]) -> int | None:
        if self.max_calls_per_run is None:
            return None
        return self.cp.store.reserve(self.budget_scope, self.cp.misses(requests), self.max_calls_per_run)

    def slot_clock(self) -> tuple[float, int] | None:
        """(busy slot-seconds so far, slots) of the policy client, or None when its backend
        does not measure occupancy."""
        busy = self.cp.policy.slot_clock()
        return None if busy is None else (busy, self.cp.policy.slots)

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count the calls, cache hits and failures of the `generate`s inside the block (once
        per batch: every scored batch adds to every counter, zero included)."""
        before = self._snapshot()
        yield
        calls, hits, fails = self._snapshot()
        stage_counter(self.stage, "model_calls").inc(calls - before[0])
        stage_counter(self.stage, "cache_hits").inc(hits - before[1])
        for kind, n in (fails - before[2]).items():
            stage_counter(self.stage, "failures", kind).inc(n)

    def _snapshot(self) -> tuple[int, int, Counter]:
        return self.cp.snapshot()
