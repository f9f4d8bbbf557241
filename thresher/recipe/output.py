"""The recipe's run-side keys: `output` (shards, formats, packing, snapshots), `cache` and
`runner`. Split from `recipe.schema` (which re-exports them) to keep each module one job."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from thresher.recipe.base import StrictModel


class Pack(StrictModel):
    """Packed output: token sequences of exactly `seq_len` (needs a `tokenize` stage)."""

    seq_len: int = Field(2048, gt=0, description="Tokens per packed sequence.")
    method: Literal["greedy", "best_fit"] = Field(
        "greedy",
        description="`greedy`: documents in shard order, split across sequence boundaries; "
        "`best_fit`: whole documents placed into the fullest sequence they fit (longer ones split).",
    )


class Output(StrictModel):
    """Where and how the training-ready shards are written."""

    dir: str = Field("out", description="Output directory (relative to the recipe file).")
    shard_max_rows: int = Field(100_000, gt=0, description="Most rows in one shard.")
    shard_max_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Most (uncompressed Arrow) bytes in one shard."
    )
    compression: Literal["none", "lz4", "zstd"] = Field(
        "none",
        description="Arrow IPC buffer compression. `none` keeps shards memory-mappable.",
    )
    ipc_format: Literal["stream", "file"] = Field(
        "stream",
        description="Arrow IPC format of the shards: `stream` (what `datasets.Dataset.from_file` "
        "memory-maps) or `file` (what `pyarrow.dataset(format='arrow')` opens). "
        "`load_dataset('arrow')` reads both.",
    )
    order: Literal["shuffle", "sorted"] = Field(
        "shuffle",
        description="`shuffle`: rows in a seeded pseudo-random order; `sorted`: by `sort_by`.",
    )
    sort_by: str | None = Field(None, description="Column to sort by when order is sorted.")
    partitions: int | Literal["auto"] = Field(
        "auto",
        description="Shuffle partitions (each writes its own run of shards); `auto` sizes them "
        "from the input bytes (or a number from 1 to 10,000). Output is identical for any runner "
        "parallelism.",
    )
    write_dropped: bool = Field(
        False, description="Also write rows dropped by selectors under `dropped/`."
    )
    format: Literal["arrow", "parquet"] = Field(
        "arrow",
        description="Shard file format: `arrow` (Arrow IPC, memory-mapped with no copy by "
        "`Dataset.from_file` and `thresher.load`) or `parquet` (`part-*.parquet`, compressed, "
        "row groups of `parquet_row_group_rows` for streaming readers). Quarantine and `dropped/` "
        "stay Arrow IPC.",
    )
    parquet_row_group_rows: int = Field(
        8192, gt=0, description="Parquet: rows per row group (the unit a streaming reader fetches).",
    )
    splits: dict[str, float] | None = Field(
        None,
        description="Named splits and their fractions, e.g. {train: 0.98, validation: 0.02} (summing "
        "to 1): each row goes to one split by a seeded hash of its id (stable across refreshes and "
        "runners); shards go to `shards/<split>/` and the dataset card names each split. `num_shards` "
        "then applies per split.",
    )
    num_shards: int | None = Field(
        None, ge=1, le=100_000,
        description="Exactly this many shards (`part-00000-00000` ... in row order) whose row counts "
        "(with `pack`: packed-sequence counts) differ by at most one, so every rank and DataLoader "
        "worker of a training job gets the same share; overrides `shard_max_rows`/`shard_max_bytes`. "
        "With fewer rows than shards, some shards are empty.",
    )
    columns: list[str] | None = Field(
        None,
        description="Write only these columns, in this order (default: every public column). "
        "Applied after every stage (and after `pack`, whose columns are input_ids, labels, "
        "position_ids, attention_mask, doc_ids, doc_offsets, doc_lengths). A name the sources or "
        "`pack` cannot give is a recipe error; one only a stage could add is checked when the run "
        "writes its first shard. `id` and `text` may be left out too.",
    )
    drop_columns: list[str] = Field(
        default_factory=list,
        description="Columns not written (e.g. n-gram features left from selection); checked like "
        "`columns`.",
    )
    absolute_paths: bool = Field(
        False,
        description="Write `source_file` (shards, `dropped/`, quarantine) as the absolute path read; "
        "default: relative to the recipe's folder (POSIX `/`), so the same inputs in two folders "
        "give byte-identical shards. URLs are written as they are.",
    )
    pack: Pack | None = Field(
        None,
        description="Write packed token sequences instead of rows (see `Pack`; needs a `tokenize` "
        "stage). Each partition packs its rows in shard order; its last sequence may be padded.",
    )
    keep_snapshots: int = Field(
        3, ge=1, le=1000,
        description="Completed snapshots kept under `snapshots/`; older ones are removed only "
        "after `latest` has moved to the new one.",
    )

    @field_validator("partitions")
    @classmethod
    def _partitions_in_range(cls, v: int | str) -> int | str:
        # Checked here, not mid-run: a negative count overflowed the partition hash.
        if isinstance(v, int) and not 1 <= v <= 10_000:
            raise ValueError("give `auto` or a number from 1 to 10,000")
        return v

    @model_validator(mode="after")
    def _sorted_needs_key(self) -> Output:
        if self.order == "sorted" and not self.sort_by:
            raise ValueError("order: sorted needs `sort_by`")
        return self

    @field_validator("splits")
    @classmethod
    def _splits_ok(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("empty; leave it out for one split (train)")
        bad = sorted(n for n in v if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n))
        if bad:
            raise ValueError(f"split names {bad}: use a letter, then letters, digits or '_'")
        if any(f <= 0 for f in v.values()):
            raise ValueError("every fraction must be above 0")
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"fractions sum to {sum(v.values()):g}; they must sum to 1")
        return v

    @model_validator(mode="after")
    def _columns_consistent(self) -> Output:
        named = [*(self.columns or []), *self.drop_columns]
        internal = sorted({c for c in named if c.startswith("__")})
        if internal:
            raise ValueError(f"columns/drop_columns: {internal} are pipeline-internal and never written")
        for key, names in (("columns", self.columns or []), ("drop_columns", self.drop_columns)):
            dup = sorted({c for c in names if names.count(c) > 1})
            if dup:
                raise ValueError(f"{key}: {dup} named twice")
        both = sorted(set(self.columns or []) & set(self.drop_columns))
        if both:
            raise ValueError(f"{both} are in both `columns` and `drop_columns`; keep them in one")
        if self.columns is not None and not self.columns:
            raise ValueError("columns: empty; leave it out to write every column")
        return self


class Cache(StrictModel):
    """Per-row results reused across runs (embeddings, rollouts), keyed by content."""

    enabled: bool = Field(True, description="Reuse per-row results from earlier runs.")
    dir: str | None = Field(
        None, description="Cache folder (relative to the recipe file). Default: `cache/` inside "
        "the output folder, beside the snapshots.",
    )
    max_bytes: int = Field(
        10 * 1024**3, gt=0,
        description="After each run, least-recently-used entries are removed until the cache "
        "is at most this size (`thresher cache prune` does the same on demand).",
    )


class Runner(StrictModel):
    """Beam pipeline options, passed through.

    `runner: dask` runs the pipeline on dask.distributed through thresher's adapter
    (`engine/dask_runner.py`; install `thresher[dask]`): with `options.dask_client_address:
    tcp://host:port` it joins that cluster (its workers need thresher installed and must reach
    the run's input and output paths), else it starts a LocalCluster of `options.dask_workers`
    worker processes (default 1, one thread each) for the run — the local parallel path."""

    runner: str = Field(
        "DirectRunner",
        description="Beam runner: DirectRunner (local), dask (dask.distributed: a cluster or a "
        "LocalCluster), PortableRunner, FlinkRunner, SparkRunner, DataflowRunner, ...",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Other pipeline options: for dask {dask_client_address: tcp://host:8786} "
        "or {dask_workers: 2} (optional dask_connection_timeout: seconds); Dataflow's "
        "project/region/temp_location; ... The local runner runs one worker (direct_num_workers "
        "above 1 is refused: use dask for local parallelism).",
    )

    @field_validator("options")
    @classmethod
    def _one_local_worker(cls, options: dict[str, Any]) -> dict[str, Any]:
        # Beam 2.77's local runner with more than one worker (its ParallelBundleManager) lost
        # whole record batches on the way to one consumer of a PCollection in 11 of 23 runs of
        # bench/scale.py's recipe at 511k rows (multi_processing 8 of 14, with its SDK
        # harness's state cache off 1 of 4; multi_threading 2 of 5): the row balance refused
        # to publish, or a keyed join met decisions about a batch it never got. One worker and
        # `runner: dask` with one or two never lost one; several local workers were also slower
        # than one on 2 cores. Root cause not isolated: two small pure-Beam pipelines of the
        # same shapes (a PCollection read by a global combine and a side-input ParDo; a keyed
        # CoGroupByKey join) never lost an element in this mode.
        workers = options.get("direct_num_workers", 1)
        if str(workers) != "1":
            # 0 is Beam's "every core": name no worker count that dask would read otherwise
            n = workers if isinstance(workers, int) and workers > 1 else "N"
            raise ValueError(
                f"direct_num_workers: {workers} is refused: Beam's local runner with several workers "
                "lost whole record batches in our runs (thresher would then refuse to publish) and was "
                f"slower than one; for local parallelism use `runner: dask` with `dask_workers: {n}` "
                "(pip install 'thresher[dask]'), or leave direct_num_workers out")
        return options
