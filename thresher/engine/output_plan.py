"""Plan-time checks of the recipe's `output:` shaping keys, and the shard spec a run writes with.

`output_problems` is called by `engine.plan.make_plan` (every problem becomes one line of the
run's `RecipeError`, exit 2, before anything is written):

- `pack` needs a `tokenize` stage (its `input_ids` are what is packed);
- `columns` / `drop_columns` must name columns the shards can have. With `pack` those are the
  packed columns, known exactly. Otherwise they are the canonical columns plus the source
  fields (a `keep_fields` list, or each local input's first record / schema, as the readers'
  `peek_fields` see it): with no stage, a name outside that set is an error here; a stage may
  add any column, so with stages an unknown name is checked again when the first shard is
  written (`io.shard_files.select_columns`), before any shard exists.
"""

from __future__ import annotations

import logging
from typing import Any

from thresher.core import rows
from thresher.io.records import rename_extra
from thresher.io.shard_files import PACKED_COLUMNS, ShardSpec
from thresher.recipe.schema import Recipe

log = logging.getLogger("thresher.plan")

TOKENIZE = "tokenize"
_PEEK_FILES = 20  # per source: enough to see files whose fields differ, cheap to open


def has_tokenize(stages: list[Any]) -> bool:
    return any(getattr(s, "type_name", "") == TOKENIZE for s in stages)


def output_problems(recipe: Recipe, tasks: list[Any], stages: list[Any]) -> list[str]:
    out = recipe.output
    problems = []
    if out.pack is not None and not has_tokenize(stages):
        problems.append("output.pack: packing needs token ids: add a `- type: tokenize` stage (and a top-level "
                        "`tokenizer:`), or remove `pack`")
    named = [*(out.columns or []), *out.drop_columns]
    if not named:
        return problems
    if out.pack is not None:
        unknown = [c for c in named if c not in PACKED_COLUMNS]
        if unknown:
            problems.append(f"output.columns/drop_columns: {unknown} are not packed columns; with `pack` the shards "
                            f"have {', '.join(PACKED_COLUMNS)}")
        return problems
    known = source_columns(recipe, tasks)
    unknown = [c for c in named if known is not None and c not in known]
    if unknown and not stages:
        problems.append(f"output.columns/drop_columns: no column {unknown} in the sources (they give "
                        f"{', '.join(sorted(known))}); fix the names")
    elif unknown:
        log.info("output columns %s are not source columns; a stage must add them (checked when shards are "
                 "written)", unknown)
    return problems


def source_columns(recipe: Recipe, tasks: list[Any]) -> set[str] | None:
    """The columns ingest gives (canonical + kept source fields, renamed as ingest renames
    them), or None when a source's fields cannot be seen before the run (a hub dataset)."""
    from thresher.io import fs
    from thresher.io.readers import reader_for

    known = set(rows.CANONICAL_NAMES)
    for src in recipe.sources:
        if isinstance(src.keep_fields, list):
            known |= {rename_extra(f) for f in src.keep_fields}
            continue
        paths = list(dict.fromkeys(t.path for t in tasks if t.source.name == src.name))[:_PEEK_FILES]
        fmts = {t.path: t.format for t in tasks}
        for path in paths:
            if fmts[path] == "hf_hub" or fs.is_remote(path):
                return None
            try:
                fields = reader_for(fmts[path]).peek_fields(src, path)
            except (OSError, ValueError):
                return None
            known |= {rename_extra(f) for f in (fields or ())}
    return known


def shard_spec(recipe: Recipe, stages: list[Any]) -> ShardSpec:
    """The run's `ShardSpec`; with `pack`, the pad id comes from the recipe's tokenizer."""
    pad_id = None
    if recipe.output.pack is not None:
        pad_id = pack_pad_id(recipe, stages)
    return ShardSpec.of_output(recipe.output, recipe.base_dir, recipe.batch_rows, pad_id)


def pack_pad_id(recipe: Recipe, stages: list[Any]) -> int:
    """The tokenizer's pad id (its EOS id when it has no pad token) for padded sequences."""
    from thresher.models.tokenizer import load_tokenizer

    spec = recipe.tokenizer
    for s in stages:  # a `tokenize` stage may name its own tokenizer
        if getattr(s, "type_name", "") == TOKENIZE and getattr(s.params, "tokenizer", None):
            spec = s.params.tokenizer
    tok = load_tokenizer(spec, recipe.base_dir)
    pad = getattr(tok, "pad_id", None)
    if pad is None:
        pad = getattr(tok, "eos_id", None)
    return int(pad or 0)
