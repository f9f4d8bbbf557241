"""Encode with a sentence-transformers model on CUDA without its per-batch host work.

On a GPU, `SentenceTransformer.encode` is bound by the host, not the model. Profiled on an
H200 (bench/gpu_check.py and a cProfile of `encode`; MiniLM-L6, fp16, 25,000 pool paragraphs,
batch 1,024): `encode` took 11.95 s, the forwards of the same rows pre-tokenized 0.33 s, the
Rust tokenizer itself 0.56 s; the rest was transformers' Python `BatchEncoding` conversion
of the padded batches to tensors (`flatten` and `torch.tensor` over nested lists: ~9 s).

`encode_sorted` changes only how the batches reach the model: the Rust tokenizer
(`backend_tokenizer`, with the model's truncation) encodes the whole call at once, the rows
are ordered by token count so each mini-batch is cut to its own longest row, and the padded
id arrays are built in NumPy. The forward is the model's own (transformer, pooling, any
Dense/Normalize modules); vectors stay on the device until one copy at the end and are
normalised in float32.

Because the tokenization is not the model's own `preprocess`, `fast_tokenizer` first checks
that it gives the same ids, attention mask and token types as `preprocess` on `PROBES` (short,
long past the truncation, empty, padded with spaces, accented, CJK, code); a model where they
differ, or one with a default prompt, is encoded with `encode` unchanged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

PROBES = [
    "Janet's ducks lay 16 eggs per day.",
    "   leading and trailing spaces   ",
    "",
    "Ünïcödé àccents, ß and Æ; 東京都 の 天気; emoji 🙂",
    "def add(a, b):\n\treturn a + b  # TAB and newline",
    " ".join(f"word{i} and more text" for i in range(200)),  # far past any 256-512 token limit
    "UPPER lower MiXeD",
]
_LOCK = threading.Lock()
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _reference(model: Any, texts: list[str]) -> dict[str, list[list[int]]]:
    feats = model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
    mask = feats["attention_mask"].tolist()
    out = {}
    for key in TEXT_KEYS:
        if key in feats:
            rows = feats[key].tolist()
            out[key] = [r[:sum(m)] for r, m in zip(rows, mask, strict=True)]  # right padding removed
    return out


def _ours(tok: Any, texts: list[str]) -> dict[str, list[list[int]]]:
    enc = tok.encode_batch(texts)
    return {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
            "token_type_ids": [e.type_ids for e in enc]}


def fast_tokenizer(model: Any) -> Any | None:
    """A copy of the model's Rust tokenizer set to its truncation, when it reproduces the
    model's own `preprocess` on PROBES; else None (then use `encode`). Checked once per model."""
    with _LOCK:  # the answer is kept on the model object itself, so it lives and dies with it
        if hasattr(model, "thresher_fast_tokenizer"):
            return model.thresher_fast_tokenizer
        tok = None
        try:
            tok = _build(model)
        except Exception as exc:  # any surprise in a model's layout means: use its own encode
            logging.getLogger(__name__).info("fast tokenization unavailable for %s: %s", type(model).__name__, exc)
        try:
            model.thresher_fast_tokenizer = tok
        except AttributeError:  # an object that takes no attributes: checked again next time
            pass
        return tok


def _build(model: Any) -> Any | None:
    from tokenizers import Tokenizer

    hf = getattr(model, "tokenizer", None)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or getattr(model, "default_prompt_name", None):
        return None
    if getattr(hf, "padding_side", "right") != "right":
        return None
    template = model.preprocess(["x"]) if hasattr(model, "preprocess") else model.tokenize(["x"])
    tensors = {k for k, v in template.items() if hasattr(v, "shape")}
    if not tensors <= set(TEXT_KEYS) or "input_ids" not in tensors:
        return None  # the forward wants inputs we do not build
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=int(model.max_seq_length),
                          direction=getattr(hf, "truncation_side", "right"))
    want = _reference(model, PROBES)
    got = _ours(tok, PROBES)
    if any(want[k] != got[k] for k in want):
        return None
    model.thresher_fast_template = {k: v for k, v in template.items() if k not in tensors}
    model.thresher_fast_keys = sorted(tensors)
    return tok


def encode_sorted(model: Any, texts: list[str], batch_size: int = 256, normalize: bool = True,
                  tokenizer: Any = None) -> np.ndarray:
    """`model.encode(texts, batch_size, normalize_embeddings=normalize)` as float32 (n, d),
    with the batches built as the module docstring says. `tokenizer` from `fast_tokenizer`."""
    import torch

    tok = tokenizer or fast_tokenizer(model)
    if tok is None:
        raise ValueError("encode_sorted: this model's tokenization cannot be reproduced; use encode")
    device = next(model.parameters()).device
    enc = tok.encode_batch(list(texts))
    lengths = np.fromiter((len(e.ids) for e in enc), np.int64, len(enc))
    order = np.argsort(-lengths, kind="stable")
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    n = len(texts)
    out = None
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            width = int(lengths[idx[0]])
            arrays = {"input_ids": np.full((len(idx), width), pad, np.int64),
                      "attention_mask": np.zeros((len(idx), width), np.int64),
                      "token_type_ids": np.zeros((len(idx), width), np.int64)}
            for r, i in enumerate(idx):
                e, m = enc[i], lengths[i]
                arrays["input_ids"][r, :m] = e.ids
                arrays["attention_mask"][r, :m] = 1
                arrays["token_type_ids"][r, :m] = e.type_ids
            batch = dict(model.thresher_fast_template)
            for key in model.thresher_fast_keys:
                batch[key] = torch.from_numpy(arrays[key]).to(device, non_blocking=True)
            emb = model(batch)["sentence_embedding"].float()
            if out is None:
                out = torch.empty((n, emb.shape[1]), dtype=torch.float32, device=device)
            out[torch.from_numpy(idx).to(device)] = emb
    if out is None:
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, int(dim())), np.float32)
    if normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=1)
    return out.cpu().numpy()
