"""torch_batches: the GPU encode schedule gives the model's own tokens and vectors (run on CPU here)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from thresher.models import torch_batches

pytestmark = pytest.mark.slow  # loads the real MiniLM (~3 s) and encodes a few hundred rows

TEXTS = torch_batches.PROBES + [
    "What is the remainder when 2^100 is divided by 7?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "\n\n  \t",
    "a",
    "Click here to subscribe to our newsletter and get 10% off your first order!",
] + [" ".join(random.Random(i).choice(["alpha", "beta", "gamma", "δέλτα", "x1", "?"]) for _ in range(i * 7))
     for i in range(0, 60, 4)]  # 0 to 392 words: both sides of the 256-token truncation


@pytest.fixture(scope="module")
def model():
    from thresher.models import embeddings

    return embeddings.load_model(None, "cpu")  # torch fp32: the plain model the fast path wraps


def test_fast_tokenizer_reproduces_the_models_own_preprocess(model):
    tok = torch_batches.fast_tokenizer(model)
    assert tok is not None
    feats = model.preprocess(TEXTS)
    mask = feats["attention_mask"].tolist()
    enc = tok.encode_batch(TEXTS)
    for i, e in enumerate(enc):
        n = sum(mask[i])
        assert e.ids == feats["input_ids"][i, :n].tolist(), TEXTS[i][:40]
        assert e.type_ids == feats["token_type_ids"][i, :n].tolist()
    assert max(len(e.ids) for e in enc) == model.max_seq_length  # the long probe is truncated alike


def test_encode_sorted_equals_encode_in_input_order(model):
    texts = list(TEXTS)
    random.Random(7).shuffle(texts)
    want = model.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    got = torch_batches.encode_sorted(model, texts, batch_size=16)
    assert got.dtype == np.float32 and got.shape == want.shape
    # Same tokens, same forward; only the mini-batches' padding differs (fp32 sums in another order).
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    raw = torch_batches.encode_sorted(model, texts, batch_size=5, normalize=False)
    plain = model.encode(texts, batch_size=5, normalize_embeddings=False, convert_to_numpy=True)
    assert np.abs(raw - plain).max() < 1e-5  # MiniLM's own Normalize module still runs
    assert torch_batches.encode_sorted(model, [], batch_size=8).shape == (0, want.shape[1])


def test_a_model_whose_tokens_cannot_be_reproduced_is_refused():
    class NoRustTokenizer:  # e.g. a slow (pure Python) tokenizer: no backend_tokenizer
        tokenizer = object()
        default_prompt_name = None

    model = NoRustTokenizer()
    assert torch_batches.fast_tokenizer(model) is None
    with pytest.raises(ValueError, match="use encode"):
        torch_batches.encode_sorted(model, ["x"])
