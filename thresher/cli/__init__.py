"""`thresher` command line: run, validate, inspect, diff, demo, serve, deploy, cache, stages.

One module per group of commands (`run_cmds`, `inspect_cmds`, `serve_cmds` (serve, deploy),
`cache_cmds`, `stages_cmd`); `app.py` holds the shared plumbing.

Exit codes (the README's CLI section says the same):

* 0 done (a new snapshot, or "up to date": nothing to do);
* 1 the run failed: bad input over its limit, a stage error, an output folder that cannot be
  written (a file, read-only, full) or is in use by another run, a missing or corrupt manifest;
  for `deploy`, a work pool that does not exist or a Prefect API that cannot be reached;
* 2 the recipe or the command line is invalid (nothing was run), including an invalid schedule
  (`--cron`, `--interval`, an unknown `--timezone`) and `deploy` without PREFECT_API_URL;
* 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM: no manifest is written, a rerun finishes.

Every failure prints one or two lines (an invalid recipe: one more per problem); `thresher
--debug ...` or THRESHER_DEBUG=1 prints the traceback as well.
"""

from __future__ import annotations

import sys

# Importing the command modules registers their commands on `app`.
from thresher.cli import cache_cmds, inspect_cmds, run_cmds, serve_cmds, stages_cmd  # noqa: F401
from thresher.cli.app import app, err_console

__all__ = ["app", "main"]


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
