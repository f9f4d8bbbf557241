"""`runner: dask` graph (thresher.engine.dask_graph): partitions placed on workers, and the keyed
template's CoGroupByKey grouped in place (record batches stay, decisions travel) with the same
groups as a plain GroupByKey. No cluster: the graph is built, or its worker functions called."""

from __future__ import annotations

import pickle
import platform

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from thresher.engine import dask_bundles as bundles
from thresher.stages.dedup.exact_dedup import ExactDedup
from thresher.testing.harness import make_batch

pytest.importorskip("dask.bag")

from thresher.engine.dask_graph import Translate  # noqa: E402 - after the skip: needs dask
from thresher.engine.dask_runner import prepare  # noqa: E402

WORKERS = ["tcp://10.0.0.1:1", "tcp://10.0.0.2:1"]


def _grouped(out: list) -> dict:
    return {k: sorted(vs) for k, vs in out}


def test_group_in_place_gives_a_group_by_keys_groups():
    # Anchors: batch keys; key 0 (empty batches) in two anchor partitions, so its second one is
    # a stray that joins the first's group. Others: decisions for keys 3 and 0, and key 99 that
    # no anchor holds (its group still forms, in one partition).
    anchors = [[(0, "rows-a0"), (3, "rows-a3")], [(0, "rows-b0"), (7, "rows-b7")]]
    others = [[(3, "d1"), (99, "d2")], [(7, "d3"), (3, "d4"), (0, "d5")]]
    owners = bundles.directory(*[bundles.key_index(p) for p in anchors])
    assert sorted(owners.values()) == [0, 0, 1]  # keys 0, 3 -> partition 0; 7 -> 1
    # Buckets for another worker are packed bytes, the rest stay lists: both are read.
    routed = [bundles.route(p, owners, [False, True]) for p in others]
    assert all(isinstance(r[1], bytes) and isinstance(r[0], list) for r in routed)
    stray = bundles.merge_strays(*[bundles.strays(p, owners, pos) for pos, p in enumerate(anchors)])
    assert stray == {0: [(0, "rows-b0")]}
    out = [bundles.group_in_place(p, pos, owners, stray, *[r[pos] for r in routed])
           for pos, p in enumerate(anchors)]
    every = [kv for p in anchors + others for kv in p]
    assert {k: sorted(v for kk, v in every if kk == k) for k, _ in every} == {**_grouped(out[0]), **_grouped(out[1])}
    # (key 99 lands by xxh3 of its pickled bytes: on partition 0)
    assert _grouped(out[0]) == {0: ["d5", "rows-a0", "rows-b0"], 3: ["d1", "d4", "rows-a3"], 99: ["d2"]}
    assert _grouped(out[1]) == {7: ["d3", "rows-b7"]}


def test_split_packs_only_what_leaves_the_worker():
    part = [(k, k * 10) for k in range(20)]
    buckets = bundles.split(part, 3, [False, True, False])
    assert [type(b) for b in buckets] == [list, bytes, list]
    assert sorted(pickle.loads(buckets[1]) + buckets[0] + buckets[2]) == part
    assert _grouped(bundles.join(buckets[1], buckets[0])) == {k: [k * 10] for k, _ in
                                                              pickle.loads(buckets[1]) + buckets[0]}


def _translate(pipeline) -> Translate:
    prepare(pipeline)
    t = Translate("run", WORKERS)
    pipeline.visit(t)
    return t


def _bag_of(t: Translate, label_end: str):
    [bag] = [b for pc, b in t.bags.items() if pc.producer.full_label.endswith(label_end)]
    return bag


def _workers_of(bag) -> dict:
    """Each output partition's task -> the workers it is restricted to."""
    graph = bag.__dask_graph__()
    out = {}
    for layer in graph.layers.values():
        ann = layer.annotations or {}
        for key in layer:
            if key in bag.__dask_keys__() or (isinstance(key, str) and key.startswith("group_in_place")):
                w = ann.get("workers")
                out[key] = w(key) if callable(w) else w
    return out


def test_keyed_join_groups_in_place_on_the_batches_workers():
    p = beam.Pipeline(options=PipelineOptions(flags=[]))
    batches = [make_batch([{"text": t} for t in ("a", "b", "a")], first_key=3 * i) for i in range(5)]
    _ = p | beam.Create(batches) | ExactDedup().transform()
    t = _translate(p)
    rows = _bag_of(t, "exact_dedup/KeyBatches")
    joined = _bag_of(t, "exact_dedup/JoinDecisions/CoGroupByKeyImpl/GroupByKey")
    # One input file per Create element, round robin over the workers; the join keeps both.
    assert t.slots[rows.name] == [0, 1, 0, 1, 0] == t.slots[joined.name]
    placed = _workers_of(joined)
    in_place = sorted(w[0] for k, w in placed.items() if isinstance(k, str) and k.startswith("group_in_place"))
    assert in_place == sorted(WORKERS[s] for s in [0, 1, 0, 1, 0])
    # The exact-dedup hash shuffle is a plain GroupByKey: outputs round robin, 2 per worker.
    assert t.slots[_bag_of(t, "exact_dedup/SelectKeyed/Group").name] == [0, 1, 0, 1]


def test_other_cogroupbykeys_shuffle_by_hash():
    p = beam.Pipeline(options=PipelineOptions(flags=[]))
    a = p | "A" >> beam.Create([(1, "x"), (2, "y"), (3, "z")])
    b = p | "B" >> beam.Create([(1, "u")])
    _ = {"rows": a, "parts": b} | "J" >> beam.CoGroupByKey()
    t = _translate(p)
    assert t.slots[_bag_of(t, "J/CoGroupByKeyImpl/GroupByKey").name] == [0, 1, 0, 1]


def test_shuffle_tasks_are_named_after_their_step():
    p = beam.Pipeline(options=PipelineOptions(flags=[]))
    _ = p | beam.Create([(1, "x"), (2, "y"), (1, "z")]) | "Pairs" >> beam.GroupByKey()
    t = _translate(p)
    keys = {k for k in _bag_of(t, "Pairs").__dask_graph__() if isinstance(k, str)}
    # 3 input partitions (one per Create element) -> 3 splits; min(3, 2 x workers) = 3 joins.
    assert sorted(k for k in keys if k.startswith("Pairs/")) == [
        f"Pairs/{step}-run-{i}" for step in ("join", "split") for i in range(3)]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_untrim_malloc_acts_only_where_dask_set_the_trim_threshold(monkeypatch):
    monkeypatch.delenv(bundles.MALLOC_TRIM, raising=False)
    assert bundles.untrim_malloc() is False
    monkeypatch.setenv(bundles.MALLOC_TRIM, "65536")
    assert bundles.untrim_malloc() is True
