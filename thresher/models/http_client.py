"""The asynchronous core of the `openai` policy backend.

Beam calls a stage's DoFns synchronously from worker threads, so the client lives on one
asyncio event loop per process, run by a daemon thread (`process_loop`); a worker thread
hands it requests with `AsyncPolicyClient.submit` and gets `concurrent.futures.Future`s back,
which resolve as each response arrives — a caller can submit more while earlier ones run
(the MCTS driver does). `max_concurrency` workers cap the requests on the wire: there are no
lock-step groups, a finished request's worker starts the next queued one at once.

Connections: one `aiohttp.ClientSession` per policy, its keep-alive pool sized to
`max_concurrency` (HTTP/1.1: vLLM, SGLang and llama.cpp's server do not speak HTTP/2, and a
pooled keep-alive connection per slot already avoids a handshake per request). aiohttp, not
httpx: httpx's async pool spends milliseconds of CPU per request once hundreds are in flight
(encode/httpx#3215); against a server answering in 100 ms at concurrency 256, an asyncio +
httpx loop reached a fraction of what the same loop on aiohttp did (bench/policy_throughput.py).

Failures are logged once, when a request gives up (never its headers, so never the key);
successful calls are not logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Any

import aiohttp

from thresher.models.policy import (
    BACKEND,
    CONNECTION,
    HTTP_4XX,
    HTTP_5XX,
    HTTP_429,
    MALFORMED,
    TIMEOUT,
    Generation,
    PolicyParams,
)
from thresher.models.retry import retry_delay, server_wait_s

log = logging.getLogger("thresher.policy")

_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def process_loop() -> asyncio.AbstractEventLoop:
    """This process's policy event loop, started on first use (again after a fork: a child
    inherits the loop object but not the thread that runs it)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="thresher-policy-loop", daemon=True).start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


class SlotMeter:
    """Busy slot-seconds: the integral over time of the number of requests in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # written on the loop thread, read from worker threads
        self._n = 0
        self._busy = 0.0
        self._t = time.perf_counter()

    def _tick(self) -> None:
        now = time.perf_counter()
        self._busy += self._n * (now - self._t)
        self._t = now

    def add(self, d: int) -> None:
        with self._lock:
            self._tick()
            self._n += d

    def read(self) -> float:
        with self._lock:
            self._tick()
            return self._busy


class _Failure:
    """One failed attempt: its kind, what to log, whether to retry, the server's wait."""

    __slots__ = ("kind", "detail", "retry", "wait")

    def __init__(self, kind: str, detail: str, retry: bool = True, wait: float | None = None):
        self.kind, self.detail, self.retry, self.wait = kind, detail, retry, wait


def parse_generation(data: Any) -> Generation:
    """A chat or completions response -> Generation. The answer is `content` when the model
    gave one; a reasoning model that stopped before answering (e.g. at `max_tokens`) has only
    `reasoning_content`, which is then the text the reward judges — not a malformed response."""
    choice = data["choices"][0]
    if "message" in choice:
        msg = choice["message"]
        content = msg.get("content")
        reasoning = msg.get("reasoning_content", msg.get("reasoning"))
    else:
        content = choice["text"]
        reasoning = choice.get("reasoning_content")
    for name, v in (("content", content), ("reasoning_content", reasoning)):
        if v is not None and not isinstance(v, str):
            raise TypeError(f"{name} is {type(v).__name__}")
    text = content if content or not reasoning else reasoning
    if text is None:
        raise TypeError("neither content nor reasoning_content")
    return Generation(text, choice.get("finish_reason"), reasoning=reasoning or None)


class _Job:
    __slots__ = ("path", "body", "fut", "attempt")

    def __init__(self, path: str, body: dict[str, Any], fut: Future):
        self.path, self.body, self.fut, self.attempt = path, body, fut, 0


class AsyncPolicyClient:
    """Requests to one OpenAI-compatible server, at most `max_concurrency` in flight.

    `max_concurrency` worker tasks take jobs from one queue. A worker that finishes a request
    takes the next queued job in the same step, without yielding to the loop: with a
    semaphore, a freed slot stays idle until the loop schedules the woken waiter, which on a
    busy loop costs a measurable share of the slots. A job to retry goes back on the queue
    after its delay, so a waiting job never holds a slot."""

    def __init__(self, params: PolicyParams, headers: dict[str, str]):
        self.p = params
        self.loop = process_loop()
        self.meter = SlotMeter()
        self.retries = 0
        self._closed = False
        asyncio.run_coroutine_threadsafe(self._open(headers), self.loop).result()

    async def _open(self, headers: dict[str, str]) -> None:
        p = self.p
        self._base = p.base_url.rstrip("/")
        conn = aiohttp.TCPConnector(limit=p.max_concurrency, limit_per_host=p.max_concurrency,
                                    keepalive_timeout=60)
        # The per-request deadline is asyncio.timeout in `_attempt` (connect + send + read).
        self._http = aiohttp.ClientSession(connector=conn, headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=None))
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._workers = [asyncio.create_task(self._worker()) for _ in range(p.max_concurrency)]

    def submit(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Future]:
        """Start `(path, json body)` calls; a future per call, resolving to a Generation."""
        jobs = [_Job(path, body, Future()) for path, body in calls]
        if jobs:
            self.loop.call_soon_threadsafe(self._enqueue, jobs)
        return [j.fut for j in jobs]

    def _enqueue(self, jobs: list[_Job]) -> None:
        for j in jobs:
            self._queue.put_nowait(j)

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                out = await self._attempt(job.path, job.body)
            except Exception as exc:  # a bug, not a server failure: count it, keep going
                log.warning("policy call crashed: %s: %s", type(exc).__name__, exc)
                out = Generation(None, None, BACKEND)
            self._settle(job, out)

    def _settle(self, job: _Job, out: Generation | _Failure) -> None:
        if isinstance(out, Generation):
            job.fut.set_result(out)
            return
        p = self.p
        if not out.retry or job.attempt >= p.max_retries:
            body = job.body
            log.warning("policy call to %s failed after %d attempt(s): %s: %s (model=%s, %d prompt chars)",
                        job.path, job.attempt + 1, out.kind, out.detail, body.get("model"),
                        len(body.get("prompt", "")) + sum(len(m.get("content") or "")
                                                          for m in body.get("messages", ())))
            job.fut.set_result(Generation(None, None, out.kind))
            return
        # The retry loop is written out rather than taken from a retry library because each
        # outcome must come back as a Generation with its failure kind, and the wait depends
        # on what the server said in that attempt's headers.
        delay = retry_delay(job.attempt, out.wait, backoff_s=p.backoff_s, backoff_max_s=p.backoff_max_s,
                            retry_after_max_s=p.retry_after_max_s)
        job.attempt += 1
        self.retries += 1
        self.loop.call_later(delay, self._queue.put_nowait, job)

    async def _attempt(self, path: str, body: dict[str, Any]) -> Generation | _Failure:
        self.meter.add(1)
        try:
            async with asyncio.timeout(self.p.timeout_s):
                async with self._http.post(self._base + path, json=body) as resp:
                    code, resp_headers = resp.status, resp.headers
                    raw = await resp.read()
        except TimeoutError:
            return _Failure(TIMEOUT, f"no response within {self.p.timeout_s}s")
        except aiohttp.ClientError as exc:  # refused, reset, disconnected, bad HTTP
            return _Failure(CONNECTION, f"{type(exc).__name__}: {exc}")
        finally:
            self.meter.add(-1)
        if code == 429 or code >= 500:
            return _Failure(HTTP_429 if code == 429 else HTTP_5XX, f"HTTP {code}: {raw[:300]!r}",
                            wait=server_wait_s(resp_headers))
        if code >= 400:  # a bad request will not get better by retrying
            return _Failure(HTTP_4XX, f"HTTP {code}: {raw[:300]!r}", retry=False)
        try:
            return parse_generation(json.loads(raw))
        except Exception as exc:
            return _Failure(MALFORMED, f"{type(exc).__name__}: {exc}; body {raw[:300]!r}")

    def slot_clock(self) -> float:
        return self.meter.read()

    async def _shutdown(self) -> None:
        for w in self._workers:
            w.cancel()
        while not self._queue.empty():  # never started: fail them rather than leave them hanging
            job = self._queue.get_nowait()
            if not job.fut.done():
                job.fut.set_result(Generation(None, None, BACKEND))
        await self._http.close()

    def close(self) -> None:
        """Close the connections (idempotent). Also run when the policy is garbage-collected
        or the process exits, since Beam gives a DoFn no reliable teardown."""
        if self._closed or self.loop.is_closed():
            return
        self._closed = True
        done = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if not on_loop:  # waiting on the loop's own thread would deadlock
            done.result(timeout=30)
