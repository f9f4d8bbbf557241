"""The core: the stage contract every stage — built-in or plugin — is written against.

    from thresher.core import Selector, StageParams

Selector and Feature are the templates (see `selector.py`, `feature.py`); `columns`,
`counters` and `rows` hold the helpers and names they share.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thresher.core.context import StageContext
    from thresher.core.feature import Feature
    from thresher.core.selector import Selector
    from thresher.core.stage import Stage, StageParams

__all__ = ["Feature", "Selector", "Stage", "StageContext", "StageParams"]

_WHERE = {"Feature": "feature", "Selector": "selector", "Stage": "stage", "StageParams": "stage",
          "StageContext": "context"}


def __getattr__(name: str) -> Any:
    # Resolved on first use (PEP 562): the templates import Apache Beam (~1 s), and light
    # users of the core — the recipe schema's errors, `thresher --help` — must not pay for it.
    if name in _WHERE:
        return getattr(importlib.import_module(f"thresher.core.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'thresher.core' has no attribute {name!r}")
