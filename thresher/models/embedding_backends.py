"""Fast embedding backends: the model exported to ONNX once, int8-quantized, run by onnxruntime.

Why hand-written rather than sentence-transformers' own `backend="onnx"`: that path needs
`optimum-onnx`, whose only release (0.1.0) pins transformers < 4.58, while sentence-transformers
6.2 needs transformers >= 5 — installing it breaks the venv. What is left is small: export the
transformer + pooling with `torch.onnx.export` from the local weights (no download), quantize
with onnxruntime's own `quantize_dynamic`, tokenize with the model's own (fast) tokenizer.

Each export lives in `<root>/<key>/` where the key hashes the model's files and the exporter's
versions, so a changed model is a new export, never a stale one. `root` is
`$THRESHER_EXPORT_DIR`, else `~/.cache/thresher/embedding-exports`: one per user, not per
output folder, because an export depends on the model only and costs ~20 s to make.

`OnnxEncoder.encode` has `SentenceTransformer.encode`'s signature, so everything that embeds
(`encode_texts`) runs either unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

# Agreement with fp32 torch that an export must reach on CALIBRATION to be used by `auto`
# (the bar: mean cosine >= 0.99).
AGREEMENT_BAR = 0.99
CALIBRATION = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.",
    "The derivative of x^2 + 3x is 2x + 3.",
    "def add(a, b):\n    return a + b",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Click here to subscribe to our newsletter and get 10% off your first order!",
    "In 1066 William of Normandy defeated Harold at the Battle of Hastings, changing English "
    "law, language and land ownership for centuries to come.",
    "What is the remainder when 2^100 is divided by 7?",
    "ok",
    "A train leaves the station at 3 pm travelling at 60 miles per hour; a second train leaves "
    "an hour later at 80 miles per hour. When does the second train catch up with the first?",
]

_LOCK = threading.Lock()
_FINGERPRINTS: dict[tuple, str] = {}


def backend_problem(backend: str = "onnx") -> str | None:
    """Why the onnx / openvino backend cannot run here, or None."""
    for mod in ("onnxruntime", "onnx") + (("openvino",) if backend == "openvino" else ()):
        try:
            __import__(mod)
        except ImportError:
            return (f"the {backend} embedding backend needs `{mod}`, which is not installed: "
                    "`pip install thresher[fast]` (onnxruntime, onnx, openvino), or set backend: torch")
    return None


def model_fingerprint(path: str) -> str:
    """sha256 of the model directory's files (names and bytes), memoised per process by their
    sizes and modification times (hashing 90 MB costs ~0.2 s)."""
    files = sorted(os.path.relpath(os.path.join(d, f), path)
                   for d, _, fs in os.walk(path) for f in fs if not f.startswith("."))
    stamp = tuple((f, os.path.getsize(os.path.join(path, f)), os.path.getmtime(os.path.join(path, f)))
                  for f in files)
    key = (path, stamp)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.encode() + b"\0")
            with open(os.path.join(path, f), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _FINGERPRINTS[key] = h.hexdigest()[:24]
    return _FINGERPRINTS[key]


def export_root() -> str:
    return os.environ.get("THRESHER_EXPORT_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "thresher", "embedding-exports")


def _pooling_mode(path: str) -> str:
    cfg = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.exists(cfg):
        return "mean"
    with open(cfg) as fh:
        c = json.load(fh)
    modes = [k[len("pooling_mode_"):] for k, v in c.items() if k.startswith("pooling_mode_") and v]
    return modes[0].replace("_tokens", "") if len(modes) == 1 else "+".join(modes)


def export_key(path: str) -> str:
    import onnxruntime
    import torch

    blob = f"{model_fingerprint(path)}|torch {torch.__version__}|ort {onnxruntime.__version__}|v2"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def ensure_export(path: str) -> str:
    """The export folder of the model at `path` (model.onnx, model_int8.onnx, agreement.json),
    made on first use — written to a temporary folder and renamed, so a crash leaves nothing
    half-written and two processes exporting at once both end with a complete one."""
    root = export_root()
    final = os.path.join(root, export_key(path))
    if os.path.exists(os.path.join(final, "agreement.json")):
        return final
    with _LOCK:
        if os.path.exists(os.path.join(final, "agreement.json")):
            return final
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".export-", dir=root)
        try:
            _export(path, tmp)
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished first: keep its export
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _export(path: str, out: str) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    pooling = _pooling_mode(path)
    if pooling not in ("mean", "cls"):
        raise ValueError(f"onnx embedding backend: model {path} pools with {pooling!r}; only mean "
                         "and cls pooling are exported: set backend: torch")
    st = SentenceTransformer(path, device="cpu")
    hf = st[0].auto_model.eval()

    class Pooled(torch.nn.Module):
        """The transformer and its pooling as one graph: the output is the sentence vector."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).last_hidden_state
            if pooling == "cls":
                return h[:, 0]
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    enc = st.tokenizer(["hello world", "a slightly longer sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    fp32 = os.path.join(out, "model.onnx")
    with torch.no_grad():
        torch.onnx.export(Pooled(hf), tuple(enc[n] for n in names), fp32, input_names=names,
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names},
                                        "sentence_embedding": {0: "batch"}})
    # Per-channel weights, and only weight (constant) matmuls: the default per-tensor
    # quantization of every MatMul, attention's activation x activation products included, gave
    # mean cosine 0.952 to fp32 on real pool rows; this gives 0.992 (bench/embed.py).
    quantize_dynamic(fp32, os.path.join(out, "model_int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, op_types_to_quantize=["MatMul"],
                     extra_options={"MatMulConstBOnly": True})
    st.tokenizer.save_pretrained(out)
    want = np.asarray(st.encode(CALIBRATION, normalize_embeddings=True), np.float32)
    agreement = {"pooling": pooling, "max_seq_length": int(st.max_seq_length), "source": path}
    for precision in ("fp32", "int8"):
        got = OnnxEncoder(out, precision, int(st.max_seq_length), threads=0).encode(CALIBRATION)
        agreement[precision] = float((got * want).sum(1).mean())
    with open(os.path.join(out, "agreement.json"), "w") as fh:
        json.dump(agreement, fh, indent=1)


def agreement_of(export_dir: str) -> dict[str, Any]:
    with open(os.path.join(export_dir, "agreement.json")) as fh:
        return json.load(fh)


class OnnxEncoder:
    """An exported model run on CPU by onnxruntime (`runtime="onnx"`) or OpenVINO
    (`runtime="openvino"`, which reads the same ONNX file), one text per forward.

    One text per forward on purpose: int8 dynamic quantization scales each activation tensor by
    its own range, so in a padded batch a row's vector would depend on its neighbours; alone, a
    row's vector is a function of its text only — what the row cache needs to give byte-identical
    output cold or warm. On CPU this costs little: a forward is already a (tokens x hidden)
    matrix product, and no padding is computed."""

    def __init__(self, export_dir: str, precision: str = "int8", max_seq_length: int = 256,
                 threads: int = 0, runtime: str = "onnx"):
        from transformers import AutoTokenizer

        file = os.path.join(export_dir, "model_int8.onnx" if precision == "int8" else "model.onnx")
        if runtime == "openvino":
            import openvino as ov

            config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
            compiled = ov.Core().compile_model(file, "CPU", config)
            request = compiled.create_infer_request()
            self._run = lambda feed: next(iter(request.infer(feed).values()))
            self._dim = int(compiled.outputs[0].get_partial_shape()[-1].get_length())
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # No busy-waiting between ops: a forward per text means many short waits, and
            # spinning threads starve the other workers of a shared (or busy) machine.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(file, opts, providers=["CPUExecutionProvider"])
            self._run = lambda feed: session.run(None, feed)[0]
            self._dim = int(session.get_outputs()[0].shape[-1])
        self.tokenizer = AutoTokenizer.from_pretrained(export_dir)
        self.max_seq_length = max_seq_length
        self.precision = precision
        self.runtime = runtime
        self.device = SimpleNamespace(type="cpu")

    def get_sentence_embedding_dimension(self) -> int:
        return self._dim

    def encode(self, texts: list[str], batch_size: int = 1, normalize_embeddings: bool = True,
               convert_to_numpy: bool = True, show_progress_bar: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), np.float32)
        if not len(texts):
            return out
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)
        for i, ids in enumerate(enc["input_ids"]):
            a = np.asarray([ids], np.int64)
            out[i] = np.asarray(self._run({"input_ids": a, "attention_mask": np.ones_like(a),
                                           "token_type_ids": np.zeros_like(a)}))[0]
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
