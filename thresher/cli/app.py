"""The CLI's shared plumbing: the Typer app, consoles, logging set-up, and `reported`, which turns
an exception into its exit code and one or two lines (`thresher.failures`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Curate and select LLM training data: recipe -> Beam -> Arrow shards.")
console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)  # errors stay one line each: greppable

debug_state = {"on": False}  # set by the `--debug` option on every invocation


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", envvar="THRESHER_DEBUG",
                                        help="On a failure, also print the traceback.")) -> None:
    debug_state["on"] = debug
    setup_logging(False)  # before any command imports Beam


def setup_logging(verbose: bool) -> None:
    # Before Beam is imported: importing apache_beam configures the root logger otherwise.
    from rich.logging import RichHandler

    # Rich's log columns wrap at the terminal's width; into a file or a pipe each record stays
    # one line, so that grep finds a file's name and its error together.
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(console=err_console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", datefmt="%X"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("thresher").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Beam logs this on import whenever the optional GCP client libraries are absent.
    root = logging.getLogger()
    if quiet_apitools not in root.filters:
        root.addFilter(quiet_apitools)
    for noisy in ("apache_beam", "absl", "httpx", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
    # A failing DoFn makes Beam log the worker's whole traceback at ERROR before the run's
    # one-line error; the traceback belongs to --debug.
    if not (verbose or debug_state["on"]):
        logging.getLogger("apache_beam.runners").setLevel(logging.CRITICAL)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def quiet_apitools(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("apitools not found")


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn a command's exception into its exit code and one or two lines (`failures`)."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        from thresher.failures import describe

        if debug_state["on"]:
            traceback.print_exc(file=sys.stderr)
        f = describe(exc)
        first, rest = (f.lines[0], f.lines[1:]) if f.lines else ("", [])
        err_console.print(f"[bold red]{f.title}[/]{':' if f.title != 'invalid recipe' else ''} {escape(first)}")
        for line in rest:
            err_console.print(escape(line))
        raise typer.Exit(f.code) from None


def say(line: str) -> None:
    err_console.print(escape(line))


def parse_sets(sets: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key.path=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise typer.BadParameter(f"--set {k.strip()}: the value {v!r} is not valid YAML") from None
    return out


WAIT_HELP = "If another run holds the output folder, wait for it instead of failing."


def one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
