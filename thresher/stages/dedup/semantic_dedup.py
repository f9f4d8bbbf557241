"""`semantic_dedup`: drop near-duplicates by embedding similarity (SemDeDup, as in NeMo Curator).

In:  batches carrying an embedding column (`column`, from an `embed` stage before this one).
Out: the same batches minus near-duplicates, plus `semdup_similarity` (float32): a row's
     highest cosine similarity to a kept row that precedes it in its cluster (null for the
     first row of a cluster). Dropped rows have reason `near_duplicate` and, in `dropped/`,
     `semdup_of` (the id of the kept row they duplicate) and `semdup_similarity` (> 1 - eps).

How (NeMo Curator's SemDeDup): spherical k-means on the embeddings (faiss, seeded with the
recipe seed, trained on a deterministic sample of at most `kmeans_sample` rows); each row goes
to its nearest centroid; inside each cluster the rows are put in `keep` order and walked
greedily: a row is dropped when its cosine similarity to an already *kept* row is above
`1 - eps`. (NeMo compares against every earlier row, dropped ones included, so a chain
A~B~C can drop C although A and C differ; comparing against kept rows removes only rows that
have a kept near-copy.) Pairs split across clusters are not compared — SemDeDup's price for
scaling; more rows per cluster (`target_cluster_size`) catch more.

Which row is kept (`keep`): `first` — lowest `__row_key`, the input order, as in
`exact_dedup` (default); `hard` — farthest from its centroid first (NeMo's default, keeps
"harder" examples); `easy` — closest first. Ties go to the lower row key, so the result never
depends on the runner.

Cost: three passes over the embeddings. (1) one combine keeps the k-means sample
(`kmeans_sample`·d·4 bytes in one worker) and k-means runs there (GPU when faiss has one);
the centroids (k·d·4 bytes) are the only side input. (2) each batch is assigned to centroids
(a matmul) and (row key, id, vector, batch key) shuffled by cluster, so each cluster is its own
group, spread over the workers; one cluster's rows are in one worker at a time (similarities
in 1024-row blocks, so memory ~ cluster rows·d·4 + 1024·cluster rows·4 bytes); (3) the
decisions of the rows with an earlier kept row (~16 bytes each) go back to the batches holding
them by a CoGroupByKey on the batch key, and each batch is decided with a sorted lookup.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.core import Selector, StageParams, keyed, rows
from thresher.core.columns import find_sorted, strings
from thresher.core.registry import UnknownStage, stage_class
from thresher.io.shards import order_keys
from thresher.models import faiss_index
from thresher.models.embeddings import to_numpy
from thresher.stages.features.embed import Embed

DROP_REASON = "near_duplicate"
DUP_OF = "semdup_of"
SIMILARITY = "semdup_similarity"
# A cluster's size, on its lowest-keyed row only (null elsewhere): how the report counts clusters.
CLUSTER_SIZE = "__semdup_cluster_size"
_BLOCK = 1024  # rows compared at once inside a cluster (bounds the similarity matrices)


class SemanticDedupParams(StageParams):
    column: str = Field("embedding", description="Embedding column (written by an `embed` stage before this one).")
    eps: float = Field(
        0.01, gt=0.0, lt=2.0, description="Drop a row whose cosine similarity to a kept row is above "
        "1 - eps (NeMo Curator's default 0.01; MiniLM gives ~0.95-0.999 for one-word edits).")
    n_clusters: int | Literal["auto"] = Field(
        "auto", description="k-means clusters; `auto`: rows / target_cluster_size (at least 1).")
    target_cluster_size: int = Field(1000, gt=0, description="Rows per cluster aimed at by `n_clusters: auto`.")
    kmeans_iters: int = Field(20, gt=0, description="k-means iterations.")
    kmeans_sample: int = Field(
        100_000, gt=0, description="At most this many rows (a seeded hash sample) train k-means.")
    keep: Literal["first", "hard", "easy"] = Field(
        "first", description="Which of a group of near-duplicates is kept: `first` (input order), "
        "`hard` (farthest from the cluster centroid, NeMo's default) or `easy` (closest).")


def _normalised(v: np.ndarray) -> np.ndarray:
    # float16 storage and `normalize: false` embeddings both end up unit length here.
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def _batch_vectors(batch: pa.RecordBatch, column: str, stage: str) -> np.ndarray:
    idx = batch.schema.get_field_index(column)
    if idx < 0:
        raise KeyError(f"{stage}: no {column!r} column in the batch; put an `embed` stage (with "
                       f"params.column: {column}) before this semantic_dedup stage")
    return _normalised(to_numpy(batch.column(idx)))


# ---------------------------------------------------------------------------------------
# Pass 1: a deterministic sample for k-means


class _Sample(beam.CombineFn):
    """Counts all rows; keeps the `size` rows with the smallest seeded hash of their id."""

    def __init__(self, column: str, size: int, seed: int, stage: str):
        self.column, self.size, self.seed, self.stage = column, size, seed, stage

    def create_accumulator(self):
        return [0, np.zeros(0, np.uint64), np.zeros(0, np.uint64), None]

    def _trim(self, acc, force: bool = False):
        n, h, k, v = acc
        if len(h) > (self.size if force else 2 * self.size):
            order = np.lexsort((k, h))[: self.size]
            acc[1], acc[2], acc[3] = h[order], k[order], v[order]
        return acc

    def add_input(self, acc, batch: pa.RecordBatch):
        v = _batch_vectors(batch, self.column, self.stage)
        acc[0] += batch.num_rows
        acc[1] = np.concatenate([acc[1], order_keys(batch.column(rows.ID).to_pylist(), self.seed)])
        acc[2] = np.concatenate([acc[2], batch.column(rows.ROW_KEY).to_numpy()])
        acc[3] = v if acc[3] is None else np.concatenate([acc[3], v])
        return self._trim(acc)

    def merge_accumulators(self, accs):
        accs = list(accs)
        vs = [a[3] for a in accs if a[3] is not None]
        out = [sum(a[0] for a in accs), np.concatenate([a[1] for a in accs]),
               np.concatenate([a[2] for a in accs]), np.concatenate(vs) if vs else None]
        return self._trim(out)

    def extract_output(self, acc):
        n, h, k, v = self._trim(acc, force=True)
        order = np.lexsort((k, h))  # a fixed order: k-means sees the same input on any runner
        return {"rows": int(n), "vectors": None if v is None else v[order]}


def train_kmeans(sample: dict[str, Any], params: SemanticDedupParams, seed: int) -> dict[str, Any]:
    n, x = sample["rows"], sample["vectors"]
    if not n or x is None:
        return {"rows": 0, "k": 0, "train_rows": 0, "centroids": np.zeros((0, 0), np.float32)}
    want = math.ceil(n / params.target_cluster_size) if params.n_clusters == "auto" else params.n_clusters
    k = max(1, min(want, len(x)))
    if k == 1:
        centroids = _normalised(x.mean(axis=0, keepdims=True))
    else:
        faiss = faiss_index.faiss_module()
        km = faiss.Kmeans(x.shape[1], k, niter=params.kmeans_iters, seed=seed, spherical=True,
                          gpu=faiss_index.gpu_available(), min_points_per_centroid=1, verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        centroids = km.centroids
    return {"rows": n, "k": k, "train_rows": len(x), "centroids": np.asarray(centroids, np.float32)}


# ---------------------------------------------------------------------------------------
# Pass 2: assign to clusters, dedup each cluster


class _Assign(beam.DoFn):
    def __init__(self, column: str, stage: str):
        self.column, self.stage = column, stage

    def process(self, batch: pa.RecordBatch, kmeans: dict[str, Any]):
        if not batch.num_rows:
            return
        v = _batch_vectors(batch, self.column, self.stage)
        sims = v @ kmeans["centroids"].T
        cluster = sims.argmax(axis=1)
        to_centroid = sims[np.arange(len(v)), cluster]
        keys = batch.column(rows.ROW_KEY).to_numpy()
        ids = strings(batch, rows.ID)
        home = keyed.batch_keys(batch)
        for c in np.unique(cluster):
            m = cluster == c
            yield int(c), (keys[m], ids[m], v[m], to_centroid[m], home[m])


def _max_sim(a: np.ndarray, b: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """For each row of b: the highest a·b over the rows of a, and which row (chunked over a)."""
    best = np.full(len(b), -np.inf, np.float32)
    at = np.full(len(b), -1, np.int64)
    for s in range(0, len(a), chunk):
        sims = a[s:s + chunk] @ b.T
        j = sims.argmax(axis=0)
        val = sims[j, np.arange(len(b))]
        better = val > best
        best[better], at[better] = val[better], s + j[better]
    return best, at


def greedy_dedup(vectors: np.ndarray, threshold: float, block: int = _BLOCK):
    """Walk unit vectors in order; drop each one whose similarity to a kept earlier one > threshold.

    Returns (keep mask, best similarity to an earlier kept vector (-inf if none), its index
    (-1 if none)). Written here rather than taken from NeMo Curator, whose SemDeDup runs on
    cuDF/Dask GPUs only and compares against dropped rows too (see the module docstring).
    """
    n = len(vectors)
    keep = np.ones(n, bool)
    best = np.full(n, -np.inf, np.float32)
    at = np.full(n, -1, np.int64)
    kept_before = np.zeros(0, np.int64)
    for start in range(0, n, block):
        vb = vectors[start:start + block]
        m = len(vb)
        prev_best, prev_at = _max_sim(vectors[kept_before], vb)
        prev_at = np.where(prev_at >= 0, kept_before[np.maximum(prev_at, 0)] if len(kept_before) else -1, -1)
        s = vb @ vb.T
        s[np.tril_indices(m)] = -np.inf  # s[i, j] for i < j only: j compared with earlier rows
        kb = np.ones(m, bool)
        # Rows with no earlier row above the threshold are kept whatever the others do; only
        # the rest (few: the near-duplicates) need the sequential walk.
        for t in np.flatnonzero((s.max(axis=0) > threshold) | (prev_best > threshold)):
            kb[t] = not (prev_best[t] > threshold or (s[:t, t][kb[:t]] > threshold).any())
        s_kept = np.where(kb[:, None], s, -np.inf)
        j = s_kept.argmax(axis=0)
        in_block = s_kept[j, np.arange(m)]
        take = in_block > prev_best
        best[start:start + m] = np.where(take, in_block, prev_best)
        at[start:start + m] = np.where(take, start + j, prev_at)
        keep[start:start + m] = kb
        kept_before = np.concatenate([kept_before, start + np.flatnonzero(kb)])
    return keep, best, at


def dedup_cluster(element, threshold: float, keep_rule: str):
    """One cluster -> (batch key, part) for each batch holding rows with an earlier kept row in
    the cluster: part = {keys, sim, dup_of (None where kept)}. The part for the batch of the
    cluster's lowest row key also carries `cluster`: (that row key, the cluster's size)."""
    _, parts = element
    parts = list(parts)
    keys = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts])
    v = np.concatenate([p[2] for p in parts])
    to_centroid = np.concatenate([p[3] for p in parts])
    home = np.concatenate([p[4] for p in parts])
    if keep_rule == "first":
        order = np.argsort(keys, kind="stable")
    else:
        primary = to_centroid if keep_rule == "hard" else -to_centroid
        order = np.lexsort((keys, primary))
    keys, ids, v, home = keys[order], ids[order], v[order], home[order]
    keep, best, at = greedy_dedup(v, threshold)
    has = at >= 0
    dup_of = np.where(keep[has], None, ids[np.maximum(at[has], 0)]).astype(object)
    out = dict(keyed.split_by_batch(home[has], keys=keys[has], sim=best[has], dup_of=dup_of))
    low = int(np.argmin(keys))
    part = out.setdefault(int(home[low]), {"keys": keys[:0], "sim": best[:0], "dup_of": dup_of[:0]})
    part["cluster"] = (int(keys[low]), len(keys))
    yield from out.items()


class SemanticDedup(Selector):
    __doc__ = __doc__
    type_name = "semantic_dedup"
    Params = SemanticDedupParams
    cost = ("k-means on a sample + one shuffle of (key, id, vector) by cluster, one join of decisions to "
            "batches; O(cluster size^2) dot products")
    # `semdup_of` only means something on dropped rows (it travels to dropped/).
    dropped_only_columns = (DUP_OF,)
    internal_columns = (CLUSTER_SIZE,)

    def check(self) -> list[str]:
        """The embedding column must come from an `embed` stage placed before this one."""
        p = self.params
        if faiss_index.faiss_problem():
            return [f"semantic_dedup: {faiss_index.faiss_problem()}"]
        columns: list[str] = []
        for spec in self.ctx.earlier_stages():
            try:
                cls = stage_class(spec.type)
            except UnknownStage:
                continue  # reported by the recipe's own validation
            if issubclass(cls, Embed):
                columns.append(cls.Params.model_validate(spec.params).column)
        if p.column in columns:
            return []
        return [f"params.column: semantic_dedup needs the embedding column {p.column!r}, which no "
                f"`embed` stage before it writes; add `- type: embed` (params.column: {p.column}) "
                "earlier in `stages`"]

    def select(self, batches):
        p, seed = self.params, self.ctx.seed
        return (
            batches
            | "Sample" >> beam.CombineGlobally(_Sample(p.column, p.kmeans_sample, seed, self.name))
            | "KMeans" >> beam.Map(train_kmeans, p, seed)
        )

    def select_keyed(self, batches, kmeans):
        p = self.params
        return (
            batches
            | "Assign" >> beam.ParDo(_Assign(p.column, self.name), beam.pvalue.AsSingleton(kmeans))
            | "GroupByCluster" >> beam.GroupByKey()
            | "DedupClusters" >> beam.FlatMap(dedup_cluster, 1.0 - p.eps, p.keep)
        )

    def decide(self, batch: pa.RecordBatch, parts: list[dict[str, Any]]):
        keys = batch.column(rows.ROW_KEY).to_numpy()
        d = keyed.merge_parts(parts, "keys", {"keys": np.uint64, "sim": np.float32, "dup_of": object})
        hit, pos = find_sorted(keys, d["keys"])
        dup_of = np.where(hit, d["dup_of"][pos] if hit.any() else None, None)
        # Rows with no earlier kept row in their cluster: similarity null (its slot holds 0).
        sim = pa.array(np.where(hit, d["sim"][pos] if hit.any() else 0, 0).astype(np.float32), mask=~hit)
        sized = sorted(part["cluster"] for part in parts if "cluster" in part)
        first, at = find_sorted(keys, np.array([k for k, _ in sized], np.uint64))
        sizes = np.array([n for _, n in sized] or [0], np.int64)[at]
        keep = np.equal(dup_of, None)
        return keep, DROP_REASON, {DUP_OF: pa.array(dup_of, pa.string()), SIMILARITY: sim,
                                   CLUSTER_SIZE: pa.array(sizes, pa.int64(), mask=~first)}

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        return {"dropped": int((~keep).sum()), "cluster_sizes": batch.column(CLUSTER_SIZE).drop_null().to_pylist()}

    def report(self, summary: dict[str, Any], kmeans: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        sizes = summary.get("cluster_sizes", [])
        return {
            "rows": kmeans["rows"], "clusters": kmeans["k"], "kmeans_train_rows": kmeans["train_rows"],
            "nonempty_clusters": len(sizes), "largest_cluster": max(sizes, default=0),
            "dropped": summary.get("dropped", 0), "eps": p.eps, "threshold": 1.0 - p.eps,
            "keep": p.keep, "seed": self.ctx.seed, "artifacts": [],
        }
