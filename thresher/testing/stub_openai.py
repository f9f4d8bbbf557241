"""A stand-in OpenAI-compatible server that answers after a fixed delay, for benches and tests
of the policy client's concurrency (how many requests it keeps in flight, not what a model says).

    python -m thresher.testing.stub_openai --port 8123 [--delay 0.1]

`POST /v1/completions` and `/v1/chat/completions` sleep `--delay` seconds, then answer with
`bernoulli_script` (`thresher.testing.scripted`): a problem carrying `p=... answer=... steps=...`
tags is solved with that probability, step by step when the request has a `stop`, so MCTS runs
against it as against a model. The problem is the user message (chat) or the prompt's first
line (completions, with the default template `{problem}\\n`); what follows is the assistant
prefix. The request's `seed` stands in for the sample key. `GET /health` answers at once.

A bare ASGI app under uvicorn (which comes with prefect), so the server costs as little CPU as
possible next to the client being measured; uvicorn uses httptools and uvloop when installed.
`StubServer` starts it as a subprocess on a free loopback port and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

from thresher.models.policy import Request
from thresher.testing.ports import free_port
from thresher.testing.scripted import bernoulli_script


def answer(body: dict, chat: bool) -> dict:
    """The response body for one request body."""
    if chat:
        msgs = body.get("messages") or []
        problem = next((m.get("content") or "" for m in msgs if m.get("role") == "user"), "")
        prefix = msgs[-1].get("content") or "" if msgs and msgs[-1].get("role") == "assistant" else ""
    else:
        problem, _, prefix = str(body.get("prompt", "")).partition("\n")
    stop = body.get("stop") or ()
    req = Request(problem, sample=str(body.get("seed", 0)), prefix=prefix,
                  stop=tuple([stop] if isinstance(stop, str) else stop))
    text, finish = bernoulli_script(req, 0)
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish} if chat
              else {"index": 0, "text": text, "finish_reason": finish})
    return {"id": "stub", "object": "chat.completion" if chat else "text_completion",
            "model": body.get("model", "stub"), "choices": [choice]}


def make_app(delay: float):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "GET" and path.endswith("/health"):
            status, payload = 200, {"ok": True}
        elif scope["method"] == "POST" and path.endswith(("/completions", "/chat/completions")):
            raw = b""
            while True:
                msg = await receive()
                raw += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            await asyncio.sleep(delay)
            status, payload = 200, answer(json.loads(raw), chat=path.endswith("/chat/completions"))
        else:
            status, payload = 404, {"error": f"no route {scope['method']} {path}"}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return app


class StubServer:
    """`with StubServer(delay=0.1) as srv:` -> `srv.base_url` (ends in `/v1`)."""

    def __init__(self, delay: float = 0.1, port: int | None = None, start_timeout_s: float = 30.0):
        self.delay = delay
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> StubServer:
        self.proc = subprocess.Popen([sys.executable, "-m", "thresher.testing.stub_openai", "--port", str(self.port),
                                      "--delay", str(self.delay)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stub server exited with code {self.proc.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"stub server did not listen on port {self.port} within {self.start_timeout_s}s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def main() -> None:
    import uvicorn  # a prefect dependency; only the server process needs it

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.1, help="seconds before each answer")
    args = ap.parse_args()
    uvicorn.run(make_app(args.delay), host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                backlog=4096, timeout_keep_alive=60)


if __name__ == "__main__":
    main()
