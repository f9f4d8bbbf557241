"""Every quality rule: its name (the drop reason), the score column it reads, how it compares, and its
threshold in each preset — in the order rules are checked (a dropped row's reason is the first that fires).

Sources of the thresholds:
  gopher   Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
           appendix A.1.1 and Table A1, as datatrove 0.10 `GopherQualityFilter` / `GopherRepetitionFilter`
           defaults.
  c4       Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
           Transformer", section 2.2, as datatrove 0.10 `C4QualityFilter` defaults.
  fineweb  Penedo et al. 2024, "The FineWeb Datasets", section 3.3 (custom filters), as datatrove 0.10
           `FineWebQualityFilter` defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, create_model

from thresher.core import StageParams


@dataclass(frozen=True)
class Rule:
    name: str
    family: str  # gopher_quality | gopher_repetition | c4 | fineweb: which scores it needs
    score: str
    fires_when: str  # "below" | "above" | "present" (score > 0)
    preset: str
    default: float | bool
    meaning: str

    def fires(self, score: np.ndarray, threshold: float | bool) -> np.ndarray:
        score = np.asarray(score, np.float64)
        with np.errstate(invalid="ignore"):
            if self.fires_when == "below":
                return score < threshold
            if self.fires_when == "above":
                return score > threshold
            return score > 0


def _r(name, family, score, when, preset, default, meaning) -> Rule:
    return Rule(name, family, score, when, preset, default, meaning)


_GQ, _GR = "gopher_quality", "gopher_repetition"
RULES: tuple[Rule, ...] = (
    _r("gopher_min_words", _GQ, "q_word_count", "below", "gopher", 50,
       "Fewer words (tokens with a non-punctuation character) than this."),
    _r("gopher_max_words", _GQ, "q_word_count", "above", "gopher", 100_000, "More words than this."),
    _r("gopher_min_mean_word_length", _GQ, "q_mean_word_len", "below", "gopher", 3,
       "Mean word length (characters) below this."),
    _r("gopher_max_mean_word_length", _GQ, "q_mean_word_len", "above", "gopher", 10,
       "Mean word length (characters) above this."),
    _r("gopher_hash_ratio", _GQ, "q_hash_ratio", "above", "gopher", 0.1, "'#' per token above this."),
    _r("gopher_ellipsis_ratio", _GQ, "q_ellipsis_ratio", "above", "gopher", 0.1,
       "'...' or '…' per token above this."),
    _r("gopher_bullet_lines", _GQ, "q_bullet_line_frac", "above", "gopher", 0.9,
       "Fraction of lines starting with a bullet ('•' or '-') above this."),
    _r("gopher_ellipsis_lines", _GQ, "q_ellipsis_line_frac", "above", "gopher", 0.3,
       "Fraction of lines ending with an ellipsis above this."),
    _r("gopher_alpha_words", _GQ, "q_alpha_word_frac", "below", "gopher", 0.8,
       "Fraction of tokens with an alphabetic character below this."),
    _r("gopher_stop_words", _GQ, "q_stop_words", "below", "gopher", 2,
       "Fewer distinct stop words (`stop_words`) than this."),
    _r("gopher_dup_para_frac", _GR, "q_dup_para_frac", "above", "gopher", 0.3,
       "Fraction of paragraphs that repeat an earlier one above this."),
    _r("gopher_dup_para_char_frac", _GR, "q_dup_para_char_frac", "above", "gopher", 0.2,
       "Characters in repeated paragraphs, as a fraction of the text, above this."),
    _r("gopher_dup_line_frac", _GR, "q_dup_line_frac", "above", "gopher", 0.3,
       "Fraction of lines that repeat an earlier one above this."),
    _r("gopher_dup_line_char_frac", _GR, "q_dup_line_char_frac", "above", "gopher", 0.2,
       "Characters in repeated lines, as a fraction of the text, above this."),
    *(_r(f"gopher_top_{n}gram", _GR, f"q_top_{n}gram_frac", "above", "gopher", t,
         f"Characters covered by the most frequent {n}-gram, as a fraction of the text, above this.")
      for n, t in ((2, 0.2), (3, 0.18), (4, 0.16))),
    *(_r(f"gopher_dup_{n}gram", _GR, f"q_dup_{n}gram_frac", "above", "gopher", t,
         f"Characters in repeated {n}-grams, as a fraction of the text, above this.")
      for n, t in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))),
    _r("c4_lorem_ipsum", "c4", "q_c4_lorem_ipsum", "present", "c4", True,
       "A counted line contains 'lorem ipsum' (true: on)."),
    _r("c4_curly_bracket", "c4", "q_c4_curly_bracket", "present", "c4", True,
       "A counted line contains '{' (true: on)."),
    _r("c4_min_sentences", "c4", "q_c4_sentences", "below", "c4", 5,
       "Fewer sentences in the counted lines (see `c4_lines`) than this."),
    _r("fineweb_line_punct", "fineweb", "q_line_punct_frac", "below", "fineweb", 0.12,
       "Fraction of non-blank lines ending in terminal punctuation below this."),
    _r("fineweb_short_lines", "fineweb", "q_short_line_frac", "above", "fineweb", 0.67,
       "Fraction of non-blank lines of at most `short_line_chars` characters above this."),
    _r("fineweb_dup_line_chars", "fineweb", "q_dup_line_char_ratio", "above", "fineweb", 0.01,
       "Characters in repeated non-blank lines, over the text's non-newline characters, above this."),
    _r("fineweb_newlines_per_word", "fineweb", "q_newline_per_word", "above", "fineweb", 0.3,
       "Newlines per token above this."),
)
BY_NAME = {r.name: r for r in RULES}
PRESETS = ("gopher", "c4", "fineweb")


def _field(rule: Rule):
    kind = bool if isinstance(rule.default, bool) else float
    return (kind | None, Field(None, description=f"{rule.meaning} Preset `{rule.preset}`: "
                               f"`{rule.default}`. Omitted: the preset's value; null: off."))


RuleThresholds = create_model(
    "RuleThresholds", __base__=StageParams, __doc__="Per-rule thresholds over the presets'.",
    **{r.name: _field(r) for r in RULES},
)


def active_rules(presets: list[str], overrides: StageParams) -> dict[str, float | bool]:
    """{rule: threshold} of the rules that run, in check order: the presets' rules, then the overrides
    (a number or true sets or adds a rule, null or false removes it)."""
    out = {r.name: r.default for r in RULES if r.preset in presets}
    for name in overrides.model_fields_set:
        value = getattr(overrides, name)
        if value is None or value is False:
            out.pop(name, None)
        else:
            out[name] = value
    return {r.name: out[r.name] for r in RULES if r.name in out}
