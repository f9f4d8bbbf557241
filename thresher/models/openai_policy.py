"""The `openai` policy backend: any OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp's
server, TGI, hosted APIs).

`/v1/completions` or `/v1/chat/completions`, at most `max_concurrency` requests in flight, a
timeout per request, retries with exponential backoff and jitter on 429, 5xx, timeouts,
connection errors and malformed responses (a 4xx fails at once: it will not get better). The
API key is read from the environment variable *named* in `api_key_env` when the worker starts;
the recipe, manifest and logs only ever hold that name.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from thresher.models.policy import (
    CONNECTION,
    HTTP_4XX,
    HTTP_5XX,
    HTTP_429,
    MALFORMED,
    TIMEOUT,
    Generation,
    Policy,
    PolicyParams,
    Request,
    SamplingParams,
    request_seed,
)

log = logging.getLogger("thresher.policy")


class _Failure(Exception):
    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.kind = kind
        self.retry_after = retry_after


class OpenAIPolicy(Policy):
    def __init__(self, params: PolicyParams):
        import httpx  # off the start-up path: only a worker that talks to a server needs it

        self.p = params
        self.model_id = params.model
        headers = {"Content-Type": "application/json"}
        if params.api_key_env:
            key = os.environ.get(params.api_key_env)
            if not key:
                raise RuntimeError(f"environment variable {params.api_key_env} (policy.api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"  # lives only in the client's headers
        limits = httpx.Limits(max_connections=params.max_concurrency,
                              max_keepalive_connections=params.max_concurrency)
        self._client = httpx.Client(base_url=params.base_url.rstrip("/"), headers=headers,
                                    timeout=httpx.Timeout(params.timeout_s), limits=limits)
        self._pool = ThreadPoolExecutor(max_workers=params.max_concurrency, thread_name_prefix="policy")
        self.retries = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show headers
        return f"OpenAIPolicy(base_url={self.p.base_url!r}, model={self.p.model!r}, api={self.p.api!r})"

    def cache_identity(self) -> dict[str, Any]:
        p = self.p
        return {"model": p.model, "api": p.api, "template": p.prompt_template, "system": p.system_prompt,
                "extra": p.extra_body}

    def generate(self, requests, sampling, seed):
        return list(self._pool.map(lambda r: self._one(r, sampling, seed), requests))

    def _payload(self, req: Request, sampling: SamplingParams, seed: int) -> tuple[str, dict[str, Any]]:
        p = self.p
        body: dict[str, Any] = {
            "model": p.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": req.max_tokens or sampling.max_tokens,
            "seed": request_seed(seed, req.sample),
            **p.extra_body,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        if p.api == "completions":
            body["prompt"] = p.prompt_template.format(problem=req.problem) + req.prefix
            return "/completions", body
        msgs = [{"role": "system", "content": p.system_prompt}] if p.system_prompt else []
        msgs.append({"role": "user", "content": p.prompt_template.format(problem=req.problem)})
        if req.prefix:
            msgs.append({"role": "assistant", "content": req.prefix})
            body.setdefault("continue_final_message", True)
            body.setdefault("add_generation_prompt", False)
        body["messages"] = msgs
        return "/chat/completions", body

    def _one(self, req: Request, sampling: SamplingParams, seed: int) -> Generation:
        path, body = self._payload(req, sampling, seed)
        attempt = 0
        while True:
            try:
                return self._post(path, body)
            except _Failure as f:
                if attempt >= self.p.max_retries:
                    log.warning("policy call failed after %d attempts: %s: %s", attempt + 1, f.kind, f)
                    return Generation(None, None, f.kind)
                delay = min(self.p.backoff_max_s, self.p.backoff_s * (2 ** attempt))
                delay = f.retry_after if f.retry_after is not None else delay * (0.5 + random.random() / 2)
                attempt += 1
                with self._lock:
                    self.retries += 1
                time.sleep(min(delay, self.p.backoff_max_s))

    def _post(self, path: str, body: dict[str, Any]) -> Generation:
        import httpx  # already loaded by __init__; named here for its exception classes

        try:
            resp = self._client.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise _Failure(TIMEOUT, f"{type(exc).__name__}") from None
        except httpx.TransportError as exc:  # refused, reset, DNS, protocol errors
            raise _Failure(CONNECTION, f"{type(exc).__name__}: {exc}") from None
        if resp.status_code == 429:
            raise _Failure(HTTP_429, "429 Too Many Requests", _retry_after(resp))
        if resp.status_code >= 500:
            raise _Failure(HTTP_5XX, f"HTTP {resp.status_code}", _retry_after(resp))
        if resp.status_code >= 400:
            # A bad request will not get better by retrying: fail at once.
            log.warning("policy call rejected: HTTP %d: %s", resp.status_code, resp.text[:300])
            return Generation(None, None, HTTP_4XX)
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}")
            return Generation(text, choice.get("finish_reason"))
        except Exception as exc:
            raise _Failure(MALFORMED, f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


def _retry_after(resp) -> float | None:
    v = resp.headers.get("retry-after")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
