"""What a run hands back: small, JSON-serialisable (a Prefect flow's result, the CLI's summary)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunOutcome:
    status: str  # "written": a new snapshot; "up_to_date": the latest already has this fingerprint
    out_dir: str  # the output folder (snapshots/, latest, cache/)
    snapshot: str  # the snapshot id written, or the latest one when up to date
    manifest: str  # that snapshot's manifest path
    counts: dict[str, Any] = field(default_factory=dict)  # read / quarantined / dropped / written
    seconds: float = 0.0

    @property
    def snapshot_dir(self) -> str:
        return os.path.dirname(self.manifest)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, status: str, out_dir: str, manifest_path: str) -> RunOutcome:
        from thresher.io import fs

        m = json.loads(fs.read_bytes(manifest_path))
        return cls(status=status, out_dir=out_dir, snapshot=m.get("snapshot") or os.path.basename(
            os.path.dirname(manifest_path)), manifest=manifest_path, counts=m["counts"]["total"],
            seconds=m.get("seconds", 0.0))
