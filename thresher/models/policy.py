"""Policies: the model that model-in-the-loop selectors sample from, behind one interface.

`Policy.generate(requests) -> generations` takes a whole list of requests at once, so a
backend batches or runs them concurrently. Backends:

* `openai`   any OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp's server, TGI,
             hosted APIs): `/v1/completions` or `/v1/chat/completions`, at most
             `max_concurrency` requests in flight, a timeout per request, retries with
             exponential backoff and jitter on 429, 5xx, timeouts, connection errors and
             malformed responses. The API key is read from the environment variable *named*
             in `api_key_env` when the worker starts; the recipe, manifest and logs only ever
             hold that name.
* `vllm`     in-process `vllm.LLM` (optional; only when vllm is installed).
* `scripted` a Python function `(request, seed) -> (text, finish_reason)` given by import
             path — for tests of selector logic; `bernoulli_script` is built in.

`CachedPolicy` puts the rollout store in front of any backend and counts calls, cache hits
and failures by kind. A request that failed after all retries comes back with `text=None`
and `error=<kind>`; it is never cached, so a rerun retries it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import xxhash
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("thresher.policy")

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
    backoff_max_s: float = Field(30.0, ge=0, description="Longest retry delay.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="openai: extra JSON "
                                       "fields for every request (e.g. `top_k`, `min_p`).")
    script: str = Field("thresher.models.policy:bernoulli_script", description="scripted: "
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
    text: str | None
    finish_reason: str | None = None
    error: str | None = None  # failure kind when text is None
    cached: bool = False


def request_seed(seed: int, sample: str) -> int:
    """A per-sample seed (servers that honour `seed` then return different samples)."""
    return xxhash.xxh32_intdigest(f"{seed}|{sample}".encode()) & 0x7FFFFFFF


class Policy:
    """Backend interface. Create it inside a worker (`BatchFn.setup`), not on the driver."""

    model_id: str = "policy"

    def generate(self, requests: list[Request], sampling: SamplingParams, seed: int) -> list[Generation]:
        raise NotImplementedError

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the request that changes what the model would say."""
        return {"model": self.model_id}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


class _Failure(Exception):
    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.kind = kind
        self.retry_after = retry_after


class OpenAIPolicy(Policy):
    def __init__(self, params: PolicyParams):
        import httpx

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
        import httpx

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


# ---------------------------------------------------------------------------------------
# In-process vLLM (optional)


class VllmPolicy(Policy):
    """`vllm.LLM` in this process: one `generate` call per batch of requests (vLLM batches)."""

    def __init__(self, params: PolicyParams):
        from vllm import LLM  # optional dependency

        self.p = params
        self.model_id = params.model
        self._llm = LLM(model=params.model, **params.vllm_kwargs)

    def cache_identity(self):
        return {"model": self.p.model, "api": "vllm", "template": self.p.prompt_template}

    def generate(self, requests, sampling, seed):
        from vllm import SamplingParams as VSP

        prompts = [self.p.prompt_template.format(problem=r.problem) + r.prefix for r in requests]
        sps = [VSP(temperature=sampling.temperature, top_p=sampling.top_p,
                   max_tokens=r.max_tokens or sampling.max_tokens, stop=list(r.stop) or None,
                   seed=request_seed(seed, r.sample)) for r in requests]
        try:
            outs = self._llm.generate(prompts, sps, use_tqdm=False)
        except Exception as exc:
            log.warning("vllm generate failed: %s", exc)
            return [Generation(None, None, BACKEND) for _ in requests]
        return [Generation(o.outputs[0].text, o.outputs[0].finish_reason) for o in outs]


# ---------------------------------------------------------------------------------------
# Scripted (tests)


class ScriptedPolicy(Policy):
    """Answers with a Python function; counts every call it receives."""

    def __init__(self, script, model_id: str = "scripted"):
        self.script = script
        self.model_id = model_id
        self.calls = 0
        self._lock = threading.Lock()

    def generate(self, requests, sampling, seed):
        out = []
        for r in requests:
            with self._lock:
                self.calls += 1
            try:
                text, finish = self.script(r, seed)
                out.append(Generation(text, finish))
            except Exception as exc:
                out.append(Generation(None, None, getattr(exc, "kind", BACKEND)))
        return out


_TAG = re.compile(r"\b(p|answer|steps)=(\S+)")
STEP_DELIMITER = "\n\n"


def bernoulli_script(req: Request, seed: int) -> tuple[str, str]:
    """A policy that solves a problem with a known probability, for selector tests.

    The problem text carries tags: `p=<success probability>`, `answer=<reference>`,
    `steps=<reasoning steps before the answer>` (default 2). With a `stop` (one MCTS step) it
    writes the next step, or the final answer once `steps` steps exist; without, the whole
    remaining solution. A final answer is right with probability `p`, decided by a hash of
    (seed, problem, prefix, sample): the same request always gets the same answer.
    """
    tags = dict(_TAG.findall(req.problem))
    p = float(tags.get("p", 0))
    answer = tags.get("answer", "0")
    steps = int(tags.get("steps", 2))
    done = req.prefix.count(STEP_DELIMITER)
    u = xxhash.xxh64_intdigest(f"{seed}|{req.problem}|{req.prefix}|{req.sample}".encode()) / 2.0**64

    def final() -> str:
        if u < p:
            return f"The answer is {answer}."
        try:
            return f"The answer is {int(answer) + 1 + int(u * 1000)}."
        except ValueError:
            return f"The answer is not {answer}."

    if req.stop:
        return (f"Step {done + 1}: work." if done < steps else final()), "stop"
    rest = [f"Step {i + 1}: work." for i in range(done, steps)]
    return STEP_DELIMITER.join(rest + [final()]), "stop"


# ---------------------------------------------------------------------------------------
# The cache in front of any backend


@dataclass
class PolicyStats:
    calls: int = 0  # requests sent to the backend
    cache_hits: int = 0
    failures: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cache_hits": self.cache_hits, "failures": dict(self.failures)}


def make_policy(params: PolicyParams) -> Policy:
    if params.backend == "openai":
        return OpenAIPolicy(params)
    if params.backend == "vllm":
        return VllmPolicy(params)
    from thresher.models.rewards import import_object

    return ScriptedPolicy(import_object(params.script), model_id=f"scripted:{params.script}")


def check_policy(params: PolicyParams) -> list[str]:
    """Problems visible before the run: a missing API key variable, vllm not installed."""
    out = []
    if params.backend == "openai" and params.api_key_env and not os.environ.get(params.api_key_env):
        out.append(f"policy.api_key_env: environment variable {params.api_key_env} is not set")
    if params.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            out.append("policy.backend: vllm is not installed (pip install vllm), or use backend: openai")
    if params.backend == "scripted":
        from thresher.models.rewards import import_object

        try:
            import_object(params.script)
        except Exception as exc:
            out.append(f"policy.script: cannot import {params.script!r}: {exc}")
    return out


class CachedPolicy:
    """A policy with the rollout store in front: each request is answered from disk when it
    was made before (same model, prompt, sampling, sample, seed), else by the backend."""

    def __init__(self, policy: Policy, store, sampling: SamplingParams, seed: int, chunk: int = 64):
        self.policy = policy
        self.chunk = chunk
        self.store = store
        self.sampling = sampling
        self.seed = seed
        self.stats = PolicyStats()
        self._ident = policy.cache_identity()

    def key(self, req: Request) -> str:
        from thresher.models.rollout_store import rollout_key

        params = {**self.sampling.model_dump(), "max_tokens": req.max_tokens or self.sampling.max_tokens,
                  "stop": list(req.stop), "backend": self._ident}
        return rollout_key(self.policy.model_id, req.problem + "\x00" + req.prefix, params, req.sample, self.seed)

    def generate(self, requests: list[Request], allow_calls: int | None = None) -> list[Generation]:
        """Answer every request; at most `allow_calls` go to the backend (the rest fail with
        `budget_exhausted`)."""
        keys = [self.key(r) for r in requests]
        found = self.store.get_many(list(dict.fromkeys(keys))) if self.store is not None else {}
        out: list[Generation | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            hit = found.get(k)
            if hit is not None:
                out[i] = Generation(hit.text, hit.finish_reason, cached=True)
                self.stats.cache_hits += 1
            else:
                todo.setdefault(k, []).append(i)
        miss_keys = list(todo)
        if allow_calls is not None and len(miss_keys) > allow_calls:
            for k in miss_keys[allow_calls:]:
                for i in todo[k]:
                    out[i] = Generation(None, None, BUDGET)
                self.stats.failures[BUDGET] += len(todo[k])
            miss_keys = miss_keys[: max(allow_calls, 0)]
        # In chunks, each stored as soon as it is done: a run killed mid-batch loses at most
        # one chunk of work.
        for c0 in range(0, len(miss_keys), self.chunk):
            self._call([(k, requests[todo[k][0]]) for k in miss_keys[c0:c0 + self.chunk]], todo, out)
        return out  # type: ignore[return-value]

    def _call(self, items, todo, out) -> None:
        miss_keys = [k for k, _ in items]
        if miss_keys:
            gens = self.policy.generate([r for _, r in items], self.sampling, self.seed)
            self.stats.calls += len(miss_keys)
            records = []
            for (k, r), g in zip(items, gens):
                if g.text is None:
                    self.stats.failures[g.error or BACKEND] += 1
                else:
                    records.append({"key": k, "model": self.policy.model_id, "prompt": r.problem + "\x00" + r.prefix,
                                    "params": {**self.sampling.model_dump(), "stop": list(r.stop),
                                               "max_tokens": r.max_tokens or self.sampling.max_tokens},
                                    "sample": r.sample, "seed": self.seed, "text": g.text,
                                    "finish_reason": g.finish_reason})
                for i in todo[k]:
                    out[i] = g
            if self.store is not None:
                self.store.put_many(records)
