"""Snapshots: every run writes a new folder; readers follow `latest`, which moves only when a
run is complete.

    OUT/
      latest -> snapshots/20261126T170501Z     a symlink, replaced by rename (atomic)
      LATEST                                    "snapshots/20261126T170501Z\\n" (same, for
                                                filesystems or readers without symlinks)
      snapshots/<id>/                           manifest.json, report.html, shards/, quarantine/,
                                                dropped/, reports/, indexes/
      cache/                                    the row cache and the rollout store (kept
                                                across snapshots)

A run creates `snapshots/<id>/` (with a `.thresher-snapshot` marker naming it thresher's),
writes everything there, writes `manifest.json` last, and only then moves `latest` (the
pointer file first, then the symlink; both by rename). A reader that resolved `latest` before
the switch keeps reading the old snapshot, whole: it is not removed until `keep_snapshots`
newer ones exist. A failed or killed run leaves `latest` where it was; its unfinished folder is
removed by the next run (which holds the output lock, so the folder's writer is dead).

Snapshot ids are UTC timestamps (`YYYYmmddTHHMMSSZ`, `-2`, `-3`... if one second saw two
runs), so sorting ids sorts snapshots by age.

On object storage (`s3://`, `gs://`: no rename, no symlink) the same order is kept object by
object: the marker object first (`begin`, a conditional put, so two runs never share an id),
the data objects at their final names, `manifest.json`, then the `LATEST` pointer object, one
PUT and the commit point. There is no `latest` symlink; readers follow `LATEST`, and a snapshot
without a manifest is unfinished (ignored by readers, removed by the next run). Old snapshots
are deleted object by object from their manifests' `files`, so nothing else under the prefix
is touched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

from thresher.io import fs
from thresher.io.atomic import write_bytes_atomic

SNAPSHOTS = "snapshots"
LATEST_LINK = "latest"
LATEST_FILE = "LATEST"
MARKER = ".thresher-snapshot"
MANIFEST = "manifest.json"
_TMP_SUFFIX = ".tmp-"

log = logging.getLogger("thresher.snapshots")


def new_snapshot_id(root: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    sid, n = stamp, 1
    while fs.exists(fs.join(root, SNAPSHOTS, sid)):
        n += 1
        sid = f"{stamp}-{n}"
    return sid


def snapshot_path(root: str, sid: str) -> str:
    return fs.join(root, SNAPSHOTS, sid)


def latest_id(root: str) -> str | None:
    """The snapshot `latest` names: the symlink's target, else the pointer file's line."""
    target = None
    if fs.is_remote(root):
        try:
            target = fs.read_text(fs.join(root, LATEST_FILE)).partition("\n")[0].strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
    elif os.path.islink(link := os.path.join(root, LATEST_LINK)):
        target = os.readlink(link)
    elif os.path.isfile(os.path.join(root, LATEST_FILE)):
        with open(os.path.join(root, LATEST_FILE)) as fh:
            target = fh.readline().strip()
    if not target:
        return None
    parts = os.path.normpath(target).split(os.sep)
    if len(parts) != 2 or parts[0] != SNAPSHOTS:
        return None  # not a pointer thresher wrote
    return parts[1]


def latest_path(root: str) -> str | None:
    sid = latest_id(root)
    return snapshot_path(root, sid) if sid else None


def resolve(path: str) -> str:
    """The folder to read for `path`: an output folder's latest snapshot, or `path` itself (a
    snapshot, or an output written before snapshots existed)."""
    latest = latest_path(path)
    if latest and fs.isfile(fs.join(latest, MANIFEST)):
        return latest
    return path


def begin(root: str, sid: str) -> str:
    """Create the snapshot's folder (it must not exist) with the marker that makes it ours.

    The folder is made under a temporary name and renamed once the marker is in it, so a kill
    at any moment leaves either a marked snapshot or a `.<id>.tmp-<pid>` folder (removed by
    `prune`), never an unmarked folder that looks like a user's. On object storage the marker
    object alone makes the snapshot (a conditional put: it fails if another run took `sid`)."""
    path = snapshot_path(root, sid)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    marker = json.dumps({"id": sid, "pid": os.getpid(), "started": started}).encode()
    if fs.is_remote(root):
        if not fs.create_exclusive(fs.join(path, MARKER), marker):
            raise FileExistsError(f"{path}: snapshot already exists")
        return path
    tmp = os.path.join(root, SNAPSHOTS, f".{sid}{_TMP_SUFFIX}{os.getpid()}")
    os.makedirs(tmp)
    write_bytes_atomic(os.path.join(tmp, MARKER), marker)
    os.rename(tmp, path)  # fails if `path` exists: never two runs in one snapshot
    return path


def point_latest(root: str, sid: str) -> None:
    """Move `latest` to `sid`: the pointer file, then the symlink, each replaced by a rename
    (object storage: the pointer object alone, one PUT)."""
    target = os.path.join(SNAPSHOTS, sid)
    write_bytes_atomic(fs.join(root, LATEST_FILE), (target + "\n").encode())
    if fs.is_remote(root):
        return
    link = os.path.join(root, LATEST_LINK)
    if os.path.exists(link) and not os.path.islink(link):
        log.warning("%s is not a symlink thresher made; left as it is (readers use %s)", link, LATEST_FILE)
        return
    tmp = os.path.join(root, f".{LATEST_LINK}.{os.getpid()}.tmp")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as exc:  # a filesystem without symlinks: the pointer file alone serves
        log.info("no `latest` symlink (%s); readers follow %s", exc, LATEST_FILE)


@dataclass
class Snapshot:
    id: str
    path: str
    complete: bool  # has its manifest
    latest: bool
    manifest: dict[str, Any] | None

    @property
    def rows(self) -> int | None:
        return self.manifest.get("num_rows") if self.manifest else None


def _manifest(path: str) -> dict[str, Any] | None:
    try:
        m = json.loads(fs.read_bytes(fs.join(path, MANIFEST)))
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def list_snapshots(root: str) -> list[Snapshot]:
    """Thresher's snapshots under `root`, oldest first."""
    base = fs.join(root, SNAPSHOTS)
    names = fs.listdir(base)
    if not names:
        return []
    cur = latest_id(root)
    out = []
    for sid in names:
        if sid.startswith("."):
            continue  # a snapshot folder being created (`begin`)
        path = fs.join(base, sid)
        if not fs.isfile(fs.join(path, MARKER)):
            continue  # not ours
        m = _manifest(path)
        out.append(Snapshot(sid, path, m is not None, sid == cur, m))
    return out


def _remove_complete(snap: Snapshot) -> bool:
    """Delete what the snapshot's manifest lists (and thresher's own files), then the folders
    left empty. Anything else found inside stays, with the folder, and is named in the log."""
    files = set((snap.manifest or {}).get("files", [])) | {MANIFEST, MARKER, "report.html"}
    if fs.is_remote(snap.path):
        return _remove_complete_remote(snap, files)
    root = os.path.realpath(snap.path)
    for rel in sorted(files):
        p = os.path.realpath(os.path.join(root, rel))
        if p.startswith(root + os.sep) and os.path.isfile(p):
            os.unlink(p)
    for dirpath, _dirs, _files in sorted(os.walk(snap.path, topdown=False), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
    if os.path.exists(snap.path):
        left = [os.path.relpath(os.path.join(d, f), snap.path) for d, _, fs in os.walk(snap.path) for f in fs]
        log.warning("snapshot %s: kept %d file(s) thresher did not write: %s", snap.id, len(left), ", ".join(left[:5]))
        return False
    return True


def _remove_complete_remote(snap: Snapshot, files: set[str]) -> bool:
    """Object by object: the listed data first, the manifest and the marker last (as locally)."""
    last = [MANIFEST, MARKER]
    for rel in [*sorted(files - set(last)), *last]:
        if ".." not in rel.split("/"):
            fs.remove(fs.join(snap.path, rel))
    left = fs.walk_files(snap.path)
    if left:
        log.warning("snapshot %s: kept %d object(s) thresher did not write: %s", snap.id, len(left),
                    ", ".join(left[:5]))
        return False
    return True


def prune(root: str, keep: int | None, current: str | None = None) -> list[str]:
    """Remove unfinished snapshots (other than `current`, being written) and all but the newest
    `keep` complete ones (`None`: keep every complete one); never the one `latest` names. The
    caller holds the output lock, so an unfinished snapshot's writer is dead. Returns the ids
    removed."""
    removed = []
    base = os.path.join(root, SNAPSHOTS)
    for name in sorted(os.listdir(base)) if not fs.is_remote(root) and os.path.isdir(base) else []:
        tmp = os.path.join(base, name)
        # A snapshot folder a killed run was still creating: at most its marker inside.
        if name.startswith(".") and _TMP_SUFFIX in name and all(MARKER in f for f in os.listdir(tmp)):
            shutil.rmtree(tmp, ignore_errors=True)
    snaps = list_snapshots(root)
    complete = [s for s in snaps if s.complete]
    keep_ids = {s.id for s in complete} if keep is None else {s.id for s in complete[-keep:]} if keep > 0 else set()
    for s in snaps:
        if s.latest or s.id == current or s.id in keep_ids:
            continue
        if s.complete:
            if _remove_complete(s):
                removed.append(s.id)
        else:
            # An unfinished run's folder: everything in it is that run's (work files, shards
            # not yet listed anywhere), and no reader was ever pointed at it.
            fs.remove(s.path, recursive=True)
            removed.append(s.id)
    return removed
