"""Plain functions `(text, row) -> bool | (bool, reason) | float` named by import path run as
selectors: decisions, reasons, score column and threshold, pickling by import path, and an
error on one row that names the function, the row's file and line, and the exception."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import yaml

from thresher.core import Selector
from thresher.core.columns import set_columns
from thresher.core.registry import UnknownStage, stage_class
from thresher.core.row_function import RowFunctionError
from thresher.failures import describe
from thresher.load import load_manifest
from thresher.testing.harness import make_batch, run_stage

RULES = textwrap.dedent('''
    """Row rules for the tests."""


    def has_words(text, row):
        """Keep rows with at least three words."""
        return len(text.split()) >= 3


    def not_from_b(text, row):
        return (row["source"] != "b", "from_source_b")


    def shouting(text, row):
        """Share of upper-case letters."""
        letters = [c for c in text if c.isalpha()]
        return sum(c.isupper() for c in letters) / len(letters)


    def needs_flag(text, row):
        return row["flag"] > 0


    def says_maybe(text, row):
        return "maybe"


    def one_arg(text):
        return True


    class NotAStage:
        pass
''')


@pytest.fixture
def rules_pkg(tmp_path, monkeypatch):
    """A package `rf_rules_<n>` (unique per test: row function classes are cached by path)."""
    name = f"rf_rules_{abs(hash(str(tmp_path))) % 10**8}"
    pkg = tmp_path / "plugins" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "rules.py").write_text(RULES)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    yield name
    for mod in (f"{name}.rules", name):
        sys.modules.pop(mod, None)


def test_a_function_becomes_a_selector_named_by_its_path(rules_pkg):
    cls = stage_class(f"{rules_pkg}.rules:has_words")
    assert issubclass(cls, Selector) and cls.type_name == f"{rules_pkg}.rules.has_words"
    assert stage_class(f"{rules_pkg}.rules:has_words@1") is cls
    assert cls.__doc__.startswith(f"`{rules_pkg}.rules:has_words`: Keep rows with at least three words.")
    assert "Cost:" in cls.__doc__ and set(cls.Params.model_fields) == {"threshold", "column"}
    stage = cls({"threshold": 0.5})
    clone = pickle.loads(pickle.dumps(stage))  # plain pickle: rebuilt from the import path
    assert type(clone) is cls and clone.params == stage.params


def _decide(path: str, rows: list[dict], params: dict | None = None):
    """(keep, reason per row, scored batch) without a pipeline."""
    stage = stage_class(path)(params or {})
    batch = set_columns(make_batch(rows), stage.score(make_batch(rows)))
    keep, reason = stage.decide(batch)
    return keep.tolist(), [None if k else r for k, r in zip(keep, reason.to_pylist(), strict=True)], batch


ROWS = [{"text": "one two three", "source": "a"}, {"text": "ONE", "source": "a"},
        {"text": "Four Five SIX seven", "source": "b"}, {"text": "A B C D e", "source": "b"}]


def test_bool_reason_and_score_functions_decide(rules_pkg):
    assert _decide(f"{rules_pkg}.rules:has_words", ROWS)[:2] == ([True, False, True, True],
                                                                [None, "rejected", None, None])
    assert _decide(f"{rules_pkg}.rules:not_from_b", ROWS)[:2] == ([True, True, False, False],
                                                                 [None, None, "from_source_b", "from_source_b"])
    keep, reason, batch = _decide(f"{rules_pkg}.rules:shouting", ROWS)  # no threshold: only a score
    assert keep == [True] * 4 and batch.column("shouting").to_pylist() == [0.0, 1.0, 5 / 16, 0.8]
    assert "__row_fn_keep" in batch.schema.names


@pytest.mark.slow
def test_a_score_function_with_threshold_runs_in_a_pipeline(rules_pkg):
    res = run_stage(f"{rules_pkg}.rules:shouting", ROWS, {"threshold": 0.5, "column": "upper_share"})
    assert res.kept.column("text").to_pylist() == ["ONE", "A B C D e"]
    assert res.kept.column("upper_share").to_pylist() == [1.0, 0.8]
    assert res.dropped.column("upper_share").to_pylist() == [0.0, 5 / 16]
    assert res.dropped.column("drop_reason").to_pylist() == ["below_threshold"] * 2
    name = f"{rules_pkg}.rules.shouting"
    assert res.counters == {f"{name}/dropped/below_threshold/a": 1, f"{name}/dropped/below_threshold/b": 1,
                            f"{name}/in/a": 2, f"{name}/in/b": 2}
    assert res.report == {"function": f"{rules_pkg}.rules:shouting", "rows": 4, "kept": 2, "scored": 4,
                          "score_mean": pytest.approx((1 + 0.8 + 5 / 16) / 4)}
    assert "__row_fn_keep" not in res.kept.column_names + res.dropped.column_names


def test_an_error_on_a_row_names_function_row_and_exception(rules_pkg):
    with pytest.raises(RowFunctionError) as info:
        _decide(f"{rules_pkg}.rules:needs_flag", [{"text": "x", "flag": 1}, {"text": "y", "flag": None}])
    failure = describe(info.value)
    assert failure.code == 1 and failure.lines == [
        f"row function {rules_pkg}.rules:needs_flag raised TypeError: '>' not supported between instances of "
        "'NoneType' and 'int' on the row at <memory>:2 (id '1'); fix the function or that row"]
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(RowFunctionError, match=r"says_maybe returned str 'maybe'; return a bool, \(bool, "
                       r"reason\) or a float score on the row at <memory>:1"):
        _decide(f"{rules_pkg}.rules:says_maybe", [{"text": "x"}])


def test_objects_that_are_not_row_functions_are_refused(rules_pkg):
    assert stage_class(f"{rules_pkg}.rules:shouting")({"column": "source"}).check() == [
        "params.column: a score column named 'source' would replace the row's own column; set `column` to "
        "another name"]
    with pytest.raises(UnknownStage, match=r"one_arg\) is not a function that can be called as fn\(text, row\)"):
        stage_class(f"{rules_pkg}.rules:one_arg")
    with pytest.raises(UnknownStage, match=r"NotAStage\) is not a thresher stage"):
        stage_class(f"{rules_pkg}.rules:NotAStage")


@pytest.mark.slow
def test_row_functions_run_through_thresher_run(tmp_path):
    pkg = tmp_path / "plugins" / "my_rules"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "rules.py").write_text(RULES)
    texts = {"a": ["one two three", "ONE", "Four Five SIX seven"], "b": ["A B C D e", "tiny"]}
    for src, rows in texts.items():
        with open(tmp_path / f"{src}.jsonl", "w") as fh:
            for t in rows:
                fh.write(json.dumps({"text": t, "flag": 1 if src == "a" else None}) + "\n")
    recipe = {"sources": [{"name": s, "paths": [f"{s}.jsonl"]} for s in texts],
              "stages": [{"type": "my_rules.rules:has_words"},
                         {"type": "my_rules.rules:shouting", "params": {"threshold": 0.2}}],
              "output": {"dir": "out"}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "plugins"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "thresher.cli", "run", str(tmp_path / "recipe.yaml"), "--no-prefect"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = load_manifest(str(tmp_path / "out"))
    words, shout = m["stages"]["my_rules.rules.has_words"], m["stages"]["my_rules.rules.shouting"]
    assert words["type"] == "my_rules.rules:has_words" and words["dropped"] == {"rejected": 2}
    assert shout["rows_in"] == 3 and shout["dropped"] == {"below_threshold": 1}
    assert m["counts"]["balanced"] and m["num_rows"] == 2

    bad = dict(recipe, stages=[{"type": "my_rules.rules:needs_flag"}])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    cmd[4] = str(tmp_path / "bad.yaml")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    # thresher's own report is the last line (Beam logs the worker's traceback before it).
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: row function my_rules.rules:needs_flag raised TypeError: '>' not supported")
    assert f"on the row at {tmp_path / 'b.jsonl'}:1 (id " in last and "fix the function or that row" in last
