"""`minhash_dedup`: drop near-duplicates found by MinHash-LSH; the first of each group is kept.

In:  canonical batches (`text`). Out: the same, minus near-duplicates. Dropped rows have
     reason `near_duplicate` and, in `dropped/`, `dup_of` (the kept row's id) and
     `dup_cluster` (the kept row's `__row_key`, the same for every row of one group).
How: each text is shingled (`ngram` words or characters, `thresher.text.shingles`) and gets a
     `num_perm`-value MinHash signature (seeded permutations (a*h + b) mod 2**61-1, drawn as
     datatrove draws them); the signature is cut into `bands` bands of `rows` values (chosen
     from `threshold` as datasketch's MinHashLSH does, unless given). Rows sharing a band are
     candidate pairs; the connected components of the pairs are the groups (with `verify`,
     only pairs whose shingle sets' true Jaccard similarity is >= `threshold` connect), and
     each group keeps its lowest `__row_key` (source, file and line order: the same on any
     runner).
Cost: per 100-word text on one core, ~20-60 µs to shingle and ~35 µs per 100 permutations to
     sign (measured on a busy 2-core machine), then three shuffles:
     (1) (band, band hash, row key) triples, 18 bytes x bands per row, grouped into
     `shuffle_groups` groups, each sorted in NumPy to find buckets; a bucket of k rows yields
     k - 1 pairs (every pair, up to `max_bucket_size` rows, with `verify`); (2) the pair list
     goes to one worker for connected components (memory ~ candidate pairs, not the corpus);
     (3) candidate rows only (their id, and their shingle sets with `verify`) are shuffled by
     group to verify and pick winners; each dropped row's decision (~24 bytes) goes back to the
     batch holding it by a CoGroupByKey on the batch key. Steps (2) and (3) read the candidate
     graph (nodes and pairs) as side inputs: memory ~ candidate rows and pairs, not the corpus.
Stats (report): candidate pairs, verified pairs, components, clusters, dropped, bucket sizes.
"""

from __future__ import annotations

from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from thresher.core import Selector, StageParams, keyed, rows
from thresher.core.columns import find_sorted, strings
from thresher.stages.dedup import minhash_lsh as lsh
from thresher.stages.dedup.minhash_signatures import band_hashes, permutations, signatures
from thresher.text.shingles import shingle_hashes, shingle_sets

DROP_REASON = "near_duplicate"
DUP_OF = "dup_of"
DUP_CLUSTER = "dup_cluster"
# A shuffle group's verified pairs and clusters, on its lowest-keyed row only: for the report.
GROUP_PAIRS, GROUP_CLUSTERS = "__minhash_group_pairs", "__minhash_group_clusters"


class MinhashDedupParams(StageParams):
    ngram: int = Field(5, gt=0, le=64, description="Shingle size: words (or characters) per shingle.")
    shingle: Literal["word", "char"] = Field(
        "word", description="`word`: n-grams of words (punctuation ignored); `char`: n-grams of "
        "characters (whitespace folded).")
    lowercase: bool = Field(True, description="Lowercase texts before shingling.")
    num_perm: int = Field(128, gt=0, le=1024, description="MinHash permutations (signature length).")
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Target Jaccard similarity: picks bands x rows when they are "
        "not given, and is the cut-off of `verify`.")
    bands: int | None = Field(None, gt=0, description="LSH bands (with `rows`; default: chosen from "
                              "`threshold` and `num_perm`).")
    rows: int | None = Field(None, gt=0, description="Signature values per band (with `bands`).")
    seed: int | None = Field(None, description="Permutation seed (default: the recipe's seed).")
    verify: bool = Field(
        False, description="Keep only candidate pairs whose shingle sets' true Jaccard similarity is "
        ">= `threshold` (costs a second shingling of candidate rows).")
    max_bucket_size: int = Field(
        200, gt=1, description="With `verify`: buckets up to this many rows yield every pair; bigger "
        "ones only pair each row with the bucket's first row (so a bucket costs <= k*cap pairs).")
    shuffle_groups: int = Field(64, gt=0, le=4096, description="Shuffle groups for the band and "
                                "verification shuffles (memory per group ~ rows*bands*18/groups bytes).")

    @model_validator(mode="after")
    def _bands_rows(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither (then `threshold` picks them)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}; "
                             "raise num_perm or lower bands/rows")
        return self

    def banding(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return lsh.optimal_bands_rows(self.threshold, self.num_perm)


class _Config:
    """What the workers need, resolved once on the driver (bands, seed, permutations)."""

    def __init__(self, p: MinhashDedupParams, seed: int):
        self.ngram, self.mode, self.lowercase = p.ngram, p.shingle, p.lowercase
        self.bands, self.rows = p.banding()
        self.seed = seed
        # Drawn for all `num_perm` (so a seed means the same permutations as in datatrove, which
        # draws num_perm), computed only for the bands x rows that are used.
        a, b = permutations(p.num_perm, seed)
        self.a, self.b = a[: self.bands * self.rows], b[: self.bands * self.rows]
        self.groups = p.shuffle_groups
        self.verify, self.threshold, self.cap = p.verify, p.threshold, p.max_bucket_size


def _band_keys(batch: pa.RecordBatch, cfg: _Config):
    """A batch -> per shuffle group: (band index, band hash, row key) of its rows with shingles."""
    if not batch.num_rows:
        return
    h, doc = shingle_hashes(batch.column(rows.TEXT), cfg.ngram, cfg.mode, cfg.lowercase)
    has = np.flatnonzero(np.bincount(doc, minlength=batch.num_rows))
    sig = signatures(h, doc, batch.num_rows, cfg.a, cfg.b)[has]
    bh = band_hashes(sig, cfg.bands, cfg.rows).ravel()  # row-major: row i's bands together
    band = np.tile(np.arange(cfg.bands, dtype=np.int16), len(has))
    keys = np.repeat(batch.column(rows.ROW_KEY).to_numpy()[has], cfg.bands)
    group = bh % np.uint64(cfg.groups)
    for g in np.unique(group):
        m = group == g
        yield int(g), (band[m], bh[m], keys[m])


def _group_pairs(element, cfg: _Config):
    _, parts = element
    parts = list(parts)
    yield lsh.bucket_pairs(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                           np.concatenate([p[2] for p in parts]), cfg.verify, cfg.cap)


def _graph(found: list, groups: int) -> dict[str, Any]:
    """Every group's pairs (gathered by ToList) -> the candidate graph's components, and the
    pairs sorted by the shuffle group of their component (where `_resolve` finds them)."""
    empty = np.zeros(0, np.uint64)
    a = np.concatenate([f[0] for f in found] or [empty])
    b = np.concatenate([f[1] for f in found] or [empty])
    a, b = lsh.unique_pairs(a, b)
    nodes, root = lsh.components(a, b)
    group = root[np.searchsorted(nodes, a)] % np.uint64(groups)
    order = np.argsort(group, kind="stable")
    stats = [f[2] for f in found]
    return {"nodes": nodes, "root": root, "a": a[order], "b": b[order], "group": group[order],
            "candidate_pairs": len(a), "components": len(np.unique(root)),
            "buckets_with_candidates": sum(s["buckets_with_candidates"] for s in stats),
            "rows_in_candidate_buckets": sum(s["rows_in_candidate_buckets"] for s in stats),
            "largest_bucket": max((s["largest_bucket"] for s in stats), default=0),
            "buckets_over_cap": sum(s["buckets_over_cap"] for s in stats)}


def _nodes_only(graph: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return graph["nodes"], graph["root"]


def _pairs_only(graph: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return graph["group"], graph["a"], graph["b"]


class _CandidateRows(beam.DoFn):
    """Rows in the candidate graph -> (group, their keys and ids, and shingle sets to verify)."""

    def __init__(self, cfg: _Config):
        self.cfg = cfg

    def process(self, batch: pa.RecordBatch, graph: tuple[np.ndarray, np.ndarray]):
        nodes, root = graph
        hit, pos = find_sorted(batch.column(rows.ROW_KEY).to_numpy(), nodes)
        if not hit.any():
            return
        idx = np.flatnonzero(hit)
        keys = batch.column(rows.ROW_KEY).to_numpy()[idx]
        ids = strings(batch, rows.ID)[idx]
        home = keyed.batch_keys(batch)[idx]
        group = root[pos[idx]] % np.uint64(self.cfg.groups)
        sets = None
        if self.cfg.verify:
            texts = batch.column(rows.TEXT).take(pa.array(idx))
            sets = shingle_sets(texts, self.cfg.ngram, self.cfg.mode, self.cfg.lowercase)
        for g in np.unique(group):
            m = np.flatnonzero(group == g)
            yield int(g), (keys[m], ids[m], None if sets is None else [sets[i] for i in m], home[m])


def _resolve(element, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: _Config):
    """One shuffle group's candidate rows and (side input) the pairs of its components ->
    (batch key, {loser keys, winner keys, winner ids}) per batch holding losers; the part for the
    batch of the group's lowest row key also carries `stats`: (that row key, verified pairs,
    clusters).

    The pairs come as a side input rather than through the same shuffle as the rows: a Flatten
    of the two into one GroupByKey left Beam's in-process runner (FnApiRunner, 2.77) with
    "watermark-pending bundles" it never ran. The pair list is what the components step
    already held on one worker."""
    g, found = element
    group, a, b = pairs
    lo, hi = np.searchsorted(group, np.uint64(g)), np.searchsorted(group, np.uint64(g), side="right")
    a, b = a[lo:hi], b[lo:hi]
    found = list(found)
    empty = np.zeros(0, np.uint64)
    keys = np.concatenate([p[0] for p in found] or [empty])
    ids = np.concatenate([p[1] for p in found] or [np.zeros(0, object)])
    home = np.concatenate([p[3] for p in found] or [np.zeros(0, np.int64)])
    if cfg.verify:
        sets = {int(k): s for p in found for k, s in zip(p[0], p[2], strict=True)}
        a, b = lsh.verified(a, b, sets, cfg.threshold)
    nodes, root = lsh.components(a, b)
    lose = nodes != root
    order = np.argsort(keys)
    _, at = find_sorted(root[lose], keys[order])
    _, mine = find_sorted(nodes[lose], keys[order])
    out = dict(keyed.split_by_batch(home[order][mine], losers=nodes[lose], winners=root[lose],
                                    winner_ids=ids[order][at]))
    if len(keys):
        low = int(np.argmin(keys))
        part = out.setdefault(int(home[low]), {"losers": empty, "winners": empty, "winner_ids": ids[:0]})
        part["stats"] = (int(keys[low]), len(a), len(np.unique(root)))
    yield from out.items()


class MinhashDedup(Selector):
    __doc__ = __doc__
    type_name = "minhash_dedup"
    Params = MinhashDedupParams
    cost = "CPU: shingles + num_perm hashes per shingle; shuffles of band keys (24 B x bands per row) and pairs"
    # Both only mean something on dropped rows (they travel to dropped/).
    dropped_only_columns = (DUP_OF, DUP_CLUSTER)
    internal_columns = (GROUP_PAIRS, GROUP_CLUSTERS)

    def _config(self) -> _Config:
        seed = self.params.seed if self.params.seed is not None else self.ctx.seed
        return _Config(self.params, seed)

    def select(self, batches):
        cfg = self._config()
        return (
            batches
            | "BandKeys" >> beam.FlatMap(_band_keys, cfg)
            | "GroupBands" >> beam.GroupByKey()
            | "Pairs" >> beam.FlatMap(_group_pairs, cfg)
            | "GatherPairs" >> beam.combiners.ToList()
            | "Components" >> beam.Map(_graph, cfg.groups)
        )

    def select_keyed(self, batches, graph):
        cfg = self._config()
        nodes = graph | "Nodes" >> beam.Map(_nodes_only)
        pairs = graph | "PairsOnly" >> beam.Map(_pairs_only)
        return (
            batches
            | "CandidateRows" >> beam.ParDo(_CandidateRows(cfg), beam.pvalue.AsSingleton(nodes))
            | "GroupComponents" >> beam.GroupByKey()
            | "Resolve" >> beam.FlatMap(_resolve, beam.pvalue.AsSingleton(pairs), cfg)
        )

    def decide(self, batch: pa.RecordBatch, parts: list[dict[str, Any]]):
        keys = batch.column(rows.ROW_KEY).to_numpy()
        d = keyed.merge_parts(parts, "losers", {"losers": np.uint64, "winners": np.uint64, "winner_ids": object})
        hit, pos = find_sorted(keys, d["losers"])
        dup_of = pa.array(np.where(hit, d["winner_ids"][pos] if hit.any() else None, None), pa.string())
        cluster = d["winners"][pos] if len(d["losers"]) else np.zeros(len(pos), np.uint64)
        stats = sorted(part["stats"] for part in parts if "stats" in part)
        first, at = find_sorted(keys, np.array([s[0] for s in stats], np.uint64))
        verified, clusters = (np.array([s[i] for s in stats] or [0], np.int64)[at] for i in (1, 2))
        return ~hit, DROP_REASON, {DUP_OF: dup_of, DUP_CLUSTER: pa.array(cluster, pa.uint64(), mask=~hit),
                                   GROUP_PAIRS: pa.array(verified, mask=~first),
                                   GROUP_CLUSTERS: pa.array(clusters, mask=~first)}

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        return {"rows": batch.num_rows, "dropped": int((~keep).sum()),
                "verified_pairs": pc.sum(batch.column(GROUP_PAIRS)).as_py() or 0,
                "clusters": pc.sum(batch.column(GROUP_CLUSTERS)).as_py() or 0}

    def report(self, summary: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
        cfg = self._config()
        return {
            "rows": summary.get("rows", 0), "dropped": summary.get("dropped", 0),
            "candidate_pairs": graph["candidate_pairs"],
            "verified_pairs": summary.get("verified_pairs", 0) if cfg.verify else None,
            "components": graph["components"], "clusters": summary.get("clusters", 0),
            "buckets_with_candidates": graph["buckets_with_candidates"],
            "rows_in_candidate_buckets": graph["rows_in_candidate_buckets"],
            "largest_bucket": graph["largest_bucket"], "buckets_over_cap": graph["buckets_over_cap"],
            "ngram": cfg.ngram, "shingle": cfg.mode, "num_perm": self.params.num_perm,
            "bands": cfg.bands, "rows_per_band": cfg.rows, "threshold": self.params.threshold,
            "verify": cfg.verify, "seed": cfg.seed, "artifacts": [],
        }
