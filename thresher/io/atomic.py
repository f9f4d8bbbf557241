"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader (or a rerun after SIGKILL) therefore sees either the old file or the complete new
one, never a half-written file under a final name. Temp files are named
`.<name>.tmp-<pid>-<8 hex>` so a rerun can sweep the ones a killed run left behind, and only
those: a user's file that merely contains `.tmp-` is never touched.

A URL (`s3://`, `gs://` ...) is handed to `io.fs`, which writes the object in one PUT (object
stores publish whole objects, so there is no temp name to rename); temp files exist only
locally, so `sweep_temp_files` has nothing to do there.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from typing import BinaryIO

from thresher.io import fs

TMP_MARK = ".tmp-"
_TMP_NAME = re.compile(r"\..+\.tmp-\d+-[0-9a-f]{8}")


def _tmp_path(path: str) -> str:
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Call `write(fileobj)` on a temp file, then publish it as `path`. Returns sha256."""
    if fs.is_remote(path):
        return fs.write_atomic(path, write)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path) or ".")
        return digest
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> str:
    return write_atomic(path, lambda fh: fh.write(data))


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    if fs.is_remote(path):
        return fs.sha256(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sweep_temp_files(directory: str) -> int:
    """Remove temp files a killed run left behind. Returns how many."""
    n = 0
    if fs.is_remote(directory) or not os.path.isdir(directory):
        return 0
    for root, _dirs, files in os.walk(directory):
        for f in files:
            if _TMP_NAME.fullmatch(f):
                os.unlink(os.path.join(root, f))
                n += 1
    return n
