"""Paths that may be local or object storage: the one module that knows about URL schemes.

Every path thresher takes (sources, globs, DSIR targets, benchmark files, the output folder
and all it holds) goes through these functions, which handle a local path with `os`/`open`
and a URL through fsspec:

    s3://bucket/key      s3fs       (extra `s3`: pip install 'thresher[s3]')
    gs://bucket/key      gcsfs      (extra `gcs`: pip install 'thresher[gcs]')
    hf://datasets/o/r/f  huggingface_hub's HfFileSystem (read-only here; comes with `datasets`)

fsspec rather than Beam's `FileSystems`: Beam has no `hf://` filesystem, its S3 filesystem
needs boto3 options passed as pipeline options (not the standard environment), and pyarrow,
`datasets` and pandas all take fsspec filesystems directly.

Credentials and endpoints come only from the standard environment, read by the libraries
themselves: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_PROFILE`, `AWS_ENDPOINT_URL`
(MinIO, moto, R2 ...), `AWS_DEFAULT_REGION`; Google's Application Default Credentials;
`HF_TOKEN`. A recipe never carries them.

Object stores have no rename and no partial objects: `write_atomic` writes a remote object
in one PUT (s3fs switches to a multipart upload over 100 MiB, which also becomes visible only
when completed), so a reader sees the whole object or none, never part of it under its final
name. Directories do not exist there: `makedirs` is a no-op and a "folder" is a key prefix.
"""

from __future__ import annotations

import builtins
import glob as _glob
import hashlib
import io
import os
import shutil
import threading
from collections.abc import Callable
from typing import IO, Any, BinaryIO

from thresher.core.errors import RecipeError

# scheme -> (module to import, the pip requirement that provides it)
_SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "pip install 'thresher[s3]'"),
    "gs": ("gcsfs", "pip install 'thresher[gcs]'"),
    "gcs": ("gcsfs", "pip install 'thresher[gcs]'"),
    "hf": ("huggingface_hub", "pip install huggingface_hub"),
    "memory": ("fsspec", "pip install fsspec"),  # in-process, for tests
}
_CHUNK = 1 << 20

_lock = threading.Lock()
_cache: dict[tuple[str, ...], Any] = {}


class StorageSchemeError(RecipeError):
    """A URL whose scheme thresher does not know, or whose extra is not installed (exit 2)."""

    def __init__(self, problem: str):
        super().__init__([problem], "storage")


def scheme(path: str) -> str | None:
    """`s3` for `s3://b/k`; None for a local path (`file://` counts as local)."""
    head, sep, _ = str(path).partition("://")
    if not sep or "/" in head or not head:
        return None
    return None if head.lower() == "file" else head.lower()


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def local_path(path: str) -> str:
    return path[len("file://"):] if str(path).startswith("file://") else str(path)


def filesystem(path: str):
    """The fsspec filesystem for a URL's scheme, one per (scheme, endpoint) per process.

    Listing caches are off: workers write objects that the driver then lists."""
    proto = scheme(path)
    if proto is None:
        raise ValueError(f"{path} is a local path")
    if proto not in _SCHEMES:
        raise StorageSchemeError(f"{path}: unknown storage scheme {proto}://; thresher reads and writes local paths, "
                                 "s3://, gs:// and hf:// (read-only)")
    module, install = _SCHEMES[proto]
    # The endpoint is read by the library when the filesystem is made; a process that changes
    # it (a test's moto server) gets a new one.
    key = (proto, os.environ.get("AWS_ENDPOINT_URL", ""), os.environ.get("AWS_ACCESS_KEY_ID", ""))
    with _lock:
        if key in _cache:
            return _cache[key]
        try:
            __import__(module)
        except ImportError:
            raise StorageSchemeError(f"{path}: {proto}:// needs the {module} package, not installed here; "
                                     f"{install}") from None
        import fsspec

        fs = fsspec.filesystem(proto, skip_instance_cache=True, use_listings_cache=False)
        _cache[key] = fs
        return fs


_READ_ONLY = {"hf"}  # writing would commit to the Hub: not what an output folder should do


def scheme_problem(path: str, write: bool = False) -> str | None:
    """Why `path` cannot be used here (unknown scheme, extra not installed, a read-only scheme
    given for writing), or None."""
    if not is_remote(path):
        return None
    if write and scheme(path) in _READ_ONLY:
        return f"{path}: {scheme(path)}:// is read-only in thresher; write to a local folder, s3:// or gs://"
    try:
        filesystem(path)
    except StorageSchemeError as exc:
        return exc.problems[0]
    return None


def local_cache_dir(url: str) -> str:
    """A local folder standing in for `url` where SQLite must live (the row cache, the rollout
    store): `~/.cache/thresher/row-cache/<sha256 of the URL, 16 hex>`."""
    return os.path.join(os.path.expanduser("~/.cache/thresher/row-cache"),
                        hashlib.sha256(url.encode()).hexdigest()[:16])


def _url(proto: str, p: str) -> str:
    return p if "://" in p else f"{proto}://{p.lstrip('/')}"


def join(base: str, *parts: str) -> str:
    if not is_remote(base):
        return os.path.join(base, *parts)
    out = base.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/") if p else out
    return out


def abspath(path: str) -> str:
    """A local path made absolute; a URL as it is (never normalised: `s3://b` must keep `//`)."""
    return path if is_remote(path) else os.path.abspath(local_path(path))


def open(path: str, mode: str = "rb", **kw: Any) -> IO:  # noqa: A001 - the module's open, like os.open
    if not is_remote(path):
        return builtins.open(local_path(path), mode, **kw)
    return filesystem(path).open(path, mode, **kw)


def exists(path: str) -> bool:
    return filesystem(path).exists(path) if is_remote(path) else os.path.exists(local_path(path))


def isdir(path: str) -> bool:
    return filesystem(path).isdir(path) if is_remote(path) else os.path.isdir(local_path(path))


def isfile(path: str) -> bool:
    return filesystem(path).isfile(path) if is_remote(path) else os.path.isfile(local_path(path))


def size(path: str) -> int:
    return int(filesystem(path).size(path)) if is_remote(path) else os.path.getsize(local_path(path))


def has_magic(pattern: str) -> bool:
    return _glob.has_magic(pattern)


def glob(pattern: str) -> list[str]:
    """Files matching `pattern` (`**` recursive), sorted, as full paths/URLs."""
    if not is_remote(pattern):
        return sorted(_glob.glob(local_path(pattern), recursive=True))
    fs = filesystem(pattern)
    proto = scheme(pattern)
    hits = fs.glob(pattern, detail=True)  # with each entry's type: no request per file
    return sorted(_url(proto, p) for p, info in hits.items() if info.get("type") != "directory")


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under a folder / key prefix, sorted; [] when there is none."""
    if not is_remote(path):
        path = local_path(path)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs = filesystem(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    prefix = fs._strip_protocol(path).rstrip("/")  # noqa: SLF001 - fsspec's public-in-practice helper
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != prefix})


def walk_files(path: str) -> list[str]:
    """Every file under a folder / prefix (full paths/URLs), sorted."""
    if not is_remote(path):
        path = local_path(path)
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    fs = filesystem(path)
    proto = scheme(path)
    try:
        return sorted(_url(proto, p) for p in fs.find(path))
    except FileNotFoundError:
        return []


def makedirs(path: str) -> None:
    """Create a local folder (and parents); a no-op on object storage (prefixes need no folder)."""
    if not is_remote(path):
        os.makedirs(local_path(path), exist_ok=True)


def remove(path: str, recursive: bool = False) -> None:
    """Delete a file/object, or with `recursive` a folder/prefix and all under it; a missing
    path is not an error."""
    if is_remote(path):
        fs = filesystem(path)
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass
        return
    path = local_path(path)
    if recursive and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        return filesystem(path).cat_file(path)
    with builtins.open(local_path(path), "rb") as fh:
        return fh.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def sha256(path: str) -> str:
    """The file's sha256, reading it once (object stores' ETags are MD5s or multipart digests,
    never a sha256, so there is no checksum to reuse)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Call `write(fileobj)` and publish the result as `path`, whole or not at all. Returns its
    sha256. Local: temp file + fsync + rename (`io.atomic`). Remote: the bytes are built in
    memory and put as one object."""
    if not is_remote(path):
        from thresher.io.atomic import write_atomic as write_local

        return write_local(local_path(path), write)
    buf = io.BytesIO()
    write(buf)
    data = buf.getvalue()
    filesystem(path).pipe_file(path, data)
    return hashlib.sha256(data).hexdigest()


def write_bytes(path: str, data: bytes) -> str:
    return write_atomic(path, lambda fh: fh.write(data))


def create_exclusive(path: str, data: bytes) -> bool:
    """Write `path` only if no such file/object exists: True when written, False when it
    existed. Remote: a conditional PUT (`If-None-Match: *`, which S3, MinIO and moto honour);
    where the store refuses conditional writes, an exists-then-put (two writers may both win
    the race between the two calls)."""
    if not is_remote(path):
        path = local_path(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True
    fs = filesystem(path)
    try:
        fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True
    except OSError as exc:  # s3fs maps 412 Precondition Failed to an OSError on some versions
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            return False
        raise


def arrow_file(path: str):
    """Something pyarrow's readers take for `path`: the local path, or an open remote file."""
    return local_path(path) if not is_remote(path) else open(path, "rb")
