"""The recipe's schema: every key, its type, default and meaning (pydantic, unknown keys rejected).

Loading a YAML file and checking stage params against their stages is `recipe.load`'s job, so
this module depends only on `core.errors` and anything may import it.

Configuration is data. Every key is documented here (the README's recipe reference says the
same), and an invalid recipe fails with the key path and what was wrong, never half-way
through a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from thresher.core.errors import RecipeError
from thresher.recipe.base import StrictModel
from thresher.recipe.output import Cache, Output, Pack, Runner

__all__ = ["FORMATS", "Cache", "Normalize", "Output", "Pack", "Recipe", "RecipeError", "Runner", "Source",
           "StageSpec", "detect_format", "expand_source_files"]
from thresher.io import fs

FORMATS = ("jsonl", "parquet", "arrow", "csv", "hf_disk", "hf_hub")

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".json.gz": "jsonl",
    ".jsonl.zst": "jsonl",
    ".json.zst": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".csv": "csv",
    ".csv.gz": "csv",
}


class Normalize(StrictModel):
    """Text normalisation applied at ingest (vectorised with pyarrow.compute)."""

    nfc: bool = Field(True, description="Unicode NFC normalisation.")
    strip_control: bool = Field(
        True, description="Remove control characters (keeps tab and newline)."
    )
    fold_whitespace: bool = Field(
        False, description="Collapse runs of whitespace to one space and trim."
    )


class Source(StrictModel):
    """One input corpus: files (paths or globs) of one format."""

    name: str = Field(..., description="Source name, written to the `source` column.")
    paths: list[str] = Field(
        default_factory=list,
        description="Files or globs (relative to the recipe file). For hf_disk: the saved "
        "dataset directory. For hf_hub: leave empty and set `hf_name`.",
    )
    format: Literal["auto", "jsonl", "parquet", "arrow", "csv", "hf_disk", "hf_hub"] = Field(
        "auto", description="Input format; `auto` detects it from the extension."
    )
    text_field: str | None = Field(
        "text", description="Field holding the text that features and selectors read."
    )
    text_template: str | None = Field(
        None,
        description="Instead of `text_field`: a Python format template over fields, "
        "e.g. '{question}\\n\\n{answer}'.",
    )
    id_field: str | None = Field(
        None, description="Field with the source's own id; else the id is a content hash."
    )
    keep_fields: list[str] | Literal["all"] = Field(
        "all", description="Other fields carried through to the shards (`all` or a list)."
    )
    normalize: Normalize = Field(default_factory=Normalize)
    max_bad_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Fail the run when more than this fraction of the source's rows is "
        "quarantined.",
    )
    hf_name: str | None = Field(None, description="hf_hub: dataset name on the hub.")
    hf_config: str | None = Field(None, description="hf_hub: dataset config name.")
    split: str | None = Field(
        None, description="hf_disk/hf_hub: the split to read (required for DatasetDicts)."
    )
    csv_delimiter: str = Field(",", description="csv: field delimiter.")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
            raise ValueError("use letters, digits, '_', '-' or '.' only")
        return v

    @model_validator(mode="after")
    def _text_choice(self) -> Source:
        if self.text_template is not None:
            self.text_field = None
        elif not self.text_field:
            raise ValueError("give `text_field` or `text_template`")
        if self.format == "hf_hub":
            if not self.hf_name:
                raise ValueError("format hf_hub needs `hf_name`")
        elif not self.paths:
            raise ValueError("`paths` is empty")
        return self

    def template_fields(self) -> list[str]:
        if self.text_template is None:
            return [self.text_field]  # type: ignore[list-item]
        import string

        return [f for _, f, _, _ in string.Formatter().parse(self.text_template) if f]


class StageSpec(StrictModel):
    """One pipeline stage: `type` names it, `params` configure it."""

    type: str = Field(..., description="Stage type, e.g. exact_dedup, ngram_features, embed.")
    name: str | None = Field(
        None, description="Name for stats and reports (default: the type; must be unique)."
    )
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        # Names key counters (`<stage>/dropped/<reason>/<source>`) and report file names.
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
            raise ValueError("use letters, digits, '_', '-' or '.' only")
        return v


class Recipe(StrictModel):
    """A whole curation run."""

    name: str = Field("thresher-run", description="Run name (flow run and manifest).")
    seed: int = Field(0, description="Seed for every random choice (shuffle, sampling).")
    sources: list[Source] = Field(..., min_length=1)
    stages: list[StageSpec] = Field(default_factory=list)
    output: Output = Field(default_factory=Output)
    cache: Cache = Field(default_factory=Cache)
    runner: Runner = Field(default_factory=Runner)
    tokenizer: str | None = Field(
        None,
        description="Tokenizer for `n_tokens`, token budgets and packing: a local folder or file "
        "(tokenizer.json / a .gguf), or a name in the local Hugging Face cache (loaded offline). "
        "Without one, counts are words (`n_words`).",
    )
    batch_rows: int = Field(
        4096, gt=0, description="Rows per Arrow record batch travelling through the pipeline."
    )
    on_duplicate_id: Literal["error", "warn", "rename"] = Field(
        "warn",
        description="An id that more than one row has (within or across sources): `warn` logs it "
        "and counts `duplicate_ids` per source in the manifest; `rename` appends `#<n>` to later "
        "occurrences (input order) so ids are unique; `error` fails the run naming them.",
    )
    base_dir: str = Field(
        ".", description="Set by the loader: the recipe file's directory (paths resolve here)."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique: {sorted(dup)}")
        stage_names = [s.name or s.type for s in self.stages]
        dup = {n for n in stage_names if stage_names.count(n) > 1}
        if dup:
            raise ValueError(f"stage names must be unique (set `name:`): {sorted(dup)}")
        return self

    # -- derived ------------------------------------------------------------------------
    def resolve(self, path: str) -> str:
        """A path relative to the recipe's folder made absolute; a URL (`s3://...`) as it is."""
        if fs.is_remote(path):
            return path
        path = fs.local_path(path)
        if os.path.isabs(path):
            return path
        if fs.is_remote(self.base_dir):  # a recipe read from a URL: its paths are keys beside it
            return fs.join(self.base_dir, path)
        return os.path.normpath(os.path.join(self.base_dir, path))

    @property
    def out_dir(self) -> str:
        return self.resolve(self.output.dir)

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json", exclude={"base_dir"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def detect_format(path: str) -> str | None:
    lower = path.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return _EXTENSIONS[ext]
    if os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_info.json"))
        or os.path.exists(os.path.join(path, "dataset_dict.json"))
    ):
        return "hf_disk"
    return None


def expand_source_files(recipe: Recipe, source: Source) -> list[tuple[str, str]]:
    """Return [(path, format)] for a source, sorted, or raise RecipeError naming the problem."""
    if source.format == "hf_hub":
        return [(f"hf://{source.hf_name}", "hf_hub")]
    files: list[str] = []
    problems: list[str] = []
    for pattern in source.paths:
        full = recipe.resolve(pattern)
        try:
            if fs.has_magic(full):
                hits = fs.glob(full)
                if not hits:
                    problems.append(f"sources.{source.name}.paths: no file matches {pattern!r} ({full})")
                files += hits
            elif not fs.exists(full):
                problems.append(f"sources.{source.name}.paths: file not found: {full}")
            elif fs.is_remote(full) and fs.isdir(full):
                problems.append(f"sources.{source.name}.paths: {full} is a folder (a key prefix); "
                                f"name its files, or a glob such as {full}/*.jsonl")
            else:
                files.append(full)
        except RecipeError as exc:  # an unknown scheme, or its extra not installed
            problems += exc.problems
        except OSError as exc:  # a bucket that cannot be listed: no credentials, no such bucket
            problems.append(f"sources.{source.name}.paths: cannot list {full}: {type(exc).__name__}: {exc}")
    out: list[tuple[str, str]] = []
    for f in files:
        fmt = source.format if source.format != "auto" else detect_format(f)
        if fmt is None:
            problems.append(
                f"sources.{source.name}: cannot tell the format of {f}; set `format:` to one of "
                f"{', '.join(FORMATS)}"
            )
            continue
        if fs.is_remote(f):
            if fmt == "hf_disk":
                problems.append(f"sources.{source.name}: {f}: a `datasets` folder (hf_disk) is read from local "
                                "disk only; copy it here, or save it as Parquet/Arrow files")
                continue
            out.append((f, fmt))  # globbed objects are files; a missing one was said above
            continue
        if fmt != "hf_disk" and os.path.isdir(f):
            problems.append(f"sources.{source.name}: {f} is a directory, not a {fmt} file")
            continue
        if not os.access(f, os.R_OK):
            problems.append(f"sources.{source.name}: cannot read {f} (permission denied)")
            continue
        out.append((f, fmt))
    if problems:
        raise RecipeError(problems, "recipe")
    # A file named twice (two overlapping globs) is read once.
    seen: set[str] = set()
    return [(f, fmt) for f, fmt in out if not (f in seen or seen.add(f))]
