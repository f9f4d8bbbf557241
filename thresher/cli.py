"""`thresher` command line: run, validate, inspect, demo, serve, stages.

Exit codes (the README's CLI section says the same):

* 0 done;
* 1 the run failed: bad input over its limit, a stage error, an output folder that cannot be
  written (a file, read-only, full) or is in use by another run, a missing or corrupt manifest;
* 2 the recipe or the command line is invalid (nothing was run);
* 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM: no manifest is written, a rerun finishes.

Every failure prints one or two lines (an invalid recipe: one more per problem); `thresher
--debug ...` or THRESHER_DEBUG=1 prints the traceback as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from importlib import resources
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Curate and select LLM training data: recipe -> Beam -> Arrow shards.")
console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)  # errors stay one line each: greppable

DEMO_OUT = "thresher-demo-out"
_debug = {"on": False}  # set by the `--debug` option on every invocation


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", envvar="THRESHER_DEBUG",
                                        help="On a failure, also print the traceback.")) -> None:
    _debug["on"] = debug
    _setup_logging(False)  # before any command imports Beam


def _setup_logging(verbose: bool) -> None:
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
    if _quiet_apitools not in root.filters:
        root.addFilter(_quiet_apitools)
    for noisy in ("apache_beam", "absl", "httpx", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _quiet_apitools(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("apitools not found")


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn a command's exception into its exit code and one or two lines (`failures`)."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        from thresher.failures import describe

        if _debug["on"]:
            traceback.print_exc(file=sys.stderr)
        f = describe(exc)
        first, rest = (f.lines[0], f.lines[1:]) if f.lines else ("", [])
        err_console.print(f"[bold red]{f.title}[/]{':' if f.title != 'invalid recipe' else ''} {escape(first)}")
        for line in rest:
            err_console.print(escape(line))
        raise typer.Exit(f.code) from None


def _say(line: str) -> None:
    err_console.print(escape(line))


def _parse_sets(sets: list[str]) -> dict[str, Any]:
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


def _run(recipe_path: str, out: str | None, runner: str | None, sets: dict[str, Any], use_prefect: bool,
         wait: bool = False) -> str:
    from thresher.engine.plan import plan_recipe
    from thresher.signals import exit_on_signals

    with _reported(), exit_on_signals(_say):
        plan = plan_recipe(recipe_path, out, runner, sets)  # exit 2 now, before Prefect starts
        plan.wait_for_lock = wait
        if use_prefect:
            from thresher.flows.curate import curate
            from thresher.signals import sigterm_stays_ours

            with sigterm_stays_ours():
                return curate(recipe_path=os.path.abspath(recipe_path), out=out, runner=runner, overrides=sets,
                              plan=plan)
        from thresher.flows.local import run_plan

        return run_plan(plan)


_WAIT_HELP = "If another run holds the output folder, wait for it instead of failing."


@app.command()
def run(
    recipe: str = typer.Argument(..., help="Recipe YAML file."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory (overrides output.dir)."),
    runner: Optional[str] = typer.Option(None, help="Beam runner (overrides runner.runner)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set output.shard_max_rows=5000 "
                                   "or, in a list, --set sources.0.max_bad_fraction=0.5"),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="Run as the Prefect `curate` flow."),
    wait: bool = typer.Option(False, "--wait", help=_WAIT_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a recipe: ingest, stages, shards, manifest. Prints a summary at the end."""
    _setup_logging(verbose)
    manifest = _run(recipe, out, runner, _parse_sets(set_), prefect, wait)
    with _reported():
        _print_summary(os.path.dirname(manifest))


@app.command()
def validate(recipe: str = typer.Argument(..., help="Recipe YAML file."),
             set_: list[str] = typer.Option([], "--set", help="Override a recipe key, as `run --set` does."),
             check_inputs: bool = typer.Option(True, "--inputs/--no-inputs",
                                               help="Also check that the input files exist and parse, and run "
                                               "every stage's own checks (rewards, policies, benchmark files); "
                                               "--no-inputs checks the recipe's keys and params only.")) -> None:
    """Validate a recipe (and its inputs) without running anything. Exit 2 when invalid."""
    sets = _parse_sets(set_)
    with _reported():
        from thresher.engine.plan import plan_recipe
        from thresher.recipe.load import load_recipe

        if check_inputs:
            plan = plan_recipe(recipe, overrides=sets, with_hashes=False)
            r = plan.recipe
        else:
            r = load_recipe(recipe, sets)
    msg = f"[green]valid[/]: {len(r.sources)} source(s), {len(r.stages)} stage(s) -> {escape(r.out_dir)}"
    if check_inputs:
        msg += f"; {len(plan.inputs)} input file(s), {len(plan.tasks)} read task(s)"
    console.print(msg)


@app.command()
def inspect(out_dir: str = typer.Argument(..., help="A finished run's output directory."),
            rows: int = typer.Option(3, help="Sample rows to show.")) -> None:
    """Show a finished run: manifest summary, counts per source and stage, sample rows."""
    from thresher.core.errors import UserError

    with _reported():
        try:
            _print_summary(out_dir, sample_rows=rows)
        except FileNotFoundError as exc:
            raise UserError(_one_line(exc)) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A manifest cut short, edited by hand or from another tool.
            path = os.path.join(out_dir, "manifest.json")
            what = f"no key {exc}" if isinstance(exc, KeyError) else _one_line(exc)
            raise UserError(f"{path} is not a readable thresher manifest ({what}); rerun the recipe "
                            "to write it again") from exc


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@app.command()
def demo(out: str = typer.Option(DEMO_OUT, "--out", "-o", help="Where to write the demo's output."),
         prefect: bool = typer.Option(True, "--prefect/--no-prefect"),
         wait: bool = typer.Option(False, "--wait", help=_WAIT_HELP),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the bundled demo recipe on the bundled sample corpus (CPU, no server, no network)."""
    _setup_logging(verbose)
    recipe = str(resources.files("thresher") / "recipes" / "demo.yaml")
    console.print(f"[bold]thresher demo[/]: recipe {recipe}\n")
    manifest = _run(recipe, out, None, {}, prefect, wait)
    with _reported():
        _print_summary(os.path.dirname(manifest))
    console.print(f"\nInspect again with: [bold]thresher inspect {out}[/]")


@app.command()
def serve(recipe: str = typer.Argument(..., help="Recipe YAML file."),
          cron: Optional[str] = typer.Option(None, help='Cron schedule, e.g. "0 3 * * *".'),
          interval: Optional[float] = typer.Option(None, help="Or: run every N seconds."),
          out: Optional[str] = typer.Option(None, "--out", "-o"),
          name: Optional[str] = typer.Option(None, help="Deployment name (default: recipe name).")) -> None:
    """Serve the curate flow for RECIPE as a scheduled Prefect deployment (needs a Prefect server)."""
    if bool(cron) == bool(interval):
        err_console.print("[bold red]error:[/] give exactly one of --cron or --interval")
        raise typer.Exit(2)
    if not os.environ.get("PREFECT_API_URL"):
        err_console.print("[yellow]warning:[/] PREFECT_API_URL is not set: schedules do not fire on "
                          "Prefect's temporary server. Start one with `prefect server start` and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")
    with _reported():
        from thresher.flows.curate import serve as serve_flow

        serve_flow(recipe, cron=cron, interval=interval, out=out, name=name)


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


# ---------------------------------------------------------------------------------------


def _print_summary(out_dir: str, sample_rows: int = 0) -> None:
    from thresher.load import load_manifest, read_shard, shard_paths

    m = load_manifest(out_dir)
    total = m["counts"]["total"]
    console.print(f"[bold]{m['name']}[/]  {out_dir}  (recipe {m['recipe_sha256'][:12]}, seed {m['seed']}, "
                  f"{m['seconds']:.1f} s on {m['runner'].rsplit('.', 1)[-1]})")
    t = Table(title="rows by source", title_justify="left")
    for c in ("source", "read", "quarantined", "dropped", "written", "adds up"):
        t.add_column(c, justify="right" if c != "source" else "left")
    for s, v in m["counts"]["by_source"].items():
        dropped = sum(n for d in v["dropped"].values() for n in d.values())
        t.add_row(s, f"{v['read']:,}", f"{v['quarantined']:,}", f"{dropped:,}", f"{v['written']:,}",
                  "yes" if v["balanced"] else "[red]NO[/]")
    t.add_row("[bold]total", f"{total['read']:,}", f"{total['quarantined']:,}", f"{total['dropped']:,}",
              f"{total['written']:,}", "yes" if m["counts"]["balanced"] else "[red]NO[/]")
    console.print(t)
    if m["stages"]:
        st = Table(title="stages", title_justify="left")
        for c in ("stage", "rows in", "dropped"):
            st.add_column(c, overflow="fold")
        for name, s in m["stages"].items():
            label = name if name == s["type"] else f"{name} ({s['type']})"
            if s["rows_in"] or s["dropped"]:
                dropped = ", ".join(f"{r}: {n:,}" for r, n in s["dropped"].items()) or "0"
                st.add_row(label, f"{s['rows_in']:,}", dropped)
            else:
                st.add_row(label, "—", "— (adds columns)")
        console.print(st)
        for name, s in m["stages"].items():
            lines = _report_lines(s.get("report"))
            if lines:
                console.print(f"[bold]{name}[/] report:")
                for line in lines:
                    console.print(f"  {line}", soft_wrap=True)
    console.print(f"shards: {len(m['shards'])} file(s), {m['num_rows']:,} rows, {m['num_bytes'] / 1e6:.1f} MB"
                  f" in {os.path.join(out_dir, 'shards')}")
    if m["quarantine"]:
        console.print(f"quarantine: {sum(q['rows'] for q in m['quarantine'])} record(s) in "
                      f"{os.path.join(out_dir, 'quarantine')}")
        _print_quarantine(out_dir, m, limit=5)
    if sample_rows and m["shards"]:
        table = read_shard(shard_paths(out_dir, m)[0]).slice(0, sample_rows)
        console.print(f"[bold]first {table.num_rows} rows of {m['shards'][0]['path']}[/]")
        for i, r in enumerate(table.to_pylist()):
            console.print(f"[dim]── row {i}[/]")
            for k, v in r.items():
                if k == "source_file" or isinstance(v, (list, dict)) and len(str(v)) > 80:
                    continue  # long feature columns (embeddings, n-gram buckets) say little here
                shown = _short(f"{v:.4g}" if isinstance(v, float) else v, 160)
                console.print(f"  [cyan]{k}[/]: {shown}", soft_wrap=True)


def _print_quarantine(out_dir: str, m: dict[str, Any], limit: int) -> None:
    from thresher.load import read_shard

    q = read_shard(os.path.join(out_dir, m["quarantine"][0]["path"]))
    for r in q.slice(0, limit).to_pylist():
        console.print(f"  {os.path.basename(r['source_file'])}:{r['source_row']}  {r['reason']}")
    if q.num_rows > limit:
        console.print(f"  … {q.num_rows - limit} more")


_REPORT_SKIP = {"settings", "artifacts"}


def _report_lines(report: Any, limit: int = 14) -> list[str]:
    """A stage report's numbers as `dotted.key: value` lines (nested dicts flattened)."""
    if not isinstance(report, dict):
        return []
    out: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in _REPORT_SKIP:
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, str, bool)) and not isinstance(node, type(None)):
            out.append(f"{prefix}: {node:.4g}" if isinstance(node, float) else f"{prefix}: {node}")

    walk("", report)
    if len(out) > limit:
        out = out[:limit] + [f"… {len(out) - limit} more in reports/ and manifest.json"]
    return out


def _short(v: Any, n: int = 200) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def main() -> None:
    # `--debug` is an option of `thresher` itself; accept it after the command as well.
    if "--debug" in sys.argv[2:]:
        sys.argv.remove("--debug")
        sys.argv.insert(1, "--debug")
    try:
        app()
    except KeyboardInterrupt:  # outside a run (a run exits from its signal handler)
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
