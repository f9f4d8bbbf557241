"""Fast embedding backends: the model exported to ONNX once (fp32 and int8), run by onnxruntime.

The files are made by `onnx_export` (export, fused transformer ops, smoothing, int8). Each
export lives in `<root>/<key>/` where the key hashes the model's files, the exporter's versions
and `onnx_export.EXPORT_OPTIONS`, so a changed model or option is a new export, never a stale
one. `root` is `$THRESHER_EXPORT_DIR`, else `~/.cache/thresher/embedding-exports`: one per user,
not per output folder, because an export depends on the model only and costs ~30 s to make.

`OnnxEncoder.encode` has `SentenceTransformer.encode`'s signature, so everything that embeds
(`encode_texts`) runs either unchanged.

What `auto` checks (`meets_bar`, on `agreement.json`, written once per export): on the
CALIBRATION sentences and a lightly edited copy of each (near-duplicates, like the pairs
semantic dedup and decontamination must find), the export's vectors against fp32 torch: mean
cosine >= NEIGHBOUR_COSINE (0.9999; see there why not just 0.99) and every text's nearest other
text the same as under torch. On MiniLM the fp32 export passes and the int8 one does not
(mean cosine ~0.995), so `auto` runs the fused fp32 export on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np

from thresher.models import onnx_export

# Agreement with fp32 torch an export must reach on CALIBRATION to be used by `auto`. The
# issue's bar is mean cosine >= 0.99 and the same nearest neighbour (among 10,000 pool rows) for
# >= 98 % of rows. The second is far stricter and cannot be checked at export time (it needs
# thousands of real rows), so `auto` asks for vectors close enough to keep it: measured by
# bench/embed.py on pool rows (300 among 3,000), mean cosine 0.9907 kept 78 % of nearest
# neighbours, 0.9936 (the int8 export) 89 %, 0.9977 88 %, 0.9992 91 %, the fp32 export 100 %. Hence NEIGHBOUR_COSINE,
# plus every calibration text's nearest other text unchanged.
NEIGHBOUR_COSINE = 0.9999
NEIGHBOUR_BAR = 1.0
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


def export_key(path: str, options: dict[str, Any] | None = None) -> str:
    """The export folder's name: the model's files, the exporter's versions, the export options."""
    from importlib.metadata import version  # not `import torch`: seconds, for a version string

    opts = json.dumps(onnx_export.EXPORT_OPTIONS if options is None else options, sort_keys=True)
    tools = "|".join(f"{m} {version(m)}" for m in ("torch", "transformers", "onnx", "onnxruntime"))
    blob = f"{model_fingerprint(path)}|{tools}|{opts}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def ensure_export(path: str, options: dict[str, Any] | None = None) -> str:
    """The export folder of the model at `path` (model.onnx, model_int8.onnx, agreement.json),
    made on first use — written to a temporary folder and renamed, so a crash leaves nothing
    half-written and two processes exporting at once both end with a complete one."""
    options = onnx_export.EXPORT_OPTIONS if options is None else options
    root = export_root()
    final = os.path.join(root, export_key(path, options))
    if os.path.exists(os.path.join(final, "agreement.json")):
        return final
    with _LOCK:
        if os.path.exists(os.path.join(final, "agreement.json")):
            return final
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".export-", dir=root)
        try:
            _export(path, tmp, options)
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished first: keep its export
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def near_copies(texts: list[str]) -> list[str]:
    """Each text with its last word dropped (or a word added to a one-word text): a near-duplicate
    whose nearest neighbour should be its source under any encoder that agrees with torch."""
    return [t.rsplit(None, 1)[0] if len(t.split()) > 1 else t + " please" for t in texts]


def agreement(fast: np.ndarray, base: np.ndarray) -> dict[str, float]:
    """Mean / min cosine of normalised row pairs, and the fraction of rows whose nearest other
    row (by the same encoder) is the same under both."""
    cos = (fast * base).sum(1)
    sf, sb = fast @ fast.T, base @ base.T
    np.fill_diagonal(sf, -2)
    np.fill_diagonal(sb, -2)
    return {"mean": float(cos.mean()), "min": float(cos.min()),
            "neighbours": float((sf.argmax(1) == sb.argmax(1)).mean())}


def meets_bar(result: dict[str, Any]) -> bool:
    """Whether an export's calibration agreement (`agreement`) is good enough for `auto`."""
    mean = result.get("mean", 0)
    return mean >= NEIGHBOUR_COSINE and result.get("neighbours", 0) >= NEIGHBOUR_BAR


def _export(path: str, out: str, options: dict[str, Any]) -> None:
    made = onnx_export.build(path, out, options)
    st = made.pop("st")
    texts = CALIBRATION + near_copies(CALIBRATION)
    want = np.asarray(st.encode(texts, normalize_embeddings=True), np.float32)
    record: dict[str, Any] = {**made, "source": path, "options": options}
    for precision in ("fp32", "int8"):
        got = OnnxEncoder(out, precision, made["max_seq_length"], threads=1).encode(texts)
        record[precision] = agreement(got, want)
    with open(os.path.join(out, "agreement.json"), "w") as fh:
        json.dump(record, fh, indent=1)


def agreement_of(export_dir: str) -> dict[str, Any]:
    with open(os.path.join(export_dir, "agreement.json")) as fh:
        return json.load(fh)


class OnnxEncoder:
    """An exported model run on CPU by onnxruntime (`runtime="onnx"`) or OpenVINO
    (`runtime="openvino"`, which reads the same ONNX file), one text per forward.

    One text per forward on purpose: int8 dynamic quantization scales each activation tensor by
    its own range (one scale per tensor, `DynamicQuantizeLinear`), so in a batch — padded or not
    — a row's vector would depend on its neighbours; alone, a row's vector is a function of its
    text only, which the row cache needs for byte-identical output cold or warm. No padding is
    computed either. The cores are used by running rows side by side, each forward on one
    thread (onnxruntime sessions may be run from several threads at once): for the small
    (tokens x 384) matrices of one text this is faster than splitting each product across
    threads, and a row's bytes do not depend on which thread ran it."""

    def __init__(self, export_dir: str, precision: str = "int8", max_seq_length: int = 256,
                 threads: int = 0, runtime: str = "onnx"):
        from transformers import AutoTokenizer

        file = os.path.join(export_dir, "model_int8.onnx" if precision == "int8" else "model.onnx")
        self.threads = threads or os.cpu_count() or 1
        self._pool = None
        if runtime == "openvino":
            import openvino as ov

            config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
            compiled = ov.Core().compile_model(file, "CPU", config)
            request = compiled.create_infer_request()
            self._run = lambda feed: next(iter(request.infer(feed).values()))
            self._dim = int(compiled.outputs[0].get_partial_shape()[-1].get_length())
            self.threads = 1  # one infer request: forwards in turn, each on OpenVINO's threads
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
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

    def _forward(self, ids: list[int]) -> np.ndarray:
        a = np.asarray([ids], np.int64)
        return np.asarray(self._run({"input_ids": a, "attention_mask": np.ones_like(a),
                                     "token_type_ids": np.zeros_like(a)}))[0]

    def encode(self, texts: list[str], batch_size: int = 1, normalize_embeddings: bool = True,
               convert_to_numpy: bool = True, show_progress_bar: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), np.float32)
        if not len(texts):
            return out
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)["input_ids"]
        if self.threads > 1 and len(ids) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx-encode")
            # Longest first so that no thread is left with a long text at the end.
            order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
            for i, v in zip(order, self._pool.map(lambda i: self._forward(ids[i]), order), strict=True):
                out[i] = v
        else:
            for i, row in enumerate(ids):
                out[i] = self._forward(row)
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
