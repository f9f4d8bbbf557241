"""`decontaminate`: remove (or flag) pool rows that overlap named benchmarks, with an audit trail.

In:  canonical batches. Out: the same minus contaminated rows (`action: drop`, reason
     `contaminated:<benchmark>`), or all rows with the match columns filled (`action: flag`).
     Score columns that travel to the shards: `decontam_ngram_score` (the highest fraction of
     any benchmark item's n-grams found in the row) and, with the embedding method,
     `decontam_embed_score` (highest cosine to any item); with `action: flag` also
     `decontam_benchmark`, `decontam_item`, `decontam_method` (null on clean rows).
Reports: `OUT/reports/<stage>-audit.arrow` and `.csv`: one line per (flagged row, benchmark
     item): row id, source, benchmark, item id, method, score, matched span; and in
     `reports/<stage>.json` / the manifest, per benchmark: items, items found in the pool,
     contamination rate, flagged rows by source and method.
Cost: n-gram method, CPU only: benchmark files are read and indexed once, on the driver, in
     `prepare()` (a sorted uint64 array, ~20 bytes per distinct benchmark n-gram; ~7 s for
     GSM8K + MATH-500 + HumanEval + ARC + MMLU), and shipped to the workers that score; each
     batch is normalised with pyarrow.compute, each distinct word hashed once, n-grams hashed
     with NumPy (the shared `thresher.text` hasher) and looked up with a bitset filter and a
     binary search. Memory ~ benchmark size, not pool size; the index travels inside the
     pickled stage (Beam compresses it: ~15 s for the 46 MiB all-benchmark index, ~0 for
     GSM8K alone). Embedding method: each item is embedded once (of its segments, those
     whose content words another segment of it does not hold: MMLU's question with its
     choices, not also the question alone or lettered; segments under `min_words` words or 2
     content words are left to the n-gram method). A word-overlap prefilter (`prefilter.py`:
     one sparse product per batch) picks, per row, the `embed_candidates` items that share at
     least `embed_prefilter` of their (IDF-weighted) content words and 3 of them with the row,
     and cuts a few windows around the span holding most of each item's distinct words (the
     span; run on to the next sentence ends and back to its sentence's start; the item's own
     length); only those are embedded, and a row scores its best window (`embed_prefilter:
     null`: every row as `embed_window`/`embed_stride` windows, the old way — one forward per
     window, GPU territory). Item vectors are embedded on the driver; with the row cache
     (`ctx.cache_dir`) and a batch-invariant backend (`embed_backend: onnx`/`openvino`/`auto`
     on CPU) item and window vectors are read back from it on later runs (`cache/hits`,
     `cache/misses` count windows). The item vectors are also written to
     `OUT/indexes/<stage>-benchmark-embeddings.npy` for the audit.

Embedding matches: a window matches an item when its cosine reaches `embed_threshold` and
beats its mean cosine to its next 9 nearest items by `embed_margin` (a problem written on a
benchmark's template is near many of its items, a copy or paraphrase near one), or, short of
that margin, when it holds all of the item's numbers (2 or more; `specific.py`).

Matching: word n-grams of normalised text (lowercase, apostrophes dropped, other punctuation
and whitespace folded). A row is contaminated by an item segment when the fraction of the
segment's distinct n-grams found in the row reaches `threshold` (`mode: fraction`) or when
it shares one (`mode: any`). Segments shorter than `n` words (but at least `min_words`) are
matched whole. n-grams shared by more than `max_matches` items are ignored (templated
phrases such as MMLU's "Statement 1 | ..." would otherwise tie unrelated items together).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from thresher.core import Selector, StageParams, rows
from thresher.core.counters import cache_hits, cache_misses, count_by_source
from thresher.models import embedding_cache, embeddings, faiss_index
from thresher.stages.decontam import embedding, prefilter, specific
from thresher.stages.decontam import ngram_index as ngrams
from thresher.stages.decontam.audit import (
    AUDIT,
    Entries,
    audit_column,
    audit_rows,
    best_per_row,
    concat_entries,
    gather,
    write_audit,
)
from thresher.stages.decontam.benchmarks import Benchmark, Segments, check_benchmarks, load_segments

NGRAM_SCORE = "decontam_ngram_score"
EMBED_SCORE = "decontam_embed_score"
MATCH_BENCHMARK = "decontam_benchmark"
MATCH_ITEM = "decontam_item"
MATCH_METHOD = "decontam_method"
BEST_BENCHMARK = "__decontam_best_benchmark"  # each row's best match, for decide(): internal

NGRAM_PRESETS = {"gpt3": {"n": 13, "mode": "any"}, "tulu3": {"n": 8, "mode": "fraction", "threshold": 0.5}}


class DecontaminateParams(StageParams):
    benchmarks: list[Benchmark] = Field(
        default_factory=list, description="Benchmarks to remove: each a file and the fields to match "
        "(see `Benchmark`), e.g. {preset: gsm8k, paths: [gsm8k/test.jsonl.gz]}.")
    ngram_preset: Literal["gpt3", "tulu3"] | None = Field(
        None, description="Shorthand: gpt3 = 13-grams, any shared one; tulu3 = 8-grams, threshold 0.5. "
        "Explicit `n`/`mode`/`threshold` win.")
    n: int = Field(13, ge=1, le=64, description="Words per n-gram (13 as GPT-3 / NeMo Curator; 8 as Tulu 3).")
    threshold: float = Field(0.5, gt=0.0, le=1.0,
                             description="Contaminated when this fraction of an item's n-grams is in the row.")
    mode: Literal["fraction", "any"] = Field(
        "fraction", description="`fraction`: use `threshold`; `any`: one shared n-gram is enough.")
    min_words: int = Field(6, ge=1, description="Item segments with fewer words are not matched at all "
                           "(too short to mean anything); from min_words to n-1 words they are matched whole.")
    max_matches: int | None = Field(
        20, ge=1, description="Ignore n-grams found in more than this many benchmark items (null: keep all).")
    embed_threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Also flag rows whose cosine similarity to an item reaches this "
        "(and `embed_margin`; catches paraphrases); null turns the embedding method off.")
    embed_model: str | None = Field(None, description="Embedding model (the `embed` stage's; null: the bundled one).")
    embed_device: str = Field("auto", description="auto, cpu or cuda.")
    embed_backend: Literal["torch", "onnx", "openvino", "auto"] = Field(
        "torch", description="The `embed` stage's `backend` (on CPU, onnx: int8, openvino: fp32; both "
        "batch-invariant, so the row cache applies; auto: the onnx export that meets the agreement bar "
        "on CPU when installed, torch fp16 on CUDA).")
    embed_prefilter: float | None = Field(
        0.3, ge=0.0, le=1.0, description="Embed only windows around regions sharing at least this "
        "IDF-weighted fraction of an item's content words (null: every row, as fixed windows).")
    embed_mask_numbers: bool = Field(
        True, description="Embed items and windows with every number replaced by 0, so a copy with "
        "its numbers changed embeds as the item does (MiniLM scores such MATH copies ~0.75 unmasked).")
    embed_margin: float | None = Field(
        0.18, ge=0.0, le=1.0, description="A window matches its nearest item only if its cosine to it "
        "beats the mean of its cosines to its next 9 nearest items by this much (a same-template "
        "problem is near many items, a copy near one; see `specific.py`), or it holds all of that "
        "item's numbers (2 or more); null: `embed_threshold` alone.")
    embed_candidates: int = Field(3, ge=1, description="With the prefilter: windows are cut for at most "
                                  "this many best-overlapping items per row (a few windows each).")
    embed_batch_size: int = Field(64, gt=0, description="Texts per model forward.")
    # 32/16 measured best of 64/32, 48/16 and 32/16 at finding a GSM8K paraphrase inside a
    # ~110-word paragraph (a wider window dilutes the item with the text around it).
    embed_window: int = Field(32, gt=0, description="Without the prefilter, long rows are embedded as "
                              "windows of this many words ...")
    embed_stride: int = Field(16, gt=0, description="... starting every this many words.")
    action: Literal["drop", "flag"] = Field(
        "drop", description="`drop` contaminated rows, or `flag` them (keep, with match columns).")
    span_chars: int = Field(300, ge=0, description="Longest matched span written to the audit.")

    @model_validator(mode="after")
    def _apply_preset(self) -> DecontaminateParams:
        for k, v in NGRAM_PRESETS.get(self.ngram_preset or "", {}).items():
            if k not in self.model_fields_set:
                setattr(self, k, v)
        if not self.benchmarks:
            raise ValueError("give at least one benchmark under `benchmarks`")
        names = [b.name for b in self.benchmarks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"benchmark names must be unique (set `name:`): {dup}")
        return self


@dataclass
class Prepared:
    """What the stage builds from the benchmarks before it scores a row."""

    index: ngrams.NgramIndex
    segs: Segments
    item_vectors: np.ndarray | None  # the embedding method's item embeddings, else None
    embed_seg: np.ndarray | None = None  # the segment each item vector is of

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.segs.item_id, dtype=object)
        self.bench_names = np.asarray(self.segs.bench_names, dtype=object)

    def entries(self, row: np.ndarray, seg: np.ndarray, method: str, score: np.ndarray,
                span: np.ndarray) -> Entries:
        """Audit entries for matches of rows `row` with segments `seg`."""
        item = self.segs.item[seg]
        return {
            "row": row, "item": item, "segment": seg.astype(np.int32),
            "benchmark": self.bench_names[self.segs.item_bench[item]] if len(item) else np.zeros(0, object),
            "item_id": self.item_ids[item] if len(item) else np.zeros(0, object),
            "method": np.full(len(seg), method, dtype=object), "score": score.astype(np.float32), "span": span,
        }


class Decontaminate(Selector):
    __doc__ = __doc__
    type_name = "decontaminate"
    Params = DecontaminateParams
    cost = ("CPU: normalise + hash every word, NumPy n-gram lookups; memory ~ benchmark n-grams. "
            "Embedding method: one model forward per benchmark item (cached across runs) and per "
            "window the word-overlap prefilter cuts (a few per row it lets through).")
    internal_columns = (AUDIT, BEST_BENCHMARK)
    worker_state = ("benchmarks",)  # the indexes: scoring needs them, decide and report do not

    benchmarks: Prepared | None = None  # built on the driver by prepare()
    static: dict[str, Any] | None = None  # the report's settings and index sizes
    _model: Any = None
    _faiss: Any = None
    _cache: Any = None
    _prefilter: Any = None
    _item_texts: list[str] | None = None

    def check(self) -> list[str]:
        p = self.params
        problems = check_benchmarks(self.ctx.recipe, p.benchmarks, "params.benchmarks")
        if p.embed_threshold is not None:
            why = embedding.model_problem(p.embed_model)
            if why:
                problems.append(f"params.embed_model: {why}")
            try:
                embeddings.choose_backend(p.embed_backend, p.embed_device)
            except (ValueError, RuntimeError) as exc:
                problems.append(f"params.embed_backend: {exc}")
        return problems

    # -- building the indexes -------------------------------------------------------------
    def prepare(self) -> None:
        """Read the benchmarks and build the indexes, once, on the driver (bench/ calls it too)."""
        p = self.params
        segs = load_segments(self.ctx.recipe, p.benchmarks)
        index = ngrams.build_index(segs.text, segs.item, p.n, p.min_words, p.max_matches)
        vectors = embed_seg = None
        artifacts: list[str] = []
        if p.embed_threshold is not None:
            rel = f"indexes/{self.name}-benchmark-embeddings.npy"
            model = self._load_model()
            embed_seg = embedding.embedding_segments(segs.text, segs.item, p.min_words)
            texts = [segs.text[i] for i in embed_seg]
            texts = embedding.mask_numbers(texts) if p.embed_mask_numbers else texts
            vectors, item_hits = embedding.item_embeddings(model, texts, self.ctx.cache_dir, p.embed_batch_size)
            embedding.save_item_embeddings(vectors, model, os.path.join(self.ctx.out_dir, rel), embed_seg)
            artifacts += [rel, rel + ".json"]
        seg_words = np.diff(ngrams.split_words(pa.array(segs.text, pa.string())).offsets)
        static = {
            "action": p.action,
            "ngram": {"n": p.n, "mode": p.mode, "threshold": p.threshold, "min_words": p.min_words,
                      "max_matches": p.max_matches},
            "embedding": None if vectors is None else {
                "threshold": p.embed_threshold, "model": p.embed_model, "window": p.embed_window,
                "stride": p.embed_stride, "index_bytes": int(vectors.nbytes), "backend": p.embed_backend,
                "prefilter": p.embed_prefilter, "candidates": p.embed_candidates,
                "mask_numbers": p.embed_mask_numbers, "margin": p.embed_margin,
                "segments_embedded": len(embed_seg),
                "item_vectors_from_cache": item_hits},
            "index": {"ngrams": int(len(index.keys)), "bytes": index.nbytes,
                      "segments": len(segs.text), "segments_too_short": int((seg_words < p.min_words).sum()),
                      "common_ngrams_ignored": index.common_dropped},
            "benchmark_items": dict(zip(segs.bench_names, segs.bench_items, strict=True)),
            "unreadable": segs.unreadable,
            "artifacts": artifacts,
        }
        self.benchmarks, self.static = Prepared(index, segs, vectors, embed_seg), static

    def setup(self) -> None:
        if self.benchmarks is None:  # called directly (bench/, unit tests), not by the template
            self.prepare()
        if self.benchmarks.item_vectors is not None and self._model is None:
            p = self.params
            self._model = self._load_model()
            self._faiss = embedding.build_index(self.benchmarks.item_vectors)
            self._cache = embedding_cache.open_cache(self.ctx.cache_dir, self._model, True)
            segs = self.benchmarks.segs
            self._item_texts = [segs.text[i] for i in self.benchmarks.embed_seg]  # numbers kept
            if p.embed_prefilter is not None:
                self._prefilter = prefilter.build([segs.text[i] for i in self.benchmarks.embed_seg])

    def _load_model(self):
        p = self.params
        return embeddings.load_model(p.embed_model, p.embed_device, backend=p.embed_backend)

    # -- per batch ------------------------------------------------------------------------
    def score(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """Match every row against the benchmarks: score columns, each row's best match (for
        `decide`) and its audit entries (for the report)."""
        if self.benchmarks is None or (self.benchmarks.item_vectors is not None and self._model is None):
            self.setup()  # called directly, without a runner's setup()
        p, prep, n_rows = self.params, self.benchmarks, batch.num_rows
        words = ngrams.split_words(batch.column(rows.TEXT))
        m = ngrams.lookup(prep.index, words)
        ngram_score = np.zeros(n_rows, np.float32)
        np.maximum.at(ngram_score, m.row, m.fraction.astype(np.float32))
        hit = m.found >= 1 if p.mode == "any" else m.fraction >= p.threshold - 1e-9
        spans = np.asarray([words.span(int(a), int(b))[: p.span_chars]
                            for a, b in zip(m.first[hit], m.end[hit], strict=True)], dtype=object)
        entries = prep.entries(m.row[hit], m.seg[hit], "ngram", m.fraction[hit], spans)
        columns: dict[str, Any] = {NGRAM_SCORE: pa.array(ngram_score, pa.float32())}
        if prep.item_vectors is not None:
            embed_score, e_entries = self._embed(batch)
            columns[EMBED_SCORE] = pa.array(embed_score, pa.float32())
            entries = concat_entries(entries, e_entries)
        flagged, bench, item, method = best_per_row(entries, n_rows)
        if p.action == "flag":
            columns[MATCH_BENCHMARK] = pa.array(bench.tolist(), pa.string())
            columns[MATCH_ITEM] = pa.array(item.tolist(), pa.string())
            columns[MATCH_METHOD] = pa.array(method.tolist(), pa.string())
        columns[BEST_BENCHMARK] = pa.array(bench.tolist(), pa.string())
        columns[AUDIT] = audit_column(entries, n_rows)
        if flagged.any():
            count_by_source(f"{self.name}/flagged", batch.filter(pa.array(flagged)))
        return columns

    def _embed(self, batch: pa.RecordBatch) -> tuple[np.ndarray, Entries]:
        """Each row's best cosine to an item (over its windows), and entries for its best window
        that matches an item (`specific.accept`: threshold, and margin or the item's numbers)."""
        p, prep = self.params, self.benchmarks
        texts = [t or "" for t in batch.column(rows.TEXT).to_pylist()]
        if self._prefilter is None:
            win_texts, win_row = embedding.windows(texts, p.embed_window, p.embed_stride)
            best = np.full(len(texts), -1.0, np.float32)
        else:  # rows the prefilter rules out cannot match: score 0
            win_texts, win_row = prefilter.candidate_windows(self._prefilter, texts, p.embed_prefilter,
                                                             p.embed_candidates)
            best = np.zeros(len(texts), np.float32)
        to_embed = embedding.mask_numbers(win_texts) if p.embed_mask_numbers else win_texts
        vecs, hits, misses = embedding_cache.encode_cached(self._model, to_embed, self._cache,
                                                           p.embed_batch_size, True)
        if self._cache is not None:
            cache_hits(self.name).inc(hits)
            cache_misses(self.name).inc(misses)
        if not len(win_texts):
            return best, prep.entries(np.zeros(0, np.int64), np.zeros(0, np.int64), "embedding",
                                      np.zeros(0, np.float32), np.zeros(0, object))
        k = 1 if p.embed_margin is None else max(1, min(specific.NEIGHBOURS, len(prep.item_vectors)))
        sims, idxs = faiss_index.search(self._faiss, vecs, k)
        np.maximum.at(best, win_row, sims[:, 0].astype(np.float32))
        ok, col = specific.accept(win_texts, sims, idxs, prep.item_vectors, self._item_texts,
                                  p.embed_threshold, p.embed_margin)
        rows_w = np.arange(len(win_texts))
        sim, idx = sims[rows_w, col], idxs[rows_w, col]
        # The best accepted window of each row.
        w = np.flatnonzero(ok)
        w = w[np.lexsort((-sim[w], win_row[w]))]
        first = np.ones(len(w), bool)
        first[1:] = win_row[w][1:] != win_row[w][:-1]
        w = w[first]
        spans = np.asarray([win_texts[i][: p.span_chars] for i in w], dtype=object)
        seg = prep.embed_seg[idx[w]].astype(np.int64)
        return best, prep.entries(win_row[w], seg, "embedding", sim[w], spans)

    def decide(self, batch: pa.RecordBatch):
        bench = batch.column(BEST_BENCHMARK).to_pylist()
        reasons = [None if b is None else f"contaminated:{b}" for b in bench]
        keep = np.ones(len(bench), bool) if self.params.action == "flag" else np.array([b is None for b in bench])
        return keep, reasons

    # -- the report -----------------------------------------------------------------------
    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        table = audit_rows(batch)
        return {"audit": [table]} if table.num_rows else {}

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        return write_audit(gather(summary.get("audit", [])), self.ctx.out_dir, self.name, self.static)
