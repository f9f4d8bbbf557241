"""The README's plugin example, copied as written into a temporary package, runs through
`thresher run` with its drops counted per reason and source in the manifest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_plugin_code() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- plugin-example:begin -->\s*```python\n(.*?)```\s*<!-- plugin-example:end -->", text, re.S)
    assert block, "README lost its plugin example markers"
    return block.group(1)


def test_readme_example_is_about_twenty_lines():
    code = [ln for ln in readme_plugin_code().splitlines() if ln.strip()]
    assert len(code) <= 22


@pytest.mark.slow
def test_readme_plugin_runs_through_thresher_run(tmp_path):
    pkg = tmp_path / "plugins" / "my_filters"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "short_text.py").write_text(readme_plugin_code())
    texts = {"a": ["one two three four", "one", "one two", "x y z"], "b": ["lonely", "four words are here"]}
    for src, rows in texts.items():
        with open(tmp_path / f"{src}.jsonl", "w") as fh:
            for t in rows:
                fh.write(json.dumps({"text": t}) + "\n")
    recipe = {"sources": [{"name": s, "paths": [f"{s}.jsonl"]} for s in texts],
              "stages": [{"type": "my_filters.short_text:MinWords", "params": {"min_words": 3}}],
              "output": {"dir": "out"}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "plugins"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "thresher.cli", "run", str(tmp_path / "recipe.yaml"), "--no-prefect"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "latest" / "manifest.json").read_text())
    st = m["stages"]["min_words"]
    assert st["type"] == "my_filters.short_text:MinWords" and st["rows_in"] == 6
    assert st["dropped"] == {"too_few_words": 3}
    assert m["counts"]["by_source"]["a"]["dropped"] == {"min_words": {"too_few_words": 2}}
    assert m["counts"]["by_source"]["b"]["dropped"] == {"min_words": {"too_few_words": 1}}
    assert m["counts"]["balanced"] and m["num_rows"] == 3

    bad = dict(recipe, stages=[{"type": "my_filters.short_text:MinWords", "params": {"min_word": 3}}])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = subprocess.run([sys.executable, "-m", "thresher.cli", "run", str(tmp_path / "bad.yaml"), "--no-prefect"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and "stages.0.params.min_word: Extra inputs are not permitted" in res.stdout + res.stderr
