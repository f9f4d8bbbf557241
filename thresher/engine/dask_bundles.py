"""The worker side of `runner: dask` (`engine/dask_runner.py`): run one Beam DoFn over one
dask partition (a bundle), keep its counters for the driver, and the pieces of the flat
GroupByKey shuffle. Everything here runs inside dask worker processes; the driver refers to these
functions in the task graph it builds.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import sys
import threading
from typing import Any

import apache_beam as beam
import cloudpickle
import xxhash
from apache_beam.internal import pickler
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.runners.common import DoFnRunner, Receiver
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.counters import CounterFactory

from thresher.engine.dask_forkserver import MALLOC_TRIM

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


def exit_at_once() -> None:
    """On each worker of a LocalCluster whose run is done (`Client.run`): exit without the
    interpreter's teardown. With Beam imported it took 1.2-1.8 s on a quiet machine and over 4 s
    (the nanny's limit, then a kill) on a busy one, all of it inside the timed run."""
    import atexit
    import logging

    def leave() -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(leave)  # registered last, so run first, once the worker has closed


# glibc's mallopt parameters, and the values its dynamic mmap threshold grows to at most (64-bit).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX, _TRIM_MAX = 32 << 20, 64 << 20


def untrim_malloc() -> bool:
    """On each worker of a joined cluster (`Client.run`, as a run starts): undo what `MALLOC_TRIM_THRESHOLD_` (set by
    dask's nanny before it starts a worker: `dask worker` does) does to glibc's malloc. It pins the
    mmap threshold at 128 KiB, so every NumPy/Arrow temporary of a record batch was a fresh
    mmap, page-faulted in and unmapped again: 3.4x the CPU of DSIR's featuriser (1.0M page
    faults against 44k per 281k rows). Here both thresholds get the values glibc's own dynamic
    threshold grows to. Returns whether it changed them (False: not set, or no glibc)."""
    if MALLOC_TRIM not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's C library
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) & bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_MAX))


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


def _key_bytes(k) -> bytes:
    # Keys are grouped by their pickled bytes (Beam groups by encoded key) and hashed with xxh3
    # of them: Python's hash() of a str differs between worker processes.
    return pickle.dumps(k, protocol=4)


def _pack(kvs: list) -> bytes:
    """A shuffle bucket as one in-band pickle. Given the list itself, dask serialises each NumPy or
    Arrow buffer in it as its own frame: 5x the CPU (0.40 s against 0.08 s to send and receive the
    exact-dedup hash buckets of 64k rows, measured), and a bucket holds thousands of small arrays."""
    try:
        return pickle.dumps(kvs, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):  # a lambda, a local class: Beam allows them
        return cloudpickle.dumps(kvs, protocol=5)


def _packed(buckets: list[list], remote: list[bool]) -> list[bytes | list]:
    """Pack the buckets another worker reads; one read where it was made stays a list."""
    return [_pack(b) if r else b for b, r in zip(buckets, remote, strict=True)]


def split(part, q: int, remote: list[bool]) -> list[bytes | list]:
    buckets: list[list] = [[] for _ in range(q)]
    for kv in part:
        buckets[xxhash.xxh3_64_intdigest(_key_bytes(kv[0])) % q].append(kv)
    return _packed(buckets, remote)


def join(*buckets: bytes | list) -> list:
    """One output partition of a GroupByKey: (k, [v, ...]), keys compared by their pickled bytes.
    `buckets`: packed (`split`, `route`) or lists."""
    out: dict[bytes, tuple[Any, list]] = {}
    for kvs in buckets:
        for k, v in (pickle.loads(kvs) if isinstance(kvs, bytes) else kvs):
            out.setdefault(_key_bytes(k), (k, []))[1].append(v)
    return list(out.values())


# A GroupByKey in place (`dask_runner`: a CoGroupByKey of keyed batches): the anchor partitions
# (record batches, one key each) stay where they are; the other inputs' elements (decisions)
# travel to the anchor partition that holds their key. A directory of the anchors' keys (one
# per batch) says where that is.


def key_index(part) -> set[bytes]:
    return {_key_bytes(kv[0]) for kv in part}


def directory(*indexes: set[bytes]) -> dict[bytes, int]:
    """key -> the first anchor partition holding it."""
    owner: dict[bytes, int] = {}
    for pos, keys in enumerate(indexes):
        for kb in keys:
            owner.setdefault(kb, pos)
    return owner


def route(part, owners: dict[bytes, int], remote: list[bool]) -> list[bytes | list]:
    """A non-anchor partition -> per anchor partition, the elements whose key it holds (a key no
    anchor holds still forms its group: it goes to one by hash)."""
    n = len(remote)
    buckets: list[list] = [[] for _ in range(n)]
    for kv in part:
        kb = _key_bytes(kv[0])
        pos = owners.get(kb)
        buckets[xxhash.xxh3_64_intdigest(kb) % n if pos is None else pos].append(kv)
    return _packed(buckets, remote)


def strays(part, owners: dict[bytes, int], pos: int) -> dict[int, list]:
    """An anchor partition's elements whose key an earlier anchor partition also holds (e.g.
    empty batches, all keyed 0): they join that one's group. Usually none."""
    out: dict[int, list] = {}
    for kv in part:
        owner = owners[_key_bytes(kv[0])]
        if owner != pos:
            out.setdefault(owner, []).append(kv)
    return out


def merge_strays(*parts: dict[int, list]) -> dict[int, list]:
    out: dict[int, list] = {}
    for p in parts:
        for pos, kvs in p.items():
            out.setdefault(pos, []).extend(kvs)
    return out


def group_in_place(part, pos: int, owners: dict[bytes, int], stray: dict[int, list], *buckets) -> list:
    """Anchor partition `pos` -> (k, [v, ...]) for every key it owns."""
    mine = [kv for kv in part if owners[_key_bytes(kv[0])] == pos]
    return join(mine, stray.get(pos, []), *buckets)
