"""The decontamination stage's embedding method: the word-overlap prefilter (which windows get
embedded) and reuse of item and window vectors through the row cache, on a stand-in model
(fast); real MiniLM / onnx recall is measured by bench/decontam_embed.py."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from thresher.models import embeddings
from thresher.stages.decontam import prefilter
from thresher.stages.decontam.decontaminate import Decontaminate
from thresher.stages.decontam.embedding import mask_numbers
from thresher.testing.harness import run_stage

ITEMS = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers market.",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
    "Josh decides to try flipping a house. He buys a house for 80000 and then puts in 50000 in repairs.",
]
FILLER = ("the committee met on tuesday to discuss the annual budget and the new library plans "
          "while residents raised concerns about parking downtown and the river bridge repairs ")


def test_a_number_substituted_copy_inside_a_long_row_gets_one_window_cut_to_the_item():
    pf = prefilter.build(ITEMS)
    plant = ITEMS[0].replace("16", "23").replace("three", "five")
    long_row = FILLER * 3 + plant + " " + FILLER * 2
    texts = [long_row, FILLER, plant, "ducks"]
    win, row = prefilter.candidate_windows(pf, texts, min_overlap=0.3, per_row=3)
    assert row.tolist() == [0, 2]  # the filler and a one-word row cannot match anything
    assert win == [plant, plant]  # cut exactly around the plant (both cuts agree: one window)
    # Digits do not count: the same row with the numbers changed scores the same overlap.
    assert prefilter.content_words("16 eggs, 23 ducks!", pf.stop) == ["eggs", "ducks"]


def test_overlap_threshold_and_per_row_limit():
    pf = prefilter.build(ITEMS)
    half = "Janet's ducks lay eggs per day. Nothing else here about anything at all."
    assert prefilter.candidate_windows(pf, [half], 0.9, 3)[0] == []
    assert prefilter.candidate_windows(pf, [half], 0.2, 3)[0] == [half]  # short row: embedded whole
    both = ITEMS[1] + " " + FILLER * 4 + ITEMS[2]
    win, row = prefilter.candidate_windows(pf, [both], 0.5, 1)
    # Best item only (a tie: the lower segment): its window, and that trimmed to its matched words.
    assert win == [ITEMS[1], ITEMS[1][2:]] and row.tolist() == [0, 0]


class BagModel:
    """Batch-invariant stand-in: hashed bag of content words, so rewordings that keep the
    words score high and unrelated text scores ~0."""

    thresher_identity = {"model": "bag", "backend": "onnx", "precision": "int8", "batching": "row"}
    device = type("D", (), {"type": "cpu"})()

    def __init__(self):
        self.encoded: list[str] = []

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
               show_progress_bar=False):
        self.encoded += list(texts)
        v = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for w in prefilter.content_words(t, prefilter._stop_words()) or ["empty"]:
                v[i, zlib.crc32(w.encode()) % 64] += 1
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def get_sentence_embedding_dimension(self):
        return 64


@pytest.fixture
def bag_model(monkeypatch):
    model = BagModel()
    monkeypatch.setattr(embeddings, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(embeddings, "choose_backend", lambda *a, **k: ("onnx", "int8", "cpu"))
    return model


def test_stage_embeds_only_candidates_and_reuses_vectors_from_the_cache(bag_model, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": q}) + "\n" for q in ITEMS))
    params = {"benchmarks": [{"preset": "gsm8k", "paths": [str(bench)], "id_field": None}],
              "embed_threshold": 0.9, "action": "flag", "n": 13}
    plant = ITEMS[2].replace("80000", "90000").replace("50000", "20000")
    pool = [{"id": "clean", "text": FILLER * 2}, {"id": "plant", "text": FILLER + plant + " " + FILLER},
            {"id": "short", "text": "a cat"}]
    cache = str(tmp_path / "cache")
    first = run_stage(Decontaminate, pool, params, cache_dir=cache, out_dir=str(tmp_path / "o1"))
    masked = mask_numbers(ITEMS)  # numbers are masked for the embedding method (its default)
    windows = [t for t in bag_model.encoded if t not in masked]
    assert len(bag_model.encoded) - len(windows) == 3 and mask_numbers([plant]) == [masked[2]]
    # Around the plant only (the item's length; trimmed to matched words, which reach back to a
    # "repairs" in the text before it); the clean rows were never embedded.
    # The plant's window, masked, is the masked item itself: read back from the cache, not embedded.
    assert windows == mask_numbers(["repairs " + plant])
    got = dict(zip(first.kept.column("id").to_pylist(), first.kept.column("decontam_item").to_pylist(), strict=True))
    assert got == {"clean": None, "plant": "gsm8k/3", "short": None}
    assert first.kept.column("decontam_embed_score").to_pylist()[0] == 0.0  # ruled out by the prefilter
    assert first.counters["decontaminate/cache/misses"] == 1 and first.counters["decontaminate/cache/hits"] == 1
    bag_model.encoded.clear()
    second = run_stage(Decontaminate, pool, params, cache_dir=cache, out_dir=str(tmp_path / "o2"))
    assert bag_model.encoded == []  # items and windows all read back
    assert second.counters["decontaminate/cache/hits"] == 2
    for c in ("decontam_embed_score", "decontam_item", "decontam_method"):
        assert second.kept.column(c).equals(first.kept.column(c))
    assert second.report["embedding"]["item_vectors_from_cache"] == 3
