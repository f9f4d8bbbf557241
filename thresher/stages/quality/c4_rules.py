"""C4 scores (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2), following datatrove
0.10's `C4QualityFilter`: the line filters decide which lines count, then the document-level rules (lorem
ipsum, curly bracket, too few sentences) are scored. Sentences are counted per counted line as spaCy's
sentencizer (which datatrove uses) splits them, on the shared tokenisation (`words.py`). This stage only
decides rows: it does not rewrite a kept row's text without its dropped lines, as C4 and datatrove do."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.core import StageParams
from thresher.stages.quality.text_parts import splitlines
from thresher.stages.quality.words import Vocabulary, words_of

_CITATION = r"\[\d*]|\[edit]|\[citation needed]"
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4LineRules(StageParams):
    """The C4 line filters (datatrove C4QualityFilter defaults): a line they reject does not count."""

    terminal_punct: bool = Field(True, description="Only lines ending in . ? ! \" or ' (not ...) count.")
    min_words_per_line: int = Field(3, ge=0, description="Only lines with at least this many words count.")
    max_word_length: int | None = Field(1000, ge=1, description="Lines with a longer word do not count "
                                        "(null: no limit).")
    javascript: bool = Field(True, description="Lines mentioning 'javascript' do not count.")
    policy: bool = Field(True, description="Lines with 'terms of use', 'privacy policy', cookie notices do "
                         "not count.")
    remove_citations: bool = Field(True, description="Strip Wikipedia-style citations ([1], [edit]) before "
                                   "the punctuation test.")


def c4_scores(texts: pa.Array, p: C4LineRules, vocab: Vocabulary) -> dict[str, np.ndarray]:
    lines = splitlines(texts)
    stripped = pc.utf8_trim_whitespace(lines.flat)
    split = pc.utf8_split_whitespace(stripped)
    n_words = pc.list_value_length(split).to_numpy(zero_copy_only=False)
    ok = np.ones(len(stripped), bool)
    if p.max_word_length is not None and len(stripped):
        long_word = pc.greater(pc.utf8_length(pc.list_flatten(split)), p.max_word_length).to_numpy(zero_copy_only=False)
        per_line = np.bincount(pc.list_parent_indices(split).to_numpy()[long_word], minlength=len(stripped))
        ok &= per_line == 0
    text = pc.replace_substring_regex(stripped, _CITATION, "") if p.remove_citations else stripped
    if p.terminal_punct:
        ends = pc.match_substring_regex(text, r"[.?!\"']$").to_numpy(zero_copy_only=False)
        ok &= ends & ~pc.ends_with(text, "...").to_numpy(zero_copy_only=False)
    ok &= n_words >= p.min_words_per_line
    lower = pc.utf8_lower(text)
    lorem = ok & pc.match_substring(lower, "lorem ipsum").to_numpy(zero_copy_only=False)
    if p.javascript:
        ok &= ~pc.match_substring(lower, "javascript").to_numpy(zero_copy_only=False)
    curly = ok & pc.match_substring(text, "{").to_numpy(zero_copy_only=False)
    if p.policy:
        ok &= ~pc.match_substring_regex(lower, "|".join(_POLICY)).to_numpy(zero_copy_only=False)
    counted = text.filter(pa.array(ok))
    sentences = np.zeros(len(text), np.int64)
    sentences[ok] = words_of(counted, vocab).sentences()
    return {
        "q_c4_lorem_ipsum": lines.per_row(lorem).astype(np.int64),
        "q_c4_curly_bracket": lines.per_row(curly).astype(np.int64),
        "q_c4_sentences": lines.per_row(ok, sentences.astype(np.float64)).astype(np.int64),
        "q_c4_line_frac": np.divide(lines.per_row(ok), np.maximum(lines.count, 1)),
    }
