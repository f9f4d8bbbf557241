"""The output folder's safety: never overlapping the inputs, one run at a time.

`overlap_problems` (called by `make_plan`, so a bad folder exits 2 before any work) refuses an
output folder that equals, contains or lies inside an input: a source's paths, or any `paths`
list in a stage's params (DSIR targets, decontamination benchmarks). A glob's root counts
only where the glob could reach into the output folder: `data/*.jsonl` with `out: data/out`
is fine, `data/**/*.arrow` is not (a rerun would read its own shards).

`output_lock` holds an exclusive `flock` on `OUT/.thresher.lock` from before the folder is
prepared until the manifest is published. `fcntl.flock` directly, not the `filelock`
package: the kernel drops the lock when its holder dies (even by SIGKILL), it conflicts
between two opens in one process too (so in-process runs are serialised as well), and the
file is never truncated by a waiter, so the holder's pid and start time written into it stay
readable for the error message.

On object storage a local lock guards nothing (two machines share the bucket), so the lock is
an object, `OUT/.thresher.lock`, created with a conditional put (`If-None-Match: *`: exactly
one of two runs creating it wins) and deleted when the run ends. Its limit: a run killed
without unwinding (SIGKILL, a lost machine) leaves the object behind, and the next run then
fails with the holder's host, pid and start time in the message; delete the object once sure
that run is dead. (A store without conditional writes, e.g. some S3-compatible servers, falls
back to exists-then-put, where two runs starting in the same instant could both proceed.)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import glob
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any

from thresher.io import fs
from thresher.recipe.schema import Recipe

LOCK_FILE = ".thresher.lock"
OWNED_FILE = ".thresher-owned.json"  # files an unfinished run may have left (see `record_owned`)

log = logging.getLogger("thresher.outdir")


class OutputBusyError(RuntimeError):
    """Another run holds the output folder's lock (the run fails: exit 1)."""


# ---------------------------------------------------------------------------------------
# Overlap with the inputs


def _inside(path: str, folder: str) -> bool:
    """`path` equals `folder` or lies under it (both absolute, normalised)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _glob_root(pattern: str) -> tuple[str, list[str]]:
    """(`/a/b`, [`**`, `*.arrow`]) for `/a/b/**/*.arrow`: the folder before the first magic part."""
    parts = pattern.split(os.sep)
    i = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    return os.sep.join(parts[:i]) or os.sep, parts[i:]


def _reaches(pattern: list[str], folder: list[str]) -> bool:
    """Could the path pattern (parts) match a file inside the folder (parts, relative)?"""
    if not folder:
        return bool(pattern)  # something is left to match a file in the folder
    if not pattern:
        return False
    if pattern[0] == "**":
        return _reaches(pattern[1:], folder) or _reaches(pattern, folder[1:])
    return fnmatchcase(folder[0], pattern[0]) and _reaches(pattern[1:], folder[1:])


def _param_paths(value: Any) -> Iterator[str]:
    """Every string in a `paths` list anywhere in a stage's params."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "paths" and isinstance(v, list):
                yield from (p for p in v if isinstance(p, str))
            else:
                yield from _param_paths(v)
    elif isinstance(value, list):
        for v in value:
            yield from _param_paths(v)


def input_patterns(recipe: Recipe) -> list[tuple[str, str]]:
    """(resolved path or glob, what it belongs to) for every input the recipe names."""
    out = [(recipe.resolve(p), f"source {s.name}") for s in recipe.sources
           if s.format != "hf_hub" for p in s.paths]
    for i, spec in enumerate(recipe.stages):
        out += [(recipe.resolve(p), f"stage {spec.name or spec.type} (stages.{i})")
                for p in _param_paths(spec.params)]
    return out


def overlap_problems(recipe: Recipe, out: str, input_files: list[str] = ()) -> list[str]:
    """Problems (recipe lines) when the output folder `out` overlaps an input."""
    remote = fs.is_remote(out)
    real_path = (lambda p: p.rstrip("/")) if remote else os.path.realpath
    out = real_path(out)
    problems = []
    for pattern, owner in input_patterns(recipe):
        if fs.is_remote(pattern) != remote:
            continue  # a URL and a local path never overlap
        real = real_path(pattern) if not glob.has_magic(pattern) else pattern
        if not glob.has_magic(real):
            hit = _inside(real, out) or _inside(out, real)
        else:
            root, rest = _glob_root(real)
            root = real_path(root)
            below = os.path.relpath(out, root).split(os.sep)
            hit = _inside(root, out) or (_inside(out, root) and _reaches(rest, below))
        if hit:
            problems.append(f"output.dir: {out} overlaps input {pattern} of {owner}; "
                            "choose an output folder outside the inputs")
    # Files the globs matched right now (a symlinked folder the pattern check cannot see).
    inside = [f for f in input_files if fs.is_remote(f) == remote and _inside(real_path(f), out)]
    if inside and not problems:
        problems.append(f"output.dir: {out} overlaps input {inside[0]}; choose an output folder outside the inputs")
    return problems


def foreign_manifest_problem(manifest_path: str, fmt_prefix: str = "thresher-manifest/") -> str | None:
    """A `manifest.json` in the output folder that thresher did not write is never deleted."""
    try:
        if not fs.exists(manifest_path):
            return None
        ours = str(json.loads(fs.read_bytes(manifest_path)).get("format", "")).startswith(fmt_prefix)
    except (OSError, ValueError, AttributeError):
        ours = False
    if ours:
        return None
    return (f"output.dir: {manifest_path} is not a thresher manifest; thresher would replace it, so "
            "choose another output folder (or move the file)")


# ---------------------------------------------------------------------------------------
# One run at a time


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "pid unknown"


@contextmanager
def output_lock(out_dir: str, wait: bool = False) -> Iterator[None]:
    """Hold the output folder for one run; raise `OutputBusyError` (or wait) if another has it."""
    if fs.is_remote(out_dir):
        with _object_lock(out_dir, wait):
            yield
        return
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise OutputBusyError(
                    f"output.dir: {out_dir} is in use by another thresher run ({holder}); wait for it "
                    "to finish (or run with --wait), or choose another output folder") from None
            log.info("waiting for the thresher run writing %s (%s)", out_dir, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = {"pid": os.getpid(), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock; the file stays (deleting it would race a waiter)


@contextmanager
def _object_lock(out_dir: str, wait: bool, poll_s: float = 2.0) -> Iterator[None]:
    """The lock object on object storage (see the module docstring for its limit)."""
    path = fs.join(out_dir, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    said = False
    while not fs.create_exclusive(path, json.dumps(me).encode()):
        try:
            info = json.loads(fs.read_bytes(path))
            holder = f"host {info['host']}, pid {info['pid']}, started {info['started']}"
        except (OSError, ValueError, KeyError):
            holder = "holder unknown"
        if not wait:
            raise OutputBusyError(
                f"output.dir: {out_dir} is in use by another thresher run ({holder}); wait for it to finish (or "
                f"run with --wait); if that run is dead, delete {path}")
        if not said:
            log.info("waiting for the thresher run writing %s (%s)", out_dir, holder)
            said = True
        time.sleep(poll_s)
    try:
        yield
    finally:
        fs.remove(path)
