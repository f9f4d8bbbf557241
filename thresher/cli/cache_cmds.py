"""`thresher cache info|prune`: the row cache beside the snapshots (embeddings and other
per-row results reused across runs)."""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from thresher.cli.app import app, console, reported

cache_app = typer.Typer(no_args_is_help=True, help="The row cache: what it holds, and pruning it.")
app.add_typer(cache_app, name="cache")


def _cache_dir(path: str) -> str:
    """A recipe (its `cache.dir`, else OUT/cache), an output folder (OUT/cache), or the cache folder."""
    from thresher.core.errors import UserError
    from thresher.io.row_cache import FILE_NAME

    if path.endswith((".yaml", ".yml")) and os.path.isfile(path):
        from thresher.engine.plan import cache_dir_of
        from thresher.recipe.load import load_recipe

        r = load_recipe(path)
        d = cache_dir_of(r, r.out_dir)
        if d is None:
            raise UserError(f"{path}: the recipe turns the cache off (cache.enabled: false)")
        return d
    if os.path.isfile(os.path.join(path, FILE_NAME)):
        return path
    if os.path.isdir(path):
        return os.path.join(path, "cache")
    raise UserError(f"{path}: not a recipe, an output folder or a cache folder")


@cache_app.command("info")
def info(path: str = typer.Argument(..., help="A recipe, an output folder, or a cache folder.")) -> None:
    """Entries and bytes per namespace (what was computed: model, params)."""
    from thresher.io.row_cache import cache_info

    with reported():
        d = _cache_dir(path)
        i = cache_info(d)
    if not i["exists"]:
        console.print(f"no row cache at {escape(i['path'])}")
        return
    t = Table(title=f"{i['path']}: {i['entries']:,} entries, {i['file_bytes'] / 1e6:.1f} MB on disk",
              title_justify="left")
    for c in ("namespace", "entries", "MB"):
        t.add_column(c, justify="left" if c == "namespace" else "right")
    for ns, v in i["namespaces"].items():
        t.add_row(ns, f"{v['entries']:,}", f"{v['bytes'] / 1e6:.2f}")
    console.print(t)
    rollouts = os.path.join(d, "rollouts.sqlite")
    if os.path.exists(rollouts):
        console.print(f"rollout store: {escape(rollouts)} ({os.path.getsize(rollouts) / 1e6:.1f} MB)")


@cache_app.command("prune")
def prune(path: str = typer.Argument(..., help="A recipe, an output folder, or a cache folder."),
          max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="Target size (default: the recipe's "
                                                  "cache.max_bytes when PATH is a recipe, else 0: empty it).")) -> None:
    """Remove least-recently-used entries until the cache is at most --max-bytes."""
    from thresher.io.row_cache import prune as prune_cache

    with reported():
        d = _cache_dir(path)
        if max_bytes is None and path.endswith((".yaml", ".yml")):
            from thresher.recipe.load import load_recipe

            max_bytes = load_recipe(path).cache.max_bytes
        r = prune_cache(d, max_bytes or 0)
    console.print(f"removed {r['removed_entries']:,} entries ({r['removed_bytes'] / 1e6:.2f} MB); "
                  f"{r['kept_bytes'] / 1e6:.2f} MB kept in {escape(d)}")
