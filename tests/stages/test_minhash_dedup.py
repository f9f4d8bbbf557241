"""`minhash_dedup`: shingles, signatures, banding and components on hand-made inputs (fast);
planted near-duplicates of real general_pool rows (5-15 % of words edited) go with the right
`dup_of`, distinct rows stay, through a real Beam pipeline (slow)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from pydantic import ValidationError

from thresher.stages.dedup import minhash_lsh as lsh
from thresher.stages.dedup.minhash_dedup import MinhashDedupParams
from thresher.stages.dedup.minhash_signatures import EMPTY, MERSENNE, band_hashes, permutations, signatures
from thresher.text.shingles import jaccard, shingle_hashes, shingle_sets

# ---------------------------------------------------------------------------------------
# Shingles


def test_word_shingles_ignore_case_and_punctuation():
    h, doc = shingle_hashes(["The cat, sat on the MAT.", "the cat sat on the mat", "the cat sat"], 3)
    assert doc.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert h[:4].tolist() == h[4:8].tolist()  # same words, same shingles
    assert h[8] == h[0]  # "the cat sat" is the first 3-gram of both
    assert len(set(h[:4].tolist())) == 4


def test_short_texts_get_one_whole_text_shingle_and_empty_texts_none():
    h, doc = shingle_hashes(["a b", "", "a b", "x y z", "   "], 3)
    assert doc.tolist() == [0, 2, 3]
    assert h[0] == h[1] != h[2]
    # The whole-text shingle "a b" is hashed as the 2-gram "a b" is in a longer text.
    assert shingle_hashes(["a b c"], 2)[0].tolist()[0] == h[0]


def test_lowercase_off_keeps_case_apart():
    on = shingle_sets(["Alpha Beta Gamma", "alpha beta gamma"], 2)
    off = shingle_sets(["Alpha Beta Gamma", "alpha beta gamma"], 2, lowercase=False)
    assert jaccard(*on) == 1.0 and jaccard(*off) == 0.0


def test_char_shingles_fold_whitespace():
    a, b, c = shingle_sets(["ab  cd\n", "ab cd", "abxcd"], 3, "char")
    assert len(a) == 3 and np.array_equal(a, b)  # "ab ", "b c", " cd"
    assert jaccard(a, c) == 0.0


def test_jaccard_of_sets():
    a = np.array([1, 2, 3, 4], np.uint64)
    assert jaccard(a, np.array([3, 4, 5], np.uint64)) == pytest.approx(2 / 5)
    assert jaccard(a, a) == 1.0


# ---------------------------------------------------------------------------------------
# Signatures and bands


def test_signatures_equal_the_datasketch_formula():
    rng = np.random.default_rng(3)
    h = rng.integers(0, 2**64 - 1, 500, dtype=np.uint64)
    doc = np.sort(rng.integers(0, 20, 500))
    doc[doc == 7] = 8  # text 7 has no shingles
    a, b = permutations(16, seed=1)
    sig = signatures(h, doc, 21, a, b, chunk_shingles=64)  # chunks split texts' runs often
    with np.errstate(over="ignore"):
        ref = (h[:, None] * a[None, :] + b[None, :]) % MERSENNE  # datasketch / datatrove
    for t in range(21):
        want = ref[doc == t].min(axis=0) if (doc == t).any() else np.full(16, EMPTY, np.uint64)
        assert np.array_equal(sig[t], want), t


def test_permutations_are_drawn_as_datatrove_draws_them():
    gen = np.random.RandomState(1)
    a = gen.randint(1, MERSENNE, dtype=np.uint64, size=(1, 8))
    b = gen.randint(0, MERSENNE, dtype=np.uint64, size=(1, 8))
    got = permutations(8, seed=1)
    assert np.array_equal(got[0], a[0]) and np.array_equal(got[1], b[0])


def test_signature_agreement_estimates_jaccard():
    words = [f"w{i}" for i in range(200)]
    t1, t2 = " ".join(words[:150]), " ".join(words[50:])  # unigram Jaccard 100/200 = 0.5
    h, doc = shingle_hashes([t1, t2], 1)
    sig = signatures(h, doc, 2, *permutations(256, seed=0))
    assert abs((sig[0] == sig[1]).mean() - 0.5) < 0.08
    bands = band_hashes(sig, 64, 4)
    assert bands.shape == (2, 64)
    assert np.array_equal(bands[0] == bands[1], (sig[0] == sig[1]).reshape(64, 4).all(axis=1))


@pytest.mark.parametrize("threshold, num_perm, want", [  # datasketch 1.x `_optimal_param` output
    (0.8, 128, (9, 13)), (0.9, 64, (3, 21)), (0.3, 16, (8, 2)),
])
def test_bands_and_rows_match_datasketch(threshold, num_perm, want):
    assert lsh.optimal_bands_rows(threshold, num_perm) == want


def test_params_want_both_bands_and_rows_within_num_perm():
    assert MinhashDedupParams(bands=4, rows=8, num_perm=32).banding() == (4, 8)
    with pytest.raises(ValidationError, match="give both `bands` and `rows`"):
        MinhashDedupParams(bands=4)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        MinhashDedupParams(bands=10, rows=20, num_perm=128)


# ---------------------------------------------------------------------------------------
# Buckets and components


def _u(x):
    return np.array(x, np.uint64)


def test_bucket_pairs_star_all_pairs_and_cap():
    # band 0: bucket {5, 3, 9, 7} (hash 11) and {4} ; band 1: bucket {3, 9} (hash 11: other band)
    band = np.array([0, 0, 0, 0, 0, 1, 1], np.int16)
    bh = _u([11, 11, 11, 11, 12, 11, 11])
    keys = _u([5, 3, 9, 7, 4, 3, 9])
    a, b, stats = lsh.bucket_pairs(band, bh, keys, all_pairs=False, cap=10)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(3, 5), (3, 7), (3, 9), (3, 9)]
    assert stats == {"buckets_with_candidates": 2, "rows_in_candidate_buckets": 6, "largest_bucket": 4,
                     "buckets_over_cap": 0}
    a, b, _ = lsh.bucket_pairs(band, bh, keys, all_pairs=True, cap=10)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [
        (3, 5), (3, 7), (3, 9), (3, 9), (5, 7), (5, 9), (7, 9)]
    a, b, stats = lsh.bucket_pairs(band, bh, keys, all_pairs=True, cap=3)  # the 4-row bucket: star only
    assert len(a) == 4 and stats["buckets_over_cap"] == 1


def test_components_root_is_the_lowest_key():
    a, b = lsh.unique_pairs(_u([9, 4, 7, 20, 4]), _u([4, 9, 2, 21, 4]))
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(2, 7), (4, 9), (20, 21)]
    nodes, root = lsh.components(_u([9, 7, 3, 20]), _u([4, 2, 9, 21]))
    assert nodes.tolist() == [2, 3, 4, 7, 9, 20, 21]
    assert root.tolist() == [2, 3, 3, 2, 3, 20, 20]


def test_verified_keeps_pairs_at_or_above_the_threshold():
    sets = {1: _u([1, 2, 3, 4]), 2: _u([1, 2, 3, 5]), 3: _u([7, 8])}
    a, b = lsh.verified(_u([1, 1]), _u([2, 3]), sets, 0.6)
    assert a.tolist() == [1] and b.tolist() == [2]  # Jaccard 3/5 = 0.6 kept, 0 dropped


# ---------------------------------------------------------------------------------------
# The stage in a real Beam pipeline

_VOCAB = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
# Word bigrams: 5-15 % of words edited leaves a Jaccard of ~0.5-0.9 with the original, while
# distinct general_pool paragraphs share < 0.1; 32 bands x 4 rows put the S-curve at ~0.4.
_PARAMS = {"ngram": 2, "num_perm": 128, "bands": 32, "rows": 4, "threshold": 0.4, "seed": 7}


def _edit(text: str, rng: np.random.Generator) -> str:
    """Substitute, delete or insert 5-15 % of the words."""
    words = text.split()
    k = max(1, round(rng.uniform(0.05, 0.15) * len(words)))
    for pos in sorted(rng.choice(len(words), k, replace=False).tolist(), reverse=True):
        op = int(rng.integers(3))
        if op == 0:
            words[pos] = _VOCAB[int(rng.integers(len(_VOCAB)))]
        elif op == 1:
            del words[pos]
        else:
            words.insert(pos + 1, _VOCAB[int(rng.integers(len(_VOCAB)))])
    return " ".join(words)


def _planted(shared_data, n_base: int = 240, n_copies: int = 40):
    """Distinct pool paragraphs (every 97th, >= 40 words) and near-copies of some of them, each
    copy inserted at a random place (sometimes before its original). Returns rows and
    {copy id: original id}."""
    base = []
    with gzip.open(shared_data / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            row = json.loads(line)
            if i % 97 == 0 and len(row["text"].split()) >= 40:
                base.append({"id": row["id"], "text": row["text"]})
            if len(base) == n_base:
                break
    rng = np.random.default_rng(11)
    rows, truth = list(base), {}
    for j, src in enumerate(rng.choice(n_base, n_copies, replace=False).tolist()):
        copy = {"id": f"copy{j}", "text": _edit(base[src]["text"], rng)}
        rows.insert(int(rng.integers(len(rows) + 1)), copy)
        truth[copy["id"]] = base[src]["id"]
    return rows, truth


@pytest.mark.slow
@pytest.mark.parametrize("verify", [False, True])
def test_planted_near_duplicates_go_with_the_right_dup_of(shared_data, verify):
    from thresher.testing.harness import run_stage

    rows, truth = _planted(shared_data)
    position = {r["id"]: i for i, r in enumerate(rows)}
    res = run_stage("minhash_dedup", rows, {**_PARAMS, "verify": verify})
    got = {r["id"]: r for r in res.dropped.to_pylist()}
    # The first of each pair in input order is kept: the copy when it was placed before.
    want = {}
    for copy, orig in truth.items():
        first, second = sorted((copy, orig), key=position.get)
        want[second] = first
    assert {k: v["dup_of"] for k, v in got.items()} == want
    assert {v["drop_reason"] for v in got.values()} == {"near_duplicate"}
    for r in got.values():
        assert r["dup_cluster"] == position[r["dup_of"]]  # the kept row's __row_key
    assert res.kept.num_rows == len(rows) - len(want)
    rep = res.report
    assert rep["dropped"] == len(want) == 40 and rep["clusters"] == 40
    assert rep["rows"] == 280 and (rep["bands"], rep["rows_per_band"]) == (32, 4)
    assert rep["candidate_pairs"] >= 40 and rep["largest_bucket"] >= 2
    assert (rep["verified_pairs"] == 40) if verify else rep["verified_pairs"] is None
    assert res.counters["minhash_dedup/dropped/near_duplicate/test"] == 40


def test_decisions_are_joined_not_broadcast():
    # The candidate graph (nodes, pairs: ~ candidate rows) is read as side inputs; the dropped
    # rows' decisions reach their batches by a join on the batch key, not as one more.
    import apache_beam as beam

    from thresher.stages.dedup.minhash_dedup import MinhashDedup
    from thresher.testing.harness import make_batch

    p = beam.Pipeline()
    _ = p | beam.Create([make_batch([{"text": "a b c"}])]) | MinhashDedup().transform()
    found: dict[str, set[str]] = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            mine = node.full_label.startswith("minhash_dedup/") and not node.full_label.endswith("/InjectDefault")
            if node.side_inputs and mine:
                found[node.full_label] = {s.pvalue.producer.full_label for s in node.side_inputs}

    p.visit(Visitor())
    assert found == {"minhash_dedup/SelectKeyed/CandidateRows": {"minhash_dedup/SelectKeyed/Nodes"},
                     "minhash_dedup/SelectKeyed/Resolve": {"minhash_dedup/SelectKeyed/PairsOnly"},
                     "minhash_dedup/Report": {"minhash_dedup/Select/Components"}}


@pytest.mark.slow
def test_groups_keep_their_first_row_and_texts_without_words_stay():
    from thresher.testing.harness import run_stage

    a = "one two three four five six seven eight nine ten eleven twelve"
    far = "red green blue cyan magenta yellow black white orange purple pink brown"
    rows = [{"text": ""}, {"text": far}, {"text": a.replace("six", "6")}, {"text": a}, {"text": "..."},
            {"text": a + " thirteen"}, {"text": ""}, {"text": far.upper()}]
    # Three rows per batch: groups span batches and shuffle groups.
    res = run_stage("minhash_dedup", rows, {**_PARAMS, "verify": True, "threshold": 0.6, "shuffle_groups": 3},
                    batch_rows=3)
    dropped = {r["id"]: (r["dup_of"], r["dup_cluster"]) for r in res.dropped.to_pylist()}
    # a-variants: Jaccard 9/13 and 11/12 with row 2 (>= 0.6); far.upper() lowercases to far.
    assert dropped == {"3": ("2", 2), "5": ("2", 2), "7": ("1", 1)}
    assert res.kept.column("id").to_pylist() == ["0", "1", "2", "4", "6"]
    assert res.report["clusters"] == 2 and res.report["components"] == 2
