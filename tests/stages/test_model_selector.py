"""What the two model-in-the-loop selectors share (`ModelSelector`): checks before the run,
where the rollout store goes, the per-row call tally and the report plumbing."""

from __future__ import annotations

import json

import numpy as np

from thresher.core.context import StageContext
from thresher.models.policy import BUDGET, Generation
from thresher.recipe.schema import Recipe
from thresher.stages.selection.mcts_difficulty import MctsDifficulty
from thresher.stages.selection.model_selector import (
    CACHE_HITS,
    CALLS,
    FAILURES,
    SLOT_BUSY,
    SLOT_CAPACITY,
    STAT_COLUMNS,
    CallTally,
    ModelSelector,
    SlotTimer,
)
from thresher.stages.selection.variance_filter import VarianceFilter
from thresher.testing.harness import make_batch


def test_check_reports_policy_and_reward_problems(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    stage = MctsDifficulty({"policy": {"api_key_env": "NO_SUCH_KEY_VAR"}, "reward": "nomodule:f"})
    problems = stage.check()
    assert problems[0] == "policy.api_key_env: environment variable NO_SUCH_KEY_VAR is not set"
    assert problems[1].startswith("params.reward: reward 'nomodule:f': no module named 'nomodule'")
    # Rewards read from the rows: no policy and no reward to check.
    assert VarianceFilter({"policy": {"api_key_env": "NO_SUCH_KEY_VAR"}, "reward": "nomodule:f",
                           "precomputed_rewards": ["r"]}).check() == []
    # Responses read from the rows are still rewarded here: the reward is checked.
    assert len(VarianceFilter({"reward": "nomodule:f", "precomputed_responses": ["r"]}).check()) == 1


def test_store_path_defaults_to_the_output_and_resolves_against_the_recipe(tmp_path):
    ctx = StageContext(name="vf", seed=0, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "out" / "_work"))
    assert VarianceFilter({}, ctx).session.path == str(tmp_path / "out" / "cache" / "rollouts.sqlite")
    recipe = Recipe.model_validate({"sources": [{"name": "s", "paths": ["x.jsonl"]}], "base_dir": str(tmp_path)})
    ctx = StageContext(name="vf", seed=0, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path), recipe=recipe)
    assert VarianceFilter({"cache_path": "c/r.sqlite"}, ctx).session.path == str(tmp_path / "c" / "r.sqlite")


def test_tally_columns_are_internal_and_summarised():
    tally = CallTally(2)
    tally.add(0, Generation("a"))
    tally.add(0, Generation("b", cached=True))
    tally.add(1, Generation(None, error="timeout"))
    tally.add(1, Generation(None, error=BUDGET))  # never sent: a failure, not a call
    tally.reward_failures[0]["no_answer"] += 2
    cols = tally.columns()
    assert cols[CALLS].to_pylist() == [1, 1] and cols[CACHE_HITS].to_pylist() == [1, 0]
    assert [json.loads(s) for s in cols[FAILURES].to_pylist()] == [{}, {"budget_exhausted": 1, "timeout": 1}]
    assert set(MctsDifficulty.internal_columns) == set(STAT_COLUMNS) == set(VarianceFilter.internal_columns)
    batch = make_batch([{"text": "a"}, {"text": "b"}])
    for name, arr in cols.items():
        batch = batch.append_column(name, arr)
    # The shared part of every model selector's summary (each stage adds its own statistics).
    summary = ModelSelector.summarise(MctsDifficulty(), batch, np.ones(2, bool))
    assert summary == {"rows": 2, "model_calls": 2, "cache_hits": 1,
                       "failures_by_kind": {"budget_exhausted": 1, "timeout": 1},
                       "reward_failures_by_kind": {"no_answer": 2}}


def test_slot_timer_columns_add_up_to_the_reported_occupancy():
    class Session:  # a policy whose slots were busy 3 of every 4 slot-seconds
        clock = 0.0

        def slot_clock(self):
            return self.clock, 4

    session = Session()
    timer = SlotTimer(session)
    with timer:
        session.clock = 6.0
    assert timer.busy == 6.0 and timer.capacity > 0
    timer.capacity = 8.0  # pin the wall time for an exact check
    cols = timer.columns(3)
    assert cols[SLOT_BUSY].to_pylist() == [6.0, 0.0, 0.0] and cols[SLOT_CAPACITY].to_pylist() == [8.0, 0.0, 0.0]
    batch = make_batch([{"text": "a"}, {"text": "b"}, {"text": "c"}])
    for name, arr in {**CallTally(3).columns(), **cols}.items():
        batch = batch.append_column(name, arr)
    stage = MctsDifficulty()
    summary = ModelSelector.summarise(stage, batch, np.ones(3, bool))
    assert (summary["slot_busy_s"], summary["slot_capacity_s"]) == (6.0, 8.0)
    assert ModelSelector.report(stage, summary)["slot_occupancy"] == 0.75
    # A backend that does not measure occupancy (scripted, vllm): null, not zero.
    assert ModelSelector.report(stage, {})["slot_occupancy"] is None
