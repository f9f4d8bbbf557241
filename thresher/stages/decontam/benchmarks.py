"""Benchmarks as data: which file, which fields to match, and built-in presets for the usual ones.

A benchmark is read driver-side (benchmark files are small) with the ingest readers, so every
input format thresher reads (JSONL plain/.gz/.zst, Parquet, Arrow, CSV, `datasets` on disk or
on the hub) works here too. Each entry of `fields` is one *segment* of an item, matched on its
own: a field name (`question`), or a template over several fields (`{question} {choices}`: a
list-valued field is joined by spaces; `{choices:lettered}` writes "A. x B. y ...").
"""

from __future__ import annotations

import os
import string
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from thresher.core import rows
from thresher.core.errors import RecipeError
from thresher.io.ingest import InputError, plan_reads, read_task
from thresher.io.readers import reader_for
from thresher.io.records import rename_extra
from thresher.recipe.schema import Recipe, Source

# preset -> (segments to match, id field or None). Field names follow the files in
# ../shared/data (the usual Hugging Face/official releases).
PRESETS: dict[str, tuple[list[str], str | None]] = {
    "gsm8k": (["question"], None),
    "math": (["problem"], None),
    "math500": (["problem"], "unique_id"),
    "humaneval": (["prompt", "canonical_solution"], "task_id"),
    # Three segments: the question alone, and question + choices printed bare or lettered
    # ("A. ..."): letters between choices would otherwise break every n-gram spanning two.
    "mmlu": (["question", "{question} {choices}", "{question} {choices:lettered}"], "id"),
    # llm-foundry's ARC: `query` ("Question: ...") and `choices`.
    "arc": (["query", "{query} {choices}", "{query} {choices:lettered}"], None),
}


class Benchmark(BaseModel):
    """One benchmark: a local file (or a `datasets` name) and the fields to match."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Name in reports and drop reasons (default: the preset).")
    preset: Literal["gsm8k", "math", "math500", "humaneval", "mmlu", "arc"] | None = Field(
        None, description="Built-in field choice: gsm8k (question), math/math500 (problem), "
        "humaneval (prompt, canonical_solution), mmlu (question; question + choices, bare and "
        "lettered), arc (the same with query).")
    paths: list[str] = Field(default_factory=list, description="Files or globs, relative to the recipe.")
    format: Literal["auto", "jsonl", "parquet", "arrow", "csv", "hf_disk", "hf_hub"] = Field(
        "auto", description="File format; `auto` detects it from the extension.")
    fields: list[str] | None = Field(
        None, description="Segments to match, each a field name or a template like "
        "'{question} {choices}' (list fields joined by spaces; '{choices:lettered}' writes "
        "'A. x B. y'). Default: the preset's.")
    id_field: str | None = Field(
        None, description="Field with the item id; default the preset's, else `<name>/<line or row>`.")
    hf_name: str | None = Field(None, description="hf_hub: dataset name.")
    hf_config: str | None = Field(None, description="hf_hub: config name.")
    split: str | None = Field(None, description="hf_disk/hf_hub: split.")
    limit: int | None = Field(None, gt=0, description="Use only the first `limit` items (tests, quick runs).")

    @model_validator(mode="after")
    def _complete(self) -> Benchmark:
        if self.preset:
            seg, idf = PRESETS[self.preset]
            if self.fields is None:
                self.fields = list(seg)
            if self.id_field is None and "id_field" not in self.model_fields_set:
                self.id_field = idf
            if self.name is None:
                self.name = self.preset
        if not self.name:
            raise ValueError("give `name` (or a `preset`)")
        if not self.fields:
            raise ValueError("give `fields` (or a `preset`)")
        if self.format != "hf_hub" and not self.paths:
            raise ValueError("`paths` is empty")
        return self

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/ \t\n")):
            raise ValueError("no '/' or whitespace in a benchmark name")
        return v

    def read_source(self, fields: list[str] | None = None) -> Source:
        """An ingest `Source` that reads every record having all of `fields` (default: the
        fields the segments use), carrying them as extra columns."""
        needed = fields or [f for f in self.needed_fields() if f != self.id_field] or self.needed_fields()
        return Source(name=self.name, paths=self.paths, format=self.format,
                      text_template=" ".join("{" + f + "}" for f in needed), id_field=self.id_field,
                      keep_fields=needed, hf_name=self.hf_name, hf_config=self.hf_config, split=self.split,
                      max_bad_fraction=1.0)

    def needed_fields(self) -> list[str]:
        out: list[str] = []
        for seg in self.fields or []:
            names = [f for _, f, _, _ in string.Formatter().parse(seg) if f] if "{" in seg else [seg]
            out += [n for n in names if n not in out]
        if self.id_field and self.id_field not in out:
            out.append(self.id_field)
        return out


@dataclass
class Segments:
    """Every benchmark segment, flattened: what the indexes are built from."""

    text: list[str]
    item: np.ndarray  # int64: segment -> item number (global over all benchmarks)
    item_id: list[str]  # item number -> item id
    item_bench: np.ndarray  # int32: item number -> benchmark number
    bench_names: list[str]
    bench_items: list[int]  # items per benchmark
    unreadable: dict[str, int]  # benchmark -> segments skipped (missing/empty field in that row)

    @property
    def seg_bench(self) -> np.ndarray:
        return self.item_bench[self.item]


def check_benchmarks(recipe: Recipe, benchmarks: list[Benchmark], key: str = "benchmarks") -> list[str]:
    """Missing files and fields, as 'key: problem' lines (no reading beyond the first record)."""
    problems = []
    for i, b in enumerate(benchmarks):
        loc = f"{key}.{i} ({b.name})"
        # Check every needed field at once (plan_reads checks a columnar file's schema).
        probe = b.read_source(b.needed_fields())
        try:
            tasks, _ = plan_reads(recipe, [probe], with_hashes=False)
        except (InputError, RecipeError) as exc:
            problems += [f"{loc}: {p}" for p in exc.problems]
            continue
        if b.format == "hf_hub":
            continue  # its fields would have to be fetched
        # A JSONL record may lack a field that ingest would then quarantine row by row; for a
        # benchmark that is an error in the recipe, so look at the first record.
        for path, fmt in sorted({(t.path, t.format) for t in tasks}):
            have = reader_for(fmt).peek_fields(probe, path)
            if have is None:
                problems.append(f"{loc}: {path} has no records")
                continue
            missing = [f for f in b.needed_fields() if f not in have]
            if missing:
                problems.append(f"{loc}: {path}: no field {missing[0]!r} (fields: {sorted(have)})")
    return problems


class _SegmentFormatter(string.Formatter):
    """`{field}` as usual; a list field is written as its items joined by spaces, or with
    `{field:lettered}` as "A. x B. y ..." — the way exam pages print multiple choice."""

    def format_field(self, value: Any, spec: str) -> str:
        if isinstance(value, (list, tuple)):
            if spec == "lettered":
                return " ".join(f"{chr(65 + i)}. {v}" for i, v in enumerate(value))
            return " ".join(str(v) for v in value)
        if spec == "lettered":
            spec = ""
        return super().format_field(value, spec)


_FORMATTER = _SegmentFormatter()


def load_segments(recipe: Recipe, benchmarks: list[Benchmark]) -> Segments:
    """Read every benchmark's segments (driver side). Raises RecipeError if one yields nothing."""
    texts: list[str] = []
    seg_item: list[int] = []
    item_id: list[str] = []
    item_bench: list[int] = []
    bench_items: list[int] = []
    unreadable: dict[str, int] = {}
    problems = []
    for bi, b in enumerate(benchmarks):
        # Rows lacking a needed field are skipped (and counted); the fields travel as extra
        # columns and the segments are formatted here, with list-aware formatting.
        src = b.read_source()
        needed = list(src.keep_fields)
        tasks, _ = plan_reads(recipe, [src], with_hashes=False)
        n_files = len({t.path for t in tasks})
        skipped = 0
        n_items = 0
        per_seg = [0] * len(b.fields or [])
        for t in tasks:
            for batch, q in read_task(t, recipe.batch_rows):
                if q is not None:
                    skipped += q.num_rows
                if batch is None:
                    continue
                cols = {f: batch.column(rename_extra(f)).to_pylist() for f in needed}
                ids = batch.column(rows.ID).to_pylist()
                for r, (rid, fname, row_no) in enumerate(zip(ids, batch.column(rows.SOURCE_FILE).to_pylist(),
                                                          batch.column(rows.SOURCE_ROW).to_pylist(),
                                                          strict=True)):
                    if b.limit is not None and n_items >= b.limit:
                        break
                    record = {f: cols[f][r] for f in needed}
                    if not b.id_field:
                        rid = f"{b.name}/{row_no}" if n_files == 1 else f"{b.name}/{os.path.basename(fname)}:{row_no}"
                    num = len(item_id)
                    item_id.append(str(rid))
                    item_bench.append(bi)
                    n_items += 1
                    for si, seg in enumerate(b.fields or []):
                        templ = seg if "{" in seg else "{" + seg + "}"
                        # NFC, as ingest does to pool text (the fields bypass ingest's normaliser).
                        text = unicodedata.normalize("NFC", _FORMATTER.format(templ, **record))
                        if text.strip():
                            texts.append(text)
                            seg_item.append(num)
                            per_seg[si] += 1
        for si, got in enumerate(per_seg):
            if got == 0:
                problems.append(f"benchmark {b.name}: segment {(b.fields or [])[si]!r} gave no text "
                                f"(field missing or empty in every record)")
        bench_items.append(n_items)
        unreadable[b.name] = skipped  # type: ignore[index]
    if problems:
        raise RecipeError(problems, "recipe")
    return Segments(texts, np.asarray(seg_item, np.int64), item_id, np.asarray(item_bench, np.int32),
                    [b.name for b in benchmarks], bench_items, unreadable)  # type: ignore[misc]


def item_table(segs: Segments) -> pa.Table:
    return pa.table({"item_id": segs.item_id, "benchmark": [segs.bench_names[b] for b in segs.item_bench]})


def describe(b: Benchmark) -> dict[str, Any]:
    return b.model_dump(exclude_none=True)
