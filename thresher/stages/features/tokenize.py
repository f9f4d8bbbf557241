"""`tokenize`: model tokens for training — `input_ids`, a loss mask and `n_tokens`.

In:  batches with a text column (`text_field`, default `text`) and optionally a chat column
     (`messages_field`, default `messages`: a list of {role, content}); a row whose chat
     column is set is rendered with the tokenizer's chat template, any other row is text.
Out: the same rows plus `input_ids` list<int32>, `loss_mask` list<int8> (1 where a training
     loss applies: every token of a text row, its EOS included; in a chat row only the
     assistant turns' content and the end token that closes each), `n_tokens` int32
     (= len(input_ids), model tokens). Text rows end with the tokenizer's EOS (`add_eos`);
     chat rows are exactly what the template renders (its turn-end token is the EOS).
     `output.pack` then packs these into fixed-length sequences (`thresher.io.packing`).
Cost: CPU only: one batch-encode call (HF `tokenizers`, Rust, all cores) per record batch;
     with packing, ~0.95x the throughput of a bare `tokenizers` encode_batch loop (bench/pack.py:
     ~190k tokens per CPU-second with SmolLM2's tokenizer; packing is ~2 % of it). Chat rows also render the template
     once, plus up to twice per assistant turn (Jinja via transformers, ~1 ms a render).
     Memory: ~5 bytes per token of the batch; the tokenizer once per worker.

The tokenizer is `params.tokenizer`, else the recipe's top-level `tokenizer:` (a local folder
or file, or a shorthand such as `minilm` / `smollm2`; see `thresher.models.tokenizer`).

How assistant spans are found: by rendering prefixes of the conversation. For assistant turn
i, `render(messages[:i], add_generation_prompt=True)` is the text before the reply and
`render(messages[:i+1])` the text through its end; the reply's content is located in between
and the loss covers its tokens plus the first special token after it (`<|im_end|>`, `</s>`,
`<|eot_id|>`: the end of turn the model must learn to emit) — not the role header and not the
newline a template writes after the end token. Why not `return_assistant_tokens_mask`: it
needs `{% generation %}` markers in the template, which most shipped templates (SmolLM2's,
Llama's, Qwen's) lack. A template that rewrites earlier turns (so a prefix's rendering is not
a prefix of the whole) is refused with the row's id, since no span could be trusted. The whole
rendered conversation is then encoded in one piece, so its tokens are exactly the ones the
tokenizer gives that text; char offsets map the spans onto tokens.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from thresher.core import Feature, StageParams, rows
from thresher.core.counters import count_by_source, counter
from thresher.models.tokenizer import TokenizerError, load_tokenizer, require_tokenizer

INPUT_IDS, LOSS_MASK, N_TOKENS = "input_ids", "loss_mask", "n_tokens"


class TokenizeParams(StageParams):
    tokenizer: str | None = Field(
        None, description="Tokenizer: a local folder/file or a shorthand (`minilm`, `smollm2`). "
        "Default: the recipe's top-level `tokenizer:`.")
    text_field: str = Field("text", description="Column holding the text of plain rows.")
    messages_field: str | None = Field(
        "messages", description="Chat column (list of {role, content}); rows where it is set are "
        "rendered with the tokenizer's chat template. Used when the batch has it; null: never.")
    add_eos: bool = Field(True, description="End every text row with the tokenizer's EOS token.")


def _list_array(lengths: np.ndarray, flat: np.ndarray, type_: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, type_))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type_))


def _flatten(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(chain.from_iterable(ids), np.int32, int(lengths.sum()))
    return lengths, flat


class ChatTemplateError(ValueError):
    pass


def _render(hf: Any, messages: list[dict], **kw: Any) -> str:
    return hf.apply_chat_template(messages, tokenize=False, **kw)


def loss_spans(hf: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """(rendered conversation, [(reply start, content end, turn end) char positions] per
    assistant turn)."""
    full = _render(hf, messages)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = _render(hf, messages[:i], add_generation_prompt=True) if i else ""
        upto = full if i == len(messages) - 1 else _render(hf, messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ChatTemplateError("the chat template renders earlier turns differently once later "
                                    "turns follow, so assistant spans cannot be located")
        content = m.get("content") or ""
        if i and not content:
            spans.append((len(before), len(before), len(upto)))
            continue
        for probe in (content, content.strip()):
            at = upto.rfind(probe, len(before)) if probe else -1
            if at >= 0:
                spans.append((at, at + len(probe), len(upto)))
                break
        else:  # the template rewrote the content: the whole reply segment is trained on
            spans.append((len(before), len(upto), len(upto)))
    return full, spans


def chat_mask(starts: np.ndarray, ends: np.ndarray, special: np.ndarray,
              spans: list[tuple[int, int, int]]) -> np.ndarray:
    """Loss mask over tokens (their char `starts`/`ends`, `special` flags) for `loss_spans`'
    spans: every token holding part of the content (one that merged across the header's last
    character too), then the turn's tokens up to and including its first special token (all of
    them when it has none)."""
    mask = np.zeros(len(starts), np.int8)
    for a, c_end, b in spans:
        lo = int(np.searchsorted(ends, a, side="right"))
        mid, hi = np.searchsorted(starts, [c_end, b], side="left")
        mask[lo:mid] = 1
        tail = np.flatnonzero(special[mid:hi])
        mask[mid: mid + tail[0] + 1 if len(tail) else hi] = 1
    return mask


class Tokenize(Feature):
    __doc__ = __doc__
    type_name = "tokenize"
    Params = TokenizeParams
    cost = "CPU: one batch-encode per record batch (~190k tokens per CPU-second); chat rows render the template"

    _tok: Any = None  # set by setup() on each worker, never pickled with the stage

    def spec(self) -> str | None:
        recipe = self.ctx.recipe
        return self.params.tokenizer or (getattr(recipe, "tokenizer", None) if recipe is not None else None)

    def base_dir(self) -> str:
        recipe = self.ctx.recipe
        return recipe.base_dir if recipe is not None else "."

    def check(self) -> list[str]:
        if self.params.tokenizer:
            try:
                load_tokenizer(self.params.tokenizer, self.base_dir())
            except TokenizerError as exc:  # its one line names the value and what to give instead
                return [f"params.{exc}"]
            return []
        if not self.spec():
            return ["params.tokenizer: no tokenizer given: set `tokenizer:` at the top of the recipe "
                    "(or this stage's params.tokenizer) to a local tokenizer folder/file, `minilm` or `smollm2`"]
        require_tokenizer(self.ctx.recipe)  # the recipe's own key: raised as a recipe error
        return []

    def setup(self) -> None:
        if self._tok is None:
            self._tok = load_tokenizer(self.spec(), self.base_dir())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_tok", None)
        return state

    def columns(self, batch: pa.RecordBatch) -> dict[str, Any]:
        p = self.params
        self.setup()
        n = batch.num_rows
        chat_idx = np.zeros(0, np.int64)
        if p.messages_field and p.messages_field in batch.schema.names:
            msgs = batch.column(p.messages_field)
            if not (pa.types.is_list(msgs.type) or pa.types.is_large_list(msgs.type)):
                raise TypeError(f"{self.name}: column {p.messages_field!r} is {msgs.type}, not a list of "
                                "{role, content}; give the source rows as lists, or set params.messages_field: "
                                "null to tokenize only the text")
            chat_idx = np.flatnonzero(pc.fill_null(pc.list_value_length(msgs), 0).to_numpy(zero_copy_only=False) > 0)
        if len(chat_idx) == n and n:
            text_idx = np.zeros(0, np.int64)
        elif len(chat_idx):
            text_idx = np.setdiff1d(np.arange(n), chat_idx)
        else:
            text_idx = None  # every row
        parts = []
        if text_idx is None or len(text_idx):
            parts.append(self._text_part(batch, text_idx))
        if len(chat_idx):
            parts.append(self._chat_part(batch, chat_idx))
        if len(parts) == 1:
            ids, mask = parts[0]
        else:  # back into row order: text rows were encoded first, then chat rows
            where = np.argsort(np.concatenate((text_idx, chat_idx)), kind="stable")
            ids = pa.concat_arrays([parts[0][0], parts[1][0]]).take(pa.array(where))
            mask = pa.concat_arrays([parts[0][1], parts[1][1]]).take(pa.array(where))
        n_tokens = pc.list_value_length(ids).cast(pa.int32())
        counter(f"{self.name}/tokens").inc(int(pc.sum(n_tokens).as_py() or 0))
        counter(f"{self.name}/chat_rows").inc(len(chat_idx))
        if rows.SOURCE in batch.schema.names and n:  # absent when called on bare batches (benches)
            count_by_source(f"{self.name}/tokenized", batch)
            # Per-source token totals: packed shards no longer have a row per source to sum.
            per_source = pa.table({"s": batch.column(rows.SOURCE), "n": n_tokens}).group_by("s").aggregate(
                [("n", "sum")])
            for item in per_source.to_pylist():
                counter(f"{self.name}/tokens_by_source/{item['s']}").inc(int(item["n_sum"] or 0))
        return {INPUT_IDS: ids, LOSS_MASK: mask, N_TOKENS: n_tokens}

    def _text_part(self, batch: pa.RecordBatch, idx: np.ndarray | None) -> tuple[pa.Array, pa.Array]:
        p = self.params
        if p.text_field not in batch.schema.names:
            raise KeyError(f"{self.name}: text_field {p.text_field!r} is not a column "
                           f"(columns: {', '.join(batch.schema.names)}); set params.text_field")
        col = batch.column(p.text_field)
        if idx is not None:
            col = col.take(pa.array(idx))
        texts = pc.fill_null(col.cast(pa.string()), "").to_pylist()
        backend = getattr(self._tok, "tokenizer", None)
        if backend is not None:  # encode_batch: ~20 % less CPU than encode_batch_fast here (bench/pack.py)
            ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            ids = self._tok.encode(texts)
        lengths, flat = _flatten(ids)
        if p.add_eos:
            eos = self._tok.eos_id
            if eos is None:
                raise ValueError(f"{self.name}: the tokenizer has no EOS token; set params.add_eos: false "
                                 "or use a tokenizer that defines one")
            flat = np.insert(flat, np.cumsum(lengths), np.int32(eos))
            lengths = lengths + 1
        return _list_array(lengths, flat, pa.int32()), _list_array(lengths, np.ones(len(flat), np.int8), pa.int8())

    def _chat_part(self, batch: pa.RecordBatch, idx: np.ndarray) -> tuple[pa.Array, pa.Array]:
        hf = self._tok.hf
        if not getattr(hf, "chat_template", None):
            raise ValueError(f"{self.name}: rows have {self.params.messages_field!r} but the tokenizer has no "
                             "chat template; use one that has (e.g. `smollm2`) or set params.messages_field: null")
        convs = batch.column(self.params.messages_field).take(pa.array(idx)).to_pylist()
        ids_col = batch.column("id").take(pa.array(idx)).to_pylist() if "id" in batch.schema.names else idx.tolist()
        rendered, all_spans = [], []
        for rid, conv in zip(ids_col, convs, strict=True):
            try:
                text, spans = loss_spans(hf, conv)
            except ChatTemplateError as exc:
                raise ValueError(f"{self.name}: row {rid!r}: {exc}; use a template without "
                                 "history rewriting or render the chat to text first") from None
            rendered.append(text)
            all_spans.append(spans)
        # The handle's Rust tokenizer (no truncation), with char offsets to map spans onto tokens.
        backend = getattr(self._tok, "tokenizer", None) or hf.backend_tokenizer
        encodings = backend.encode_batch(rendered, add_special_tokens=False)
        special_ids = np.asarray(sorted(set(hf.all_special_ids)), np.int64)
        ids, masks = [], []
        for enc, spans in zip(encodings, all_spans, strict=True):
            tok = np.asarray(enc.ids, np.int64)
            offsets = np.asarray(enc.offsets, np.int64).reshape(len(tok), 2)
            masks.append(chat_mask(offsets[:, 0], offsets[:, 1], np.isin(tok, special_ids), spans))
            ids.append(tok.astype(np.int32))
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        return (_list_array(lengths, np.concatenate(ids), pa.int32()),
                _list_array(lengths, np.concatenate(masks), pa.int8()))
