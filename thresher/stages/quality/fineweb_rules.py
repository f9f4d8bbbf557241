"""FineWeb's own quality scores (Penedo et al. 2024, "The FineWeb Datasets"), computed as datatrove 0.10's
`FineWebQualityFilter` computes them, for a whole batch at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.stages.quality.text_parts import duplicates, lengths, parts, ratio
from thresher.stages.quality.tokenizer_data import TERMINAL_PUNCTUATION
from thresher.stages.quality.words import Words

_ENDS_TERMINAL = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in TERMINAL_PUNCTUATION) + "]$"


def fineweb_scores(texts: pa.Array, words: Words, short_line_chars: int) -> dict[str, np.ndarray]:
    lines = parts(texts, pc.split_pattern(texts, "\n"))
    lines = lines.only(pc.not_equal(pc.utf8_trim_whitespace(lines.flat), "").to_numpy(zero_copy_only=False))
    terminal = lines.per_row(lines.matches(_ENDS_TERMINAL))
    short = lines.per_row(pc.less_equal(pc.utf8_length(lines.flat), short_line_chars).to_numpy(zero_copy_only=False))
    _, dup_chars = duplicates(lines)
    newlines = pc.count_substring(texts, "\n").to_numpy(zero_copy_only=False).astype(np.float64)
    n_tokens = words.per_row()
    punct = ratio(terminal, lines.count)
    punct[lines.count == 0] = 0.0  # no non-blank line at all: datatrove drops it ("empty")
    per_word = ratio(newlines, n_tokens)
    per_word[(n_tokens == 0) & (newlines > 0)] = np.inf
    return {
        "q_line_punct_frac": punct,
        "q_short_line_frac": ratio(short, lines.count),
        "q_dup_line_char_ratio": ratio(dup_chars, lengths(texts) - newlines),
        "q_newline_per_word": per_word,
    }
