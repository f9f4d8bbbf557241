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
    STAT_COLUMNS,
    CallTally,
    ModelSelector,
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
                       "failures_by_kind": {"budget_exhausted": 1, "timeout": 1}}
