"""The recipe's `tokenizer:`: counts equal the tokenizer's own on real rows, every kind of spec
resolves (shorthands, folder, tokenizer.json, the local Hugging Face cache), bad specs fail in
one line at plan time, handles pickle light.

Fast: MiniLM (a tokenizer.json). Slow: SmolLM2's GGUF (converted by transformers once, then
cached under $THRESHER_TOKENIZER_DIR / ~/.cache/thresher/tokenizers)."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pytest

from thresher.core.errors import RecipeError
from thresher.models import tokenizer as tk
from thresher.models.tokenizer import TokenizerError, load_tokenizer


def _pool_texts(shared_data, n=1000, stride=37):
    """`n` real general_pool texts, every `stride`-th row (so every source shows up)."""
    out = []
    with gzip.open(shared_data / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % stride == 0:
                out.append(json.loads(line)["text"])
                if len(out) == n:
                    break
    return out


def _reference(json_path):
    """The `tokenizers` library on the same file, as a user would count: no special tokens, and
    (MiniLM's file truncates and pads to 128) no truncation or padding."""
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(json_path)
    ref.no_truncation()
    ref.no_padding()
    return ref


def test_minilm_counts_equal_the_tokenizers_own_on_1000_real_rows(shared_data):
    texts = _pool_texts(shared_data)
    tok = load_tokenizer("minilm")
    ref = _reference(tok.json_path)
    want = [len(ref.encode(t, add_special_tokens=False).ids) for t in texts]
    got = tok.count(pa.array(texts))
    assert got.dtype == np.int64 and got.tolist() == want
    assert max(want) > 128  # the file's own truncation (128) is really off
    assert tok.count(texts).tolist() == want  # a list works the same
    assert tok.encode(texts[:5]) == [ref.encode(t, add_special_tokens=False).ids for t in texts[:5]]


def test_nulls_count_zero_and_special_tokens_are_not_counted():
    tok = load_tokenizer("minilm")
    assert tok.count(pa.array(["hello world", None, ""], pa.large_string())).tolist() == [2, 0, 0]
    assert tok.count([]).tolist() == [] and tok.encode([None]) == [[]]
    assert tok.encode(["hello world"]) == [[7592, 2088]]
    assert (tok.eos_id, tok.pad_id) == (102, 0)  # BERT: no EOS, so [SEP]; [PAD]
    assert tok.name == "minilm" and load_tokenizer("minilm") is tok  # once per process


def test_handle_pickles_as_paths_and_reloads(tmp_path):
    tok = load_tokenizer("minilm")
    blob = pickle.dumps(tok)
    assert len(blob) < 1000  # no vocabulary travels to the workers
    back = pickle.loads(blob)
    assert back.count(["Alice was beginning to get very tired"]).tolist() == tok.count(
        ["Alice was beginning to get very tired"]).tolist()
    assert back.sha256 == tok.sha256 and back.name == "minilm"


def test_folder_file_and_relative_paths_resolve_and_hash_their_files(tmp_path):
    src = load_tokenizer("minilm").path
    folder = tmp_path / "tok"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    by_folder = load_tokenizer("tok", str(tmp_path))
    assert by_folder.kind == "folder" and by_folder.path == str(folder)
    assert by_folder.sha256 == load_tokenizer("minilm").sha256  # same files, same hash
    by_file = load_tokenizer(str(folder / "tokenizer.json"))
    assert by_file.kind == "file"
    assert by_file.sha256 == hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    assert by_file.count(["Hello there"]).tolist() == by_folder.count(["Hello there"]).tolist() == [2]
    # a changed config file is a different tokenizer for the fingerprint
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 7}))
    assert tk.TokenizerHandle("x", "folder", str(folder)).sha256 != by_folder.sha256


def test_a_name_is_looked_up_in_the_local_hugging_face_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snap = tmp_path / "hub" / "models--acme--tiny-tok" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    shutil.copy(load_tokenizer("minilm").json_path, snap / "tokenizer.json")
    (tmp_path / "hub" / "models--acme--tiny-tok" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-tok" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tok = load_tokenizer("acme/tiny-tok", str(tmp_path / "elsewhere"))
    assert tok.kind == "folder" and tok.path == str(snap)
    assert tok.count(["Hello there"]).tolist() == [2]
    with pytest.raises(TokenizerError) as err:  # not cached: never downloaded
        load_tokenizer("acme/not-cached", str(tmp_path))
    assert "local Hugging Face cache" in str(err.value)


@pytest.mark.parametrize("spec, why", [
    ("no/such/folder", "does not exist"),
    ("README.md", "neither a tokenizer.json nor a .gguf"),
    (".", "without tokenizer.json"),
    ("", "is empty"),
])
def test_a_bad_spec_is_one_line_naming_key_value_and_what_to_do(tmp_path, spec, why):
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(spec, str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"tokenizer: {spec!r} ") and why in msg
    assert "give a folder with tokenizer.json" in msg


def test_a_broken_tokenizer_json_fails_when_loaded(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"^tokenizer: 'tokenizer.json' could not be loaded from "):
        load_tokenizer("tokenizer.json", str(tmp_path))


def test_a_bad_spec_fails_at_plan_time(tmp_path):
    from thresher.engine.plan import make_plan
    from thresher.recipe.load import validate_recipe

    (tmp_path / "in.jsonl").write_text('{"text": "a b c"}\n')
    recipe = validate_recipe({"sources": [{"name": "s", "paths": ["in.jsonl"]}], "tokenizer": "nope",
                              "stages": [{"type": "ngram_features"}], "output": {"dir": "out"}},
                             base_dir=str(tmp_path))
    with pytest.raises(RecipeError) as err:
        make_plan(recipe)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("tokenizer: 'nope' is no file or folder")
    assert tk.recipe_problems(recipe) == err.value.problems
    ok = validate_recipe({"sources": [{"name": "s", "paths": ["in.jsonl"]}], "tokenizer": "minilm",
                          "stages": [{"type": "ngram_features"}], "output": {"dir": "out"}}, base_dir=str(tmp_path))
    assert make_plan(ok).stages[0].name == "ngram_features" and tk.recipe_problems(ok) == []


@pytest.mark.slow
def test_smollm2_gguf_counts_equal_its_tokenizers_own_and_keeps_chat_template_and_eos(shared_data):
    tok = load_tokenizer("smollm2")
    assert tok.kind == "gguf" and tok.path.endswith(tk.SMOLLM2_GGUF)
    texts = _pool_texts(shared_data)
    ref = _reference(tok.json_path)  # the converted tokenizer.json: the GGUF's own vocabulary
    assert tok.count(texts).tolist() == [len(ref.encode(t, add_special_tokens=False).ids) for t in texts]
    assert tok.eos_id == ref.token_to_id("<|im_end|>") == 2 and tok.pad_id == 2
    assert tok.sha256 == hashlib.sha256(open(tok.path, "rb").read()).hexdigest()
    # the chat template survives the conversion (`hf.apply_chat_template` reads it; importing
    # transformers to call it costs ~10 s, so the tokenize stage's tests do that)
    folder = tk.converted_folder("gguf", tok.path)
    assert "<|im_start|>" in open(f"{folder}/chat_template.jinja").read()
    assert json.load(open(f"{folder}/tokenizer_config.json"))["eos_token"] == "<|im_end|>"
