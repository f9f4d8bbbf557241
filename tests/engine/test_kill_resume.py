"""A run killed with SIGKILL mid-way never leaves a shard or manifest that looks complete,
and a rerun gives exactly the shards of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from thresher.load import load_manifest

# Whole recipes through the CLI / a real runner: end-to-end, so outside the fast loop.
pytestmark = pytest.mark.slow


def _run(recipe: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "thresher.cli", "run", str(recipe), "--no-prefect"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _shards(snapshot: Path) -> dict[str, bytes]:
    d = snapshot / "shards"
    return {p.name: p.read_bytes() for p in sorted(d.glob("part-*.arrow"))} if d.exists() else {}


def _newest_snapshot(out: Path) -> Path:
    snaps = sorted((out / "snapshots").iterdir()) if (out / "snapshots").exists() else []
    return snaps[-1] if snaps else out / "snapshots" / "none"


def test_sigkill_mid_run_then_rerun_gives_identical_shards(big_corpus, tmp_path):
    """`big_corpus`: 80,000 rows in 8 files (tests/conftest.py)."""
    recipe = {"name": "kill", "seed": 3,
              "sources": [{"name": "pool", "paths": [str(big_corpus / "part*.jsonl.gz")], "id_field": "id"}],
              "stages": [{"type": "exact_dedup"}],
              "output": {"dir": "out", "shard_max_rows": 1500, "partitions": 4}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    ref = dict(recipe, output=dict(recipe["output"], dir="ref"))
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(ref))
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    p = _run(tmp_path / "ref.yaml", env)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-3000:]
    reference = _shards(tmp_path / "ref" / "latest")
    ref_manifest = load_manifest(str(tmp_path / "ref"))
    assert len(reference) >= 10 and ref_manifest["num_rows"] == 80_000

    # Kill as soon as the first shard is published: the writer is then mid-way.
    out = tmp_path / "out"
    p = _run(tmp_path / "recipe.yaml", env)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not _shards(_newest_snapshot(out)):
        time.sleep(0.005)
    assert p.poll() is None, "the run finished before it could be killed; make the corpus bigger"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()

    killed = _newest_snapshot(out)
    assert not (killed / "manifest.json").exists() and not (out / "latest").exists()
    assert not (out / "LATEST").exists()
    visible = _shards(killed)
    assert 0 < len(visible) < len(reference)
    # Whatever carries a final name is complete: byte-identical to the uninterrupted run's.
    for name, data in visible.items():
        assert data == reference[name], name

    p = _run(tmp_path / "recipe.yaml", env)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-3000:]
    assert _shards(out / "latest") == reference
    m = load_manifest(str(out))
    assert [(s["path"], s["sha256"]) for s in m["shards"]] == [(s["path"], s["sha256"]) for s in ref_manifest["shards"]]
    # The killed run's unfinished snapshot is gone; only the finished one remains.
    assert [p.name for p in (out / "snapshots").iterdir()] == [m["snapshot"]] != [killed.name]
    assert not [f for f in os.listdir(out / "latest" / "shards") if ".tmp-" in f]
