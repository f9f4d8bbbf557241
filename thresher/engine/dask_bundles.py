"""The worker side of `runner: dask` (`engine/dask_runner.py`): run one Beam DoFn over one
dask partition (a bundle), keep its counters for the driver, and the pieces of the flat
GroupByKey shuffle. Everything here runs inside dask worker processes; the driver refers to these
functions in the task graph it builds.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import apache_beam as beam
import xxhash
from apache_beam.internal import pickler
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.runners.common import DoFnRunner, Receiver
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.counters import CounterFactory

_WINDOWING = beam.Windowing(GlobalWindows())


class _Outputs(Receiver):
    def __init__(self):
        self.values: list = []

    def receive(self, windowed_value):
        self.values.append(windowed_value.value)


class _Receivers(dict):
    """tag -> receiver, made on first use."""

    def __missing__(self, tag):
        r = self[tag] = _Outputs()
        return r

    def take(self) -> dict[Any, list]:
        """What each tag received since the last call."""
        out = {}
        for tag, r in self.items():
            out[tag], r.values = r.values, []
        return out


class _Loaded:
    """One ParDo's DoFn on this worker thread, unpickled and set up once (Beam reuses a DoFn
    across bundles too). Its side inputs are the same task's result for every bundle of a run,
    so the DoFnRunner built for the first bundle serves them all: building one (DoFn signature
    inspection) costs milliseconds, more than a small bundle's work."""

    def __init__(self, blob: bytes):
        self.fn, self.args, self.kwargs, self.side_specs, self.label = pickler.loads(blob)
        self.runner: DoFnRunner | None = None
        self.receivers = _Receivers()

    def runner_for(self, side_values) -> DoFnRunner:
        if self.runner is None:
            sides = [SideInputMap(cls, opts, [GlobalWindows.windowed_value(v) for v in values])
                     for (cls, opts), values in zip(self.side_specs, side_values, strict=True)]
            self.runner = DoFnRunner(self.fn, self.args, self.kwargs, sides, _WINDOWING, self.receivers,
                                     step_name=self.label)
            self.runner.setup()
        return self.runner


_LOCAL = threading.local()  # per worker thread: {payload key: _Loaded} of the current run


def _load(payload: tuple[str, str, bytes]) -> _Loaded:
    run, key, blob = payload
    if getattr(_LOCAL, "run", None) != run:
        _LOCAL.run, _LOCAL.fns = run, {}
    loaded = _LOCAL.fns.get(key)
    if loaded is None:
        loaded = _LOCAL.fns[key] = _Loaded(blob)
    return loaded


# Counters of the bundles run on this worker, per run: {(task key, payload key): counts}. The
# driver collects them from every worker after the run (`collect_counts`); a bundle run twice
# (a retried or recomputed task) has the same key, so it counts once.
_COUNTS: dict[str, dict[tuple[str, str], list]] = {}


def _bundle_key() -> str:
    from distributed import get_worker

    return str(get_worker().get_current_task())


def run_bundle(items, payload, single, *side_values):
    """Run one DoFn over one partition. Returns its one output's elements (`single`: the tag of
    a one-output ParDo), else [{tag: [elements]}] for `pick`."""
    loaded = _load(payload)
    runner = loaded.runner_for(side_values)
    loaded.receivers.take()  # nothing left from a bundle that failed on this thread
    container = MetricsContainer(loaded.label)
    # A fresh sampler per bundle: a sampler caches its scoped states, with their metrics container.
    sampler = statesampler.StateSampler("dask", CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(loaded.label, "process", metrics_container=container):
            runner.start()
            for item in items:
                runner.process(GlobalWindows.windowed_value(item))
            runner.finish()
    finally:
        statesampler.set_current_tracker(previous)
    run, key, _ = payload
    _COUNTS.setdefault(run, {})[(_bundle_key(), key)] = [
        (k.step, k.metric.namespace, k.metric.name, int(v)) for k, v in container.get_cumulative().counters.items()]
    out = loaded.receivers.take()
    return out.get(single[1], []) if single[0] else [out]


def pick(part, tag):
    return part[0].get(tag, []) if part else []


def collect_counts(run: str) -> dict[tuple[str, str], list]:
    """On each worker (`Client.run`): this run's bundle counters, forgotten there."""
    return _COUNTS.pop(run, {})


def concat(parts):
    return [x for p in parts for x in p]


def nothing(part):
    return []


def done(*parts) -> int:
    return len(parts)


def sum_counts(bundles: dict[tuple[str, str], list]) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for step, ns, name, v in (c for counts in bundles.values() for c in counts):
        out[(step, ns, name)] = out.get((step, ns, name), 0) + v
    return out


def _shuffle_key(k) -> int:
    # Python's hash() of a str differs between worker processes: hash the pickled key instead.
    return xxhash.xxh3_64_intdigest(pickle.dumps(k, protocol=4))


def split(part, q: int) -> list[list]:
    buckets: list[list] = [[] for _ in range(q)]
    for kv in part:
        buckets[_shuffle_key(kv[0]) % q].append(kv)
    return buckets


def join(*buckets) -> list:
    """One output partition of a GroupByKey: (k, [v, ...]), keys compared by their pickled bytes."""
    out: dict[bytes, tuple[Any, list]] = {}
    for kvs in buckets:
        for k, v in kvs:
            out.setdefault(pickle.dumps(k, protocol=4), (k, []))[1].append(v)
    return list(out.values())
