"""thresher.text: the batch tokeniser is DSIR's regex, the one hasher follows its documented
scheme, and decontamination's words and n-grams built on it match what plain Python finds."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from tests._text_samples import TRICKY, first_lines
from thresher.stages.decontam import ngram_index as ngi
from thresher.text import hashing
from thresher.text.tokenize import TOKEN_PATTERN, tokenize

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15



def _mix(x):  # splitmix64 on Python ints, written out independently
    x = (x + GOLDEN) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _ref_token(t):
    poly = sum(ord(ch) * pow(0x100000001B3, j, 1 << 64) for j, ch in enumerate(t)) & MASK
    return _mix((poly + len(t) * GOLDEN) & MASK)


def _ref_gram(tokens):
    g = _ref_token(tokens[0])
    for t in tokens[1:]:
        g = _mix((g * GOLDEN + _ref_token(t)) & MASK)
    return g


def test_tokens_are_the_dsir_regex_on_real_text(shared_data):
    texts = first_lines(shared_data / "general_pool" / "pool.jsonl.gz", 2000)
    texts += first_lines(shared_data / "target_domain" / "math_word_problems.jsonl.gz", 500) + TRICKY
    tok = tokenize(texts)
    got = [[] for _ in texts]
    for s, e, d in zip(tok.starts, tok.ends, tok.doc, strict=True):
        got[d].append(tok.cp[s:e].tobytes().decode("utf-32-le"))
    for t, g in zip(texts, got, strict=True):
        assert g == re.findall(TOKEN_PATTERN, t.lower()), t
    assert tok.counts().tolist() == [len(g) for g in got]


def test_token_and_string_hashes_follow_the_documented_scheme():
    texts = TRICKY + ["How many apples? 3 apples."]
    tok = tokenize(texts)
    words = [w for t in texts for w in re.findall(TOKEN_PATTERN, t.lower())]
    want = [_ref_token(w) for w in words]
    assert hashing.token_hashes(tok).tolist() == want
    # a string hashed whole is the token of exactly those characters, from Python or Arrow
    assert hashing.string_hashes(words).tolist() == want
    assert hashing.string_hashes(pa.array(words)).tolist() == want
    assert hashing.string_hashes(pa.array(["pad"] + words, pa.large_string()).slice(1)).tolist() == want
    assert hashing.string_hashes(["ABC"])[0] != hashing.string_hashes(["abc"])[0]  # no lowercasing here


def test_ngram_folds_agree_every_way_they_are_computed():
    words = "the cat sat on the mat and the cat sat on the hat".split()
    h = hashing.string_hashes(words)
    for k in (1, 2, 3, 5):
        want = [_ref_gram(words[i:i + k]) for i in range(len(words) - k + 1)]
        assert hashing.window_hashes(h, np.arange(len(words) - k + 1), k).tolist() == want
        orders = {m: g.copy() for m, g in hashing.orders(h, k)}
        assert orders[k].tolist() == want
    # the same words give the same gram wherever they are; others differ
    g3 = hashing.window_hashes(h, np.arange(len(words) - 2), 3)
    assert g3[0] != g3[1] and g3[1] == g3[8] and len(set(g3.tolist())) == len({tuple(words[i:i + 3])
                                                                             for i in range(len(words) - 2)})
    x = np.arange(1000, dtype=np.uint64) * np.uint64(GOLDEN)
    assert hashing.splitmix64(x).tolist() == [_mix(int(v)) for v in x]
    assert (hashing.splitmix64(x.copy(), out=x) == hashing.splitmix64(np.arange(1000, dtype=np.uint64)
                                                                       * np.uint64(GOLDEN))).all()


def test_ngram_orders_stay_inside_each_text():
    texts = ["a b c", "d", "e f"]
    tok = tokenize(texts)
    per_order = hashing.ngram_orders(hashing.token_hashes(tok), tok.doc, 3)
    assert [d.tolist() for _, d in per_order] == [[0, 0, 0, 1, 2, 2], [0, 0, 2], [0]]
    assert per_order[1][0].tolist() == [_ref_gram(["a", "b"]), _ref_gram(["b", "c"]), _ref_gram(["e", "f"])]
    assert per_order[2][0].tolist() == [_ref_gram(["a", "b", "c"])]


# ---------------------------------------------------------------------------------------
# Decontamination's words and n-grams


def test_decontam_words_are_the_normalised_text_split_on_spaces():
    texts = ["Janet's ducks lay 16 eggs!", "", "---", "Janet’s   DUCKS, lay 16 eggs."]
    words = ngi.split_words(pa.array(texts))
    assert words.lengths.tolist() == [len(ngi.normalise_one(t).split()) for t in texts]
    assert words.flat.to_pylist() == [w for t in texts for w in ngi.normalise_one(t).split()]
    # equal words hash equal: row 0 and row 3 normalise to the same text
    assert words.hashes[:5].tolist() == words.hashes[5:].tolist()
    assert ngi.grams_at(words, np.array([0]), 5)[0] == ngi.grams_at(words, np.array([5]), 5)[0]
    starts, grams = ngi.all_grams(words, 3)
    assert starts.tolist() == [0, 1, 2, 5, 6, 7]  # no gram crosses a row boundary
    assert grams.tolist() == ngi.grams_at(words, starts, 3).tolist()


def _reference_matches(rows, segments, n, min_words):
    """(row, segment) -> (found, fraction, first, end) from word tuples: no hashing at all."""
    owners, total = {}, {}  # gram (a word tuple) -> segments holding it; segment -> its grams
    for s, text in enumerate(segments):
        w = ngi.normalise_one(text).split()
        grams = ({tuple(w[i:i + n]) for i in range(len(w) - n + 1)} if len(w) >= n
                 else {tuple(w)} if len(w) >= min_words else set())
        total[s] = len(grams)
        for g in grams:
            owners.setdefault(g, set()).add(s)
    lengths = {len(g) for g in owners}
    out, base = {}, 0
    for r, text in enumerate(rows):
        w = ngi.normalise_one(text).split()
        hits = {}  # segment -> [(start, length, gram)]
        for k in lengths:
            for i in range(len(w) - k + 1):
                for s in owners.get(tuple(w[i:i + k]), ()):
                    hits.setdefault(s, []).append((i, k, tuple(w[i:i + k])))
        for s, h in hits.items():
            found = len({g for _, _, g in h})
            out[(r, s)] = (found, found / total[s], base + min(i for i, _, _ in h), base + max(i + k for i, k, _ in h))
        base += len(w)
    return out


def test_decontam_lookup_finds_what_word_tuples_find(shared_data):
    questions = first_lines(shared_data / "gsm8k" / "test.jsonl.gz", 60, "question")
    pool = first_lines(shared_data / "general_pool" / "pool.jsonl.gz", 120)
    segments = questions + ["Janet sells duck eggs daily", "Two three", "a b c d e f g h i j k l m n o"]
    rows = list(pool)
    for i in range(0, 120, 10):  # plant whole items, halves of items, and short segments
        q = questions[i // 2]
        rows[i] = f"{rows[i]} {q}" if i % 20 else f"{q.split('.')[0]}. {rows[i]}"
    rows[5] += " so janet sells duck eggs daily, as a rule"
    n, min_words = 8, 4
    index = ngi.build_index(segments, np.arange(len(segments)), n, min_words, max_matches=None)
    words = ngi.split_words(pa.array(rows))
    m = ngi.lookup(index, words)
    got = {(int(r), int(s)): (int(f), float(x), int(a), int(b))
           for r, s, f, x, a, b in zip(m.row, m.seg, m.found, m.fraction, m.first, m.end, strict=True)}
    want = _reference_matches(rows, segments, n, min_words)
    assert got == want and len(want) >= 10 and (5, len(questions)) in got
    # a row's matches do not depend on its batch neighbours
    alone = ngi.lookup(index, ngi.split_words(pa.array([rows[10]])))
    assert sorted(zip(alone.seg.tolist(), alone.found.tolist(), strict=True)) == sorted(
        (s, f) for (r, s), (f, *_) in want.items() if r == 10)


def test_utf8_xxh3_hashes_the_utf8_bytes_whatever_the_container():
    import pyarrow as pa
    import xxhash

    from thresher.text.hashing import utf8_xxh3

    values = ["x", "é", "", "東京", "a" * 300]
    want = [xxhash.xxh3_64_intdigest(v.encode(), 7) for v in values]
    arr = pa.array(values)
    for given in (arr, arr.cast(pa.large_string()), pa.chunked_array([arr[:2], arr[2:]]), values):
        assert utf8_xxh3(given, 7).tolist() == want
    assert utf8_xxh3(arr).tolist() == [xxhash.xxh3_64_intdigest(v.encode()) for v in values]
    assert utf8_xxh3(pa.array(["a", None])).tolist() == [xxhash.xxh3_64_intdigest(b"a"),
                                                          xxhash.xxh3_64_intdigest(b"None")]


def test_runs_of_gives_each_label_its_rows_in_order():
    import numpy as np

    from thresher.core.columns import runs_of

    got = [(int(label), idx.tolist()) for label, idx in runs_of(np.array([3, 1, 3, 0, 1], np.uint64))]
    assert got == [(0, [3]), (1, [1, 4]), (3, [0, 2])]
    assert list(runs_of(np.array([], np.uint64))) == []
