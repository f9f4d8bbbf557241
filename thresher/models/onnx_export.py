"""Make the ONNX files of an embedding model: export, fuse, smooth, quantize.

Why hand-written rather than sentence-transformers' own `backend="onnx"`: that path needs
`optimum-onnx`, whose only release (0.1.0) pins transformers < 4.58, while sentence-transformers
6.2 needs transformers >= 5 — installing it breaks the venv. What is left is small:

1. `torch.onnx.export` of the transformer + pooling from the local weights (no download), with
   eager attention: the sdpa graph (IsNaN / Where around the softmax) does not fuse.
2. onnxruntime's own transformer optimizer (`model_type="bert"`): Attention, BiasGelu and
   SkipLayerNormalization fused ops — 55 nodes instead of ~700 for MiniLM-L6, and the fused
   Attention quantizes as one QAttention. Skipped (the plain export kept) for models it cannot fuse.
3. SmoothQuant-style smoothing of the weight MatMuls (`smooth_alpha`): each input channel j is
   divided by s_j = amax_j^a / wmax_j^(1-a) and the weight's row j multiplied by it — the same
   function in fp32, but the activation outlier channels (LayerNorm and GELU outputs) no longer
   set the per-tensor int8 scale of every other channel. amax comes from a seeded set of random
   vocabulary sequences (`calibration_ids`), so the export depends on the model only, never on data.
4. `quantize_dynamic` (int8 per-channel weights, MatMul with constant B only) of every weight
   MatMul / Attention except those named in `int8_skip` (see `EXPORT_OPTIONS`).

The numbers behind each choice are printed by bench/embed.py and recorded in its docstring.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

# Everything that changes the exported files: part of the export key (embedding_backends), so a
# changed option is a new export, never a stale one. Bump `format` when the code changes them.
EXPORT_OPTIONS: dict[str, Any] = {
    "format": 3,
    "opset": 17,
    "attention": "eager",
    "fuse": "bert",
    "smooth_alpha": 0.85,
    "calibration": {"seed": 0, "sequences": 200, "min_tokens": 8, "max_tokens": 128},
    # Weight MatMuls by role (`roles`): "attention" (fused QKV + scores), "attention_output"
    # (the dense after attention), "ffn_input" (hidden -> 4x hidden), "ffn_output" (after GELU).
    # Not smoothed: the FFN output (with random-word calibration its GELU ranges are not those of
    # text: mean cosine 0.986 smoothed vs 0.994 not) and attention (see `smooth`).
    "smooth_skip": ["ffn_output"],
    # Left in fp32 in the int8 file: none. Keeping the attention and FFN output in fp32 raised
    # the mean cosine to fp32 torch from 0.994 to 0.999 but also the time to that of fp32, and
    # the same nearest neighbour (1,000 rows among 10,000) only to ~91 %: no int8 mix reached
    # 98 %, so the int8 file is the fastest one, and `auto` runs fp32 (bench/embed.py).
    # Why no per-channel int8 can: with int8 weights alone (activations fp32, simulated) the
    # same neighbour held for 96.2 % of 500 pool rows among 3,000; 2.6 % of those rows have
    # their two nearest neighbours within 0.001 cosine in fp32. Block-wise 8-bit weights (32
    # per scale: onnxruntime's MatMulNBits, int8 compute) kept 98.8 % (mean cosine 0.99984)
    # but ran at 0.82x the fp32 export's speed on this AVX2 CPU (no VNNI), so it is not made.
    "int8_skip": [],
}


def pooling_mode(path: str) -> str:
    cfg = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.exists(cfg):
        return "mean"
    with open(cfg) as fh:
        c = json.load(fh)
    modes = [k[len("pooling_mode_"):] for k, v in c.items() if k.startswith("pooling_mode_") and v]
    return modes[0].replace("_tokens", "") if len(modes) == 1 else "+".join(modes)


def export_onnx(st, path: str, file: str, options: dict[str, Any]) -> str:
    """`st` (a SentenceTransformer loaded with eager attention) -> fp32 ONNX at `file`; its pooling."""
    import torch

    pooling = pooling_mode(path)
    if pooling not in ("mean", "cls"):
        raise ValueError(f"onnx embedding backend: model {path} pools with {pooling!r}; only mean "
                         "and cls pooling are exported: set backend: torch")
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
    with torch.no_grad():
        torch.onnx.export(Pooled(hf), tuple(enc[n] for n in names), file, input_names=names,
                          output_names=["sentence_embedding"], opset_version=options["opset"], dynamo=False,
                          dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names},
                                        "sentence_embedding": {0: "batch"}})
    return pooling


def fuse(file: str, config, options: dict[str, Any]) -> bool:
    """Rewrite `file` with onnxruntime's fused transformer ops; False (file untouched) when the
    optimizer does not find one Attention per layer (another architecture)."""
    if not options.get("fuse"):
        return False
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    layers = getattr(config, "num_hidden_layers", -1)
    if not heads or not hidden:
        return False
    opt = optimize_model(file, model_type=options["fuse"], num_heads=heads, hidden_size=hidden, opt_level=0)
    if opt.get_fused_operator_statistics().get("Attention", 0) != layers:
        return False
    opt.save_model_to_file(file)
    return True


def calibration_ids(tokenizer, options: dict[str, Any]) -> list[list[int]]:
    """Seeded random sequences of whole-word vocabulary tokens between [CLS] and [SEP]: what the
    smoothing's per-channel activation ranges are measured on. BERT-style outlier channels are a
    property of the weights, which random words exercise; no text corpus is needed."""
    c = options["calibration"]
    rng = np.random.default_rng(c["seed"])
    vocab = sorted(i for t, i in tokenizer.get_vocab().items() if t.isalpha() and len(t) > 2)
    head = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
    tail = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
    return [head + [int(x) for x in rng.choice(vocab, int(rng.integers(c["min_tokens"], c["max_tokens"])))] + tail
            for _ in range(c["sequences"])]


def weight_matmuls(model) -> list:
    """The MatMul / Attention nodes whose second input is a weight (an initializer)."""
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Attention") and n.input[1] in inits]


def smooth(file: str, out: str, ids: list[list[int]], alpha: float, skip: list[str]) -> None:
    """SmoothQuant the weight MatMuls of `file` (see the module docstring) into `out`.

    Attention is left alone: its fused QKV weight is quantized per tensor, which smoothing
    makes worse (mean cosine 0.961 vs 0.991 unsmoothed at alpha 0.5, bench/embed.py's rows)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(file)
    role = roles(model)
    nodes = [n for n in weight_matmuls(model) if n.op_type == "MatMul" and role[n.name] not in skip]
    inputs = list(dict.fromkeys(n.input[0] for n in nodes))
    probe = onnx.load(file)
    for name in inputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name for i in session.get_inputs()}
    amax: dict[str, np.ndarray] = {}
    for seq in ids:
        a = np.asarray([seq], np.int64)
        feed = {"input_ids": a, "attention_mask": np.ones_like(a), "token_type_ids": np.zeros_like(a)}
        for name, v in zip(inputs, session.run(inputs, {k: v for k, v in feed.items() if k in feeds}), strict=True):
            r = np.abs(v).reshape(-1, v.shape[-1]).max(0)
            amax[name] = np.maximum(amax.get(name, 0), r)
    inits = {t.name: t for t in model.graph.initializer}
    targets = {id(n) for n in nodes}
    order = []
    for n in model.graph.node:
        if id(n) in targets:
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            s = np.clip(np.maximum(amax[n.input[0]], 1e-5) ** alpha
                        / np.maximum(np.abs(w).max(1), 1e-5) ** (1 - alpha), 1e-3, 1e3).astype(np.float32)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(w * s[:, None], n.input[1]))
            model.graph.initializer.append(numpy_helper.from_array(1 / s, n.name + "_smooth_inv"))
            order.append(helper.make_node("Mul", [n.input[0], n.name + "_smooth_inv"], [n.name + "_smoothed"],
                                          name=n.name + "_smooth"))
            n.input[0] = n.name + "_smoothed"
        order.append(n)
    del model.graph.node[:]
    model.graph.node.extend(order)
    onnx.save(model, out)


def roles(model) -> dict[str, str]:
    """node name -> role (see EXPORT_OPTIONS["int8_skip"]) of each weight MatMul / Attention, read
    from the graph's structure, not its names: a MatMul with a GELU (fused, or its Erf) a few
    nodes upstream is the FFN output, one with a GELU a few nodes downstream the FFN input, the
    rest the attention output (in the plain export, also the separate Q / K / V projections).
    Works on the fused and the plain export."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    gelu = {"Gelu", "BiasGelu", "FastGelu", "Erf"}
    # A sublayer ends at these: the walk stops there, so it never reaches the layer before.
    walls = {"MatMul", "Attention", "LayerNormalization", "SkipLayerNormalization"}

    def near(node, depth: int, up: bool) -> set[str]:
        seen, frontier = set(), [node]
        for _ in range(depth):
            nxt = []
            for n in frontier:
                if n is not node and n.op_type in walls:
                    continue
                if up:
                    nxt += [producer[i] for i in n.input if i in producer]
                else:
                    nxt += [c for o in n.output for c in consumers.get(o, [])]
            seen |= {n.op_type for n in nxt}
            frontier = nxt
        return seen

    out = {}
    for n in weight_matmuls(model):
        if n.op_type == "Attention":
            out[n.name] = "attention"
        elif near(n, 4, up=True) & gelu:
            out[n.name] = "ffn_output"
        elif near(n, 3, up=False) & gelu:
            out[n.name] = "ffn_input"
        else:
            out[n.name] = "attention_output"
    return out


def quantize(file: str, out: str, skip: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(file)
    exclude = [name for name, role in roles(model).items() if role in skip]
    # Per-channel weights, and only weight (constant) matmuls: the default per-tensor
    # quantization of every MatMul, attention's activation x activation products included, gave
    # mean cosine 0.952 to fp32 on real pool rows.
    quantize_dynamic(file, out, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=exclude,
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})


def build(path: str, out: str, options: dict[str, Any]) -> dict[str, Any]:
    """Write model.onnx (fp32, fused), model_int8.onnx and the tokenizer into `out`; what was done."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu", model_kwargs={"attn_implementation": options["attention"]})
    fp32 = os.path.join(out, "model.onnx")
    pooling = export_onnx(st, path, fp32, options)
    fused = fuse(fp32, st[0].auto_model.config, options)
    st.tokenizer.save_pretrained(out)
    to_quantize = fp32
    if options.get("smooth_alpha"):
        to_quantize = os.path.join(out, "smoothed.onnx")
        smooth(fp32, to_quantize, calibration_ids(st.tokenizer, options), options["smooth_alpha"],
               list(options.get("smooth_skip", [])))
    quantize(to_quantize, os.path.join(out, "model_int8.onnx"), list(options.get("int8_skip", [])))
    if to_quantize != fp32:
        os.remove(to_quantize)
    return {"pooling": pooling, "fused": fused, "max_seq_length": int(st.max_seq_length), "st": st}
