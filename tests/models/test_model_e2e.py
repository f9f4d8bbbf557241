"""End to end against a real policy: SmolLM2-135M-Instruct served by llama.cpp's
OpenAI-compatible server on a loopback port, both model-in-the-loop selectors run with
`thresher run` on synthetic arithmetic problems.

Marked `model` and `slow` (still run by .ci/run); skipped with the reason when
llama-cpp-python or the model package is not installed. CPU-sized: ~1 s per call, so a dozen problems, few rollouts,
small MCTS budgets, short generations (~1.5 min in all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT
from thresher.testing import llama_server as local_server

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    why = local_server.unavailable()
    if why:
        pytest.skip(f"real-model tests need the SmolLM2 server: {why}")
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with local_server.LlamaServer(n_ctx=1024, log_path=str(log)) as srv:
        yield srv


def _problems(path, levels, per_level, seed):
    from thresher.testing.arith import generate

    probs = [p for p in generate(per_level, seed=seed, levels=levels)]
    with open(path, "w") as fh:
        for p in probs:
            fh.write(json.dumps(p) + "\n")
    return probs


def _thresher_run(recipe: dict, path) -> dict:
    """`thresher run --no-prefect` in a subprocess; returns the manifest."""
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", "from thresher.cli import main; main()", "run", str(path),
                          "--no-prefect"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from thresher.load import load_manifest

    return load_manifest(recipe["output"]["dir"])


def _shard_rows(out_dir: str) -> list[dict]:
    import pyarrow as pa

    from thresher.load import load_manifest, read_shard, shard_paths

    tables = [read_shard(p) for p in shard_paths(out_dir, load_manifest(out_dir))]
    return pa.concat_tables(tables).to_pylist() if tables else []


def _report(manifest: dict, stage: str) -> dict:
    return manifest["stages"][stage]["report"]


def _recipe(tmp_path, name, stage, params, base_url):
    return {
        "name": name,
        "seed": 11,
        "sources": [{"name": "arith", "paths": [str(tmp_path / "problems.jsonl")], "text_field": "question",
                     "id_field": "id"}],
        "stages": [{"type": stage, "params": params}],
        "output": {"dir": str(tmp_path / name), "order": "sorted", "sort_by": "source_row", "write_dropped": True},
        "batch_rows": 4,
    }


def _by_level(rows, col, default=None):
    out = defaultdict(list)
    for r in rows:
        v = r[col]
        out[r["level"]].append(default if v is None else v)
    return {lvl: float(np.mean(v)) for lvl, v in sorted(out.items())}


def test_variance_filter_and_mcts_against_real_model(llama, tmp_path):
    probs = _problems(tmp_path / "problems.jsonl", levels=(1, 2, 3), per_level=3, seed=5)
    cache = str(tmp_path / "rollouts.sqlite")
    chat = {"base_url": llama.base_url, "model": "smollm2-135m", "api": "chat", "prompt_template": "{problem}",
            "max_concurrency": 4, "timeout_s": 120}
    vf = {"policy": chat, "sampling": {"temperature": 0.7, "max_tokens": 32}, "n": 4, "answer_field": "answer",
          "cache_path": cache, "write_rollouts": True}
    m = _thresher_run(_recipe(tmp_path, "vf", "variance_filter", vf, llama.base_url), tmp_path / "vf.yaml")
    rep = _report(m, "variance_filter")
    # Kept rows are in the shards, dropped ones (with their scores) in dropped/: every problem scored.
    rows = _shard_rows(str(tmp_path / "vf"))
    dropped = [r for d in m.get("dropped", []) for r in _read(tmp_path / "vf" / "latest", d["path"])]
    scored = rows + dropped
    assert len(scored) == len(probs) == rep["rows"]
    assert all(r["variance_status"] == "scored" and r["n_rollouts"] == 4 for r in scored)
    assert all(r["reward_variance"] > 0 for r in rows)
    assert rep["model_calls"] == 4 * len(probs) and rep["cache_hits"] == 0 and rep["failures_by_kind"] == {}
    rate = _by_level(scored, "solve_rate")
    print("\nSmolLM2 solve rate by level (4 samples, T=0.7):", rate)
    assert rate[1] > rate[2] and rate[1] > rate[3]

    # MCTS: small budgets (CPU); harder levels need more iterations (unsolved = max + 1).
    small = [p for p in probs if p["level"] in (1, 2)][:2] + [p for p in probs if p["level"] == 2][:2]
    with open(tmp_path / "problems.jsonl", "w") as fh:
        fh.writelines(json.dumps(p) + "\n" for p in small)
    completions = {**chat, "api": "completions", "prompt_template": local_server.SMOLLM2_TEMPLATE}
    mc = {"policy": completions, "sampling": {"temperature": 0.7, "max_tokens": 32}, "answer_field": "answer",
          "cache_path": cache, "max_iterations": 3, "children": 2, "step_delimiter": "\n",
          "step_max_tokens": 16, "min_difficulty": 0}
    m = _thresher_run(_recipe(tmp_path, "mcts", "mcts_difficulty", mc, llama.base_url), tmp_path / "mcts.yaml")
    rep = _report(m, "mcts_difficulty")
    rows = _shard_rows(str(tmp_path / "mcts"))
    assert len(rows) == 4 and rep["rows"] == 4  # min_difficulty 0: solved and unsolved all kept
    assert {r["mcts_status"] for r in rows} <= {"solved", "unsolved"}
    for r in rows:
        assert r["mcts_solved"] == (r["mcts_difficulty"] is not None)
    diff = _by_level(rows, "mcts_difficulty", default=mc["max_iterations"] + 1)
    print("SmolLM2 MCTS difficulty by level (unsolved = 4):", diff, "histogram:", rep["difficulty_histogram"],
          "calls:", rep["model_calls"])
    assert diff[1] < diff[2]
    assert sum(rep["difficulty_histogram"].values()) == 4

    # Rerun both against a port where nothing listens: every answer must come from the cache.
    dead = f"http://127.0.0.1:{local_server.free_port()}/v1"
    mc2 = {**mc, "policy": {**completions, "base_url": dead, "max_retries": 0}}
    m2 = _thresher_run(_recipe(tmp_path, "mcts", "mcts_difficulty", mc2, dead), tmp_path / "mcts2.yaml")
    rep2 = _report(m2, "mcts_difficulty")
    assert rep2["model_calls"] == 0 and rep2["failures_by_kind"] == {} and rep2["cache_hits"] == rep["model_calls"]
    assert _shard_rows(str(tmp_path / "mcts")) == rows

    with open(tmp_path / "problems.jsonl", "w") as fh:
        fh.writelines(json.dumps(p) + "\n" for p in probs)
    vf2 = {**vf, "policy": {**chat, "base_url": dead, "max_retries": 0}}
    m3 = _thresher_run(_recipe(tmp_path, "vf", "variance_filter", vf2, dead), tmp_path / "vf2.yaml")
    rep3 = _report(m3, "variance_filter")
    assert rep3["model_calls"] == 0 and rep3["cache_hits"] == 4 * len(probs) and rep3["failures_by_kind"] == {}


def _read(out_dir, rel):
    from thresher.load import read_shard

    return read_shard(os.path.join(out_dir, rel)).to_pylist()
