"""Ingest: read every source into canonical Arrow record batches, quarantining bad records.

In:  the recipe's sources (JSONL plain/.gz/.zst, Parquet, Arrow IPC, CSV, `datasets` saved to
     disk, `datasets` hub names), one reader per format (`io.readers`).
Out: a PCollection of `pyarrow.RecordBatch` with the canonical columns (`core.rows`), the
     source's kept fields and `__row_key`; and a PCollection of quarantine batches
     (`QUARANTINE_SCHEMA`: file, line/row, reason, field, raw bytes) for malformed records.
Cost: one read of the input. JSONL is parsed a block at a time by pyarrow's JSON reader, per
     line only for a block with bad records (so each is pinned to its line number);
     everything after parsing (normalisation, ids, filtering) is vectorised with
     pyarrow.compute over a batch (`io.records`). One read task per file (per row group for
     Parquet), so a runner parallelises across files.

Any path may be a URL (`s3://`, `gs://`, `hf://`): globs, reads and hashes go through `io.fs`,
and quarantine records name the URL and line.

Problems that make a source unusable (missing file, unknown format, a text field a columnar
file does not have, a `text_template` field the first records lack) are raised by `plan_reads`
before the pipeline starts.

Accounting: `read/<source>` is what each file holds, counted by the reader apart from parsing
(JSONL lines, Parquet footers, `datasets` row counts; rows out + quarantined for the other
formats), so every record read is written, quarantined or dropped, or the manifest does not
add up. A file that cannot be read to its end — a truncated or corrupt stream, a file whose
bytes differ from what planning measured (streamed formats hash what they read, in the same
pass; columnar ones check the size), a hub dataset out of reach — is a failed source: the rows
before the break are kept, `unreadable_files/<source>` counts it and one quarantine record
(line -1) says which file and where (`failed_reads` lists them for the run's error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa

from thresher.core.counters import QUARANTINED, READ, UNREADABLE, count_by_source, counter
from thresher.core.errors import RecipeError
from thresher.io import fs
from thresher.io.readers import reader_for
from thresher.io.records import quarantine_batch
from thresher.io.tasks import Batches, InputError, ReadTally, ReadTask, SourceReadError
from thresher.recipe.schema import Recipe, Source, expand_source_files

__all__ = ["InputError", "InputFile", "ReadSources", "ReadTask", "SourceReadError", "failed_reads", "plan_reads",
           "read_side_source", "read_task"]

log = logging.getLogger("thresher.ingest")

QUARANTINE_TAG = "quarantine"
_PROGRESS_ROWS = 250_000  # a progress line per this many rows of one file


@dataclass(frozen=True)
class InputFile:
    """One input file (or `datasets` directory, or hub name) as the manifest records it."""

    source: str
    path: str
    format: str
    size: int
    sha256: str


def plan_reads(recipe: Recipe, sources: list[Source] | None = None, file_offset: int = 0,
               with_hashes: bool = True) -> tuple[list[ReadTask], list[InputFile]]:
    """Expand globs, detect formats, check schemas; one ReadTask per file/row group.

    Raises one InputError listing every problem of every source."""
    tasks: list[ReadTask] = []
    inputs: list[InputFile] = []
    problems: list[str] = []
    file_index = file_offset
    for source in sources if sources is not None else recipe.sources:
        try:
            files = expand_source_files(recipe, source)
        except RecipeError as exc:
            problems += exc.problems
            continue
        for path, fmt in files:
            reader = reader_for(fmt)
            try:
                parts = reader.check(source, path)
            except InputError as exc:
                problems += exc.problems
                continue
            except Exception as exc:  # unreadable file: say which and why
                problems.append(f"sources.{source.name}: cannot read {path}: {exc}")
                continue
            size, sha = reader.fingerprint(path, with_hashes)
            # Only a plain file can be compared with what its reader reads.
            expect = (size, sha) if fmt != "hf_hub" and fs.isfile(path) else None
            for part in parts:
                tasks.append(ReadTask(source, path, fmt, file_index, part, expect))
            inputs.append(InputFile(source.name, path, fmt, size, sha))
            file_index += 1
    if problems:
        raise InputError(list(dict.fromkeys(problems)), "inputs")  # a template problem once, not per file
    return tasks, inputs


def read_task(task: ReadTask, batch_rows: int, tally: ReadTally | None = None) -> Batches:
    """All batches of one read task, (canonical | None, quarantine | None) pairs (runs on a worker).

    Raises `SourceReadError` (after the rows before it) when the file cannot be read to its end
    or is not the file that was planned."""
    tally = tally if tally is not None else ReadTally()
    yield from reader_for(task.format).read(task, batch_rows, tally)
    _check_unchanged(task, tally)


def _check_unchanged(task: ReadTask, tally: ReadTally) -> None:
    if task.expect is None:
        return
    size, sha = task.expect
    if tally.hashed:
        got_sha = tally.sha.hexdigest()
        if tally.nbytes != size or (sha and got_sha != sha):
            raise SourceReadError(
                f"{task.path}: changed during the run: planned {size} bytes (sha256 {sha or 'not taken'}), "
                f"read {tally.nbytes} bytes (sha256 {got_sha})")
    elif (now := fs.size(task.path)) != size:
        raise SourceReadError(f"{task.path}: changed during the run: planned {size} bytes, now {now}")


def failed_reads(out_dir: str, quarantine_files: list[dict]) -> dict[str, list[str]]:
    """{source: [reason, ...]} for each file the run could not read to its end, from the
    quarantine shards (`RunResult.quarantine`): each reason names the file and where it broke."""
    from thresher.load import read_shard  # the shard reader; not needed on workers

    out: dict[str, list[str]] = {}
    for info in quarantine_files:
        for r in read_shard(fs.join(out_dir, info["path"])).to_pylist():
            if r["source_row"] == -1:
                out.setdefault(r["source"], []).append(r["reason"])
    return out


class _ReadDoFn(beam.DoFn):
    def __init__(self, batch_rows: int, count: bool):
        self.batch_rows = batch_rows
        self.count = count

    def process(self, task: ReadTask):
        n_ok = n_bad = 0
        tally = ReadTally()
        failure = None
        try:
            for batch, q in read_task(task, self.batch_rows, tally):
                if q is not None and q.num_rows:
                    n_bad += q.num_rows
                    if self.count:
                        count_by_source(QUARANTINED, q)
                    yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, q)
                if batch is not None and batch.num_rows:
                    n_ok += batch.num_rows
                    if n_ok // _PROGRESS_ROWS != (n_ok - batch.num_rows) // _PROGRESS_ROWS:
                        log.info("reading %s: %d rows so far", task.path, n_ok)
                    yield batch
        except (OSError, EOFError, pa.ArrowException, ValueError) as exc:
            # A file that breaks mid-read (truncated stream, corrupt Parquet page): the rows
            # read so far were emitted; the failure is one quarantine record and fails the source.
            failure = str(exc) if isinstance(exc, SourceReadError) else f"{task.path}: {type(exc).__name__}: {exc}"
            failure = " | ".join(line.strip() for line in failure.splitlines() if line.strip())  # one line
        read = tally.records if tally.counts else n_ok + n_bad
        if failure is None and read != n_ok + n_bad:
            # Records the reader counted but neither emitted nor quarantined: never silently.
            failure = f"{task.path}: {read - n_ok - n_bad} of {read} records were lost by the reader"
        if failure is not None:
            log.error("file unreadable: %s", failure)
            n_bad += 1
            read += 1  # the failure record stands for the unread rest of the file
            if self.count:
                counter(f"{QUARANTINED}/{task.source.name}").inc()
                counter(f"{UNREADABLE}/{task.source.name}").inc()
            yield beam.pvalue.TaggedOutput(
                QUARANTINE_TAG,
                quarantine_batch(task.source.name, task.path, [-1], [f"file unreadable: {failure}"], [None], [b""]),
            )
        if self.count:
            counter(f"{READ}/{task.source.name}").inc(read)
        log.info("read %s: %d records, %d rows, %d quarantined", task.path, read, n_ok, n_bad)


class ReadSources(beam.PTransform):
    """Sources -> (canonical batches, quarantine batches). See the module docstring."""

    def __init__(self, tasks: list[ReadTask], batch_rows: int, label: str = "Ingest", count: bool = True):
        super().__init__(label=label)
        self.tasks = tasks
        self.batch_rows = batch_rows
        self.count = count

    def expand(self, pbegin):
        res = (
            pbegin
            | "Tasks" >> beam.Create(self.tasks, reshuffle=False)
            # Spread files over workers (the DirectRunner keeps one bundle otherwise).
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadDoFn(self.batch_rows, self.count)).with_outputs(QUARANTINE_TAG, main="rows")
        )
        return res["rows"], res[QUARANTINE_TAG]


def read_side_source(pipeline: beam.Pipeline, recipe: Recipe, sources: list[Source], label: str,
                     file_offset: int = 1 << 20):
    """Read auxiliary sources (a target domain, benchmarks) as canonical batches, uncounted.

    Their file indexes start at `file_offset`, so their `__row_key`s never collide with the
    main input's.
    """
    tasks, _ = plan_reads(recipe, sources, file_offset=file_offset, with_hashes=False)
    batches, _q = pipeline | ReadSources(tasks, recipe.batch_rows, label=label, count=False)
    return batches
