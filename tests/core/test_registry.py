"""Stage names: built-ins, plugins by import path, entry points, version pins, clear errors."""

from __future__ import annotations

import sys
import textwrap

import pytest

from thresher.core import Selector
from thresher.core.registry import BUILTIN, UnknownStage, available, stage_class, validate_params
from thresher.recipe.schema import StageSpec


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_names_match_their_classes(name):
    cls = stage_class(name)
    assert cls.type_name == name and issubclass(cls, Selector) == (cls.kind == "selector")
    assert cls.__doc__ and "Cost" in cls.__doc__, "a stage's docstring says its cost"
    assert stage_class(f"{name}@{cls.version}") is cls


def test_version_pin_mismatch_and_unknown_names_say_what_to_do():
    with pytest.raises(UnknownStage, match=r"asks for exact_dedup@99, but this thresher has exact_dedup version 1"):
        stage_class("exact_dedup@99")
    with pytest.raises(UnknownStage, match=r"unknown stage type 'exact_dedupe'; known types: .*exact_dedup"):
        stage_class("exact_dedupe")
    with pytest.raises(UnknownStage, match=r"no module named 'no_such_pkg'"):
        stage_class("no_such_pkg.mod:Thing")
    with pytest.raises(UnknownStage, match=r"has no attribute 'Nope'"):
        stage_class("thresher.stages.dedup.exact_dedup:Nope")


def test_params_errors_name_the_key_path():
    problems = validate_params(StageSpec(type="exact_dedup", params={"buckets": 0, "typo": 1}), "stages.3")
    assert "stages.3.params.buckets: Input should be greater than 0 (got 0)" in problems
    assert any(p.startswith("stages.3.params.typo: Extra inputs are not permitted") for p in problems)


def test_entry_point_plugins_are_found(tmp_path, monkeypatch):
    pkg = tmp_path / "ep_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from thresher.core import Selector

        class Always(Selector):
            """Keeps everything. Cost: none."""
            type_name = "always_keep"

            def decide(self, batch):
                return [True] * batch.num_rows, None
    '''))
    dist = tmp_path / "ep_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[thresher.stages]\nalways_keep = ep_plugin:Always\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available()["always_keep"] == "ep_plugin:Always"
    assert stage_class("always_keep").__name__ == "Always"
    sys.modules.pop("ep_plugin", None)
