"""`thresher stages`: the stage types, their params and costs (and the README's reference)."""

from __future__ import annotations

import typer
from rich.table import Table

from thresher.cli.app import app, console, err_console


@app.command()
def stages(markdown: bool = typer.Option(False, "--markdown", help="Print the README's stage reference "
                                         "(Markdown, generated from the stage classes).")) -> None:
    """List the stage types and their parameters."""
    from thresher.core.registry import UnknownStage, available, stage_class
    from thresher.core.stage_docs import markdown_reference, param_rows

    classes = []
    for name in available():
        try:
            classes.append(stage_class(name))
        except UnknownStage as exc:
            err_console.print(f"[yellow]skipped[/] {name}: {exc}")
    if markdown:
        print(markdown_reference(classes), end="")
        return
    for cls in classes:
        t = Table(title=f"{cls.type_name} ({cls.kind}, v{cls.version}) — {(cls.__doc__ or '').strip().splitlines()[0]}",
                  title_justify="left")
        for c in ("param", "default", "meaning"):
            t.add_column(c)
        for row in param_rows(cls.Params):
            t.add_row(*row)
        console.print(t)
        if cls.cost:
            console.print(f"  cost: {cls.cost}\n")
