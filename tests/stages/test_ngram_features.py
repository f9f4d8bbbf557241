"""ngram_features: tokens exactly as the DSIR regex, hashes as the documented scheme, columns.

Fast: the featuriser and `columns()` on small batches, one `run_stage`. Slow: a whole recipe."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest

from tests._text_samples import TRICKY, first_lines
from tests.conftest import run_recipe
from thresher.stages.features import ngram_features as nf
from thresher.testing.harness import make_batch, run_stage
from thresher.text.ngrams import featurize, ngram_rows
from thresher.text.tokenize import TOKEN_PATTERN, token_counts

MASK = (1 << 64) - 1



def _mix(x):  # splitmix64 on Python ints: the documented hash, written out independently
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _ref_buckets(text, ngrams, num_buckets):
    toks = re.findall(TOKEN_PATTERN, text.lower())
    hs = []
    for t in toks:
        poly = sum(ord(ch) * pow(0x100000001B3, j, 1 << 64) for j, ch in enumerate(t)) & MASK
        hs.append(_mix((poly + len(t) * 0x9E3779B97F4A7C15) & MASK))
    out = list(hs)
    gram = hs
    for m in range(2, ngrams + 1):
        gram = [_mix((g * 0x9E3779B97F4A7C15 + hs[i + m - 1]) & MASK) for i, g in enumerate(gram[:-1])]
        out += gram
    counts = np.bincount([h % num_buckets for h in out], minlength=num_buckets)
    return counts


def test_tokens_match_the_dsir_regex_on_real_text(shared_data):
    texts = first_lines(shared_data / "general_pool" / "pool.jsonl.gz", 3000)
    texts += first_lines(shared_data / "target_domain" / "math_word_problems.jsonl.gz", 1000) + TRICKY
    want = np.array([len(re.findall(TOKEN_PATTERN, t.lower())) for t in texts])
    assert (token_counts(texts) == want).all()
    X = featurize(texts, ngrams=3, num_buckets=5000)
    # every token, every adjacent pair and triple inside one text is counted once
    expect = sum(np.maximum(want - m + 1, 0) for m in (1, 2, 3))
    assert (np.asarray(X.sum(axis=1)).ravel() == expect).all()


def test_buckets_follow_the_documented_hash_and_ignore_batch_neighbours(shared_data):
    texts = first_lines(shared_data / "target_domain" / "math_word_problems.jsonl.gz", 40) + TRICKY
    X = featurize(texts, ngrams=2, num_buckets=997).toarray()
    for i, t in enumerate(texts):
        assert (X[i] == _ref_buckets(t, 2, 997)).all(), t
    # a text's row is the same alone as inside a batch
    alone = featurize([texts[3]], ngrams=2, num_buckets=997).toarray()[0]
    assert (alone == X[3]).all()
    # the uncounted form sums to the same matrix
    indptr, b, n_tok = ngram_rows(texts, 2, 997)
    for i in range(len(texts)):
        assert (np.bincount(b[indptr[i]:indptr[i + 1]], minlength=997) == X[i]).all()


def test_columns_round_trip_and_carry_their_settings():
    texts = ["How many apples? 3 apples.", "", "Ada sold 48 clips in April."]
    bf, b, cf, c, n_tok = nf.feature_columns(pa.array(texts), ngrams=2, num_buckets=100)
    batch = pa.RecordBatch.from_arrays([b, c], schema=pa.schema([bf, cf]))
    assert nf.columns_match(batch.schema, 2, 100) and not nf.columns_match(batch.schema, 2, 101)
    row, bb, cc = nf.sparse_from_columns(batch.column(0).slice(1), batch.column(1).slice(1))
    X = featurize(texts, 2, 100).toarray()
    assert (np.bincount(bb[row == 1], weights=cc[row == 1], minlength=100) == X[2]).all()
    assert n_tok.tolist() == [7, 0, 7]


@pytest.mark.slow
def test_stage_writes_sparse_columns(tmp_path, shared_data):
    texts = first_lines(shared_data / "target_domain" / "math_word_problems.jsonl.gz", 300)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    res = run_recipe({"sources": [{"name": "m", "paths": [str(src)]}],
                      "stages": [{"type": "ngram_features", "params": {"num_buckets": 4096}}],
                      "output": {"dir": str(tmp_path / "out"), "order": "sorted", "sort_by": "source_row"},
                      "batch_rows": 64}, tmp_path)
    snap = tmp_path / "out" / "latest"
    table = pa.concat_tables(pa.ipc.open_stream(str(snap / s["path"])).read_all() for s in res.shards)
    assert table.num_rows == 300
    assert table.schema.field("ngram_buckets").type == pa.list_(pa.int32())
    got = table.column("text").to_pylist()
    X = featurize(got, 2, 4096)
    for i in (0, 17, 299):
        assert table.column("ngram_buckets")[i].as_py() == X[i].indices.tolist()
        assert table.column("ngram_counts")[i].as_py() == X[i].data.tolist()
    assert "n_tokens" not in table.schema.names  # no tokenizer: the count is words, named so
    assert table.column("n_words").to_pylist() == token_counts(got).tolist()


def test_params_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        nf.NgramFeatures.Params.model_validate({"num_buckets": 0})


def test_columns_hook_adds_the_three_columns_with_their_settings():
    texts = ["How many apples? 3 apples.", "", "Ada sold 48 clips in April."]
    st = nf.NgramFeatures({"ngrams": 3, "num_buckets": 50})
    out = st.columns(make_batch([{"text": t} for t in texts]))
    assert out.schema.names[-3:] == ["ngram_buckets", "ngram_counts", "n_words"]
    assert nf.columns_match(out.schema, 3, 50) and not nf.columns_match(out.schema, 2, 50)
    X = featurize(texts, 3, 50)
    for i in range(3):
        assert out.column("ngram_buckets")[i].as_py() == X[i].indices.tolist()
        assert out.column("ngram_counts")[i].as_py() == X[i].data.tolist()
    assert out.column("n_words").to_pylist() == [7, 0, 7]
    # run again over its own output: the columns are replaced, not duplicated
    again = nf.NgramFeatures({"ngrams": 2, "num_buckets": 50}).columns(out)
    assert again.schema.names == out.schema.names and nf.columns_match(again.schema, 2, 50)


def test_run_stage_adds_columns_and_drops_nothing():
    texts = ["Ada sold 48 clips.", "The river flows north.", "x", ""]
    res = run_stage(nf.NgramFeatures, [{"text": t} for t in texts], {"num_buckets": 64}, batch_rows=3)
    assert res.kept.column("text").to_pylist() == texts and res.dropped.num_rows == 0
    assert res.counters == {} and res.report is None
    assert res.kept.column("n_words").to_pylist() == token_counts(texts).tolist()
    assert res.kept.column("ngram_buckets").to_pylist() == [featurize([t], 2, 64)[0].indices.tolist() for t in texts]
