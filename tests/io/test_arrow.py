"""Arrow IPC: the file and the stream format both read, whatever the extension says."""

from __future__ import annotations

import pyarrow as pa
import pytest

from thresher.io.ingest import InputError, plan_reads
from thresher.recipe.load import validate_recipe

TABLE = pa.table({"text": ["a", "b", None], "n": [1, 2, 3]})


def _write(path, stream: bool) -> None:
    with pa.OSFile(str(path), "wb") as f, (pa.ipc.new_stream if stream else pa.ipc.new_file)(f, TABLE.schema) as w:
        w.write_table(TABLE)


@pytest.mark.parametrize("name,stream", [("f.arrow", False), ("s.arrow", True), ("s.feather", True), ("f.ipc", False)])
def test_file_and_stream_formats_give_the_same_rows(tmp_path, read_source, name, stream):
    _write(tmp_path / name, stream)
    good, bad = read_source({"name": "a", "paths": [name]})
    assert [(r["source_row"], r["text"], r["n"]) for r in good] == [(0, "a", 1), (1, "b", 2)]
    assert [(r["source_row"], r["reason"], r["raw"]) for r in bad] == [
        (2, "missing text field 'text'", b'{"text":null,"n":3}')]


def test_missing_field_is_refused_before_the_run(tmp_path):
    _write(tmp_path / "s.arrow", stream=True)
    recipe = validate_recipe({"sources": [{"name": "a", "paths": ["s.arrow"], "text_field": "body"}]},
                             base_dir=str(tmp_path))
    with pytest.raises(InputError) as exc:
        plan_reads(recipe)
    assert exc.value.problems == [f"sources.a: {tmp_path / 's.arrow'}: no field 'body' (fields: ['text', 'n'])"]
