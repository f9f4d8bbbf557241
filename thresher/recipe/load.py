"""Load a recipe: YAML -> `Recipe`, with dotted overrides, every stage's params checked
against its stage class. Errors name the key path and what is wrong (`RecipeError`).

YAML aliases are expanded with a cap: a few lines of nested aliases (a "billion laughs" alias
bomb) otherwise pass validation as shared objects and then fill the memory when the recipe
is serialised. A recipe whose values, aliases expanded, number more than `MAX_YAML_NODES`
nodes is refused.

The recipe file may be a URL (`s3://bucket/recipes/x.yaml`, read through `io.fs`); its
relative paths then name objects beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from thresher.core.errors import RecipeError, validation_problems
from thresher.core.registry import validate_params
from thresher.io import fs
from thresher.recipe.schema import Recipe

MAX_YAML_NODES = 1_000_000  # every scalar, list and mapping, aliases expanded; real recipes use < 10,000


class _TooBig(yaml.YAMLError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """`SafeLoader` that refuses a document whose nodes, aliases expanded, exceed the cap."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _expanded_size(node)
        return node


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document with every alias expanded, each shared node counted once per use
    (memoised, so a bomb is measured without being expanded)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _TooBig("an alias refers to a value that contains it (a recursive alias)")
        active.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if n > MAX_YAML_NODES:
            raise _TooBig(f"its aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?); "
                          "write the values out or use fewer aliases")
        sizes[key] = n
        return n

    return size(root)


def validate_recipe(data: dict[str, Any], base_dir: str = ".", origin: str = "recipe") -> Recipe:
    """Validate a recipe mapping and its stages' params; raise RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError(["<root>: a recipe is a mapping of keys (sources, stages, output ...)"], origin)
    data = dict(data)
    data["base_dir"] = fs.abspath(base_dir)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(validation_problems(exc), origin) from None
    problems: list[str] = []
    for i, stage in enumerate(recipe.stages):
        problems += validate_params(stage, f"stages.{i}")
    if problems:
        raise RecipeError(problems, origin)
    return recipe


def load_recipe(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, merge `overrides` (dotted keys) and validate a recipe YAML file."""
    if fs.is_remote(str(path)):
        return _load_remote(str(path), overrides)
    path = Path(path)
    if not path.exists():
        raise RecipeError([f"file not found: {path}"], str(path))
    if path.is_dir():
        raise RecipeError([f"{path} is a folder; give the recipe's YAML file"], str(path))
    try:
        data = _parse(path.read_text(encoding="utf-8"))
    except _TooBig as exc:
        raise RecipeError([f"refused: {exc}"], str(path)) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"not valid YAML: {' '.join(str(exc).split())}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise RecipeError([f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                           "save the recipe as UTF-8"], str(path)) from None
    except OSError as exc:
        raise RecipeError([f"cannot read it: {exc.strerror or exc}"], str(path)) from None
    except RecursionError:
        raise RecipeError(["refused: its values nest too deeply"], str(path)) from None
    return _finish(data, overrides, str(path.parent), str(path))


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)


def _load_remote(url: str, overrides: dict[str, Any] | None) -> Recipe:
    try:
        data = _parse(fs.read_text(url))
    except FileNotFoundError:
        raise RecipeError([f"file not found: {url}"], url) from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError, RecursionError) as exc:
        raise RecipeError([f"cannot read it: {' '.join(str(exc).split())}"], url) from None
    return _finish(data, overrides, url.rsplit("/", 1)[0], url)


def _finish(data: Any, overrides: dict[str, Any] | None, base_dir: str, origin: str) -> Recipe:
    overrides = (overrides or {}) if isinstance(data, dict) else {}  # a non-mapping: validate_recipe says so
    problems = [p for key, value in overrides.items() if (p := _set_dotted(data, key, value))]
    if problems:
        raise RecipeError(problems, origin)
    return validate_recipe(data, base_dir=base_dir, origin=origin)


def _set_dotted(data: Any, key: str, value: Any) -> str | None:
    """Set `key` (dotted; list items by index: `sources.0.x`) in `data`; a problem, or None."""
    parts = key.split(".")
    node = data
    for depth, p in enumerate(parts):
        here = ".".join(parts[:depth]) or "<root>"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            try:
                i = int(p)
            except ValueError:
                return f"--set {key}: {here} is a list; name an item by its index (0 to {len(node) - 1})"
            if not -len(node) <= i < len(node):
                return (f"--set {key}: index {i} is out of range: {here} has {len(node)} item(s) "
                        f"(0 to {len(node) - 1})")
            if last:
                node[i] = value
            node = node[i]
        elif isinstance(node, dict):
            if last:
                node[p] = value
            elif not isinstance(node.get(p), (dict, list)):
                if p in node and node[p] is not None:
                    return f"--set {key}: {'.'.join(parts[:depth + 1])} is {node[p]!r}, not a mapping or a list"
                node[p] = {}
            node = node[p]
        else:
            return f"--set {key}: {here} is {node!r}, not a mapping or a list"
    return None
