"""The driver side of `runner: dask` (`engine/dask_runner.py`): a Beam graph -> dask bags, each
partition placed on a worker.

Placement: every partition of every bag is given a worker (`slots`): a `Create`'s partitions
(a recipe's input files) round robin, a per-partition step (ParDo, Flatten) where its input
partition is, a GroupByKey's outputs round robin. Tasks carry it as a loose worker restriction
(used while that worker is in the cluster). Without it, dask's scheduler moved a partition to
the less busy worker whenever a task also read something held elsewhere (every bundle reads its
pickled DoFn and side inputs): 2 workers moved 430-870 MiB of record batches in a 511k-row run
(bench/scale.py), ~14 CPU-s of (de)serialising and copying, 30 % more CPU than 1 worker.

CoGroupByKey of keyed batches (the keyed selector template: `thresher.core.keyed`, each record
batch under its batch key, joined to the decisions about its rows): its GroupByKey runs in place.
The batches' partitions stay where they are; only the decisions travel, each to the partition
whose batch has its key (`dask_bundles.route`, by a directory of the batch keys: one per batch).
A plain shuffle moved every batch (~half the corpus on 2 workers) to a partition picked by hash.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import xxhash
from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.pipeline import PipelineVisitor
from apache_beam.transforms.window import GlobalWindows

from thresher.core import keyed
from thresher.engine import dask_bundles as bundles

_MAX_CREATE_PARTITIONS = 1024


class CreateValues(beam.PTransform):
    """`beam.Create` as one primitive: its values become a bag directly."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)

    def expand(self, pbegin):
        return pvalue.PCollection(pbegin.pipeline, is_bounded=True)

    def get_windowing(self, inputs):
        return beam.Windowing(GlobalWindows())


class Identity(beam.PTransform):
    """`beam.Reshuffle`: every element is already its own task's input, nothing to rebalance."""

    def expand(self, pcoll):
        return pvalue.PCollection.from_(pcoll)


def _keyed_batches(pc, depth: int = 2) -> bool:
    """Is `pc` made by `Map(keyed.key_batch)`, directly or through a one-input ParDo (the
    CoGroupByKey's tagging)? Only placement depends on the answer, never a result."""
    for _ in range(depth):
        t = pc.producer.transform if pc.producer is not None else None
        if not isinstance(t, beam.ParDo):
            return False
        # Beam's Map keeps the user's function on its wrapper (no public accessor).
        if getattr(getattr(t.fn, "_fn", None), "_argspec_fn", None) is keyed.key_batch:
            return True
        ins = list(pc.producer.main_inputs.values())
        if len(ins) != 1:
            return False
        pc = ins[0]
    return False


class Translate(PipelineVisitor):
    """Builds one bag per PCollection; `leaves()` are what must be computed."""

    def __init__(self, run_id: str, addresses: list[str]):
        self.run_id = run_id
        self.addresses = addresses
        self.workers = len(addresses)
        self.bags: dict[pvalue.PCollection, Any] = {}
        self.slots: dict[str, list[int]] = {}  # bag name -> each partition's worker (index)
        self.consumed: set[pvalue.PCollection] = set()
        self.sides: dict[pvalue.PCollection, Any] = {}
        self.bundles = 0  # bundles the run will execute: each reports its counters once

    def leaves(self) -> list[Any]:
        """Bags nothing consumes: computing them runs every step."""
        return [self.placed(lambda b: b.map_partitions(bundles.nothing), bag)
                for pc, bag in self.bags.items() if pc not in self.consumed]

    # -- placement ------------------------------------------------------------------------

    def _on(self, slots: list[int]):
        """Tasks of bags built inside go to their partition's worker (bag keys: (name, i))."""
        import dask

        addrs = self.addresses

        def worker(key):
            # Keys of other tasks merged into the layer (a ParDo's pickled DoFn) stay free (None).
            return [addrs[slots[key[1]]]] if isinstance(key, tuple) and len(key) == 2 else None

        return dask.annotate(workers=worker, allow_other_workers=True)

    def _at(self, slot: int):
        import dask

        return dask.annotate(workers=[self.addresses[slot]], allow_other_workers=True)

    def placed(self, make, bag, slots: list[int] | None = None):
        """`make(bag)` (one output partition per input partition) on `bag`'s workers."""
        slots = self.slots[bag.name] if slots is None else slots
        with self._on(slots):
            out = make(bag)
        self.slots[out.name] = slots
        return out

    def _new(self, make, slots: list[int]):
        with self._on(slots):
            out = make()
        self.slots[out.name] = slots
        return out

    # -- primitives -----------------------------------------------------------------------

    def visit_transform(self, applied) -> None:
        import dask.bag as db

        t = applied.transform
        main = [p for p in applied.main_inputs.values() if not isinstance(p, pvalue.PBegin)]
        self.consumed.update(main)
        ins = [self.bags[p] for p in main]
        if isinstance(t, CreateValues):
            n = max(1, min(len(t.values), _MAX_CREATE_PARTITIONS))
            bag = self._new(lambda: db.from_sequence(t.values, npartitions=n), self._round_robin(n))
        elif isinstance(t, beam.Impulse):
            bag = self._new(lambda: db.from_sequence([b""], npartitions=1), [0])
        elif isinstance(t, Identity):
            bag = ins[0]
        elif isinstance(t, beam.Flatten):
            if ins:
                bag = self._new(lambda: db.concat(ins), [s for b in ins for s in self.slots[b.name]])
            else:
                bag = self._new(lambda: db.from_sequence([], npartitions=1), [0])
        elif isinstance(t, beam.GroupByKey):
            anchors = self._anchor_partitions(main[0])
            bag = (self._group_in_place(ins[0], anchors) if anchors
                   else self._group_by_key(ins[0], applied.full_label))
        else:
            self._pardo(applied, ins[0])
            return
        for pc in applied.outputs.values():
            self.bags[pc] = bag

    def _round_robin(self, n: int) -> list[int]:
        return [i % self.workers for i in range(n)]

    def _group_by_key(self, bag, label: str):
        """P split tasks, P x Q bucket picks, Q joins: a flat shuffle (dask.bag's task shuffle made
        ~300 tasks per GroupByKey of 16 partitions, most of a small run's time). Q: enough to keep
        every worker busy, few enough that the picks stay cheap (most GroupByKeys here are
        combiners' one-key merges)."""
        import dask
        import dask.bag as db

        q = max(1, min(bag.npartitions, 2 * self.workers))
        out_slots = self._round_robin(q)
        picks = []
        for part, slot in zip(bag.to_delayed(optimize_graph=False), self.slots[bag.name], strict=True):
            with self._at(slot):
                split = dask.delayed(bundles.split)(part, q, [s != slot for s in out_slots],
                                                    dask_key_name=self._key(label, "split", len(picks)))
                picks.append([split[j] for j in range(q)])
        joins = []
        for j, slot in enumerate(out_slots):
            with self._at(slot):
                joins.append(dask.delayed(bundles.join)(*[p[j] for p in picks],
                                                        dask_key_name=self._key(label, "join", j)))
        return self._new(lambda: db.from_delayed(joins), out_slots)

    def _key(self, label: str, step: str, i: int) -> str:
        # Named after the Beam step, so the dashboard and task stream say which shuffle runs.
        return f"{label}/{step}-{self.run_id}-{i}"

    def _anchor_partitions(self, pc) -> list[int]:
        """The partitions of a GroupByKey's input that hold keyed batches: those of a Flatten's
        inputs made by `Map(keyed.key_batch)` (a CoGroupByKey of the keyed template)."""
        flat = pc.producer
        if flat is None or not isinstance(flat.transform, beam.Flatten):
            return []
        out, start = [], 0
        for p in flat.main_inputs.values():
            n = self.bags[p].npartitions
            if _keyed_batches(p):
                out += range(start, start + n)
            start += n
        return out

    def _group_in_place(self, bag, anchors: list[int]):
        """A GroupByKey whose anchor partitions stay on their workers: the other partitions'
        elements go to the anchor partition holding their key (`dask_bundles`)."""
        import dask
        import dask.bag as db

        parts, slots = bag.to_delayed(optimize_graph=False), self.slots[bag.name]
        n, others = len(anchors), sorted(set(range(len(parts))) - set(anchors))
        index = []
        for i in anchors:
            with self._at(slots[i]):
                index.append(dask.delayed(bundles.key_index)(parts[i]))
        owners = dask.delayed(bundles.directory)(*index)
        routed = []
        for i in others:
            with self._at(slots[i]):
                r = dask.delayed(bundles.route)(parts[i], owners, [slots[a] != slots[i] for a in anchors])
                routed.append([r[pos] for pos in range(n)])
        strays = []
        for pos, i in enumerate(anchors):
            with self._at(slots[i]):
                strays.append(dask.delayed(bundles.strays)(parts[i], owners, pos))
        stray = dask.delayed(bundles.merge_strays)(*strays)
        groups = []
        for pos, i in enumerate(anchors):
            with self._at(slots[i]):
                groups.append(dask.delayed(bundles.group_in_place)(parts[i], pos, owners, stray,
                                                                   *[r[pos] for r in routed]))
        return self._new(lambda: db.from_delayed(groups), [slots[i] for i in anchors])

    def _pardo(self, applied, main) -> None:
        import dask

        t = applied.transform
        label = applied.full_label
        specs = [(type(si), si._view_options()) for si in t.side_inputs]  # noqa: SLF001 - Beam's view API
        blob = pickler.dumps((t.fn, t.args, t.kwargs, specs, label))
        payload = dask.delayed((self.run_id, xxhash.xxh3_128_hexdigest(blob + label.encode()), blob), pure=True)
        self.consumed.update(si.pvalue for si in t.side_inputs)
        sides = [self._side(si.pvalue) for si in t.side_inputs]
        outs = applied.outputs
        # One output: the bundle returns its elements, so dask fuses it with what consumes it.
        single = (True, next(iter(outs))) if len(outs) == 1 else (False, None)
        # Keys named after the step, so the dashboard and task stream say which step is running.
        token = f"{label}-{self.run_id}-{self.bundles}"
        raw = self.placed(lambda b: b.map_partitions(bundles.run_bundle, payload, single, *sides, token=token), main)
        self.bundles += raw.npartitions
        for tag, pc in outs.items():
            self.bags[pc] = raw if single[0] else self.placed(lambda b, t=tag: b.map_partitions(bundles.pick, t), raw)

    def _side(self, pc):
        import dask

        if pc not in self.sides:
            self.sides[pc] = dask.delayed(bundles.concat)(self.bags[pc].to_delayed(optimize_graph=False))
        return self.sides[pc]
