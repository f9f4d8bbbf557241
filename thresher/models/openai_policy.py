"""The `openai` policy backend: any OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp's
server, TGI, hosted APIs).

`/v1/completions` or `/v1/chat/completions`, at most `max_concurrency` requests in flight
(taken as they complete, on a per-process event loop: `http_client.py`), a timeout per
request, retries with exponential backoff and jitter on 429, 5xx, timeouts, connection errors
and malformed responses, honouring the server's `Retry-After` / `retry-after-ms` up to
`retry_after_max_s` (`retry.py`); a 4xx fails at once: it will not get better. The API key is
read from the environment variable *named* in `api_key_env` when the worker starts; the
recipe, manifest and logs only ever hold that name.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import Future
from typing import Any

from thresher.models.policy import Generation, Policy, PolicyParams, Request, SamplingParams, request_seed


class OpenAIPolicy(Policy):
    def __init__(self, params: PolicyParams):
        # Off the start-up path (httpx, an event loop thread): only a worker that talks to a
        # server needs them.
        from thresher.models.http_client import AsyncPolicyClient

        self.p = params
        self.model_id = params.model
        self.slots = params.max_concurrency
        headers = {"Content-Type": "application/json"}
        if params.api_key_env:
            key = os.environ.get(params.api_key_env)
            if not key:
                raise RuntimeError(f"environment variable {params.api_key_env} (policy.api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"  # lives only in the client's headers
        self._client = AsyncPolicyClient(params, headers)
        # Stages have no teardown hook: close the connections when the policy goes away.
        weakref.finalize(self, self._client.close)

    def __repr__(self) -> str:  # never show headers
        return f"OpenAIPolicy(base_url={self.p.base_url!r}, model={self.p.model!r}, api={self.p.api!r})"

    @property
    def retries(self) -> int:
        return self._client.retries

    def cache_identity(self) -> dict[str, Any]:
        p = self.p
        return {"model": p.model, "api": p.api, "template": p.prompt_template, "system": p.system_prompt,
                "extra": p.extra_body}

    def submit(self, requests: list[Request], sampling: SamplingParams, seed: int) -> list[Future]:
        return self._client.submit([self._payload(r, sampling, seed) for r in requests])

    def generate(self, requests: list[Request], sampling: SamplingParams, seed: int) -> list[Generation]:
        return [f.result() for f in self.submit(requests, sampling, seed)]

    def slot_clock(self) -> float:
        return self._client.slot_clock()

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

    def close(self) -> None:
        self._client.close()
