"""Gopher quality scores (Rae et al. 2021, "Scaling Language Models", appendix A.1.1 / Table A1), computed
as datatrove 0.10's `GopherQualityFilter` computes them, for a whole batch at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.stages.quality.text_parts import PY_SPACE, ratio, splitlines
from thresher.stages.quality.words import Words

# Gopher's stop words (Rae et al. 2021, A.1.1; datatrove's STOP_WORDS): a document needs two of them.
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def gopher_quality_scores(texts: pa.Array, words: Words) -> dict[str, np.ndarray]:
    n_tokens = words.per_row()
    content = ~words.symbol  # "non-symbol words": tokens with a character outside the punctuation set
    n_words = words.per_row(content)
    hashes = pc.count_substring(texts, "#").to_numpy(zero_copy_only=False)
    ellipses = (pc.count_substring(texts, "...").to_numpy(zero_copy_only=False)
                + pc.count_substring(texts, "…").to_numpy(zero_copy_only=False))
    lines = splitlines(texts)
    bullets = lines.per_row(lines.matches(f"^{PY_SPACE}*[•-]"))
    end_ellipsis = lines.per_row(lines.matches(f"(?:\\.\\.\\.|…){PY_SPACE}*$"))
    stop = words.stop >= 0
    distinct_stop = np.zeros(words.n_rows, np.int64)
    if stop.any():
        span = int(words.stop.max()) + 1
        pairs = np.unique(words.doc[stop] * span + words.stop[stop])
        distinct_stop = np.bincount(pairs // span, minlength=words.n_rows)
    return {
        "q_word_count": n_words.astype(np.int64),
        "q_mean_word_len": ratio(words.per_row(content, words.length.astype(np.float64)), n_words),
        "q_hash_ratio": ratio(hashes, n_tokens),
        "q_ellipsis_ratio": ratio(ellipses, n_tokens),
        "q_bullet_line_frac": ratio(bullets, lines.count),
        "q_ellipsis_line_frac": ratio(end_ellipsis, lines.count),
        "q_alpha_word_frac": ratio(words.per_row(words.alpha), n_tokens),
        "q_stop_words": distinct_stop,
    }
