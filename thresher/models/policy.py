"""Policies: the model that model-in-the-loop selectors sample from, behind one interface.

`Policy.generate(requests, sampling, seed) -> generations` takes a whole list of requests at
once, so a backend batches or runs them concurrently. This module holds what every backend
shares — the recipe's `policy:` and `sampling:` params, `Request`/`Generation`, the failure
kinds counted in reports — and the backends live beside it:

* `openai`   `openai_policy.OpenAIPolicy`: any OpenAI-compatible HTTP server (vLLM, SGLang,
             llama.cpp's server, TGI, hosted APIs), with concurrency, timeouts and retries.
* `vllm`     `vllm_policy.VllmPolicy`: in-process `vllm.LLM` (only when vllm is installed).
* `scripted` `thresher.testing.scripted.ScriptedPolicy`: a Python function given by import
             path, for tests of selector logic (`bernoulli_script` is the built-in one).

`policy_backends.make_policy(params)` builds the one a recipe names; `cached_policy.CachedPolicy`
puts the rollout store in front of any of them. A request that failed after all retries comes
back with `text=None` and `error=<kind>`; it is never cached, so a rerun retries it.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import xxhash
from pydantic import BaseModel, ConfigDict, Field

# Failure kinds, as counted in reports.
TIMEOUT = "timeout"
CONNECTION = "connection"
HTTP_429 = "http_429"
HTTP_5XX = "http_5xx"
HTTP_4XX = "http_4xx"
MALFORMED = "malformed_response"
BUDGET = "budget_exhausted"
BACKEND = "backend_error"


class PolicyParams(BaseModel):
    """The `policy:` mapping of a model-in-the-loop selector."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["openai", "vllm", "scripted"] = Field(
        "openai", description="`openai` (any OpenAI-compatible server), `vllm` (in-process), or "
        "`scripted` (tests).")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: server URL up to and "
                          "including `/v1`.")
    model: str = Field("default", description="Model name sent to the server (and part of every "
                       "cache key); vllm: the model path or hub name.")
    api: Literal["completions", "chat"] = Field(
        "completions", description="openai: `completions` sends `prompt_template` rendered as raw "
        "text; `chat` sends messages (MCTS step prefixes need a server that continues the final "
        "assistant message, e.g. vLLM).")
    prompt_template: str = Field(
        "{problem}\n", description="completions: the text before the model's answer, with "
        "`{problem}` (include the model's chat markup here); chat: the user message.")
    system_prompt: str | None = Field(None, description="chat: an optional system message.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (sent as a "
        "Bearer token). The key itself never appears in recipes, manifests or logs.")
    max_concurrency: int = Field(8, gt=0, le=1024, description="Most requests in flight per worker.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (seconds).")
    max_retries: int = Field(4, ge=0, le=20, description="Retries after the first attempt on "
                             "429/5xx/timeouts/connection errors/malformed responses.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry (with jitter).")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest delay of the client's own "
                                 "exponential backoff (not of a wait the server asks for).")
    retry_after_max_s: float = Field(120.0, ge=0, description="openai: longest wait honoured "
                                     "when a 429/5xx says when to come back (`Retry-After` in "
                                     "seconds or as an HTTP date, `retry-after-ms`); a longer "
                                     "wait is cut to this, then the request is retried.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="openai: extra JSON "
                                       "fields for every request (e.g. `top_k`, `min_p`).")
    script: str = Field("thresher.testing.scripted:bernoulli_script", description="scripted: "
                        "import path of `(request, seed) -> (text, finish_reason)`.")
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: keyword "
                                        "arguments for `vllm.LLM`.")


class SamplingParams(BaseModel):
    """Sampling settings shared by every request of a selector (part of the cache key)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0, description="Sampling temperature (>0 for variance).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_tokens: int = Field(512, gt=0, description="Most new tokens per full solution.")


@dataclass(frozen=True)
class Request:
    """One generation: continue `prefix` (assistant text so far) as an answer to `problem`."""

    problem: str
    sample: str = "0"  # which sample / tree position: different samples, different seeds
    prefix: str = ""
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None


@dataclass
class Generation:
    text: str | None  # the answer: `content`, or the reasoning when a model gave no content
    finish_reason: str | None = None
    error: str | None = None  # failure kind when text is None
    cached: bool = False
    reasoning: str | None = None  # a reasoning model's `reasoning_content` (not cached)


def request_seed(seed: int, sample: str) -> int:
    """A per-sample seed (servers that honour `seed` then return different samples)."""
    return xxhash.xxh32_intdigest(f"{seed}|{sample}".encode()) & 0x7FFFFFFF


class Policy:
    """Backend interface. Create it inside a worker (a stage's `setup()`), not on the driver:
    a client holds sockets and threads, which do not pickle."""

    model_id: str = "policy"

    #: Most requests the backend works on at once (the denominator of slot occupancy).
    slots: int = 1

    def generate(self, requests: list[Request], sampling: SamplingParams, seed: int) -> list[Generation]:
        raise NotImplementedError

    def submit(self, requests: list[Request], sampling: SamplingParams, seed: int) -> list[Future]:
        """Start `requests`; one future per request, resolving to its `Generation`. Callers
        may submit more while earlier ones run. The default answers the whole list at once
        with `generate` (right for backends that batch internally, like vLLM) and returns
        futures already done."""
        out = []
        for g in self.generate(requests, sampling, seed):
            f: Future = Future()
            f.set_result(g)
            out.append(f)
        return out

    def slot_clock(self) -> float | None:
        """Busy slot-seconds so far (the integral of requests in flight over time), or None
        when the backend does not measure it. Two readings and the wall time between them give
        the mean occupancy: (b1 - b0) / (slots * (t1 - t0))."""
        return None

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the request that changes what the model would say."""
        return {"model": self.model_id}

    def close(self) -> None:
        pass
