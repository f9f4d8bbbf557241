"""The stage contract: every feature stage and selector is a `Stage`.

A stage is a plain Python object (scikit-learn style: its validated `params` and a
`StageContext`), not a Beam transform: the templates in `selector.py` and `feature.py` own
the Beam wiring and call the stage's hooks — `setup`, `score`/`columns`, `select`, `decide`,
`summarise`, `report` — on the workers. A subclass cannot replace that wiring: defining
`transform` or `expand` in a stage class is a `TypeError` at class creation.

Class attributes a stage sets:
    type_name  the recipe's `type:` (built-ins are listed in `registry.py`; a plugin is
               named by its import path, `package.module:Class`)
    version    bumped when the stage's output for the same params changes (manifest)
    Params     a `StageParams` model: the recipe's `params:` mapping, unknown keys rejected
    cost       one line for `thresher stages` (the docstring says more: In / Out / Cost)
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import apache_beam as beam
from pydantic import BaseModel, ConfigDict

from thresher.core.context import StageContext

# Methods the templates own; a stage defining one of them is refused at class creation.
TEMPLATE_METHODS = frozenset({"transform", "expand"})


class StageParams(BaseModel):
    """Base for every stage's params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Stage:
    """Base of every stage. Subclass `Selector` or `Feature`, not this."""

    type_name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    Params: ClassVar[type[StageParams]] = StageParams
    cost: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "selector" | "feature", set by the templates
    # Attributes `prepare()` sets that only the per-batch work (`score`/`columns`) needs — a
    # benchmark index, say. The templates ship them once, to the workers that score, and leave
    # them out of the copies that decide, summarise and report.
    worker_state: ClassVar[tuple[str, ...]] = ()
    # True only on the framework's template classes (Selector, Feature).
    _template: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_template"):
            return
        clash = sorted(TEMPLATE_METHODS & set(cls.__dict__))
        if clash:
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} defines {', '.join(clash)}(): the stage template "
                "owns the pipeline wiring; put per-batch work in score()/columns(), global work in "
                "select(), decisions in decide() and stats in summarise()/report()"
            )

    def __init__(self, params: StageParams | dict[str, Any] | None = None, ctx: StageContext | None = None):
        if not isinstance(params, self.Params):
            params = self.Params.model_validate(params or {})
        self.params = params
        self.ctx = ctx or StageContext(name=self.type_name or type(self).__name__, seed=0,
                                       out_dir=".", work_dir=".")

    @property
    def name(self) -> str:
        return self.ctx.name

    # -- hooks every kind shares ------------------------------------------------------------
    def check(self) -> list[str]:
        """Problems found before the pipeline starts (missing files, models), as
        'params.key: what is wrong and what to do' lines."""
        return []

    def prepare(self) -> None:
        """Once, on the driver, when the pipeline is built: read what every worker needs (a
        benchmark file, say), build it and keep it on `self` — it ships with the stage."""

    def setup(self) -> None:
        """Once per worker before the first batch: load models, open clients."""

    def without_worker_state(self) -> Stage:
        """A shallow copy without the attributes named in `worker_state`."""
        light = copy.copy(self)
        for name in self.worker_state:
            light.__dict__.pop(name, None)
        return light

    def transform(self) -> beam.PTransform:  # pragma: no cover - the templates define it
        raise NotImplementedError

    @classmethod
    def contract_problems(cls) -> list[str]:
        return [f"subclass thresher.core.Selector or thresher.core.Feature, not {cls.__name__}'s base Stage"]


def overrides(stage: Stage, method: str, base: type) -> bool:
    """True when `stage`'s class implements `method` itself rather than inheriting `base`'s."""
    return getattr(type(stage), method) is not getattr(base, method)


class Hook(beam.PTransform):
    """Runs a stage's Beam-level hook (`select`) inside its own labelled composite, so the
    labels a stage author picks only need to be unique within that hook."""

    def __init__(self, fn, *args: Any, label: str):
        super().__init__(label=label)
        self.fn = fn
        self.args = args

    def expand(self, pcoll):
        return self.fn(pcoll, *self.args)
