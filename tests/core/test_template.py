"""The stage templates: what a stage author writes, and what the template does for them."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from thresher.core import Feature, Selector, StageParams, keyed
from thresher.core.registry import UnknownStage, stage_class
from thresher.testing.harness import make_batch, run_stage


class MinWordsParams(StageParams):
    min_words: int = 2


class MinWords(Selector):
    """Drop rows with fewer than `min_words` words; `n_words` travels to the shards."""

    type_name = "min_words"
    Params = MinWordsParams
    internal_columns = ("__scratch",)
    dropped_only_columns = ("why_short",)

    def score(self, batch):
        n = pc.count_substring_regex(batch.column("text"), r"\S+")
        return {"n_words": n, "__scratch": pc.multiply(n, 2)}

    def decide(self, batch):
        n = batch.column("n_words").to_numpy()
        keep = n >= self.params.min_words
        reason = np.where(n == 0, "empty", "too_short")
        why = [None if k else f"{x} words" for k, x in zip(keep, n, strict=True)]
        return keep, reason, {"why_short": pa.array(why)}

    def summarise(self, batch, keep):
        words = int(batch.column("__scratch").to_numpy().sum()) // 2
        return {"rows": batch.num_rows, "kept": int(keep.sum()), "words": words,
                "lengths": np.bincount(batch.column("n_words").to_numpy(), minlength=4)[:4]}

    def report(self, summary):
        return {"rows": summary["rows"], "kept": summary["kept"], "words": summary["words"],
                "by_length": summary["lengths"].tolist()}


ROWS = [{"text": "one two three", "source": "a"}, {"text": "one", "source": "b"}, {"text": "   ", "source": "a"},
        {"text": "a b", "source": "b"}, {"text": "x", "source": "a"}]


def test_decide_is_plain_python_on_a_batch():
    st = MinWords({"min_words": 2})
    batch = make_batch(ROWS)
    scored = batch
    for k, v in st.score(batch).items():
        scored = scored.append_column(k, v)
    keep, reason, cols = st.decide(scored)
    assert keep.tolist() == [True, False, False, True, False]
    assert [r for r, k in zip(reason, keep, strict=True) if not k] == ["too_short", "empty", "too_short"]
    assert cols["why_short"].to_pylist() == [None, "1 words", "0 words", None, "1 words"]


@pytest.mark.parametrize("batch_rows", [1, 2, 100])
def test_template_counts_splits_strips_and_reports(batch_rows):
    res = run_stage(MinWords, ROWS, {"min_words": 2}, batch_rows=batch_rows)
    assert res.kept.column("text").to_pylist() == ["one two three", "a b"]
    # score columns travel with the kept rows; internal and dropped-only columns do not
    assert res.kept.column("n_words").to_pylist() == [3, 2]
    assert "__scratch" not in res.kept.column_names and "why_short" not in res.kept.column_names
    d = res.dropped
    assert d.column("drop_reason").to_pylist() == ["too_short", "empty", "too_short"]
    assert set(d.column("drop_stage").to_pylist()) == {"min_words"}
    assert d.column("why_short").to_pylist() == ["1 words", "0 words", "1 words"]
    assert "__scratch" not in d.column_names
    assert res.counters == {"min_words/in/a": 3, "min_words/in/b": 2,
                            "min_words/dropped/too_short/a": 1, "min_words/dropped/too_short/b": 1,
                            "min_words/dropped/empty/a": 1}
    assert res.report == {"rows": 5, "kept": 2, "words": 7, "by_length": [1, 2, 1, 1]}


class TopTwo(Selector):
    """A global selector: keep the two longest texts (ties: input order)."""

    type_name = "top_two"

    def score(self, batch):
        return {"length": pc.utf8_length(batch.column("text"))}

    def select(self, scored):
        def best(batches):
            pairs = [(-ln, int(k)) for b in batches
                     for ln, k in zip(b.column("length").to_pylist(), b.column("__row_key").to_numpy(), strict=True)]
            return np.sort(np.array([k for _, k in sorted(pairs)[:2]], np.uint64))

        return scored | "All" >> beam.combiners.ToList() | "Best" >> beam.Map(best)

    def decide(self, batch, selected):
        from thresher.core.columns import member

        return member(batch.column("__row_key").to_numpy(), selected), "not_top"


def test_global_step_result_reaches_decide_for_any_batching():
    rows = [{"text": t} for t in ["aa", "aaaa", "a", "aaaa", "aaa"]]
    for n in (1, 3, 10):
        res = run_stage(TopTwo, rows, batch_rows=n)
        assert res.kept.column("id").to_pylist() == ["1", "3"]
        assert res.counters["top_two/dropped/not_top/test"] == 3


def _by_letter(batch):
    """Rows -> (first letter, (row key, length, batch key)): all rows of a letter meet in one group."""
    keys, home = batch.column("__row_key").to_numpy(), keyed.batch_keys(batch)
    for i, text in enumerate(batch.column("text").to_pylist()):
        yield text[0], (int(keys[i]), len(text), int(home[i]))


def _shorter(element):
    """A letter's rows -> (batch key, loser row keys): all but the longest (ties: the first) lose."""
    _, found = element
    found = sorted(found, key=lambda r: (-r[1], r[0]))
    losers = np.array([r[0] for r in found[1:]], np.uint64)
    yield from keyed.split_by_batch(np.array([r[2] for r in found[1:]], np.int64), keys=losers)


class LongestPerLetter(Selector):
    """A keyed global step: rows grouped by first letter, the longest of each kept."""

    type_name = "longest_per_letter"

    def select(self, scored):
        return scored | "Rows" >> beam.Map(lambda b: b.num_rows) | "Sum" >> beam.CombineGlobally(sum)

    def select_keyed(self, scored, total):
        assert isinstance(total, beam.PCollection)  # select()'s result, as a PCollection
        return scored | "ByLetter" >> beam.FlatMap(_by_letter) | "Group" >> beam.GroupByKey() | beam.FlatMap(_shorter)

    def decide(self, batch, parts):
        losers = keyed.merge_parts(parts, "keys", {"keys": np.uint64})["keys"]
        from thresher.core.columns import member

        return ~member(batch.column("__row_key").to_numpy(), losers), "not_longest"

    def summarise(self, batch, keep):
        return {"dropped": int((~keep).sum())}

    def report(self, summary, total):
        return {"rows": total, **summary}


def test_keyed_step_joins_parts_to_their_batches():
    # batches of 3: groups span batches, the last batch gets no parts, "bcd" beats "bce" on row key
    rows = [{"text": t} for t in ["ab", "abc", "b", "bcd", "a", "bce", "c"]]
    res = run_stage(LongestPerLetter, rows, batch_rows=3)
    assert res.kept.column("text").to_pylist() == ["abc", "bcd", "c"]
    assert res.dropped.column("text").to_pylist() == ["ab", "b", "a", "bce"]
    assert res.counters["longest_per_letter/dropped/not_longest/test"] == 4
    assert res.report == {"rows": 7, "dropped": 4}


class StrayKeys(Selector):
    type_name = "stray_keys"

    def select_keyed(self, scored):
        return scored | beam.Map(lambda b: (12345, {}))

    def decide(self, batch, parts):
        return np.ones(batch.num_rows, bool), None


def test_keyed_step_refuses_parts_no_batch_has():
    with pytest.raises(Exception, match="emitted decisions under key 12345, which no batch has"):
        run_stage(StrayKeys, ROWS[:2])


class WordCount(Feature):
    type_name = "word_count"

    def columns(self, batch):
        return {"wc": pc.count_substring_regex(batch.column("text"), r"\S+")}

    def summarise(self, batch):
        return {"words": int(pc.sum(batch.column("wc")).as_py() or 0)}


def test_feature_template_adds_columns_and_reports():
    res = run_stage(WordCount, ROWS, batch_rows=2)
    assert res.kept.column("wc").to_pylist() == [3, 1, 0, 2, 1]
    assert res.dropped.num_rows == 0 and res.report == {"words": 7}


def test_template_is_guarded():
    with pytest.raises(TypeError, match="owns the pipeline wiring"):
        class Sneaky(Selector):  # noqa: F841
            def expand(self, pcoll):
                return pcoll
    with pytest.raises(TypeError, match="owns the pipeline wiring"):
        class Sneaky2(Feature):  # noqa: F841
            def transform(self):
                return None


class NoDecide(Selector):
    type_name = "no_decide"


class SelectWithoutSide(Selector):
    type_name = "bad_select"

    def select(self, scored):
        return scored

    def decide(self, batch):
        return np.ones(batch.num_rows, bool), None


class KeyedWithoutSide(Selector):
    type_name = "bad_keyed"

    def select_keyed(self, scored):
        return scored

    def decide(self, batch):
        return np.ones(batch.num_rows, bool), None


class NotAStage:
    pass


@pytest.mark.parametrize("cls, why", [(NoDecide, "must define decide"),
                                      (SelectWithoutSide, "decide\\(\\) must take \\(batch, selected\\)"),
                                      (KeyedWithoutSide, "defines select_keyed\\(\\), so decide\\(\\) must take"),
                                      (NotAStage, "is not a thresher stage")])
def test_registry_refuses_broken_stage_classes(cls, why):
    with pytest.raises(UnknownStage, match=why):
        stage_class(f"{__name__}:{cls.__name__}")


class WrongLength(Selector):
    type_name = "wrong_length"

    def decide(self, batch):
        return np.ones(batch.num_rows + 1, bool), "x"


def test_decide_with_wrong_number_of_flags_is_a_clear_error():
    with pytest.raises(Exception, match="returned 4 keep flags for a batch of 3 rows"):
        run_stage(WrongLength, ROWS[:3])


def test_summaries_refuse_to_broadcast_arrays():
    from thresher.core.reports import add_nested

    assert add_nested({"n": 1, "v": np.array([1, 2]), "l": [1]}, {"n": 2, "v": np.array([3, 4]), "l": [2]}) == \
        {"n": 3, "v": pytest.approx(np.array([4, 6])), "l": [1, 2]}
    with pytest.raises(ValueError, match="cannot add arrays of shapes"):
        add_nested({"v": np.array([1, 2])}, {"v": np.array([1])})
