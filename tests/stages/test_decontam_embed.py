"""The decontamination stage's embedding method: the word-overlap prefilter (which windows get
embedded) and reuse of item and window vectors through the row cache, on a stand-in model
(fast); real MiniLM / onnx recall is measured by bench/decontam_embed.py."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from thresher.models import embedding_backends, embeddings
from thresher.stages.decontam import prefilter, specific
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
    # Best item only (a tie: the lower segment): its matched span ("robe" .. "total?"), and that
    # run back to its sentence's start: the item itself.
    assert win == [ITEMS[1][2:], ITEMS[1]] and row.tolist() == [0, 0]


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
            for w in prefilter.content_words(t, prefilter.stop_words()) or ["empty"]:
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


@pytest.mark.slow  # a Beam pipeline, twice (~2 s each on a quiet machine)
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
    # Around the plant only; the clean rows were never embedded. The span of the item's distinct
    # words reaches back to a "repairs" in the text before the plant (as short as the span that
    # ends on the plant's own "repairs."), alone and run on to its sentence's end; the window of
    # the item's length is the plant, which masked is the masked item: read back from the cache.
    tight = "repairs " + plant[:plant.index(" in 20000")]
    assert windows == mask_numbers([tight, "repairs " + plant])
    got = dict(zip(first.kept.column("id").to_pylist(), first.kept.column("decontam_item").to_pylist(), strict=True))
    assert got == {"clean": None, "plant": "gsm8k/3", "short": None}
    assert first.kept.column("decontam_embed_score").to_pylist()[0] == 0.0  # ruled out by the prefilter
    assert first.counters["decontaminate/cache/misses"] == 2 and first.counters["decontaminate/cache/hits"] == 1
    bag_model.encoded.clear()
    second = run_stage(Decontaminate, pool, params, cache_dir=cache, out_dir=str(tmp_path / "o2"))
    assert bag_model.encoded == []  # items and windows all read back
    assert second.counters["decontaminate/cache/hits"] == 3
    for c in ("decontam_embed_score", "decontam_item", "decontam_method"):
        assert second.kept.column(c).equals(first.kept.column(c))
    assert second.report["embedding"]["item_vectors_from_cache"] == 3


def _stage(bench_file, cache_dir, out_dir, **params):
    from thresher.core.context import StageContext
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe({
        "sources": [{"name": "pool", "paths": ["pool.jsonl"]}], "output": {"dir": str(out_dir)},
        "stages": [{"type": "decontaminate", "params": {
            "benchmarks": [{"preset": "gsm8k", "paths": [str(bench_file)], "id_field": None}],
            "embed_threshold": 0.9, **params}}]}, base_dir=str(out_dir))
    ctx = StageContext(name="decontaminate", seed=0, out_dir=str(out_dir), work_dir=str(out_dir / "_work"),
                       recipe=recipe, cache_dir=str(cache_dir))
    stage = Decontaminate(recipe.stages[0].params, ctx)
    stage.prepare()
    return stage


def test_item_vectors_are_cached_per_item_text_and_a_changed_benchmark_embeds_only_its_new_items(
        bag_model, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": q}) + "\n" for q in ITEMS))
    cache = tmp_path / "cache"
    first = _stage(bench, cache, tmp_path / "o1")
    assert first.static["embedding"]["item_vectors_from_cache"] == 0 and len(bag_model.encoded) == 3
    bag_model.encoded.clear()
    again = _stage(bench, cache, tmp_path / "o2")
    assert bag_model.encoded == [] and again.static["embedding"]["item_vectors_from_cache"] == 3
    np.testing.assert_array_equal(again.benchmarks.item_vectors, first.benchmarks.item_vectors)
    # One item reworded, one added: only those two are embedded; the set's other item is read back.
    changed = [ITEMS[0], ITEMS[1].replace("robe", "gown"), ITEMS[2], "A new item about eleven purple kites."]
    bench.write_text("".join(json.dumps({"question": q}) + "\n" for q in changed))
    third = _stage(bench, cache, tmp_path / "o3")
    assert bag_model.encoded == mask_numbers(changed[1:2] + changed[3:])
    assert third.static["embedding"]["item_vectors_from_cache"] == 2
    # Another encoder (here: another precision) is another namespace: nothing read back.
    bag_model.thresher_identity = {**bag_model.thresher_identity, "precision": "fp32"}
    bag_model.encoded.clear()
    _stage(bench, cache, tmp_path / "o4")
    assert len(bag_model.encoded) == 4


def test_embedding_segments_skip_short_ones_and_those_another_segment_covers():
    from thresher.stages.decontam.embedding import embedding_segments

    texts = ["Which is true?",  # too few words
             "Which planet in the solar system has the most moons today?",
             "Which planet in the solar system has the most moons today? Saturn Jupiter",
             "Which planet in the solar system has the most moons today? A. Saturn B. Jupiter",
             "Which planet in the solar system has the most moons today? Saturn Jupiter"]
    item = np.asarray([0, 0, 0, 0, 1])
    # Item 0 is embedded once, with its choices (the question alone and the lettered copy have
    # no word it lacks); item 1's identical text is another item's.
    assert embedding_segments(texts, item, min_words=6).tolist() == [2, 4]
    assert embedding_segments(texts[:2], item[:2], min_words=6).tolist() == [1]
    assert embedding_segments(texts, item, min_words=20).tolist() == []


HELD_OUT = json.loads((Path(__file__).parent / "data" / "heldout_paraphrases.json").read_text(encoding="utf-8"))


def _change_numbers(text: str, rng) -> str:
    """Every number replaced by another with as many digits."""
    def other(m):
        n = len(m.group(0))
        return str((int(m.group(0)) + rng.randint(1, 9 * 10 ** (n - 1) - 1)) % (10 ** n)).zfill(n)
    return re.sub(r"\d+", other, text)


def _jsonl(path: Path, start: int = 0, stop: int | None = None) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, start, stop)]


@pytest.mark.slow
# Not openvino: it runs the fp32 export `auto` runs, to the same vectors (tests/models).
@pytest.mark.parametrize("backend", ["auto", "torch", "onnx"])
def test_real_model_finds_plants_and_held_out_paraphrases_in_pool_rows_without_false_positives(
        shared_data, tmp_path, backend):
    """The bundled MiniLM on each `embed_backend` (auto: the fp32 export; onnx: int8), GSM8K +
    MATH-500 items (the first 50 / 60), real pool rows: number-substituted copies and the
    held-out paraphrases (written after the windows were designed) put in the middle of real
    rows, next to clean pool rows and GSM8K *train* questions."""
    pytest.importorskip("faiss")
    if backend != "torch" and embedding_backends.backend_problem(backend):
        pytest.skip(embedding_backends.backend_problem(backend))
    import random

    from thresher.stages.decontam.decontaminate import BEST_BENCHMARK
    from thresher.testing.harness import make_batch

    rng = random.Random(0)
    pool = _jsonl(shared_data / "general_pool" / "pool.jsonl.gz", 30000, 33000)
    clean = [{"id": f"clean/{i}", "text": r["text"]} for i, r in enumerate(pool[:300])]
    paras = [r["text"].split() for r in pool[300:] if 90 <= len(r["text"].split()) <= 130]
    hosts = [r["text"].split() for r in pool[300:] if 40 <= len(r["text"].split()) <= 200]
    train = [{"id": f"train/{i}", "text": r["question"]}
             for i, r in enumerate(_jsonl(shared_data / "gsm8k" / "train.jsonl.gz", 0, 150))]
    gsm = _jsonl(shared_data / "gsm8k" / "test.jsonl.gz")[:50]
    math = _jsonl(shared_data / "math500" / "test.jsonl.gz")[:60]
    planted = []
    for k, text in enumerate([r["question"] for r in gsm[:40:2]] + [r["problem"] for r in math[:60:3]]):
        w = hosts[k]
        planted.append({"id": f"plant/{k}", "text": " ".join(w[:len(w) // 2] + [_change_numbers(text, rng)]
                                                          + w[len(w) // 2:])})
    buried = []
    for k, (item, t) in enumerate([(i, t) for b in ("gsm8k", "math500") for i, t in HELD_OUT[b].items()]):
        w = paras[k]
        buried.append({"id": f"buried/{item}", "text": " ".join(w[:len(w) // 2] + [t] + w[len(w) // 2:])})
    stage = _stage_for(shared_data, tmp_path, backend)
    records = clean + train + planted + buried
    got = dict(zip([r["id"] for r in records],
                   stage.score(make_batch(records, "pool"))[BEST_BENCHMARK].to_pylist(), strict=True))
    found = {kind: sum(got[r["id"]] is not None for r in rs)
             for kind, rs in (("clean", clean), ("train", train), ("plant", planted), ("buried", buried))}
    # Missed: two short MATH problems ("Find the roots of ...", "Write $\\frac{3}{20}$ as a
    # decimal.": under 3 indexed content words or 6 words, left to the n-gram method) and two
    # paraphrases MiniLM int8 scores under 0.85 even alone (0.81, 0.84).
    assert (len(planted), len(buried)) == (40, 23)
    assert found == {"clean": 0, "train": 0, "plant": 38, "buried": 21}


def _stage_for(shared_data, out, backend="auto"):
    from thresher.core.context import StageContext
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe({
        "sources": [{"name": "pool", "paths": ["pool.jsonl"]}], "output": {"dir": str(out)},
        "stages": [{"type": "decontaminate", "params": {
            "benchmarks": [{"preset": "gsm8k", "paths": [str(shared_data / "gsm8k" / "test.jsonl.gz")], "limit": 50},
                           {"preset": "math500", "paths": [str(shared_data / "math500" / "test.jsonl.gz")],
                            "limit": 60}],
            "embed_threshold": 0.85, "embed_backend": backend}}]}, base_dir=str(out))
    ctx = StageContext(name="decontaminate", seed=0, out_dir=str(out), work_dir=str(out / "_work"), recipe=recipe)
    stage = Decontaminate(recipe.stages[0].params, ctx)
    stage.prepare()
    return stage


def test_margin_is_taken_over_the_other_neighbours_with_twins_and_missing_ones_left_out():
    items = np.eye(4, dtype=np.float32)
    items = np.vstack([items, items[:1]])  # item 4 embeds as item 0 does: its twin
    sim = np.asarray([[0.9, 0.9, 0.6, 0.5], [0.9, 0.85, 0.8, 0.8], [0.9, -3e38, -3e38, -3e38]], np.float32)
    idx = np.asarray([[0, 4, 1, 2], [1, 2, 3, 0], [2, -1, -1, -1]])
    np.testing.assert_allclose(specific.margins(sim, idx, items), [0.9 - 0.55, 0.9 - 2.45 / 3, 0.9], rtol=1e-6)
    assert specific.numbers("Josh paid $80,000, then 2.5 times 3 (and 3 again).") == {"80000", "2.5", "3"}


def test_accept_needs_the_margin_or_all_of_the_items_numbers():
    items = np.eye(4, dtype=np.float32)
    texts = ["Sam has 11 apples and 20 pears.", "Ann has 12 figs and 30 plums.", "Bo has 7 kiwis.", "none"]
    idx = np.asarray([[0, 1, 2, 3]] * 5)
    sim = np.asarray([[0.95, 0.5, 0.4, 0.3],     # stands out: the best item
                      [0.9, 0.86, 0.8, 0.8],     # crowded, no item's numbers: no match
                      [0.9, 0.86, 0.8, 0.8],     # crowded, but holds all of item 1's numbers
                      [0.9, 0.8, 0.8, 0.8],      # item 1's numbers, but item 1 is under the threshold
                      [0.84, 0.2, 0.1, 0.1]], np.float32)  # under the threshold
    wins = ["a", "Sam has 13 apples and 21 pears.", "Ann has 30 plums, 12 figs.", "Ann has 30 plums, 12 figs.",
            "a"]
    ok, col = specific.accept(wins, sim, idx, items, texts, 0.85, 0.18)
    assert ok.tolist() == [True, False, True, False, False] and col.tolist() == [0, 0, 1, 0, 0]
    # One number is not enough (item 2 has one), and without a margin the threshold alone decides.
    sim[2], idx[2] = [0.9, 0.88, 0.85, 0.85], [0, 2, 1, 3]
    assert specific.accept(["Bo has 7 kiwis."] * 5, sim, idx, items, texts, 0.85, 0.18)[0].tolist()[2] is False
    assert specific.accept(wins, sim, idx, items, texts, 0.85, None)[0].tolist() == [True, True, True, True, False]


TEMPLATE = ("{n} baked {a} {g} for the school fair, packed them in paper boxes, carried the boxes to the gym "
            "and sold the {g} for {b} dollars each. How much money did {n} collect at the fair?")


def test_a_new_problem_on_a_benchmark_template_is_not_flagged_but_copies_and_paraphrases_are(
        bag_model, tmp_path):
    """Six benchmark items on one template: a row on the template with another story is near
    them all (cosine over the threshold, small margin); a number-substituted copy stands out; a
    paraphrase that does not stand out is still matched by the item's numbers."""
    from thresher.stages.decontam.decontaminate import BEST_BENCHMARK, MATCH_ITEM
    from thresher.testing.harness import make_batch

    stories = zip(["Tom", "Mia", "Raj", "Ivy", "Leo", "Zoe"], ["muffins", "brownies", "pretzels", "bagels",
                                                              "scones", "cookies"], strict=True)
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": TEMPLATE.format(n=n, g=g, a=12 + i, b=3 + i)}) + "\n"
                             for i, (n, g) in enumerate(stories)))
    para = ("Mia baked {} brownies for the fair, packed them in boxes, carried the boxes to the gym and sold "
            "them for 4 dollars each. How much money did she collect at the school fair?")
    pool = [{"id": "template", "text": TEMPLATE.format(n="Ben", g="donuts", a=40, b=2)},
            {"id": "copy", "text": TEMPLATE.format(n="Mia", g="brownies", a=25, b=7)},
            {"id": "para", "text": para.format(13)}, {"id": "para-other-numbers", "text": para.format(14)}]
    got = {}
    for margin in (0.18, None):
        stage = _stage(bench, tmp_path / "cache", tmp_path / f"o{margin}", embed_threshold=0.85,
                       embed_margin=margin, action="flag")
        cols = stage.score(make_batch(pool, "pool"))
        got[margin] = dict(zip([r["id"] for r in pool], cols[MATCH_ITEM].to_pylist(), strict=True))
        scores = cols["decontam_embed_score"].to_pylist()
        assert min(scores) > 0.85 and max(cols["decontam_ngram_score"].to_pylist()) < 0.5  # embedding only
        assert cols[BEST_BENCHMARK].to_pylist()[1] == "gsm8k"
    # Item ids are line numbers: Mia's story is gsm8k/2.
    assert got[0.18] == {"template": None, "copy": "gsm8k/2", "para": "gsm8k/2", "para-other-numbers": None}
    assert got[None] == {"template": "gsm8k/3", "copy": "gsm8k/2", "para": "gsm8k/2", "para-other-numbers": "gsm8k/2"}
