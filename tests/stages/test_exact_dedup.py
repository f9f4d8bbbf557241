"""`exact_dedup`: the first of each text is kept whatever the batching, and its decisions reach
each batch by a join on the batch key, never as a broadcast side input."""

from __future__ import annotations

import apache_beam as beam

from thresher.core import keyed
from thresher.stages.dedup.exact_dedup import ExactDedup
from thresher.testing.harness import make_batch, run_stage

TEXTS = ["a b", "c", "a  b", "A B", "c", "a b", "d", "c"]


def side_input_producers(stage, batches) -> dict[str, list[str]]:
    """Every transform of `stage` that reads a side input -> the labels of the steps producing them."""
    p = beam.Pipeline()
    _ = p | beam.Create(batches) | stage.transform()
    found: dict[str, list[str]] = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            # (InjectDefault: CombineGlobally's own default value for an empty input)
            mine = node.full_label.startswith(stage.name + "/") and not node.full_label.endswith("/InjectDefault")
            if node.side_inputs and mine:
                found[node.full_label] = [s.pvalue.producer.full_label for s in node.side_inputs]

    p.visit(Visitor())
    return found


def test_first_occurrence_wins_across_batches():
    res = run_stage(ExactDedup, [{"text": t, "source": "ab"[i % 2]} for i, t in enumerate(TEXTS)],
                    {"ignore_case_and_space": True, "buckets": 2}, batch_rows=3)
    assert res.kept.column("id").to_pylist() == ["0", "1", "6"]
    assert "duplicate_of" not in res.kept.column_names
    assert res.dropped.column("id").to_pylist() == ["2", "3", "4", "5", "7"]
    assert res.dropped.column("duplicate_of").to_pylist() == ["0", "0", "1", "0", "1"]
    assert set(res.dropped.column("drop_reason").to_pylist()) == {"duplicate"}
    assert res.counters == {"exact_dedup/in/a": 4, "exact_dedup/in/b": 4,
                            "exact_dedup/dropped/duplicate/a": 2, "exact_dedup/dropped/duplicate/b": 3}
    assert res.report is None


def test_decisions_are_split_by_the_batch_that_holds_the_rows():
    from thresher.stages.dedup.exact_dedup import find_duplicates, hash_to_buckets

    st = ExactDedup({"buckets": 1})
    batches = [make_batch([{"text": t} for t in TEXTS[i:i + 3]], first_key=i) for i in range(0, len(TEXTS), 3)]
    assert [keyed.batch_key(b) for b in batches] == [0, 3, 6]
    shuffled = (0, [v for b in batches for _, v in hash_to_buckets(b, st.params)])
    parts = dict(find_duplicates(shuffled))
    # "a b" at rows 0 and 5, "c" at rows 1, 4 and 7 (case and spacing count here); batch 0 has none
    assert sorted(parts) == [3, 6]
    assert dict(zip(parts[3]["keys"].tolist(), parts[3]["winners"], strict=True)) == {4: "1", 5: "0"}
    assert dict(zip(parts[6]["keys"].tolist(), parts[6]["winners"], strict=True)) == {7: "1"}
    keep, reason, cols = st.decide(batches[1], [parts[3]])
    assert keep.tolist() == [True, False, False] and cols["duplicate_of"].to_pylist() == [None, "1", "0"]


def test_no_decision_is_broadcast():
    # Today's shape (decisions gathered in one worker and read as a side input by every batch)
    # shows up here as a side input; the join has none.
    st = ExactDedup()
    assert side_input_producers(st, [make_batch([{"text": "x"}])]) == {}
