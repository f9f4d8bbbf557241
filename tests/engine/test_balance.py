"""A snapshot whose counts do not prove every input row's fate is never published."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import demo_pool_rows
from thresher.engine import snapshots
from thresher.engine.build import run_pipeline
from thresher.engine.plan import make_plan
from thresher.flows.publish import RowsUnaccountedError, publish
from thresher.recipe.load import validate_recipe


def _plan(tmp_path):
    rows = demo_pool_rows(60)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "bal", "sources": [{"name": "pool", "paths": ["in.jsonl"], "id_field": "id"}],
              "stages": [{"type": "exact_dedup"}], "output": {"dir": "out"}}
    return make_plan(validate_recipe(recipe, base_dir=str(tmp_path)))


@pytest.mark.slow
def test_rows_lost_between_read_and_write_fail_the_run_and_leave_latest(tmp_path):
    first = _plan(tmp_path)
    publish(first, run_pipeline(first))
    good = snapshots.latest_id(str(tmp_path / "out"))

    plan = _plan(tmp_path)
    run = run_pipeline(plan)
    run.counters["written/pool"] -= 7  # what a runner losing a bundle's output looks like
    with pytest.raises(RowsUnaccountedError, match=r"source 'pool': 60 rows read, 53 written, quarantined or "
                                                   r"dropped \(\+7 unaccounted\); the snapshot was not published"):
        publish(plan, run)
    assert snapshots.latest_id(str(tmp_path / "out")) == good
    assert not os.path.exists(plan.manifest_path)  # unfinished: the next run removes it
