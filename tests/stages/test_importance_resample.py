"""importance_resample (DSIR): the weights are the paper's formula, the selection is
deterministic for any parallelism, and on real data it picks math from a mixed pool.

Fast: the model math (`dsir`), the hooks on hand-made batches, one `run_stage`. Slow: whole
recipes on real data."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import run_recipe
from thresher.core.context import StageContext
from thresher.core.registry import make_stage
from thresher.recipe.load import validate_recipe
from thresher.recipe.schema import Recipe
from thresher.stages.features import ngram_features as nf
from thresher.stages.selection import dsir
from thresher.stages.selection import dsir_features as feats
from thresher.stages.selection.importance_resample import ImportanceResample, batch_candidates, build_model
from thresher.testing.harness import make_batch, run_stage
from thresher.text.ngrams import featurize
from thresher.text.tokenize import token_counts

TARGET = "target_domain/math_word_problems.jsonl.gz"
MATHS = ["Ada has 3 apples and buys 4 more apples. How many apples does she have?",
         "A train travels 60 miles per hour for 2 hours. How many miles does it travel?",
         "Tom sold 48 clips in April and half as many in May. How many clips did he sell?"]
OTHER = ["The cathedral was rebuilt in the twelfth century after a fire destroyed the nave.",
         "The river flows north through the valley before it reaches the old stone bridge.",
         "Her first novel was translated into nine languages and adapted for the stage."]


def _lines(path, n, stride=1):
    out = []
    with gzip.open(path, "rt") as fh:
        for i, line in enumerate(fh):
            if i % stride == 0:
                out.append(json.loads(line))
                if len(out) == n:
                    break
    return out


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _table(res, kind="shards"):
    infos = res.shards if kind == "shards" else res.dropped
    return pa.concat_tables(pa.ipc.open_stream(f"{res.out_dir}/{s['path']}").read_all() for s in infos)


def _stage(params):
    return ImportanceResample(params, StageContext(name="importance_resample", seed=0, out_dir=".", work_dir="."))


# ---------------------------------------------------------------------------------------
# The model math


def test_log_weight_vector_and_kl_are_the_paper_formulas():
    t, r = np.array([3, 1, 0, 0]), np.array([1, 1, 1, 1])
    p_t, p_r = t / 4, r / 4
    np.testing.assert_allclose(dsir.log_weight_vector(t, r), np.log(p_t + 1e-8) - np.log(p_r + 1e-8))
    np.testing.assert_allclose(dsir.log_weight_vector(t, r, smoothing=1.0),
                               np.log((t + 1) / 8 + 1e-8) - np.log(p_r + 1e-8))
    kl = float(np.sum(p_t * (np.log(p_t + 1e-10) - np.log(p_r + 1e-10))))
    assert dsir.kl_divergence(p_t, p_r) == pytest.approx(kl)
    assert dsir.kl_divergence(p_r, p_r) == 0.0
    assert dsir.probs(np.zeros(3)).tolist() == [0, 0, 0]  # no division by zero


def test_quotas_split_by_proportion_with_the_rest_to_the_last():
    assert dsir.quotas_of(10, [np.ones(2)] * 3, None) == [3, 3, 4]
    assert dsir.quotas_of(90, [], [2, 1]) == [60, 30]
    m = dsir.build_model(np.ones(4, np.int64), {"a": {"counts": np.array([1, 0, 0, 0]), "stats": np.array([1, 1])},
                                                "b": {"counts": np.array([0, 3, 0, 0]), "stats": np.array([1, 3])}},
                         ["a", "b"], separate=True, smoothing=0.0, total=8, proportions=None)
    assert m.quotas == [2, 6] and m.bounds == [2, 8] and m.log_diff.shape == (2, 4)
    with pytest.raises(ValueError, match="have no rows"):
        dsir.build_model(np.ones(4), {}, ["a"], False, 0.0, 5, None)


def test_top_candidates_merge_is_order_free():
    rng = np.random.default_rng(0)
    keys = np.round(rng.normal(size=500), 1)  # many ties: the row key decides
    rk = rng.permutation(500).astype(np.uint64)
    w = np.ones(500, np.int64)
    comb = dsir.TopCandidates()
    items = [dsir.Candidates([40], [40], [dsir.truncate(keys[i::7], rk[i::7], w[i::7], 40)]) for i in range(7)]
    a = comb.extract_output(comb.merge_accumulators([comb.merge_accumulators(items[:3]),
                                                     comb.merge_accumulators(items[3:])]))
    b = comb.extract_output(comb.merge_accumulators(items[::-1]))
    want = np.sort(rk[np.lexsort((rk, -keys))[:40]])
    assert (a.row_keys == want).all() and (b.row_keys == want).all()


def test_row_noise_is_a_stable_function_of_seed_and_id():
    h = dsir.row_hashes(["a", "b", "c"], seed=1)
    assert (h == dsir.row_hashes(["a", "b", "c"], seed=1)).all() and (h != dsir.row_hashes(["a", "b", "c"], 2)).all()
    assert (dsir.row_hashes(["b"], 1) == h[1]).all()  # not a draw from a stream: batch-independent
    u = dsir.uniform(h, 1)
    assert ((u > 0) & (u < 1)).all() and (u != dsir.uniform(h, 2)).all()
    # from an Arrow id column (its UTF-8 bytes, any layout) exactly as from Python strings
    ids = ["a", "b", "c", "naïve:1", "日本:2", ""]
    want = dsir.row_hashes(ids, 7)
    for col in (pa.array(ids), pa.array(ids, pa.large_string()), pa.array(["x"] + ids).slice(1),
                pa.chunked_array([pa.array(ids[:2]), pa.array(ids[2:])])):
        assert (dsir.row_hashes(col, 7) == want).all()
    assert want[0] == dsir.row_hashes(["a"], 7)[0] and dsir.row_hashes(pa.array([], pa.string()), 7).size == 0


def test_lazy_merges_select_what_eager_truncation_selects():
    rng = np.random.default_rng(1)
    keys = np.round(rng.normal(size=3000), 1)
    rk = rng.permutation(3000).astype(np.uint64)
    comb = dsir.TopCandidates()
    for weights, bound in ((np.ones(3000, np.int64), 50), (rng.integers(1, 30, 3000), 700)):
        acc = eager = None
        for i in range(0, 3000, 37):  # batches of 37 rows, merged one by one
            part = (keys[i:i + 37], rk[i:i + 37], weights[i:i + 37])
            acc = comb.add_input(acc, dsir.Candidates([bound], [bound], [dsir.bounded(*part, bound)]))
            # the reference: truncate every batch and every merge, as before merges were lazy
            part = dsir.truncate(*part, bound)
            eager = part if eager is None else dsir.truncate(*map(np.concatenate, zip(eager, part, strict=True)), bound)
        # unit weights: candidates grow to SLACK x bound between sorts; token weights: never over it
        # (+1: the first row over the bound is kept, see the next test)
        assert len(acc.units[0][0]) <= (dsir.SLACK * bound if (weights == 1).all() else bound + 1)
        sel = comb.extract_output(acc)
        want = comb.extract_output(dsir.Candidates([bound], [bound], [eager]))
        assert (sel.row_keys == want.row_keys).all() and sel.taken == want.taken and sel.taken[0][1] <= bound
    assert len(sel.row_keys) > 30


def test_unit_weight_truncation_keeps_the_ranked_best_rows_ties_by_row_key():
    rng = np.random.default_rng(4)
    keys = np.round(rng.normal(size=1000), 1)  # heavy ties at the cut
    rk = rng.permutation(1000).astype(np.uint64)
    for bound in (0, 1, 57, 500, 998, 999, 5000):
        got = dsir.truncate(keys, rk, np.ones(1000, np.int64), bound)[1]
        want = rk[dsir.ranked(keys, rk)][:bound + 1]  # the bound best rows and the first over it
        assert sorted(got.tolist()) == sorted(want.tolist())


def test_token_budget_selection_does_not_depend_on_batching():
    # A = {a1: 6 tokens, a2: 6}, B = {b: 3}, ranked a1 > a2 > b, budget 10: the whole pool
    # selects a1 only (a2 goes over, and selection stops there). Truncating A alone must keep
    # a2 as the row that goes over, or merging B afterwards would select a1 and b.
    keys, rk, w = np.array([3.0, 2.0, 1.0]), np.array([1, 2, 3], np.uint64), np.array([6, 6, 3])
    comb = dsir.TopCandidates()
    whole = comb.extract_output(dsir.Candidates([10], [10], [dsir.truncate(keys, rk, w, 10)]))
    a = dsir.Candidates([10], [10], [dsir.truncate(keys[:2], rk[:2], w[:2], 10)])
    b = dsir.Candidates([10], [10], [dsir.truncate(keys[2:], rk[2:], w[2:], 10)])
    split = comb.extract_output(comb.merge_accumulators([a, b]))
    assert whole.row_keys.tolist() == split.row_keys.tolist() == [1]
    # and at random, batches of every size select what one batch does
    rng = np.random.default_rng(3)
    keys, rk, w = rng.normal(size=2000), rng.permutation(2000).astype(np.uint64), rng.integers(1, 50, 2000)
    want = comb.extract_output(dsir.Candidates([900], [900], [dsir.truncate(keys, rk, w, 900)])).row_keys
    for size in (1, 7, 64, 333):
        parts = [dsir.Candidates([900], [900], [dsir.truncate(keys[i:i + size], rk[i:i + size], w[i:i + size], 900)])
                 for i in range(0, 2000, size)]
        assert (comb.extract_output(comb.merge_accumulators(parts)).row_keys == want).all()


# ---------------------------------------------------------------------------------------
# The hooks on small batches


def test_score_reuses_matching_ngram_columns_and_counts_the_same():
    batch = make_batch([{"text": t} for t in MATHS + OTHER + ["x"]])
    plain = _stage({"k": 2, "target": [{"name": "t", "paths": ["t.jsonl"]}], "num_buckets": 97}).score(batch)
    assert set(plain) == {feats.BUCKETS, feats.N_TOKENS}  # hashed here: raw occurrences
    with_cols = nf.add_feature_columns(batch, 2, 97)
    reused = _stage({"k": 2, "target": [{"name": "t", "paths": ["t.jsonl"]}], "num_buckets": 97}).score(with_cols)
    assert set(reused) == {feats.BUCKETS, feats.COUNTS, feats.N_TOKENS}
    assert reused[feats.BUCKETS].equals(with_cols.column(nf.BUCKETS_COLUMN))
    a = feats.bucket_counts(feats.featurize(batch, 2, 97), 97)
    b = feats.bucket_counts(feats.featurize(with_cols, 2, 97), 97)
    assert (a == b).all() and a.sum() == featurize(MATHS + OTHER + ["x"], 2, 97).sum()
    # settings that differ from the columns' are hashed again
    other = _stage({"k": 2, "target": [{"name": "t", "paths": ["t.jsonl"]}], "num_buckets": 98}).score(with_cols)
    assert feats.COUNTS not in other


def test_decide_scores_rows_keeps_the_selection_and_names_reasons():
    texts = MATHS + OTHER + ["two words"]
    batch = make_batch([{"text": t} for t in texts])
    st = _stage({"k": 2, "min_tokens": 5, "target": [{"name": "m", "paths": ["m.jsonl"]}], "num_buckets": 211})
    scored = batch
    for name, values in st.score(batch).items():
        scored = scored.append_column(name, values)
    targets = {"m": {"counts": feats.bucket_counts(feats.featurize(make_batch([{"text": t} for t in MATHS]), 2, 211),
                                                   211), "stats": np.array([3, 60])}}
    raw = {"counts": feats.bucket_counts(scored, 211), "stats": np.zeros(5, np.int64)}
    model = build_model(None, raw, targets, st.params)
    sel = dsir.Selection(np.array([0, 2], np.uint64), np.zeros(2, np.int32), [(2, 2)])
    keep, reason, cols = st.decide(scored, {"model": model, "raw_stats": raw["stats"], "selection": sel})
    assert keep.tolist() == [True, False, True, False, False, False, False]
    assert reason.tolist()[-1] == "too_short" and set(reason.tolist()[:-1]) == {"not_selected"}
    # the score is counts . log-weight vector, row by row
    X = featurize(texts, 2, 211).toarray()
    np.testing.assert_allclose(cols["dsir_log_weight"].to_numpy(), X @ model.log_diff[0], rtol=1e-12)
    assert (cols["dsir_log_weight"].to_numpy()[:3] > cols["dsir_log_weight"].to_numpy()[3:6].max()).all()
    # summarise: the kept rows' buckets and tokens
    s = st.summarise(scored, keep)
    assert (s["all"]["counts"] == X[keep].sum(0)).all()
    assert s["all"]["stats"].tolist() == [2, int(token_counts([texts[0], texts[2]]).sum())]


def test_candidates_read_a_slim_view_and_rank_by_noised_log_weight():
    texts = MATHS + OTHER + ["two words"]
    scored = feats.featurize(make_batch([{"text": t} for t in texts], first_key=10), 2, 211)
    view = feats.candidate_view(scored, seed=5)
    # the pass after the model reads only these columns (no text, id or provenance) ...
    assert view.schema.names == ["__row_key", feats.BUCKETS, feats.N_TOKENS, feats.ROW_HASH]
    assert view.column(feats.BUCKETS).equals(scored.column(feats.BUCKETS))
    assert view.column(feats.ROW_HASH).to_numpy().tolist() == dsir.row_hashes(scored.column("id"), 5).tolist()
    assert feats.ROW_HASH not in feats.candidate_view(scored, seed=None).schema.names  # top_k: no noise
    # ... and ranks the eligible rows (not the 2-word one) by log w + Gumbel noise of (seed, id)
    # (k 9 > 6 rows: none cut)
    st = _stage({"k": 9, "min_tokens": 5, "target": [{"name": "m", "paths": ["m.jsonl"]}], "num_buckets": 211})
    targets = {"m": {"counts": feats.bucket_counts(feats.featurize(make_batch([{"text": t} for t in MATHS]), 2, 211),
                                                   211), "stats": np.array([3, 60])}}
    model = build_model(None, {"counts": feats.bucket_counts(scored, 211), "stats": np.zeros(5)}, targets, st.params)
    keys, rk, w = batch_candidates(view, model, st.params).units[0]
    X = featurize(texts, 2, 211).toarray()
    want = X[:6] @ model.log_diff[0] + dsir.gumbel(dsir.row_hashes([str(i) for i in range(10, 16)], 5), 0)
    assert sorted(rk.tolist()) == list(range(10, 16)) and (w == 1).all()
    np.testing.assert_allclose(keys[np.argsort(rk)], want, rtol=1e-12)


def test_separate_targets_decide_names_each_rows_target():
    st = _stage({"k": 2, "separate_targets": True, "num_buckets": 53,
                 "target": [{"name": "a", "paths": ["a"]}, {"name": "b", "paths": ["b"]}]})
    batch = make_batch([{"text": t} for t in MATHS])
    scored = feats.featurize(batch, 2, 53)
    c = feats.bucket_counts(scored, 53)
    targets = {"a": {"counts": c, "stats": np.ones(2)}, "b": {"counts": c + 1, "stats": np.ones(2)}}
    model = build_model(None, {"counts": c, "stats": np.zeros(5)}, targets, st.params)
    sel = dsir.Selection(np.array([1, 2], np.uint64), np.array([1, 0], np.int32), [(1, 1), (1, 1)])
    keep, _, cols = st.decide(scored, {"model": model, "raw_stats": np.zeros(5), "selection": sel})
    assert keep.tolist() == [False, True, True]
    assert cols["dsir_target"].to_pylist() == [None, "b", "a"]
    assert {"dsir_log_weight_a", "dsir_log_weight_b"} <= set(cols)


def test_check_needs_the_target_files(tmp_path):
    recipe = Recipe.model_validate({"sources": [{"name": "p", "paths": ["p.jsonl"]}], "base_dir": str(tmp_path)})
    ctx = StageContext(name="ir", seed=0, out_dir=str(tmp_path), work_dir=str(tmp_path), recipe=recipe)
    (tmp_path / "here.jsonl").write_text('{"text": "x"}\n')
    ok = ImportanceResample({"k": 1, "target": [{"name": "t", "paths": ["here.jsonl"]}]}, ctx)
    assert ok.check() == []
    bad = ImportanceResample({"k": 1, "target": [{"name": "t", "paths": ["here.jsonl"]},
                                                 {"name": "u", "paths": ["gone.jsonl"]}]}, ctx)
    problems = bad.check()
    assert len(problems) == 1 and problems[0].startswith("params.target.1") and "gone.jsonl" in problems[0]


def test_run_stage_selects_the_target_like_rows(tmp_path):
    target = _write(tmp_path / "t.jsonl", [{"text": t.replace("apples", "pears")} for t in MATHS])
    names = ["Ada", "Ben", "Cy", "Di", "Ed", "Flo", "Gus", "Hal"]
    maths = [f"{n} has {i} apples and buys {i + 2} more apples. How many apples does {n} have?"
             for i, n in enumerate(names)]
    others = [f"{s} It was recorded in {1800 + i}." for i, s in enumerate(OTHER * 5)] + OTHER
    pool = [{"text": t} for t in maths + others] + [{"text": "too short"}]
    params = {"k": 6, "top_k": True, "num_buckets": 301, "target": [{"name": "math", "paths": [target]}]}
    res = run_stage(ImportanceResample, pool, params, batch_rows=5)
    kept = res.kept.column("text").to_pylist()
    assert len(kept) == 6 and set(kept) <= set(maths)
    assert "dsir_log_weight" in res.kept.schema.names and not any(c.startswith("__") for c in res.kept.schema.names)
    assert res.counters == {"importance_resample/in/test": 27, "importance_resample/dropped/not_selected/test": 20,
                            "importance_resample/dropped/too_short/test": 1}
    assert sorted(set(res.dropped.column("drop_reason").to_pylist())) == ["not_selected", "too_short"]
    # the kept rows are the best-scored eligible ones
    worst_kept = min(res.kept.column("dsir_log_weight").to_pylist())
    left = res.dropped.filter(pa.compute.equal(res.dropped.column("drop_reason"), "not_selected"))
    assert worst_kept >= max(left.column("dsir_log_weight").to_pylist())
    rep = res.report
    n_tok = int(token_counts(kept).sum())
    assert rep["selected"] == {"rows": 6, "tokens": n_tok, "mean_tokens": pytest.approx(n_tok / 6)}
    assert rep["pool"]["rows"] == 27 and rep["dropped"] == {"too_short": 1, "not_selected": 20}
    assert rep["kl_reduction"] == pytest.approx(rep["kl_target_raw"] - rep["kl_target_selected"])
    assert rep["targets"]["math"]["rows"] == 3 and rep["targets"]["math"]["kl_reduction"] == rep["kl_reduction"]


# ---------------------------------------------------------------------------------------
# Whole recipes on real data (slow)


@pytest.fixture(scope="module")
def small(shared_data, tmp_path_factory):
    """A 900-row pool sliced from the general pool (with 20 too-short rows) and 400 targets."""
    d = tmp_path_factory.mktemp("dsir")
    pool = [{"text": r["text"], "doc": r["id"]} for r in _lines(shared_data / "general_pool/pool.jsonl.gz", 880, 80)]
    pool += [{"text": f"short {i}", "doc": f"short:{i}"} for i in range(20)]
    target = [{"text": r["text"]} for r in _lines(shared_data / TARGET, 400, 20)]
    return {"dir": d, "pool": _write(d / "pool.jsonl", pool), "target": _write(d / "target.jsonl", target),
            "pool_texts": [r["text"] for r in pool], "target_texts": [r["text"] for r in target]}


def _recipe(small, out, params, **extra):
    return {"sources": [{"name": "pool", "paths": [small["pool"]]}],
            "stages": [{"type": "importance_resample",
                        "params": {"target": [{"name": "math", "paths": [small["target"]]}], **params}}],
            "output": {"dir": str(out), "write_dropped": True}, **extra}


@pytest.mark.slow
def test_log_weights_are_the_dsir_formula(small, tmp_path):
    res = run_recipe(_recipe(small, tmp_path / "o", {"k": 60, "top_k": True, "min_tokens": 5}), tmp_path)
    kept, dropped = _table(res), _table(res, "dropped")
    # Direct NumPy computation of the formula of the issue, on the same features.
    X = featurize(small["pool_texts"])
    T = featurize(small["target_texts"])
    p_t = np.asarray(T.sum(0)).ravel() / T.sum()
    p_r = np.asarray(X.sum(0)).ravel() / X.sum()
    logw = X @ (np.log(p_t + 1e-8) - np.log(p_r + 1e-8))
    by_text = dict(zip(small["pool_texts"], logw, strict=True))
    for table in (kept, dropped):
        got = np.array(table.column("dsir_log_weight").to_pylist())
        want = np.array([by_text[t] for t in table.column("text").to_pylist()])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # top_k: the 60 best eligible rows, nothing else; the 20 short rows are `too_short`
    n_tok = token_counts(small["pool_texts"])
    ok = np.flatnonzero(n_tok >= 5)
    best = {small["pool_texts"][i] for i in ok[np.argsort(-logw[ok])[:60]]}
    assert set(kept.column("text").to_pylist()) == best
    assert res.counters["importance_resample/dropped/too_short/pool"] == 20
    assert res.counters["importance_resample/dropped/not_selected/pool"] == 900 - 20 - 60
    rep = res.reports["importance_resample"]
    assert rep["thresholds"]["min_tokens"] == {"value": 5, "dropped": 20}
    # KL numbers are the formula on the same distributions
    sel = featurize(kept.column("text").to_pylist())
    p_s = np.asarray(sel.sum(0)).ravel() / sel.sum()
    kl = lambda p, q: float(np.sum(p * (np.log(p + 1e-10) - np.log(q + 1e-10))))  # noqa: E731
    assert rep["kl_target_raw"] == pytest.approx(kl(p_t, p_r), rel=1e-9)
    assert rep["kl_target_selected"] == pytest.approx(kl(p_t, p_s), rel=1e-9)
    # (60 rows leave most target buckets empty, so KL(target||selected) is large here: the
    # reduction is only meaningful for selections with enough tokens; see the real-data test.)
    assert rep["targets"]["math"]["kl_reduction"] == pytest.approx(kl(p_t, p_r) - kl(p_t, p_s), rel=1e-9)


@pytest.mark.slow
def test_gumbel_selection_is_identical_for_any_parallelism(small, tmp_path):
    params = {"k": 80, "min_tokens": 5}
    one = run_recipe(_recipe(small, tmp_path / "a", params, runner={"options": {"direct_num_workers": 1}}), tmp_path)
    two = run_recipe(_recipe(small, tmp_path / "b", params, batch_rows=37, runner={
        "runner": "dask", "options": {"dask_workers": 2}}), tmp_path)
    ids = [sorted(_table(r).column("id").to_pylist()) for r in (one, two)]
    assert len(ids[0]) == 80 and ids[0] == ids[1]
    # Sampling, not top-k: the Gumbel noise moves some rows out of the plain top 80.
    w = _table(one).column("dsir_log_weight").to_numpy()
    all_w = np.concatenate([w, _table(one, "dropped").column("dsir_log_weight").to_numpy()])
    assert (w < np.sort(all_w)[-80]).any()
    # a different seed draws a different sample
    other = run_recipe(_recipe(small, tmp_path / "c", params, seed=7), tmp_path)
    assert sorted(_table(other).column("id").to_pylist()) != ids[0]


@pytest.mark.slow
def test_token_budget_and_length_normalisation(small, tmp_path):
    res = run_recipe(_recipe(small, tmp_path / "o", {"token_budget": 5000, "top_k": True,
                                                    "length_normalize": True}), tmp_path)
    kept = _table(res)
    n_tok = token_counts(kept.column("text").to_pylist())
    rep = res.reports["importance_resample"]
    assert n_tok.sum() <= 5000 and rep["selected"]["tokens"] == n_tok.sum()
    assert rep["counted_by"] == "words"  # no `tokenizer:`: the budget is in words
    # The budget is a prefix in weight order: the next-best row would not have fitted.
    dropped = _table(res, "dropped")
    best_left = dropped.filter(pa.compute.equal(dropped.column("drop_reason"), "not_selected"))
    nxt = int(np.argmax(best_left.column("dsir_log_weight").to_numpy()))
    assert kept.column("dsir_log_weight").to_numpy().min() >= best_left.column("dsir_log_weight")[nxt].as_py()
    assert n_tok.sum() + token_counts([best_left.column("text")[nxt].as_py()])[0] > 5000


@pytest.mark.slow
def test_separate_targets_get_their_quotas(small, shared_data, tmp_path):
    doc = _write(tmp_path / "doc.jsonl", [{"text": r["text"]} for r in
                                          _lines(shared_data / "target_domain/python_docstrings.jsonl.gz", 300, 5)])
    recipe = _recipe(small, tmp_path / "o", {"k": 90, "separate_targets": True, "target_proportions": [2, 1]})
    recipe["stages"][0]["params"]["target"].append({"name": "py", "paths": [doc]})
    res = run_recipe(recipe, tmp_path)
    kept = _table(res)
    assert kept.num_rows == 90 and len(set(kept.column("id").to_pylist())) == 90
    assert sorted(kept.column("dsir_target").to_pylist()) == ["math"] * 60 + ["py"] * 30
    assert {"dsir_log_weight_math", "dsir_log_weight_py"} <= set(kept.schema.names)
    rep = res.reports["importance_resample"]["targets"]
    assert rep["math"]["quota"] == 60 and rep["py"]["selected_rows"] == 30
    # each quota went to the rows its own weights favour
    tgt = np.array(kept.column("dsir_target").to_pylist())
    margin = kept.column("dsir_log_weight_py").to_numpy() - kept.column("dsir_log_weight_math").to_numpy()
    assert margin[tgt == "py"].mean() > margin[tgt == "math"].mean()


@pytest.mark.slow
def test_reuses_ngram_feature_columns(small, tmp_path):
    recipe = _recipe(small, tmp_path / "o", {"k": 60, "top_k": True})
    recipe["stages"].insert(0, {"type": "ngram_features"})
    with_cols = _table(run_recipe(recipe, tmp_path))
    plain = _table(run_recipe(_recipe(small, tmp_path / "p", {"k": 60, "top_k": True}), tmp_path))
    assert "ngram_buckets" in with_cols.schema.names and "ngram_buckets" not in plain.schema.names
    assert "n_words" in with_cols.schema.names and "n_tokens" not in with_cols.schema.names
    assert sorted(with_cols.column("id").to_pylist()) == sorted(plain.column("id").to_pylist())


def test_missing_target_is_reported_before_running(small, tmp_path):
    recipe = validate_recipe(_recipe(small, tmp_path / "o", {"k": 5}) | {}, base_dir=str(tmp_path))
    recipe.stages[0].params["target"][0]["paths"] = [str(tmp_path / "nope.jsonl")]
    stage = make_stage(recipe.stages[0], StageContext(name="importance_resample", seed=0, out_dir=str(tmp_path),
                                                      work_dir=str(tmp_path), recipe=recipe))
    problems = stage.check()
    assert problems and "nope.jsonl" in problems[0] and problems[0].startswith("params.target.0")
    with pytest.raises(Exception, match="exactly one of"):
        ImportanceResample.Params.model_validate({"target": [{"name": "t", "paths": ["x"]}], "k": 3, "token_budget": 9})


@pytest.mark.slow
def test_math_target_picks_math_from_a_mixed_real_pool(shared_data, tmp_path):
    general = _write(tmp_path / "general.jsonl", _lines(shared_data / "general_pool/pool.jsonl.gz", 3000, 24))
    res = run_recipe({
        "sources": [{"name": "general", "paths": [general]},
                    {"name": "gsm8k_test", "paths": [str(shared_data / "gsm8k/test.jsonl.gz")],
                     "text_field": "question", "keep_fields": []}],
        "stages": [{"type": "importance_resample", "params": {
            "k": 1200, "target": [{"name": "math", "paths": [str(shared_data / TARGET)]}]}}],
        "output": {"dir": str(tmp_path / "o")}}, tmp_path)
    kept = _table(res)
    share = np.mean(np.array(kept.column("source").to_pylist()) == "gsm8k_test")
    base = 1319 / (1319 + 3000)
    assert kept.num_rows == 1200 and share > 0.9 > base
    rep = res.reports["importance_resample"]
    assert rep["kl_reduction"] > 0.03 and rep["targets"]["math"]["kl_reduction"] == rep["kl_reduction"]
    assert rep["pool"]["rows"] == 4319 and rep["selected"]["rows"] == 1200
