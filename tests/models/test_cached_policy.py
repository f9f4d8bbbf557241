"""The rollout cache in front of a policy, the scripted test policy, the backend factory and
its checks, and the worker-side session (budget shared by every worker, counters)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from thresher.models.cached_policy import CachedPolicy
from thresher.models.policy import BUDGET, PolicyParams, Request, SamplingParams
from thresher.models.policy_backends import check_policy, make_policy
from thresher.models.rollout_store import RolloutStore
from thresher.models.session import ModelSession
from thresher.testing.scripted import ScriptedPolicy, bernoulli_script


class Flaky(Exception):
    kind = "flaky"


def fails_on_odd_samples(req, seed):
    if int(req.sample) % 2:
        raise Flaky("odd")
    return f"text {req.problem} {req.sample}", "stop"


def test_cache_answers_repeats_and_never_stores_failures(tmp_path):
    store = RolloutStore(str(tmp_path / "r.sqlite"))
    policy = ScriptedPolicy(fails_on_odd_samples)
    cp = CachedPolicy(policy, store, SamplingParams(), seed=1, chunk=3)
    reqs = [Request("q", sample=str(i)) for i in range(6)] + [Request("q", sample="0")]  # one duplicate
    gens = cp.generate(reqs)
    assert [g.text is None for g in gens] == [False, True, False, True, False, True, False]
    assert gens[-1] is gens[0] and {g.error for g in gens if g.text is None} == {"flaky"}
    assert (cp.stats.calls, cp.stats.cache_hits, dict(cp.stats.failures)) == (6, 0, {"flaky": 3})
    assert policy.calls == 6 and len(store) == 3  # the duplicate was asked once; failures not stored

    again = CachedPolicy(policy, store, SamplingParams(), seed=1)
    gens2 = again.generate(reqs)
    assert again.stats.as_dict() == {"calls": 3, "cache_hits": 4, "failures": {"flaky": 3}}
    assert [g.cached for g in gens2] == [True, False, True, False, True, False, True]
    assert [g.text for g in gens2] == [g.text for g in gens]
    # Another seed or other sampling settings are other requests.
    other = CachedPolicy(policy, store, SamplingParams(temperature=0.1), seed=1)
    assert other.key(reqs[0]) != cp.key(reqs[0]) != CachedPolicy(policy, store, SamplingParams(), 2).key(reqs[0])


def test_allow_calls_fails_the_rest_as_budget_exhausted():
    policy = ScriptedPolicy(bernoulli_script)
    cp = CachedPolicy(policy, None, SamplingParams(), seed=0)
    gens = cp.generate([Request("p=1 answer=3", sample=str(i)) for i in range(5)], allow_calls=2)
    assert [g.error for g in gens] == [None, None, BUDGET, BUDGET, BUDGET]
    assert policy.calls == 2 and cp.stats.failures == {BUDGET: 3}


def test_bernoulli_script_steps_and_answers():
    full, _ = bernoulli_script(Request("p=1 answer=42 steps=2"), seed=0)
    assert full == "Step 1: work.\n\nStep 2: work.\n\nThe answer is 42."
    step, _ = bernoulli_script(Request("p=1 answer=42 steps=2", prefix="Step 1: work.\n\n", stop=("\n\n",)), 0)
    assert step == "Step 2: work."
    wrong, _ = bernoulli_script(Request("p=0 answer=42 steps=0"), seed=0)
    assert wrong.startswith("The answer is ") and wrong != "The answer is 42."


def test_make_policy_loads_the_scripted_backend_only_when_asked():
    code = ("import sys; from thresher.models.policy_backends import make_policy; "
            "assert 'thresher.testing.scripted' not in sys.modules; "
            "from thresher.models.policy import PolicyParams; "
            "p = make_policy(PolicyParams(backend='scripted')); "
            "assert 'thresher.testing.scripted' in sys.modules; print(p.model_id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "scripted:thresher.testing.scripted:bernoulli_script"


def test_check_policy_problems(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert check_policy(PolicyParams()) == [] and check_policy(PolicyParams(backend="scripted")) == []
    assert check_policy(PolicyParams(api_key_env="NO_SUCH_KEY_VAR")) == [
        "policy.api_key_env: environment variable NO_SUCH_KEY_VAR is not set"]
    bad = check_policy(PolicyParams(backend="scripted", script="thresher.testing.scripted:nope"))
    assert bad == ["policy.script: script 'thresher.testing.scripted:nope': module 'thresher.testing.scripted' "
                   "has no attribute 'nope'"]
    with pytest.raises(RuntimeError, match="NO_SUCH_KEY_VAR"):
        make_policy(PolicyParams(api_key_env="NO_SUCH_KEY_VAR"))


def test_session_pickles_without_its_client_and_workers_share_one_budget(tmp_path):
    session = ModelSession(stage="s", seed=0, policy=PolicyParams(backend="scripted"), sampling=SamplingParams(),
                           reward="normalized", last_number=True, store_path=str(tmp_path / "r.sqlite"),
                           max_calls_per_run=10)
    session.open()
    assert pickle.loads(pickle.dumps(session)).cp is None
    # Two workers, each with its copy of the driver's session: one run budget between them.
    workers = [pickle.loads(pickle.dumps(session)) for _ in range(2)]
    got = []
    for w, first in zip(workers, (0, 100), strict=True):
        w.open()
        with w.counting():
            gens = w.generate([Request("p=1 answer=1", sample=str(first + i)) for i in range(8)])
        got.append(sum(g.error != BUDGET for g in gens))
    assert got == [8, 2]
    assert workers[1].reward("The answer is 1.", "1") == 1.0


def test_submit_shares_in_flight_requests_and_stores_on_flush(tmp_path):
    """Futures as results arrive; a request equal to one still in flight shares it (one
    call); nothing is stored until `flush` (then all of it), failures never."""
    from concurrent.futures import Future

    class Manual(ScriptedPolicy):  # answers only when the test says so
        def __init__(self):
            super().__init__(fails_on_odd_samples)
            self.pending: list[tuple[Future, Request]] = []

        def submit(self, requests, sampling, seed):
            futs = [Future() for _ in requests]
            self.pending += list(zip(futs, requests, strict=True))
            return futs

        def answer_all(self):
            for f, r in self.pending:
                f.set_result(self.generate([r], SamplingParams(), 1)[0])
            self.pending = []

    store = RolloutStore(str(tmp_path / "r.sqlite"))
    policy = Manual()
    cp = CachedPolicy(policy, store, SamplingParams(), seed=1)
    first = cp.submit([Request("q", sample="0"), Request("q", sample="1")])
    again = cp.submit([Request("q", sample="0"), Request("q", sample="2")])
    assert again[0] is first[0] and len(policy.pending) == 3 and cp.misses([Request("q", sample="0")]) == 0
    assert not any(f.done() for f in first + again)
    policy.answer_all()
    assert [f.result().error for f in first + again] == [None, "flaky", None, None]
    assert len(store) == 0  # arrived, not yet stored
    cp.flush()
    assert len(store) == 2 and cp.snapshot() == (3, 0, {"flaky": 1})
    assert [g.cached for g in cp.generate([Request("q", sample="0"), Request("q", sample="2")])] == [True, True]
