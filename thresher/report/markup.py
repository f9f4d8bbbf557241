"""HTML building blocks for `report.html`: every piece of text goes through `esc`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from thresher.report.svg import fmt


def esc(x: Any) -> str:
    return escape(str(x), quote=True)


def cell(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return f"<td>{esc(x)}</td>"
    if isinstance(x, (int, float)):
        return f'<td class="num">{esc(fmt(x))}</td>'
    return f"<td>{esc(x)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(c if isinstance(c, Raw) else cell(c) for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Raw(str):
    """A table cell that is already HTML (built from escaped parts)."""

    def __new__(cls, html: str) -> Raw:
        return super().__new__(cls, html if html.startswith("<td") else f"<td>{html}</td>")


def link(path: str, label: str | None = None) -> str:
    """A link to a file inside the snapshot (relative, so the folder can move)."""
    return f'<a href="{esc(quote(path))}">{esc(label if label is not None else path)}</a>'


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def figure(svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"
