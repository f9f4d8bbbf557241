"""One pass from recipe to run: everything a run needs, resolved once before any work.

`make_plan` expands every source into read tasks (with the input files' sizes and sha256),
builds every stage from its params and runs its `check()`, names the runner and its options
and lays out the output directory. `thresher validate`, the pipeline builder, `publish` and
the manifest all read the same `RunPlan`; every problem found is raised together as one
`RecipeError` (exit 2) before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thresher.core.context import StageContext
from thresher.core.errors import RecipeError
from thresher.core.registry import make_stage, split_version, stage_class
from thresher.engine.outdir import foreign_manifest_problem, overlap_problems
from thresher.engine.output_plan import output_problems
from thresher.engine.snapshots import snapshot_path
from thresher.io import fs
from thresher.io.ingest import InputError, plan_reads
from thresher.io.shards import auto_partitions
from thresher.recipe.load import load_recipe
from thresher.recipe.schema import Recipe

WORK_DIR = "_work"
MANIFEST = "manifest.json"

# Runner names that mean "run here, in this process". Beam's DirectRunner first tries the
# Prism runner, which downloads a Go binary (fails offline, then silently falls back), so
# thresher names the in-process portable runner directly.
_LOCAL_RUNNERS = {"directrunner", "direct", "local", "fnapirunner"}
_FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
# `runner: dask`: thresher's adapter over dask.distributed (engine/dask_runner.py), not Beam's
# own DaskRunner, which cannot run a thresher recipe (see that module's docstring).
_DASK_RUNNERS = {"dask", "daskrunner"}
_DASK_RUNNER = "thresher.engine.dask_runner.ThresherDaskRunner"


class RunPlan(BaseModel):
    """A resolved run. A pydantic model so that, handed to the Prefect flow, its JSON form (the
    recipe, inputs with sha256, runner, output folder) is what the flow run's parameters show."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recipe: Recipe
    root_dir: str  # the output folder the user named: snapshots/, latest, cache/ live here
    snapshot: str | None = None  # this run's snapshot id, set by `bind_snapshot` under the lock
    inputs: list[Any]  # io.ingest.InputFile: path, size, sha256 per input file
    runner: str  # the Beam runner class or name actually used
    runner_options: dict[str, Any] = Field(default_factory=dict)
    partitions: int = 1
    # Another run holding the output folder: wait for it (True) or fail at once (False).
    wait_for_lock: bool = False
    # Run even when the latest snapshot has this run's fingerprint ("up to date").
    force: bool = False
    # `engine.fingerprint.fingerprint(plan)`, computed once (it hashes the stages' files).
    run_fingerprint: dict[str, Any] | None = None
    # Worker-side objects: not part of the plan's JSON form.
    tasks: list[Any] = Field(default_factory=list, exclude=True)  # io.ingest.ReadTask per file / row group
    stages: list[Any] = Field(default_factory=list, exclude=True)  # built stages, params validated, checked

    @property
    def out_dir(self) -> str:
        """Where this run writes: its snapshot's folder once bound, the output folder before."""
        return snapshot_path(self.root_dir, self.snapshot) if self.snapshot else self.root_dir

    @property
    def cache_dir(self) -> str | None:
        return cache_dir_of(self.recipe, self.root_dir)

    def bind_snapshot(self, sid: str) -> None:
        """Point the run, and every stage's context, at snapshot `sid`'s folder."""
        self.snapshot = sid
        for stage in self.stages:
            stage.ctx = dataclasses.replace(stage.ctx, out_dir=self.out_dir, work_dir=self.work_dir)

    @property
    def work_dir(self) -> str:
        return fs.join(self.out_dir, WORK_DIR)

    @property
    def manifest_path(self) -> str:
        return fs.join(self.out_dir, MANIFEST)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.recipe.sources]

    @property
    def local_dask(self) -> bool:
        """`runner: dask` on a LocalCluster this run starts (no `dask_client_address`)."""
        return self.runner == _DASK_RUNNER and not self.runner_options.get("dask_client_address")

    def pipeline_options(self):
        from apache_beam.options.pipeline_options import PipelineOptions

        # flags=[]: PipelineOptions would otherwise parse this process's sys.argv.
        return PipelineOptions(flags=[], runner=self.runner, **self.runner_options)


def resolve_runner(recipe: Recipe, runner: str | None = None) -> tuple[str, dict[str, Any]]:
    name = runner or recipe.runner.runner
    opts = dict(recipe.runner.options)
    if name.lower() in _LOCAL_RUNNERS:
        # One worker: the recipe refuses direct_num_workers > 1 (recipe/output.py says why).
        name = _FN_API_RUNNER
    elif name.lower() in _DASK_RUNNERS:
        name = _DASK_RUNNER
    return name, opts


def stage_name(spec: Any) -> str:
    """A stage's name in counters and reports: `name:`, else its type without `@version`; a
    plugin named by import path (`pkg.mod:Class`) goes by its class's `type_name`."""
    if spec.name:
        return spec.name
    base, _ = split_version(spec.type)
    return stage_class(spec.type).type_name or base.rpartition(":")[2] if ":" in base else base


def cache_dir_of(recipe: Recipe, out_dir: str) -> str | None:
    """The row cache's folder: the recipe's `cache.dir`, else `cache/` in the output folder; for an
    output on object storage, `~/.cache/thresher/row-cache/<sha256 of the output URL>` (SQLite
    cannot live in a bucket; a remote `cache.dir` is refused by `make_plan`)."""
    if not recipe.cache.enabled:
        return None
    if recipe.cache.dir:
        return recipe.resolve(recipe.cache.dir)
    if fs.is_remote(out_dir):  # SQLite needs a local disk: a local folder per output URL
        return fs.local_cache_dir(out_dir)
    return os.path.join(out_dir, "cache")


def plan_recipe(recipe_path: str, out: str | None = None, runner: str | None = None,
                overrides: dict[str, Any] | None = None, with_hashes: bool = True) -> RunPlan:
    """Load, validate and resolve a recipe file (raises `RecipeError`)."""
    merged = dict(overrides or {})
    if out:
        merged["output.dir"] = fs.abspath(out)
    return make_plan(load_recipe(recipe_path, merged), runner=runner, with_hashes=with_hashes)


def make_plan(recipe: Recipe, runner: str | None = None, out_dir: str | None = None,
              with_hashes: bool = True) -> RunPlan:
    """Resolve `recipe` into a plan, or raise one `RecipeError` listing every problem."""
    out = fs.abspath(out_dir or recipe.out_dir)
    problems: list[str] = []
    tasks: list[Any] = []
    inputs: list[Any] = []
    try:
        tasks, inputs = plan_reads(recipe, with_hashes=with_hashes)
    except InputError as exc:
        problems += exc.problems
    # A bad `tokenizer:` fails here even in a recipe with no stage that counts tokens.
    from thresher.models.tokenizer import recipe_problems

    problems += recipe_problems(recipe)
    problems += overlap_problems(recipe, out, [x.path for x in inputs if "://" not in x.path])
    if out_problem := fs.scheme_problem(out, write=True):
        problems.append(f"output.dir: {out_problem}")
    else:
        problems += filter(None, [foreign_manifest_problem(fs.join(out, MANIFEST))])
    if recipe.cache.enabled and recipe.cache.dir and fs.is_remote(recipe.resolve(recipe.cache.dir)):
        problems.append(f"cache.dir: {recipe.cache.dir} is object storage; the row cache (SQLite) needs a local "
                        "folder: give a local path, or leave it unset (a remote output caches under ~/.cache/thresher)")
    stages = []
    cache_dir = cache_dir_of(recipe, out)
    for i, spec in enumerate(recipe.stages):
        ctx = StageContext(name=stage_name(spec), seed=recipe.seed, out_dir=out,
                           work_dir=fs.join(out, WORK_DIR), recipe=recipe, index=i,
                           write_dropped=recipe.output.write_dropped, cache_dir=cache_dir)
        stage = make_stage(spec, ctx)
        problems += [f"stages.{i}.{p}" for p in stage.check()]
        stages.append(stage)
    names = [s.name for s in stages]
    problems += [f"stages: two stages are named {n!r}; give one a `name:`" for n in sorted(set(names))
                 if names.count(n) > 1]
    problems += output_problems(recipe, tasks, stages)
    if problems:
        raise RecipeError(problems, "recipe")
    name, opts = resolve_runner(recipe, runner)
    o = recipe.output
    partitions = o.partitions if o.partitions != "auto" else auto_partitions(sum(x.size for x in inputs))
    return RunPlan(recipe=recipe, root_dir=out, tasks=tasks, inputs=inputs, stages=stages, runner=name,
                   runner_options=opts, partitions=partitions)
