"""The policy a recipe's `policy:` names: `make_policy(params)` builds it (on a worker),
`check_policy(params)` finds what would stop it before the run starts."""

from __future__ import annotations

import importlib.util
import os

from thresher.core.imports import ImportProblem, import_object
from thresher.models.openai_policy import OpenAIPolicy
from thresher.models.policy import Policy, PolicyParams
from thresher.models.vllm_policy import VllmPolicy


def make_policy(params: PolicyParams) -> Policy:
    if params.backend == "openai":
        return OpenAIPolicy(params)
    if params.backend == "vllm":
        return VllmPolicy(params)
    # Test support stays off the runtime path: loaded only when a recipe asks for `scripted`.
    from thresher.testing.scripted import ScriptedPolicy

    return ScriptedPolicy(import_object(params.script, "script"), model_id=f"scripted:{params.script}")


def check_policy(params: PolicyParams) -> list[str]:
    """Problems visible before the run: a missing API key variable, vllm not installed, a
    script that does not import."""
    out = []
    if params.backend == "openai" and params.api_key_env and not os.environ.get(params.api_key_env):
        out.append(f"policy.api_key_env: environment variable {params.api_key_env} is not set")
    if params.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        out.append("policy.backend: vllm is not installed (pip install vllm), or use backend: openai")
    if params.backend == "scripted":
        try:
            import_object(params.script, "script")
        except ImportProblem as exc:
            out.append(f"policy.script: {exc}")
        except Exception as exc:  # the script's own module failed while importing
            out.append(f"policy.script: importing {params.script!r} failed: {type(exc).__name__}: {exc}")
    return out
