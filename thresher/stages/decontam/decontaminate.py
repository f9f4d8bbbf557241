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
Cost: n-gram method, CPU only: benchmark files are read and indexed once on the driver (a
     sorted uint64 array, ~20 bytes per distinct benchmark n-gram, shipped to workers inside
     the batch function); each batch is normalised with pyarrow.compute, each distinct word
     hashed once, n-grams hashed with NumPy prefix sums and looked up with a bitset filter and
     a binary search. Memory ~ benchmark size, not pool size. Embedding method: one model
     forward per row window (window/stride words) — GPU territory for big pools — plus the
     benchmark items embedded once on the driver (cached under `OUT/indexes/`).

Matching: word n-grams of normalised text (lowercase, apostrophes dropped, other punctuation
and whitespace folded). A row is contaminated by an item segment when the fraction of the
segment's distinct n-grams found in the row reaches `threshold` (`mode: fraction`) or when
it shares one (`mode: any`). Segments shorter than `n` words (but at least `min_words`) are
matched whole. n-grams shared by more than `max_matches` items are ignored (templated
phrases such as MMLU's "Statement 1 | ..." would otherwise tie unrelated items together).
"""

from __future__ import annotations

import io
import os
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from thresher.core.stage import BatchFn, MapBatches, Stage, StageParams, count_by_source
from thresher.core import rows
from thresher.core.selector import ApplyDecisions, with_decisions
from thresher.stages.decontam import ngram_index as ngrams
from thresher.stages.decontam.benchmarks import Benchmark, Segments, check_benchmarks, load_segments

AUDIT = "__decontam_audit"
NGRAM_SCORE = "decontam_ngram_score"
EMBED_SCORE = "decontam_embed_score"
MATCH_BENCHMARK = "decontam_benchmark"
MATCH_ITEM = "decontam_item"
MATCH_METHOD = "decontam_method"

_AUDIT_ENTRY = pa.struct([
    ("benchmark", pa.string()), ("item_id", pa.string()), ("segment", pa.int32()),
    ("method", pa.string()), ("score", pa.float32()), ("span", pa.string()),
])
AUDIT_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("source", pa.string()), ("benchmark", pa.string()),
    ("item_id", pa.string()), ("segment", pa.int32()), ("method", pa.string()),
    ("score", pa.float32()), ("span", pa.string()),
])

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
        "(catches paraphrases); null turns the embedding method off.")
    embed_model: str | None = Field(None, description="Embedding model (the `embed` stage's; null: the bundled one).")
    embed_device: str = Field("auto", description="auto, cpu or cuda.")
    embed_batch_size: int = Field(64, gt=0, description="Texts per model forward.")
    # 32/16 measured best of 64/32, 48/16 and 32/16 at finding a GSM8K paraphrase inside a
    # ~110-word paragraph (a wider window dilutes the item with the text around it).
    embed_window: int = Field(32, gt=0, description="Long rows are embedded as windows of this many words ...")
    embed_stride: int = Field(16, gt=0, description="... starting every this many words.")
    action: Literal["drop", "flag"] = Field(
        "drop", description="`drop` contaminated rows, or `flag` them (keep, with match columns).")
    span_chars: int = Field(300, ge=0, description="Longest matched span written to the audit.")

    @model_validator(mode="after")
    def _apply_preset(self) -> "DecontaminateParams":
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


class _Decontaminate(BatchFn):
    """Scores a batch against the n-gram index (and the embedding index), decides, and
    attaches each row's audit entries in an internal list column."""

    def __init__(self, params: DecontaminateParams, index: ngrams.NgramIndex, segs: Segments,
                 item_vectors: np.ndarray | None):
        self.p = params
        self.index = index
        self.seg_item = segs.item
        self.item_ids = np.asarray(segs.item_id, dtype=object)
        self.item_bench = segs.item_bench
        self.bench_names = np.asarray(segs.bench_names, dtype=object)
        self.item_vectors = item_vectors
        self._model = None
        self._faiss = None

    def setup(self) -> None:
        if self.item_vectors is not None and self._model is None:
            from thresher.stages.decontam import embedding

            self._model = embedding.load_model(self.p.embed_model, self.p.embed_device)
            self._faiss = embedding.build_index(self.item_vectors)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n_rows = batch.num_rows
        words = ngrams.split_words(batch.column(rows.TEXT))
        m = ngrams.lookup(self.index, words)
        ngram_score = np.zeros(n_rows, np.float32)
        np.maximum.at(ngram_score, m.row, m.fraction.astype(np.float32))
        hit = m.found >= 1 if self.p.mode == "any" else m.fraction >= self.p.threshold - 1e-9
        entries = self._ngram_entries(m, hit, words)
        scores: dict[str, Any] = {NGRAM_SCORE: pa.array(ngram_score, pa.float32())}
        if self.item_vectors is not None:
            embed_score, e_entries = self._embed(batch)
            scores[EMBED_SCORE] = pa.array(embed_score, pa.float32())
            entries = _concat_entries(entries, e_entries)
        # Best entry per row: n-gram matches first (exact evidence), then the higher score.
        flagged = np.zeros(n_rows, bool)
        bench = np.full(n_rows, None, dtype=object)
        item = np.full(n_rows, None, dtype=object)
        method = np.full(n_rows, None, dtype=object)
        if len(entries["row"]):
            order = np.lexsort((-entries["score"], entries["method"] != "ngram", entries["row"]))
            entries = {k: v[order] for k, v in entries.items()}
            first = np.ones(len(order), bool)
            first[1:] = entries["row"][1:] != entries["row"][:-1]
            r = entries["row"][first]
            flagged[r] = True
            bench[r] = entries["benchmark"][first]
            item[r] = entries["item_id"][first]
            method[r] = entries["method"][first]
        if self.p.action == "flag":
            scores[MATCH_BENCHMARK] = pa.array(bench.tolist(), pa.string())
            scores[MATCH_ITEM] = pa.array(item.tolist(), pa.string())
            scores[MATCH_METHOD] = pa.array(method.tolist(), pa.string())
            keep = np.ones(n_rows, bool)
        else:
            keep = ~flagged
        reasons = np.where(flagged, np.char.add("contaminated:", bench.astype(str)), None)
        out = with_decisions(batch, keep, reasons, scores)
        return out.append_column(AUDIT, _audit_column(entries, n_rows))

    def _ngram_entries(self, m: ngrams.Matches, hit: np.ndarray, words: ngrams.Words) -> dict[str, np.ndarray]:
        seg = m.seg[hit]
        item = self.seg_item[seg]
        rows_ = m.row[hit]
        spans = np.asarray([words.span(int(a), int(b))[: self.p.span_chars]
                            for a, b in zip(m.first[hit], m.end[hit])], dtype=object)
        return {
            "row": rows_, "item": item, "segment": seg.astype(np.int32),
            "benchmark": self.bench_names[self.item_bench[item]] if len(item) else np.zeros(0, object),
            "item_id": self.item_ids[item] if len(item) else np.zeros(0, object),
            "method": np.full(len(seg), "ngram", dtype=object),
            "score": m.fraction[hit].astype(np.float32), "span": spans,
        }

    def _embed(self, batch: pa.RecordBatch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        from thresher.stages.decontam import embedding

        self.setup()
        texts = batch.column(rows.TEXT).to_pylist()
        win_texts, win_row = embedding.windows(texts, self.p.embed_window, self.p.embed_stride)
        vecs = embedding.encode(self._model, win_texts, self.p.embed_batch_size)
        sim, idx = embedding.search(self._faiss, vecs, 1)
        sim, idx = sim[:, 0], idx[:, 0]
        best = np.full(len(texts), -1.0, np.float32)
        np.maximum.at(best, win_row, sim.astype(np.float32))
        # The best window of each row, if it reaches the threshold.
        order = np.lexsort((-sim, win_row))
        first = np.ones(len(order), bool)
        first[1:] = win_row[order][1:] != win_row[order][:-1]
        w = order[first]
        w = w[sim[w] >= self.p.embed_threshold]
        seg = idx[w].astype(np.int64)
        item = self.seg_item[seg]
        return best, {
            "row": win_row[w], "item": item, "segment": seg.astype(np.int32),
            "benchmark": self.bench_names[self.item_bench[item]] if len(w) else np.zeros(0, object),
            "item_id": self.item_ids[item] if len(w) else np.zeros(0, object),
            "method": np.full(len(w), "embedding", dtype=object),
            "score": sim[w].astype(np.float32),
            "span": np.asarray([win_texts[i][: self.p.span_chars] for i in w], dtype=object),
        }


def _concat_entries(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def _audit_column(entries: dict[str, np.ndarray], n_rows: int) -> pa.Array:
    """Each row's entries as list<struct>; one entry per (row, item), best segment/method first."""
    if len(entries["row"]):
        order = np.lexsort((-entries["score"], entries["method"] != "ngram", entries["item"], entries["row"]))
        e = {k: v[order] for k, v in entries.items()}
        uniq = np.ones(len(order), bool)
        uniq[1:] = (e["row"][1:] != e["row"][:-1]) | (e["item"][1:] != e["item"][:-1])
        e = {k: v[uniq] for k, v in e.items()}
    else:
        e = entries
    values = pa.StructArray.from_arrays(
        [pa.array(e["benchmark"].tolist(), pa.string()), pa.array(e["item_id"].tolist(), pa.string()),
         pa.array(e["segment"], pa.int32()), pa.array(e["method"].tolist(), pa.string()),
         pa.array(e["score"], pa.float32()), pa.array(e["span"].tolist(), pa.string())],
        fields=list(_AUDIT_ENTRY),
    )
    offsets = np.searchsorted(e["row"], np.arange(n_rows + 1)).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _audit_rows(batch: pa.RecordBatch) -> pa.Table:
    """The flagged rows' audit entries as flat AUDIT_SCHEMA rows (+ row key for ordering)."""
    col = batch.column(AUDIT)
    parents = pc.list_parent_indices(col)
    if len(parents) == 0:
        return _empty_audit()
    flat = pc.list_flatten(col)
    cols = {
        "row_id": batch.column(rows.ID).take(parents), "source": batch.column(rows.SOURCE).take(parents),
        **{f.name: flat.field(f.name) for f in _AUDIT_ENTRY},
        rows.ROW_KEY: batch.column(rows.ROW_KEY).take(parents),
    }
    return pa.table(cols, schema=AUDIT_SCHEMA.append(pa.field(rows.ROW_KEY, pa.uint64())))


def _empty_audit() -> pa.Table:
    return AUDIT_SCHEMA.append(pa.field(rows.ROW_KEY, pa.uint64())).empty_table()


class _ConcatTables(beam.CombineFn):
    """Audit rows are few (only contaminated rows): gathering them in one place is cheap."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, t):
        if t.num_rows:
            acc.append(t)
        return acc

    def merge_accumulators(self, accs):
        return [t for a in accs for t in a]

    def extract_output(self, acc):
        t = pa.concat_tables([_empty_audit(), *acc])
        return t.sort_by([(rows.ROW_KEY, "ascending"), ("benchmark", "ascending"), ("item_id", "ascending"),
                          ("method", "ascending")])


def _write_audit(table: pa.Table, reports_dir: str, stage: str, static: dict[str, Any]) -> dict[str, Any]:
    """Write the audit (Arrow stream + CSV, atomically) and return the stage summary."""
    import pyarrow.csv as pacsv

    from thresher.io.atomic import write_atomic

    audit = table.drop_columns([rows.ROW_KEY])
    arrow_rel = f"reports/{stage}-audit.arrow"
    csv_rel = f"reports/{stage}-audit.csv"
    out_dir = os.path.dirname(reports_dir)

    def write_arrow(fh):
        with pa.ipc.new_stream(fh, audit.schema) as w:
            w.write_table(audit)

    write_atomic(os.path.join(out_dir, arrow_rel), write_arrow)
    buf = io.BytesIO()
    pacsv.write_csv(audit, buf)
    write_atomic(os.path.join(out_dir, csv_rel), lambda fh: fh.write(buf.getvalue()))

    py = audit.select(["benchmark", "item_id", "method", "source"]).to_pylist()
    keys = table.column(rows.ROW_KEY).to_pylist()
    per: dict[str, Any] = {}
    for name, n_items in static["benchmark_items"].items():
        per[name] = {"items": n_items, "items_found": 0, "contamination_rate": 0.0, "rows_flagged": 0,
                     "rows_flagged_by_source": {}, "items_found_by_method": {},
                     "segments_unreadable": static["unreadable"].get(name, 0)}
    found: dict[str, set] = {}
    by_method: dict[tuple[str, str], set] = {}
    flagged_rows: dict[str, set] = {}
    by_source: dict[tuple[str, str], set] = {}
    for rec, key in zip(py, keys):
        b = rec["benchmark"]
        found.setdefault(b, set()).add(rec["item_id"])
        by_method.setdefault((b, rec["method"]), set()).add(rec["item_id"])
        flagged_rows.setdefault(b, set()).add(key)
        by_source.setdefault((b, rec["source"]), set()).add(key)
    for b, s in found.items():
        per[b]["items_found"] = len(s)
        per[b]["contamination_rate"] = len(s) / max(per[b]["items"], 1)
        per[b]["rows_flagged"] = len(flagged_rows[b])
    for (b, m), s in by_method.items():
        per[b]["items_found_by_method"][m] = len(s)
    for (b, src), s in sorted(by_source.items()):
        per[b]["rows_flagged_by_source"][src] = len(s)
    return {
        **{k: v for k, v in static.items() if k not in ("benchmark_items", "unreadable")},
        "benchmarks": per,
        "rows_flagged": len(set(keys)),
        "audit_entries": table.num_rows,
        "artifacts": [arrow_rel, csv_rel, *static.get("artifacts", [])],
    }


class Decontaminate(Stage):
    __doc__ = __doc__
    type_name = "decontaminate"
    Params = DecontaminateParams
    cost = ("CPU: normalise + hash every word, NumPy n-gram lookups; memory ~ benchmark n-grams. "
            "Embedding method: one model forward per row window (GPU for big pools).")

    @classmethod
    def check(cls, params: DecontaminateParams, recipe: Any) -> list[str]:
        problems = check_benchmarks(recipe, params.benchmarks, "params.benchmarks")
        if params.embed_threshold is not None:
            from thresher.stages.decontam import embedding

            why = embedding.model_problem(params.embed_model)
            if why:
                problems.append(f"params.embed_model: {why}")
        return problems

    def build_fn(self) -> tuple[_Decontaminate, dict[str, Any]]:
        """Read the benchmarks and build the indexes (driver side). Also used by bench/."""
        p = self.params
        recipe = self.ctx.extras["recipe"]
        segs = load_segments(recipe, p.benchmarks)
        index = ngrams.build_index(segs.text, segs.item, p.n, p.min_words, p.max_matches)
        vectors = None
        artifacts: list[str] = []
        if p.embed_threshold is not None:
            from thresher.stages.decontam import embedding

            rel = f"indexes/{self.ctx.name}-benchmark-embeddings.npy"
            vectors = embedding.cached_item_embeddings(segs.text, p.embed_model, p.embed_device,
                                                       p.embed_batch_size, os.path.join(self.ctx.out_dir, rel))
            artifacts += [rel, rel + ".json"]
        seg_words = np.diff(ngrams.split_words(pa.array(segs.text, pa.string())).offsets)
        static = {
            "action": p.action,
            "ngram": {"n": p.n, "mode": p.mode, "threshold": p.threshold, "min_words": p.min_words,
                      "max_matches": p.max_matches},
            "embedding": None if vectors is None else {
                "threshold": p.embed_threshold, "model": p.embed_model, "window": p.embed_window,
                "stride": p.embed_stride, "index_bytes": int(vectors.nbytes)},
            "index": {"ngrams": int(len(index.keys)), "bytes": index.nbytes,
                      "segments": len(segs.text), "segments_too_short": int((seg_words < p.min_words).sum()),
                      "common_ngrams_ignored": index.common_dropped},
            "benchmark_items": dict(zip(segs.bench_names, segs.bench_items)),
            "unreadable": segs.unreadable,
            "artifacts": artifacts,
        }
        return _Decontaminate(p, index, segs, vectors), static

    def expand(self, batches):
        name = self.ctx.name
        fn, static = self.build_fn()
        decided = batches | MapBatches(fn, name)
        summary = (
            decided
            | f"{name}/AuditRows" >> beam.Map(_audit_rows)
            | f"{name}/GatherAudit" >> beam.CombineGlobally(_ConcatTables())
            | f"{name}/WriteAudit" >> beam.Map(_write_audit, self.ctx.reports_dir, name, static)
        )
        self.ctx.write_report(summary)
        return (decided | f"{name}/DropAudit" >> beam.Map(_strip_audit, name)) | ApplyDecisions(self)


def _strip_audit(batch: pa.RecordBatch, stage: str) -> pa.RecordBatch:
    flagged = pc.greater(pc.list_value_length(batch.column(AUDIT)), 0)
    if pc.any(flagged).as_py():
        count_by_source(f"{stage}/flagged", batch.filter(flagged))
    return batch.drop_columns([AUDIT])
