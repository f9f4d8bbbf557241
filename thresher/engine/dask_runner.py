"""`runner: dask`: run a thresher pipeline on a dask.distributed cluster.

Recipe::

    runner:
      runner: dask
      options:
        dask_client_address: tcp://scheduler:8786   # join a running cluster, or leave it out and
        dask_workers: 2                             # start a LocalCluster of N worker processes
                                                    # (1 thread each) for this run

Beam 2.77 ships `apache_beam.runners.dask.dask_runner.DaskRunner`, but it could not run a
thresher recipe. What it lacked, and how this module (a translation of the whole Beam graph to
`dask.bag`, written here rather than patched onto Beam's classes) does it instead:

1. Tagged outputs of a multi-output ParDo came back mixed: it kept one bag per transform, so
   every consumer saw all of a ParDo's outputs (tagged ones still in `WindowedValue`s). Here a
   bundle returns its outputs by tag and each output PCollection has its own bag, picked from
   the one computed result.
2. Only the last transform's bag was computed: sinks not upstream of it (quarantine, dropped and
   report writers) silently never ran — why WriteToParquet wrote 0 rows. Here every bag nothing
   consumes is computed.
3. No metrics (`metrics()` raised NotImplementedError); thresher's manifest counts are Beam
   counters. Here each bundle runs under its own `MetricsContainer`; the worker keeps its counts
   keyed by (task, step), so a retried or recomputed bundle counts once; the driver collects them
   from every worker after the run, checks every bundle reported (a worker that left takes its
   counts with it: the run fails rather than publish short counts) and sums them into a
   `MetricResults` that `engine.build` reads as on the local runner.
4. Side inputs were computed *inside* each consuming task (`list(bag)` on a worker), re-running
   the upstream graph, side effects included, per partition. Here a side input is one task of the
   graph (its partitions concatenated) that the consumer's tasks depend on.
5. No combiner lifting: `CombinePerKey`/`CombineGlobally` sent every element (whole record
   batches) to one task. Here they become Beam's `LiftedCombinePerKey`, as on the local runner.
6. Outputs emitted in `finish_bundle` (lifted combiners emit there) were dropped. Here a bundle's
   outputs are taken after `finish_bundle`.
7. GroupByKey used `dask.bag.groupby`, which hashes keys with Python's `hash()` (string keys land
   in different groups in different worker processes) through a multi-stage task shuffle (~300
   tasks per GroupByKey of 16 partitions: most of a small run's time). Here it is one flat
   shuffle (P splits, P x Q picks, Q joins; Q = 2 x workers at most) on xxh3 of the pickled key,
   grouping by the pickled key's bytes (Beam groups by encoded key); each bucket that leaves its
   worker travels as one pickle. The keyed template's CoGroupByKey groups in place: the record
   batches stay, only the decisions move (`engine/dask_graph.py`).
8. `DoFn.setup()` ran, the DoFn (with what a stage's `prepare()` built) was unpickled and its
   invoker built (~7 ms of signature inspection) once per partition. Here the pickled DoFn is one
   task of the graph (fetched once per worker), unpickled, set up and given its invoker once per
   worker thread, like Beam's DoFn reuse: ~0.2 ms of overhead per bundle. A one-output ParDo
   returns its elements directly, so dask fuses it with its consumer into one task.
9. `Create` made ~128-element partitions, so a recipe's read tasks ran in one task. Here each
   `Create` element (up to 1,024) is its own partition: files are read in parallel.
10. No placement: dask's scheduler moved record batches between workers whenever a task also
   read something held elsewhere (a DoFn, a side input). Here each partition has a worker and its
   steps run there (`engine/dask_graph.py`); a LocalCluster also runs without work stealing.
   On a cluster of your own, `distributed.scheduler.work-stealing: false` in the scheduler's
   config does the same (with it on, the scheduler may move a partition to balance load).

Scope: bounded pipelines in the global window (what thresher builds); other primitives
(windowing by time, streaming, SDF reads such as `ReadFromText`) raise a clear error. Counters are
collected; distributions and gauges are not. `teardown()` is not called (workers keep DoFns until
the next run reaches them).

Workers' malloc: dask's nanny starts every worker with `MALLOC_TRIM_THRESHOLD_=65536`, which
pins glibc's mmap threshold at 128 KiB: each NumPy/Arrow temporary of a record batch was then a
fresh mmap, page-faulted in and unmapped again (the DSIR featuriser took 3.4x its CPU; a
2-worker DSIR run's marginal CPU per 253k rows fell from 5.6-5.8 s to 1.6-2.9 s without it).
A LocalCluster's workers start without it; a joined cluster's workers get glibc's own dynamic
limits set at the start of each run (`dask_bundles.untrim_malloc`).

A LocalCluster's workers are forked from a forkserver that has thresher imported
(`engine/dask_forkserver.py`), not spawned: each spawned worker spent 2.5-4.5 s importing.

Workers import thresher: a LocalCluster runs in this venv; a cluster elsewhere needs
`pip install thresher[dask]` (the same version) on every worker, and the run's input and
output paths must be readable from the workers (a shared mount or object storage).
"""

from __future__ import annotations

import logging
import time
import uuid

import apache_beam as beam
from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metric import MetricResults
from apache_beam.pipeline import PipelineVisitor, PTransformOverride
from apache_beam.runners.common import DoFnSignature
from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState
from apache_beam.transforms.combiners import LiftedCombinePerKey

from thresher.engine import dask_bundles as bundles
from thresher.engine import dask_forkserver
from thresher.engine.dask_graph import CreateValues, Identity, Translate

log = logging.getLogger("thresher.dask")

CLIENT_ADDRESS, WORKERS, TIMEOUT = "dask_client_address", "dask_workers", "dask_connection_timeout"


# ---------------------------------------------------------------------------------------
# Graph rewrites before translation


class _Replace(PTransformOverride):
    def __init__(self, cls, make):
        self.cls, self.make = cls, make

    def matches(self, applied):
        return type(applied.transform) is self.cls and self.make(applied) is not None

    def get_replacement_transform_for_applied_ptransform(self, applied):
        return self.make(applied)


def _lifted(applied):
    t = applied.transform
    if not applied.inputs[0].windowing.is_default():
        return None
    return LiftedCombinePerKey(t.fn, t.args, t.kwargs)


_OVERRIDES = [
    _Replace(beam.Create, lambda a: CreateValues(a.transform.values)),
    _Replace(beam.Reshuffle, lambda a: Identity()),
    _Replace(beam.CombinePerKey, _lifted),
]


# ---------------------------------------------------------------------------------------
# Driver side: what the adapter runs


def _unsupported(applied) -> str | None:
    """Why the adapter cannot run this primitive, or None."""
    t = applied.transform
    if isinstance(t, (CreateValues, Identity, beam.Impulse, beam.Flatten, beam.GroupByKey)):
        return None
    if isinstance(t, beam.ParDo) and any(not pc.windowing.is_default() for pc in applied.outputs.values()):
        return (f"runner: dask cannot run {applied.full_label}: it windows its output; thresher's dask "
                "adapter runs bounded pipelines in the global window")
    if isinstance(t, beam.ParDo):
        sig = DoFnSignature(t.fn)
        if sig.is_splittable_dofn() or sig.is_stateful_dofn():
            kind = "splittable" if sig.is_splittable_dofn() else "stateful"
            return (f"runner: dask cannot run {applied.full_label}: a {kind} DoFn ({type(t.fn).__name__}); "
                    "thresher's dask adapter runs plain DoFns (read files with thresher sources, not Beam's "
                    "SDF reads)")
        return None
    return (f"runner: dask cannot run {type(t).__name__} ({applied.full_label}); thresher's dask adapter "
            "runs bounded, globally windowed ParDo/GroupByKey/Flatten/Create graphs")


class _Check(PipelineVisitor):
    """Every problem before a cluster is started or joined."""

    def __init__(self):
        self.problems: list[str] = []

    def visit_transform(self, applied) -> None:
        problem = _unsupported(applied)
        if problem:
            self.problems.append(problem)


def prepare(pipeline) -> None:
    """Rewrite `pipeline` into the primitives `dask_graph.Translate` runs; raise
    NotImplementedError naming every transform it cannot run (before any cluster is touched)."""
    pipeline.replace_all(_OVERRIDES)
    check = _Check()
    pipeline.visit(check)
    if check.problems:
        raise NotImplementedError("; ".join(check.problems))


class _Counters(MetricResults):
    """The run's Beam counters, summed over bundles (the only metric kind collected)."""

    def __init__(self, counts: dict[tuple[str, str, str], int]):
        from apache_beam.metrics.metricbase import MetricName

        self._results = [MetricResult(MetricKey(step, MetricName(ns, name)), v, v)
                         for (step, ns, name), v in sorted(counts.items())]

    def query(self, filter=None):  # noqa: A002 - Beam's signature
        counters = [r for r in self._results if self.matches(filter, r.key)]
        return {self.COUNTERS: counters, self.DISTRIBUTIONS: [], self.GAUGES: [], self.STRINGSETS: [],
                self.BOUNDED_TRIES: [], self.HISTOGRAMS: []}


class DaskRunResult(PipelineResult):
    def __init__(self, future, client, cluster, run_id: str, bundles: int):
        super().__init__(PipelineState.RUNNING)
        self._future, self._client, self._cluster = future, client, cluster
        self._run_id, self._bundles = run_id, bundles
        self._metrics: _Counters | None = None

    def wait_until_finish(self, duration=None):
        if self._metrics is not None or self._state == PipelineState.FAILED:
            return self._state
        t0 = time.perf_counter()
        try:
            self._future.result(timeout=None if duration is None else duration / 1000)
            log.info("dask: graph computed in %.1f s", time.perf_counter() - t0)
            reported: dict[tuple[str, str], list] = {}
            for part in self._client.run(bundles.collect_counts, self._run_id).values():
                reported.update(part)
            if len(reported) != self._bundles:
                # A worker that left took its bundles' counters with it: the shards are complete,
                # the manifest's counts would not be.
                raise RuntimeError(f"runner: dask: counters of {self._bundles - len(reported)} of {self._bundles} "
                                   "bundles were lost with a worker that left the cluster; run again")
            self._metrics = _Counters(bundles.sum_counts(reported))
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self._close()
        return self._state

    def _close(self) -> None:
        if self._cluster is not None and self._state == PipelineState.DONE:
            try:  # the run is out: skip its workers' slow teardown
                self._client.run(bundles.exit_at_once)
            except Exception as exc:  # noqa: BLE001 - only a slower close: never fail a finished run
                log.debug("dask: workers keep their normal exit: %s", exc)
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def cancel(self):
        self._future.cancel()
        self._close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self):
        if self._metrics is None:
            raise RuntimeError("the dask run has not finished: call wait_until_finish() first")
        return self._metrics


class ThresherDaskRunner(PipelineRunner):
    """Runs a Beam pipeline on dask.distributed; see the module docstring."""

    def run_pipeline(self, pipeline, options):
        try:
            import dask
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise ImportError("runner: dask needs dask.distributed: pip install 'thresher[dask]'") from exc
        opts = options.get_all_options(retain_unknown_options=True, drop_default=True)
        prepare(pipeline)
        t0 = time.perf_counter()
        address, cluster = opts.get(CLIENT_ADDRESS), None
        if address:
            client = Client(address, timeout=opts.get(TIMEOUT) or 30)
        else:
            # Work stealing off: it moved partitions (record batches) to balance load, costing more
            # CPU in copies than it saved (dask_graph places each partition on a worker). The
            # workers' statistical profiler (a stack sample every 10 ms) only feeds a dashboard.
            # No MALLOC_TRIM_THRESHOLD_ for the workers (dask sets 65536 before spawning them, and
            # in this process's environment): see `dask_bundles.untrim_malloc`.
            # The driver's process hosts the scheduler and the nannies, on the cores the workers
            # use: their periodic work (event-loop ticks every 20 ms, system and memory monitors
            # every 0.5 s / 0.1 s) cost a 2-worker run of bench/scale.py ~2.4 CPU-s and 1.5 s of
            # wall on 2 cores. Memory is still checked twice a second.
            config = {"distributed.scheduler.work-stealing": False,
                      "distributed.worker.profile.enabled": False,
                      "distributed.admin.tick.interval": "1s",
                      "distributed.admin.system-monitor.interval": "2s",
                      "distributed.worker.memory.monitor-interval": "500ms",
                      f"distributed.nanny.pre-spawn-environ.{dask_forkserver.MALLOC_TRIM}": None}
            fork = dask_forkserver.usable()  # workers forked from a preloaded server (its docstring)
            if fork:
                config["distributed.worker.multiprocessing-method"] = "forkserver"
            with dask.config.set(config):
                cluster = LocalCluster(n_workers=int(opts.get(WORKERS) or 1), threads_per_worker=1, processes=True,
                                       dashboard_address=":0",  # any free port: never clash with a neighbour's
                                       **({"env": dask_forkserver.worker_env()} if fork else {}))
            client = Client(cluster)
        try:
            addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
            log.info("dask: %d worker(s) at %s, ready in %.1f s", len(addresses), client.scheduler.address,
                     time.perf_counter() - t0)
            if not addresses:
                raise RuntimeError(f"runner: dask: the cluster at {client.scheduler.address} has no workers; "
                                   "start some (dask worker ADDRESS) and run again")
            # A joined cluster's workers only (`dask worker` starts them with the variable): ours
            # start without it, and this call would make the run wait for their imports.
            untrimmed = ([] if cluster is not None else
                         [w for w, changed in client.run(bundles.untrim_malloc).items() if changed])
            if untrimmed:
                log.info("dask: %d worker(s) run with %s set: glibc's malloc thresholds raised there "
                         "(dask_bundles.untrim_malloc)", len(untrimmed), dask_forkserver.MALLOC_TRIM)
            t1 = time.perf_counter()
            visitor = Translate(uuid.uuid4().hex, addresses)
            pipeline.visit(visitor)
            done = dask.delayed(bundles.done)(*[d for bag in visitor.leaves()
                                                for d in bag.to_delayed(optimize_graph=False)])
            future = client.compute(done)
            log.info("dask: graph of %d bundles submitted in %.1f s", visitor.bundles, time.perf_counter() - t1)
        except BaseException:
            client.close()
            if cluster is not None:
                cluster.close()
            raise
        return DaskRunResult(future, client, cluster, visitor.run_id, visitor.bundles)
