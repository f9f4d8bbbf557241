"""A real `prefect server start` on a free loopback port with its own PREFECT_HOME, for tests
and demos that need what the temporary per-process server cannot give (schedules, workers,
a run queried from another process).

    with PrefectServer(home=tmp / "prefect") as srv:   # waits until /api/health answers
        srv.api_url                                    # -> "http://127.0.0.1:<port>/api"
        srv.env()                                      # os.environ + PREFECT_HOME, PREFECT_API_URL

The server runs in its own process group and is stopped by that group's id (SIGTERM, then
SIGKILL), so its uvicorn and services children go with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from thresher.testing.ports import free_port

QUIET_SERVER = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}


def prefect_cli() -> str:
    found = shutil.which("prefect", path=os.path.dirname(sys.executable)) or shutil.which("prefect")
    if not found:
        raise RuntimeError("the `prefect` command is not installed beside this Python (pip install prefect)")
    return found


class PrefectServer:
    """`prefect server start` on loopback; `env()` is what a client or worker process needs."""

    def __init__(self, home: str | os.PathLike, startup_timeout_s: float = 180.0, services: bool = True):
        self.home = Path(home)
        self.services = services  # False: the API only (no scheduler, no late-run marking): starts sooner
        self.port = free_port()
        self.startup_timeout_s = startup_timeout_s
        self.log_path = self.home / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, PREFECT_HOME=str(self.home), PREFECT_API_URL=self.api_url, **QUIET_SERVER)
        env.update(extra)
        return env

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port",
                                          str(self.port)] + ([] if self.services else ["--no-services"]),
                                         env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        raise RuntimeError(f"prefect server not healthy after {self.startup_timeout_s:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc, timeout_s=20)

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session=True), SIGKILL it
    if it has not exited after `timeout_s`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def prefect_server(home: str | os.PathLike, startup_timeout_s: float = 180.0,
                   services: bool = True) -> Iterator[PrefectServer]:
    with PrefectServer(home, startup_timeout_s, services) as srv:
        yield srv
