"""What a stage knows about the run it is part of (typed, picklable: it ships to workers)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the recipe model imports nothing of the core; the hint is for readers
    from thresher.recipe.schema import Recipe


@dataclass(frozen=True)
class StageContext:
    name: str  # unique within the recipe: keys counters, reports and Beam labels
    seed: int
    out_dir: str
    work_dir: str
    recipe: Recipe | None = None  # relative paths in params resolve against its folder
    index: int = 0  # position in `recipe.stages`
    write_dropped: bool = False  # also emit dropped rows (for OUT/dropped/)
    # Folder of the content-keyed per-row cache (`thresher.io.row_cache`), or None when the
    # recipe turns caching off. Shared by every snapshot of one output folder.
    cache_dir: str | None = None

    def resolve(self, path: str) -> str:
        if self.recipe is not None:
            return self.recipe.resolve(path)
        return os.path.abspath(path)

    def earlier_stages(self) -> list:
        """The recipe's stage specs before this one (for checks like "an embed stage first")."""
        return list(self.recipe.stages[: self.index]) if self.recipe is not None else []
