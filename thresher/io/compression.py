"""Open an input file (local or a URL, through `io.fs`) as bytes, decompressing by extension
(.gz, .zst), hashing what is read.

Every byte taken from the file goes through `_Measured`, which counts and hashes it (one pass:
the bytes that were parsed are the bytes that were hashed). A stream that ends early or does
not decode is a `StreamError` naming the compressed byte offset; a .zst stream is decoded
frame by frame here (not zstandard's `stream_reader`, which returns a short read, without an
error, for a stream cut inside a frame).
"""

from __future__ import annotations

import gzip
import io
import zlib

from thresher.io import fs
from thresher.io.tasks import ReadTally, SourceReadError

_PIECE = 128 << 10  # compressed bytes fed to the zstd decoder at a time


class StreamError(SourceReadError):
    """A compressed stream that is truncated or corrupt."""


class _Measured(io.RawIOBase):
    """The raw file, counted and hashed into a tally as it is read."""

    def __init__(self, path: str, tally: ReadTally):
        self._fh = fs.open(path, "rb")
        self.tally = tally

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._fh.readinto(b)
        if n:
            self.tally.nbytes += n
            self.tally.sha.update(memoryview(b)[:n])
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


class _Zstd(io.RawIOBase):
    """Decompressed bytes of a .zst file of one or more frames; truncation is an error."""

    def __init__(self, raw: _Measured):
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._dec = None  # the frame being decoded, None between frames
        self._out = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._out and not self._done:
            self._fill()
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _fill(self) -> None:
        data = self._raw.read(_PIECE)
        if not data:
            if self._dec is not None:
                raise StreamError(f"truncated zstd stream: it ends inside a frame, at byte {self._raw.tally.nbytes}")
            self._done = True
            return
        out = []
        while data:
            if self._dec is None:
                self._dec = self._zstd.ZstdDecompressor().decompressobj()
            try:
                out.append(self._dec.decompress(data))
            except self._zstd.ZstdError as exc:
                raise StreamError(f"corrupt zstd stream near byte {self._raw.tally.nbytes}: {exc}") from None
            if not self._dec.eof:
                break
            data, self._dec = self._dec.unused_data, None  # the next frame starts here
        self._out = b"".join(out)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Gzip(io.RawIOBase):
    """gzip's decoder, its errors (some are zlib.error, not OSError) as StreamError."""

    def __init__(self, raw: _Measured):
        self._raw = raw
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            return self._gz.readinto(b)
        except (EOFError, OSError, zlib.error) as exc:
            what = "truncated" if isinstance(exc, EOFError) else "corrupt"
            raise StreamError(f"{what} gzip stream near byte {self._raw.tally.nbytes}: {exc}") from None

    def close(self) -> None:
        self._gz.close()
        self._raw.close()
        super().close()


def open_binary(path: str, tally: ReadTally | None = None) -> io.BufferedIOBase:
    """The file's (decompressed) bytes; the raw bytes read are counted and hashed into `tally`."""
    raw = _Measured(path, tally if tally is not None else ReadTally())
    lower = path.lower()
    if lower.endswith(".gz"):
        return io.BufferedReader(_Gzip(raw), _PIECE)
    if lower.endswith(".zst"):
        return io.BufferedReader(_Zstd(raw), _PIECE)
    return io.BufferedReader(raw, _PIECE)
