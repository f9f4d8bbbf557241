"""The README's stage reference is `thresher stages --markdown`: docs cannot drift from code."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from thresher.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_stage_reference_is_generated_from_the_classes():
    res = CliRunner().invoke(app, ["stages", "--markdown"])
    assert res.exit_code == 0, res.output
    block = re.search(r"<!-- stages:begin[^>]*-->\n(.*?)<!-- stages:end -->", README.read_text(encoding="utf-8"), re.S)
    assert block, "README lost its stages:begin/end markers"
    assert block.group(1) == res.stdout, "README stage reference is stale: paste `thresher stages --markdown` into it"


def test_reference_lists_every_param_with_its_default():
    from thresher.core.registry import stage_class
    from thresher.core.stage_docs import markdown_reference

    md = markdown_reference([stage_class("exact_dedup"), stage_class("variance_filter")])
    assert "### `exact_dedup` (selector, version 1)" in md
    assert "| `buckets` | `64` | Shuffle groups for pass 1. |" in md
    assert "| `policy.base_url` |" in md  # nested models are flattened
