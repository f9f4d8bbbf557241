"""Hugging Face `datasets`: a saved dataset (and a split of a saved DatasetDict) reads like
any columnar file; a hub dataset streams through the record path. No network: the hub test
replaces `datasets.load_dataset`."""

from __future__ import annotations

import pytest

from thresher.io.ingest import InputError, plan_reads
from thresher.io.readers import READERS
from thresher.recipe.load import validate_recipe
from thresher.recipe.schema import Source

datasets = pytest.importorskip("datasets")

QA = [{"qid": 1, "question": "What is 2 + 3?"}, {"qid": 2, "question": None}, {"qid": 3, "question": "Why?"}]


def test_saved_dataset_and_split_read_like_a_columnar_file(tmp_path, read_source):
    datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA), "test": datasets.Dataset.from_list(QA[:1])}) \
        .save_to_disk(str(tmp_path / "dd"))
    good, bad = read_source({"name": "h", "paths": ["ds"], "text_field": "question", "id_field": "qid"}, batch_rows=2)
    assert [(r["source_row"], r["id"], r["text"]) for r in good] == [(0, "1", "What is 2 + 3?"), (2, "3", "Why?")]
    assert [(r["source_row"], r["reason"]) for r in bad] == [(1, "missing text field 'question'")]
    good, _ = read_source({"name": "h", "paths": ["dd"], "text_field": "question", "split": "test"})
    assert [r["text"] for r in good] == ["What is 2 + 3?"]
    recipe = validate_recipe({"sources": [{"name": "h", "paths": ["dd"], "text_field": "question"}]},
                             base_dir=str(tmp_path))
    with pytest.raises(InputError, match=r"is a DatasetDict with splits \['train', 'test'\]; set `split:`"):
        plan_reads(recipe)


def test_saved_dataset_fingerprint_covers_every_file(tmp_path):
    datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "ds"))
    reader = READERS["hf_disk"]
    size, digest = reader.fingerprint(str(tmp_path / "ds"), with_hashes=True)
    assert size > 0 and len(digest) == 64 and reader.fingerprint(str(tmp_path / "ds"), False) == (size, "")
    datasets.Dataset.from_list(QA[:2]).save_to_disk(str(tmp_path / "ds2"))
    assert reader.fingerprint(str(tmp_path / "ds2"), True)[1] != digest


def test_hub_dataset_streams_records(tmp_path, monkeypatch, read_source):
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter(QA)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = {"name": "hub", "format": "hf_hub", "hf_name": "org/qa", "text_field": "question", "id_field": "qid"}
    good, bad = read_source(source)
    assert calls == [("org/qa", None, "train", True)]
    assert [(r["source_row"], r["id"], r["text"], r["source_file"]) for r in good] == [
        (0, "1", "What is 2 + 3?", "hf://org/qa"), (2, "3", "Why?", "hf://org/qa")]
    assert [(r["source_row"], r["reason"]) for r in bad] == [(1, "missing text field 'question'")]
    recipe = validate_recipe({"sources": [source]}, base_dir=str(tmp_path))
    _, inputs = plan_reads(recipe)
    assert [(i.path, i.size, i.sha256) for i in inputs] == [("hf://org/qa", 0, "")]
    assert READERS["hf_hub"].peek_fields(Source(**source), "hf://org/qa") == {"qid", "question"}
