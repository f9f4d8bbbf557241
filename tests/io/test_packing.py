"""`pack_table` / `unpack`: fixed-length sequences, exact labels/positions, lossless on real text."""

from __future__ import annotations

import gzip
import json
import random
from itertools import islice

import numpy as np
import pyarrow as pa
import pytest

from thresher.io.packing import IGNORE_INDEX, pack_table, unpack


def table(docs: list[list[int]], masks: list[list[int]] | None = None, ids: list | None = None) -> pa.Table:
    cols = {"id": ids or [f"d{i}" for i in range(len(docs))],
            "input_ids": pa.array(docs, pa.list_(pa.int32()))}
    if masks is not None:
        cols["loss_mask"] = pa.array(masks, pa.list_(pa.int8()))
    return pa.table(cols)


ABC = table([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11, 12]], ids=["a", "b", "c"])


def test_greedy_exact_layout():
    rows = pack_table(ABC, 4, "greedy", pad_id=0).to_pylist()
    assert rows == [
        {"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, -100], "position_ids": [0, 1, 2, 0],
         "attention_mask": [1, 1, 1, 1], "doc_ids": ["a", "b"], "doc_offsets": [0, 3], "doc_lengths": [3, 1]},
        {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "position_ids": [0, 0, 1, 2],
         "attention_mask": [1, 1, 1, 1], "doc_ids": ["b", "c"], "doc_offsets": [0, 1], "doc_lengths": [1, 3]},
        {"input_ids": [9, 10, 11, 12], "labels": [-100, 10, 11, 12], "position_ids": [0, 1, 2, 3],
         "attention_mask": [1, 1, 1, 1], "doc_ids": ["c"], "doc_offsets": [0], "doc_lengths": [4]},
    ]


def test_greedy_pads_only_the_last_sequence():
    rows = pack_table(ABC, 5, "greedy", pad_id=-1).to_pylist()
    assert [r["input_ids"] for r in rows] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, -1, -1, -1]]
    assert rows[2]["attention_mask"] == [1, 1, 0, 0, 0]
    assert rows[2]["labels"] == [-100, 12, -100, -100, -100]  # 11 continues c: masked as a piece start
    assert rows[2]["position_ids"] == [0, 1, 0, 1, 2]  # padding counts from 0 on its own
    assert all(all(r["attention_mask"]) for r in rows[:-1])


def test_best_fit_exact_layout():
    # c (7) splits into a 3-token head, packed like a document, and one full sequence right
    # after it; a (3) does not fit the 1 token left beside c's head, nor does b (2).
    rows = pack_table(ABC, 4, "best_fit", pad_id=0).to_pylist()
    assert [r["input_ids"] for r in rows] == [[6, 7, 8, 0], [9, 10, 11, 12], [1, 2, 3, 0], [4, 5, 0, 0]]
    assert [r["doc_ids"] for r in rows] == [["c"], ["c"], ["a"], ["b"]]
    assert [r["attention_mask"] for r in rows][3] == [1, 1, 0, 0]
    assert rows[3]["labels"] == [-100, 5, -100, -100]


def test_best_fit_puts_each_document_in_the_fullest_sequence_it_fits():
    t = table([[1] * 6, [2] * 5, [3] * 4, [4] * 3, [5] * 2, [6] * 1])
    rows = pack_table(t, 8, "best_fit").to_pylist()
    # decreasing: 6 -> s0 (2 left), 5 -> s1 (3 left), 4 -> s2 (4 left), 3 -> s1 (0), 2 -> s0 (0), 1 -> s2
    assert [r["doc_ids"] for r in rows] == [["d0", "d4"], ["d1", "d3"], ["d2", "d5"]]
    assert [sum(r["attention_mask"]) for r in rows] == [8, 8, 5]
    assert [r["doc_offsets"] for r in rows] == [[0, 6], [0, 5], [0, 4]]


def test_loss_mask_and_document_starts_become_ignored_labels():
    t = table([[10, 11, 12], [20, 21, 22, 23]], masks=[[0, 1, 1], [1, 0, 1, 1]])
    row = pack_table(t, 8, "greedy", pad_id=99).to_pylist()[0]
    assert row["input_ids"] == [10, 11, 12, 20, 21, 22, 23, 99]
    # first token of each document, mask 0 and padding -> -100
    assert row["labels"] == [-100, 11, 12, -100, -100, 22, 23, -100]
    assert row["position_ids"] == [0, 1, 2, 0, 1, 2, 3, 0]


@pytest.mark.parametrize("method", ["greedy", "best_fit"])
def test_lossless_on_random_documents_including_empty_ones(method):
    rng = random.Random(7)
    for _ in range(40):
        n, seq_len = rng.randint(0, 25), rng.randint(1, 17)
        docs = [[rng.randint(1, 999) for _ in range(rng.choice([0, rng.randint(1, 4), rng.randint(1, 60)]))]
                for _ in range(n)]
        packed = pack_table(table(docs), seq_len, method)
        assert unpack(packed) == {f"d{i}": d for i, d in enumerate(docs)}
        assert set(map(len, packed.column("input_ids").to_pylist())) <= {seq_len}
        if method == "greedy":
            assert packed.num_rows == max(-(-sum(map(len, docs)) // seq_len), 1 if n else 0)
        for r in packed.to_pylist():
            for off, ln in zip(r["doc_offsets"], r["doc_lengths"], strict=True):
                assert r["position_ids"][off:off + ln] == list(range(ln))


def test_best_fit_splits_only_documents_longer_than_seq_len_and_is_deterministic():
    rng = random.Random(3)
    docs = [[rng.randint(1, 50)] * rng.randint(1, 40) for _ in range(300)]
    packed = pack_table(table(docs), 32, "best_fit")
    pieces: dict[str, int] = {}
    for ids in packed.column("doc_ids").to_pylist():
        for d in ids:
            pieces[d] = pieces.get(d, 0) + 1
    assert all(pieces[f"d{i}"] == 1 + (len(d) > 32) - (len(d) % 32 == 0 and len(d) > 32)
               for i, d in enumerate(docs))
    assert pack_table(table(docs), 32, "best_fit").equals(packed)


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match="add a `tokenize` stage"):
        pack_table(pa.table({"id": ["a"], "text": ["x"]}), 4)
    with pytest.raises(ValueError, match="row 1 .*'d1'.* 2 input_ids but 1 loss_mask"):
        pack_table(table([[1], [2, 3]], masks=[[1], [1]]), 4)
    with pytest.raises(ValueError, match="method 'first_fit'"):
        pack_table(ABC, 4, "first_fit")
    assert pack_table(table([]), 4).num_rows == 0


@pytest.fixture(scope="module")
def real_docs(shared_data):
    """300 general_pool paragraphs (every source's style) in MiniLM tokens + EOS."""
    from thresher.models.tokenizer import load_tokenizer

    tok = load_tokenizer("minilm")
    with gzip.open(shared_data / "general_pool" / "pool.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in islice(fh, 900)][::3]
    return tok, [r["id"] for r in rows], [d + [tok.eos_id] for d in tok.encode([r["text"] for r in rows])]


@pytest.mark.parametrize("method", ["greedy", "best_fit"])
def test_lossless_on_real_text_with_a_real_tokenizer(real_docs, method):
    tok, ids, docs = real_docs
    packed = pack_table(table(docs, ids=ids), 128, method, pad_id=tok.pad_id)
    assert set(map(len, packed.column("input_ids").to_pylist())) == {128}
    back = unpack(packed)
    if method == "greedy":  # documents come back in input order
        assert list(back) == ids
    assert back == dict(zip(ids, docs, strict=True))
    mask = np.asarray(packed.column("attention_mask").to_pylist())
    assert int(mask.sum()) == sum(map(len, docs))
    labels = np.asarray(packed.column("labels").to_pylist())
    starts = sum(len(x) for x in packed.column("doc_ids").to_pylist())
    assert int((labels != IGNORE_INDEX).sum()) == sum(map(len, docs)) - starts
