"""`quality_filter`: heuristic document quality rules — Gopher quality, Gopher repetition, C4, FineWeb.

Presets carry the published thresholds: `gopher` (Rae et al. 2021, appendix A.1.1 and Table A1: word
count, mean word length, '#'/ellipsis per word, bullet/ellipsis line fractions, alphabetic words, stop
words; duplicate line/paragraph fractions, top 2-4-gram and duplicated 5-10-gram character fractions),
`c4` (Raffel et al. 2020, section 2.2: lorem ipsum, curly bracket, at least 5 sentences in the lines that
pass C4's line filters), `fineweb` (Penedo et al. 2024: terminal-punctuation lines, short lines, duplicated
line characters, newlines per word); each as datatrove 0.10 implements it (same defaults, same word
splitting: spaCy's English tokenizer, reproduced in `words.py`). `preset` may list several; `rules`
overrides, adds or turns off any single rule.

In:  canonical batches (`text`).
Out: the same plus score columns (`q_word_count`, `q_mean_word_len`, `q_dup_line_frac`,
     `q_top_2gram_frac`, `q_dup_5gram_frac`, `q_c4_sentences`, `q_line_punct_frac`, ... — those of the
     rule families in use), so thresholds can change later without recomputing. A dropped row's reason is
     the first rule that fires, in this order: gopher_min_words, gopher_max_words,
     gopher_min_mean_word_length, gopher_max_mean_word_length, gopher_hash_ratio, gopher_ellipsis_ratio,
     gopher_bullet_lines, gopher_ellipsis_lines, gopher_alpha_words, gopher_stop_words,
     gopher_dup_para_frac, gopher_dup_para_char_frac, gopher_dup_line_frac, gopher_dup_line_char_frac,
     gopher_top_{2,3,4}gram, gopher_dup_{5..10}gram, c4_lorem_ipsum, c4_curly_bracket, c4_min_sentences,
     fineweb_line_punct, fineweb_short_lines, fineweb_dup_line_chars, fineweb_newlines_per_word.
     A ratio with a zero denominator (no words, no lines) is null and fires no rule, so an empty text
     is dropped by gopher_min_words or fineweb_line_punct, not by a repetition rule. C4 rows are
     decided, not rewritten: C4's dropped lines stay in a kept row's text.
Cost: CPU only, vectorised over each Arrow batch (splits, counts, n-gram hashing in Arrow/NumPy); Python
     work per distinct whitespace chunk not seen before (tokenisation, cached per worker, bounded) and per
     row that repeats a 5-10-gram (the greedy scan).
Stats (report): per rule its threshold, `fired` (every row it fires on; a row can fail several) and
     `dropped` (rows it was the first to fire on); per score column its mean and a histogram.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from thresher.core import Selector, StageParams, rows
from thresher.core.columns import numpy
from thresher.core.reports import histogram
from thresher.stages.quality.c4_rules import C4LineRules, c4_scores
from thresher.stages.quality.fineweb_rules import fineweb_scores
from thresher.stages.quality.gopher_rules import GOPHER_STOP_WORDS, gopher_quality_scores
from thresher.stages.quality.repetition_rules import repetition_scores
from thresher.stages.quality.rules import BY_NAME, RULES, RuleThresholds, active_rules
from thresher.stages.quality.words import Vocabulary, words_of

Preset = Literal["gopher", "c4", "fineweb"]
_FRACTION = np.linspace(0, 1, 11)
_EDGES = {
    "q_word_count": np.array([0, 10, 25, 50, 100, 250, 500, 1000, 10_000, 100_000, 1e12]),
    "q_mean_word_len": np.array([0, 2, 3, 4, 5, 6, 8, 10, 15, 1e12]),
    "q_stop_words": np.arange(0, 10),
    "q_c4_sentences": np.array([0, 1, 2, 3, 5, 10, 20, 50, 1e12]),
    "q_c4_lorem_ipsum": np.array([0, 1, 2, 1e12]),
    "q_c4_curly_bracket": np.array([0, 1, 2, 1e12]),
    "q_newline_per_word": np.array([0, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 1e12]),
    "q_hash_ratio": np.array([0, 0.01, 0.05, 0.1, 0.2, 0.5, 1e12]),
    "q_ellipsis_ratio": np.array([0, 0.01, 0.05, 0.1, 0.2, 0.5, 1e12]),
}


class QualityFilterParams(StageParams):
    preset: Literal["gopher", "c4", "fineweb", "none"] | list[Preset] = Field(
        "gopher", description="Rule set(s) with their published thresholds: gopher (quality + repetition), c4, "
        "fineweb, a list of them, or none (only the rules set in `rules`).")
    rules: RuleThresholds = Field(default_factory=RuleThresholds, description="Per-rule thresholds: a number "
                                  "(true for on/off rules) sets or adds a rule, null turns it off.")
    stop_words: list[str] = Field(list(GOPHER_STOP_WORDS), min_length=1, description="The words "
                                  "gopher_stop_words counts (case-sensitive, as in Gopher/datatrove).")
    short_line_chars: int = Field(30, ge=0, description="A line this long or shorter is short "
                                  "(fineweb_short_lines; FineWeb: 30).")
    c4_lines: C4LineRules = Field(default_factory=C4LineRules, description="Which lines count for the c4 rules.")

    @property
    def presets(self) -> list[str]:
        if isinstance(self.preset, list):
            return list(self.preset)
        return [] if self.preset == "none" else [self.preset]

    @property
    def active(self) -> dict[str, float | bool]:
        return active_rules(self.presets, self.rules)

    @model_validator(mode="after")
    def _some_rule(self) -> QualityFilterParams:
        if not self.active:
            raise ValueError("no quality rule is on: set `preset` (gopher, c4, fineweb) or give thresholds in "
                             "`rules` (e.g. rules: {gopher_min_words: 50})")
        return self


def _column(values: np.ndarray) -> pa.Array:
    if values.dtype.kind == "f":
        return pa.array(values, pa.float64(), mask=np.isnan(values))
    return pa.array(values, pa.int64())


class QualityFilter(Selector):
    __doc__ = __doc__
    type_name = "quality_filter"
    Params = QualityFilterParams
    cost = "CPU: vectorised per batch; spaCy-equivalent word splitting cached per distinct chunk"

    def _vocabulary(self) -> Vocabulary:
        # Built on the worker at first use, not pickled with the stage.
        vocab = self.__dict__.get("_vocab")
        if vocab is None:
            vocab = self.__dict__["_vocab"] = Vocabulary(tuple(self.params.stop_words))
        return vocab

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_vocab", None)
        return state

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        p = self.params
        active = p.active
        families = {BY_NAME[name].family for name in active}
        texts = batch.column(rows.TEXT)
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        texts = texts.fill_null("")
        words = words_of(texts, self._vocabulary()) if families & {"gopher_quality", "gopher_repetition",
                                                                    "fineweb"} else None
        out: dict[str, np.ndarray] = {}
        if "gopher_quality" in families:
            out.update(gopher_quality_scores(texts, words))
        if "gopher_repetition" in families:
            top = tuple(n for n in (2, 3, 4) if f"gopher_top_{n}gram" in active)
            dup = tuple(n for n in range(5, 11) if f"gopher_dup_{n}gram" in active)
            out.update(repetition_scores(texts, words, top, dup))
        if "c4" in families:
            out.update(c4_scores(texts, p.c4_lines, self._vocabulary()))
        if "fineweb" in families:
            out.update(fineweb_scores(texts, words, p.short_line_chars))
        return {name: _column(v) for name, v in out.items()}

    def _fired(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        return {name: BY_NAME[name].fires(numpy(batch, BY_NAME[name].score), t)
                for name, t in self.params.active.items()}

    def decide(self, batch: pa.RecordBatch):
        keep = np.ones(batch.num_rows, bool)
        reason = np.full(batch.num_rows, None, object)
        for name, fired in self._fired(batch).items():
            first = fired & keep
            reason[first] = name
            keep &= ~fired
        return keep, reason.tolist()

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        fired, dropped = {}, {}
        still = np.ones(batch.num_rows, bool)
        for name, f in self._fired(batch).items():
            fired[name] = int(f.sum())
            dropped[name] = int((f & still).sum())
            still &= ~f
        scores = {}
        for col in dict.fromkeys(BY_NAME[n].score for n in self.params.active):
            v = numpy(batch, col).astype(np.float64)
            defined = v[~np.isnan(v)]
            edges = _EDGES.get(col, _FRACTION)
            scores[col] = {"rows": int(len(defined)), "sum": float(defined.sum()),
                           "histogram": histogram(np.clip(defined, edges[0], edges[-1]), edges)}
        return {"rows": batch.num_rows, "kept": int(keep.sum()), "fired": fired, "dropped": dropped,
                "scores": scores}

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        active = self.params.active
        rules = {name: {"threshold": t, "score": BY_NAME[name].score, "fires_when": BY_NAME[name].fires_when,
                        "fired": summary.get("fired", {}).get(name, 0),
                        "dropped": summary.get("dropped", {}).get(name, 0)}
                 for name, t in active.items()}
        scores = {}
        for col, s in summary.get("scores", {}).items():
            scores[col] = {"rows": s["rows"], "mean": s["sum"] / s["rows"] if s["rows"] else None,
                           "histogram": s["histogram"]}
        return {"presets": self.params.presets, "rows": summary.get("rows", 0), "kept": summary.get("kept", 0),
                "rules": rules, "scores": scores, "order": [r.name for r in RULES if r.name in active]}
