"""importance_resample (DSIR): the weights are the paper's formula, the selection is
deterministic for any parallelism, and on real data it picks math from a mixed pool."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import run_recipe
from thresher.stages.features import ngram_features as nf
from thresher.stages.selection import importance_resample as ir

TARGET = "target_domain/math_word_problems.jsonl.gz"


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


def test_log_weights_are_the_dsir_formula(small, tmp_path):
    res = run_recipe(_recipe(small, tmp_path / "o", {"k": 60, "top_k": True, "min_tokens": 5}), tmp_path)
    kept, dropped = _table(res), _table(res, "dropped")
    # Direct NumPy computation of the formula of the issue, on the same features.
    X = nf.featurize(small["pool_texts"])
    T = nf.featurize(small["target_texts"])
    p_t = np.asarray(T.sum(0)).ravel() / T.sum()
    p_r = np.asarray(X.sum(0)).ravel() / X.sum()
    logw = X @ (np.log(p_t + 1e-8) - np.log(p_r + 1e-8))
    by_text = dict(zip(small["pool_texts"], logw))
    for table in (kept, dropped):
        got = np.array(table.column("dsir_log_weight").to_pylist())
        want = np.array([by_text[t] for t in table.column("text").to_pylist()])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # top_k: the 60 best eligible rows, nothing else; the 20 short rows are `too_short`
    n_tok = nf.token_counts(small["pool_texts"])
    ok = np.flatnonzero(n_tok >= 5)
    best = {small["pool_texts"][i] for i in ok[np.argsort(-logw[ok])[:60]]}
    assert set(kept.column("text").to_pylist()) == best
    assert res.counters["importance_resample/dropped/too_short/pool"] == 20
    assert res.counters["importance_resample/dropped/not_selected/pool"] == 900 - 20 - 60
    rep = res.reports["importance_resample"]
    assert rep["thresholds"]["min_tokens"] == {"value": 5, "dropped": 20}
    # KL numbers are the formula on the same distributions
    sel = nf.featurize(kept.column("text").to_pylist())
    p_s = np.asarray(sel.sum(0)).ravel() / sel.sum()
    kl = lambda p, q: float(np.sum(p * (np.log(p + 1e-10) - np.log(q + 1e-10))))  # noqa: E731
    assert rep["kl_target_raw"] == pytest.approx(kl(p_t, p_r), rel=1e-9)
    assert rep["kl_target_selected"] == pytest.approx(kl(p_t, p_s), rel=1e-9)
    # (60 rows leave most target buckets empty, so KL(target||selected) is large here: the
    # reduction is only meaningful for selections with enough tokens; see the real-data test.)
    assert rep["targets"]["math"]["kl_reduction"] == pytest.approx(kl(p_t, p_r) - kl(p_t, p_s), rel=1e-9)


def test_gumbel_selection_is_identical_for_any_parallelism(small, tmp_path):
    params = {"k": 80, "min_tokens": 5}
    one = run_recipe(_recipe(small, tmp_path / "a", params, runner={"options": {"direct_num_workers": 1}}), tmp_path)
    two = run_recipe(_recipe(small, tmp_path / "b", params, batch_rows=37, runner={
        "options": {"direct_num_workers": 2, "direct_running_mode": "multi_processing"}}), tmp_path)
    ids = [sorted(_table(r).column("id").to_pylist()) for r in (one, two)]
    assert len(ids[0]) == 80 and ids[0] == ids[1]
    # Sampling, not top-k: the Gumbel noise moves some rows out of the plain top 80.
    w = _table(one).column("dsir_log_weight").to_numpy()
    all_w = np.concatenate([w, _table(one, "dropped").column("dsir_log_weight").to_numpy()])
    assert (w < np.sort(all_w)[-80]).any()
    # a different seed draws a different sample
    other = run_recipe(_recipe(small, tmp_path / "c", params, seed=7), tmp_path)
    assert sorted(_table(other).column("id").to_pylist()) != ids[0]


def test_token_budget_and_length_normalisation(small, tmp_path):
    res = run_recipe(_recipe(small, tmp_path / "o", {"token_budget": 5000, "top_k": True,
                                                    "length_normalize": True}), tmp_path)
    kept = _table(res)
    n_tok = nf.token_counts(kept.column("text").to_pylist())
    rep = res.reports["importance_resample"]
    assert n_tok.sum() <= 5000 and rep["selected"]["tokens"] == n_tok.sum()
    # The budget is a prefix in weight order: the next-best row would not have fitted.
    dropped = _table(res, "dropped")
    best_left = dropped.filter(pa.compute.equal(dropped.column("drop_reason"), "not_selected"))
    nxt = int(np.argmax(best_left.column("dsir_log_weight").to_numpy()))
    assert kept.column("dsir_log_weight").to_numpy().min() >= best_left.column("dsir_log_weight")[nxt].as_py()
    assert n_tok.sum() + nf.token_counts([best_left.column("text")[nxt].as_py()])[0] > 5000


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


def test_reuses_ngram_feature_columns(small, tmp_path):
    recipe = _recipe(small, tmp_path / "o", {"k": 60, "top_k": True})
    recipe["stages"].insert(0, {"type": "ngram_features"})
    with_cols = _table(run_recipe(recipe, tmp_path))
    plain = _table(run_recipe(_recipe(small, tmp_path / "p", {"k": 60, "top_k": True}), tmp_path))
    assert "ngram_buckets" in with_cols.schema.names and "ngram_buckets" not in plain.schema.names
    assert sorted(with_cols.column("id").to_pylist()) == sorted(plain.column("id").to_pylist())


def test_top_candidates_merge_is_order_free():
    rng = np.random.default_rng(0)
    keys = np.round(rng.normal(size=500), 1)  # many ties: the row key decides
    rk = rng.permutation(500).astype(np.uint64)
    w = np.ones(500, np.int64)
    comb = ir._TopCandidates()
    items = [{"quotas": [40], "bounds": [40], "units": [ir._truncate(keys[i::7], rk[i::7], w[i::7], 40)]}
             for i in range(7)]
    a = comb.extract_output(comb.merge_accumulators([comb.merge_accumulators(items[:3]),
                                                     comb.merge_accumulators(items[3:])]))
    b = comb.extract_output(comb.merge_accumulators(items[::-1]))
    want = np.sort(rk[np.lexsort((rk, -keys))[:40]])
    assert (a["row_keys"] == want).all() and (b["row_keys"] == want).all()


def test_missing_target_is_reported_before_running(small, tmp_path):
    from thresher.core.registry import build_params
    from thresher.recipe.load import validate_recipe

    recipe = validate_recipe(_recipe(small, tmp_path / "o", {"k": 5}) | {}, base_dir=str(tmp_path))
    recipe.stages[0].params["target"][0]["paths"] = [str(tmp_path / "nope.jsonl")]
    cls, params = build_params(recipe.stages[0])
    problems = cls.check(params, recipe)
    assert problems and "nope.jsonl" in problems[0] and problems[0].startswith("params.target.0")
    with pytest.raises(Exception, match="exactly one of"):
        cls.Params.model_validate({"target": [{"name": "t", "paths": ["x"]}], "k": 3, "token_budget": 9})


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
