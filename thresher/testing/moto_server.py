"""A local S3 API for tests and benches: `moto_server` (PyPI `moto[server]`) on a loopback port.

    with moto_s3() as endpoint:          # AWS_* set for this process and its children
        make_bucket("data")
        fs.write_bytes("s3://data/in/a.jsonl", b"...")

The server runs as a subprocess (so Beam or Dask workers in other processes reach it too) and
is stopped by its PID. While it runs, `AWS_ENDPOINT_URL` points at it and the key, secret and
region are set to dummies (moto accepts any); the previous values come back afterwards.

A test session can start one server (`moto_server()`: the environment left alone), hand
`aws_env(endpoint)` to the processes that need it, and `reset(endpoint)` before each test so
that no bucket or object of one test is seen by the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from thresher.testing.ports import free_port, stop_process

_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _command(port: int) -> list[str]:
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        raise RuntimeError("moto_server not found; pip install 'moto[server]' (thresher's `dev` extra)")
    return [exe, "-H", "127.0.0.1", "-p", str(port)]


def _wait_healthy(endpoint: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode} before serving {endpoint}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):  # noqa: S310 - loopback only
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout_s:g} s")


def aws_env(endpoint: str) -> dict[str, str]:
    """The variables a client (boto3, s3fs, a worker process) needs to use the server at `endpoint`."""
    return {**_ENV, "AWS_ENDPOINT_URL": endpoint}


def reset(endpoint: str) -> None:
    """Forget every bucket and object the server holds (moto's own reset endpoint)."""
    req = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - loopback only
        pass


@contextmanager
def moto_server(timeout_s: float = 30.0) -> Iterator[str]:
    """Start moto_server on a free loopback port, yield its endpoint URL once it answers; stop
    it by its PID after. This process's environment is not changed (see `aws_env`)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(endpoint, proc, timeout_s)
        yield endpoint
    finally:
        stop_process(proc)


@contextmanager
def moto_s3(timeout_s: float = 30.0) -> Iterator[str]:
    """Start moto_server, set the AWS environment for it, yield its endpoint URL; stop it after."""
    with moto_server(timeout_s) as endpoint:
        saved = {k: os.environ.get(k) for k in (*_ENV, "AWS_ENDPOINT_URL")}
        try:
            os.environ.update(aws_env(endpoint))
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def make_bucket(name: str) -> None:
    """Create a bucket on the server the environment points at."""
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
