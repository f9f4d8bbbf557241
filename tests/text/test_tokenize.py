"""thresher.text.tokenize's batch paths: an Arrow string array (read from its UTF-8 buffer,
no Python string per row) tokenises exactly as the same texts in a list, for every array
layout, and batches that `str.lower` must lowercase text by text (`İ`, `Σ`) still match
the regex; `ngram_rows` gives the same buckets in any integer dtype."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from tests._text_samples import TRICKY, first_lines
from thresher.text.ngrams import ngram_rows
from thresher.text.tokenize import TOKEN_PATTERN, tokenize


def _tokens(tok):
    got = [[] for _ in range(tok.n_texts)]
    for s, e, d in zip(tok.starts, tok.ends, tok.doc, strict=True):
        got[d].append(tok.cp[s:e].tobytes().decode("utf-32-le", "surrogatepass"))
    return got


def _layouts(texts):
    """The same texts as a list and as Arrow arrays laid out every way a batch column can be."""
    return {"list": texts, "string": pa.array(texts, pa.string()), "large": pa.array(texts, pa.large_string()),
            "sliced": pa.array(["pad", "Pad Pad"] + texts, pa.string()).slice(2),
            "chunked": pa.chunked_array([pa.array(texts[:3], pa.string()), pa.array(texts[3:], pa.string())])}


def test_arrow_arrays_tokenise_exactly_as_lists(shared_data):
    lines = first_lines(shared_data / "general_pool" / "pool.jsonl.gz", 150)
    for texts in ([t for t in lines if t.isascii()], lines + ["", "naïve CAFÉ ½", "日本語。"]):
        want = tokenize(texts)
        ref = [re.findall(TOKEN_PATTERN, t.lower()) for t in texts]
        assert _tokens(want) == ref
        for name, form in _layouts(texts).items():
            tok = tokenize(form)
            for f in ("cp", "starts", "ends", "doc", "bounds"):
                assert np.array_equal(getattr(tok, f), getattr(want, f)), (name, f)
            assert tok.counts().tolist() == [len(r) for r in ref]


def test_batches_with_context_dependent_lowercase_match_the_regex():
    # ΟΔΟΣ ends in a final sigma (ς) only where no letter follows; İ lowercases to two code
    # points. Either sends the whole batch text by text through str.lower.
    texts = ["ΟΔΟΣ Σ ΑΣΑ", "İstanbul", "plain ascii", "", "ΣΑ.Σ", "x"] + TRICKY
    for form in _layouts(texts).values():
        assert _tokens(tokenize(form)) == [re.findall(TOKEN_PATTERN, t.lower()) for t in texts]
    assert _tokens(tokenize(["ΟΔΟΣ Σ"]))[0] == ["οδος", "σ"]
    assert tokenize(pa.array(["", ""], pa.string())).counts().tolist() == [0, 0]  # no data buffer
    assert tokenize([]).counts().tolist() == []


def test_texts_never_share_a_token():
    # no separator between texts in `cp`: a word at the end of one text and the start of the
    # next are two tokens, also when both are punctuation
    tok = tokenize(pa.array(["abc", "def", "!!", "?", "", "x y"]))
    assert _tokens(tok) == [["abc"], ["def"], ["!!"], ["?"], [], ["x", "y"]]
    assert tok.bounds.tolist() == [0, 1, 2, 3, 4, 4, 6]


def test_ngram_rows_dtype_keeps_the_buckets():
    texts = TRICKY + ["How many apples? 3 apples.", "the cat sat on the mat"]
    a = ngram_rows(texts, 2, 1000)
    b = ngram_rows(pa.array(texts), 2, 1000, np.uint16)
    assert b[1].dtype == np.uint16 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(a[2], b[2])
