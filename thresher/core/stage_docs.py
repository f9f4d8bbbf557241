"""The stage reference, generated from the stage classes (`thresher stages [--markdown]`), so
parameter docs cannot drift from the code: the README's section is this output."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(see below)" if type(value).model_fields else "{}"
    return repr(value)


def param_rows(params: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(name, default, meaning) for every param; nested models (policy, sampling) flattened."""
    out = []
    for name, f in params.model_fields.items():
        out.append((prefix + name, _default(f), " ".join((f.description or "").split())))
        ann = f.annotation
        if inspect.isclass(ann) and issubclass(ann, BaseModel):
            out += param_rows(ann, prefix + name + ".")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_reference(classes: list[type]) -> str:
    parts = []
    for cls in classes:
        doc = inspect.cleandoc(cls.__doc__ or "")
        parts.append(f"### `{cls.type_name}` ({cls.kind}, version {cls.version})\n\n{doc}\n")
        rows = param_rows(cls.Params)
        if rows:
            parts.append("| param | default | meaning |\n|---|---|---|")
            parts += [f"| `{n}` | `{_cell(d)}` | {_cell(m)} |" for n, d, m in rows]
            parts.append("")
    return "\n".join(parts) + "\n"
