"""Token budgets in model tokens: with the recipe's `tokenizer:`, `n_tokens`, DSIR's
`token_budget` / `min_tokens` and the report's totals count the tokenizer's tokens; without
one they count words (`n_words`), and the manifest and report say which.

Fast: the hooks on hand-made batches, the manifest's totals on a hand-written shard. Slow: a
whole recipe (ngram_features -> importance_resample, 50,000-token budget) on real rows."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import run_recipe
from thresher.core.context import StageContext
from thresher.models.tokenizer import load_tokenizer
from thresher.recipe.schema import Recipe
from thresher.report import tokens as token_info
from thresher.report.sections import tokens as tokens_section
from thresher.stages.features import ngram_features as nf
from thresher.stages.selection import dsir_features as feats
from thresher.stages.selection.importance_resample import ImportanceResample
from thresher.testing.harness import make_batch
from thresher.text.tokenize import token_counts

TEXTS = ["Ada has 3 apples and buys 4 more apples. How many apples does she have?",
         "Pneumonoultramicroscopicsilicovolcanoconiosis",  # one word, many model tokens
         "The cathedral was rebuilt in the twelfth century after a fire destroyed the nave.", ""]


def _ctx(tmp_path, tokenizer):
    recipe = Recipe.model_validate({"sources": [{"name": "p", "paths": ["p.jsonl"]}], "tokenizer": tokenizer,
                                    "base_dir": str(tmp_path)})
    return StageContext(name="ir", seed=0, out_dir=str(tmp_path), work_dir=str(tmp_path), recipe=recipe)


def _stage(tmp_path, tokenizer, **params):
    return ImportanceResample({"k": 1, "target": [{"name": "t", "paths": ["t.jsonl"]}], "num_buckets": 97, **params},
                              _ctx(tmp_path, tokenizer))


def _reference_counts(texts):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(load_tokenizer("minilm").json_path)
    ref.no_truncation()
    ref.no_padding()
    return [len(ref.encode(t, add_special_tokens=False).ids) for t in texts]


def test_dsir_counts_model_tokens_with_a_tokenizer_and_words_without(tmp_path):
    batch = make_batch([{"text": t} for t in TEXTS])
    words = token_counts(TEXTS).tolist()
    toks = _reference_counts(TEXTS)
    assert words[1] == 1 and toks[1] > 5  # the row that tells the units apart
    plain = _stage(tmp_path, None).score(batch)
    assert plain[feats.N_TOKENS].to_pylist() == words and feats.N_WORDS not in plain
    model = _stage(tmp_path, "minilm").score(batch)
    assert model[feats.N_TOKENS].to_pylist() == toks and feats.N_WORDS not in model
    # length normalisation divides by words (the features' unit) even with a tokenizer
    normed = _stage(tmp_path, "minilm", length_normalize=True).score(batch)
    assert normed[feats.N_TOKENS].to_pylist() == toks and normed[feats.N_WORDS].to_pylist() == words
    # min_tokens is in the budget's unit: the one-word row is too short only in words
    scored = feats.featurize(batch, 2, 97, load_tokenizer("minilm"))
    assert (feats.n_tokens(scored) >= 5).tolist() == [True, True, True, False]
    assert (feats.n_tokens(feats.featurize(batch, 2, 97)) >= 5).tolist() == [True, False, True, False]


def test_ngram_features_writes_n_tokens_by_the_tokenizer_and_dsir_reuses_only_its_own(tmp_path):
    batch = make_batch([{"text": t} for t in TEXTS])
    with_tok = nf.NgramFeatures({"num_buckets": 97}, _ctx(tmp_path, "minilm")).columns(batch)
    assert with_tok.schema.names[-3:] == ["ngram_buckets", "ngram_counts", "n_tokens"]
    assert with_tok.column("n_tokens").to_pylist() == _reference_counts(TEXTS)
    sha = load_tokenizer("minilm").sha256
    assert with_tok.schema.field("n_tokens").metadata == {nf.TOKENIZER_META: sha.encode()}
    plain = nf.NgramFeatures({"num_buckets": 97}, _ctx(tmp_path, None)).columns(batch)
    assert plain.schema.names[-1] == "n_words" and "n_tokens" not in plain.schema.names
    assert plain.column("n_words").to_pylist() == token_counts(TEXTS).tolist()
    # DSIR reuses a count column only when it is in its own unit
    marked = with_tok.set_column(with_tok.schema.get_field_index("n_tokens"),
                                 with_tok.schema.field("n_tokens"), pa.array([7, 7, 7, 7], pa.int32()))
    assert _stage(tmp_path, "minilm").score(marked)[feats.N_TOKENS].to_pylist() == [7, 7, 7, 7]
    assert _stage(tmp_path, None).score(marked)[feats.N_TOKENS].to_pylist() == token_counts(TEXTS).tolist()
    other = marked.set_column(marked.schema.get_field_index("n_tokens"), pa.field("n_tokens", pa.int32()),
                              marked.column("n_tokens"))  # counted by an unknown tokenizer: recounted
    assert _stage(tmp_path, "minilm").score(other)[feats.N_TOKENS].to_pylist() == _reference_counts(TEXTS)


def _written(column, by_source):
    """Counters as the shard writer keeps them: rows and sum of `column` per source."""
    out = {}
    for source, values in by_source.items():
        out[f"written_rows/{column}/{source}"] = len(values)
        out[f"written_sum/{column}/{source}"] = sum(values)
    return out


def test_manifest_says_which_tokenizer_counted_and_the_report_shows_it(tmp_path):
    counters = {"written/web": 2, "written/code": 1, **_written("n_tokens", {"web": [10, 20], "code": [7]}),
                **_written("n_words", {"web": [1, 1], "code": [1]})}
    recipe = Recipe.model_validate({"sources": [{"name": "p", "paths": ["p"]}], "tokenizer": "minilm",
                                    "base_dir": str(tmp_path)})
    got = token_info.manifest_tokens(recipe, counters, 3)
    tok = load_tokenizer("minilm")
    assert got == {"counted_by": {"name": "minilm", "sha256": tok.sha256, "kind": "folder"}, "column": "n_tokens",
                   "total": 37, "by_source": {"code": {"rows": 1, "tokens": 7}, "web": {"rows": 2, "tokens": 30}}}
    shards = [{"path": "shards/part-0.arrow", "rows": 3}]
    html = tokens_section({"tokens": got, "shards": shards}, str(tmp_path))
    assert f"tokenizer &#x27;minilm&#x27; (sha256 {tok.sha256})" in html  # the whole hash, escaped
    # without a tokenizer the unit is words; written rows without the column get no made-up total
    words = Recipe.model_validate({"sources": [{"name": "p", "paths": ["p"]}], "base_dir": str(tmp_path)})
    assert token_info.manifest_tokens(words, {"written/web": 3, **_written("n_tokens", {"web": [1, 2, 3]})}, 3) == {
        "counted_by": "words", "column": None, "total": None, "by_source": None}
    got = token_info.manifest_tokens(words, counters, 3)
    assert got == {"counted_by": "words", "column": "n_words", "total": 3,
                   "by_source": {"code": {"rows": 1, "tokens": 1}, "web": {"rows": 2, "tokens": 2}}}
    assert "the recipe names no tokenizer" in tokens_section({"tokens": got, "shards": shards}, str(tmp_path))
    # a column that was there and summed to 0 is a total of 0, not "no column"
    assert token_info.manifest_tokens(words, _written("n_words", {"web": [0]}), 1)["total"] == 0
    assert token_info.manifest_tokens(words, {}, 0) == {"counted_by": "words", "column": "n_words", "total": 0,
                                                       "by_source": {}}


def test_token_totals_survive_dropped_count_column_and_parquet(tmp_path):
    """Totals are counted as rows are written: a run that drops the count column from its
    Parquet shards still has them, equal to the column's sum per source."""
    rows = {"a": ["one two three", "four five"], "b": ["six seven eight nine", "ten", "x y"]}
    for name, texts in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    recipe = {"sources": [{"name": n, "paths": [f"{n}.jsonl"]} for n in rows],
              "stages": [{"type": "ngram_features"}],
              "output": {"dir": "out", "format": "parquet", "drop_columns": ["n_words", "ngram_buckets",
                                                                              "ngram_counts"]}}
    res = run_recipe(recipe, tmp_path)
    manifest = json.loads((tmp_path / "out" / "latest" / "manifest.json").read_text())
    assert "n_words" not in {f["name"] for f in manifest["schema"]["fields"]}
    want = {n: token_counts(t).tolist() for n, t in rows.items()}
    assert manifest["tokens"] == {"counted_by": "words", "column": "n_words", "total": sum(map(sum, want.values())),
                                  "by_source": {n: {"rows": len(v), "tokens": sum(v)} for n, v in want.items()}}
    assert res.counters["written_rows/n_words/b"] == 3


# ---------------------------------------------------------------------------------------
# A whole recipe on real rows (slow)


def _lines(path, n, stride):
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % stride == 0:
                out.append(json.loads(line)["text"])
                if len(out) == n:
                    break
    return out


@pytest.mark.slow
def test_a_50000_token_budget_selects_within_one_row_of_it_in_model_tokens(shared_data, tmp_path):
    pool = _lines(shared_data / "general_pool" / "pool.jsonl.gz", 900, 79) + [TEXTS[1]] * 3
    target = _lines(shared_data / "target_domain" / "math_word_problems.jsonl.gz", 200, 13)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(pool)))
    (tmp_path / "target.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in target))
    recipe = {"sources": [{"name": "pool", "paths": ["pool.jsonl"]}], "tokenizer": "minilm",
              "stages": [{"type": "ngram_features"},
                         {"type": "importance_resample",
                          "params": {"target": [{"name": "math", "paths": ["target.jsonl"]}],
                                     "token_budget": 50_000, "min_tokens": 5}}],
              "output": {"dir": "out", "write_dropped": True}, "batch_rows": 256}
    res = run_recipe(recipe, tmp_path)
    kept = pa.concat_tables(pa.ipc.open_stream(f"{res.out_dir}/{s['path']}").read_all() for s in res.shards)
    dropped = pa.concat_tables(pa.ipc.open_stream(f"{res.out_dir}/{s['path']}").read_all() for s in res.dropped)
    pool_tokens = _reference_counts(pool)
    assert sum(pool_tokens) > 70_000  # the budget binds
    sel = _reference_counts(kept.column("text").to_pylist())
    assert sum(sel) <= 50_000 and sum(sel) > 50_000 - max(pool_tokens)
    assert kept.column("n_tokens").to_pylist() == sel
    # min_tokens counted model tokens: the one-word rows were eligible, not too short
    reasons = dict(zip(dropped.column("text").to_pylist(), dropped.column("drop_reason").to_pylist(), strict=True))
    assert reasons.get(TEXTS[1]) in (None, "not_selected")
    tok = load_tokenizer("minilm")
    rep = res.reports["importance_resample"]
    assert rep["selected"]["tokens"] == sum(sel) and rep["pool"]["tokens"] == sum(pool_tokens)
    assert rep["targets"]["math"]["tokens"] == sum(_reference_counts(target))
    assert rep["counted_by"] == {"name": "minilm", "sha256": tok.sha256, "kind": "folder"}
    manifest = json.loads((tmp_path / "out" / "latest" / "manifest.json").read_text())
    assert manifest["tokens"]["counted_by"] == rep["counted_by"] and manifest["tokens"]["total"] == sum(sel)
    assert manifest["fingerprint"]["tokenizer"]["sha256"] == tok.sha256
    page = (tmp_path / "out" / "latest" / "report.html").read_text()
    assert tok.sha256 in page
    assert np.asarray(sel).min() >= 5
