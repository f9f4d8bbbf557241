"""The base of every recipe model: unknown keys are errors, so a typo in a threshold name is
never silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)
