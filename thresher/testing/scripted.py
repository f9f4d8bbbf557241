"""The `scripted` policy backend, for tests of selector logic: a Python function answers.

`ScriptedPolicy(script)` calls `script(request, seed) -> (text, finish_reason)` for each
request and counts the calls; `bernoulli_script` (the default script) solves a problem with
a probability written into the problem text, so a test knows what a selector should find.
The runtime loads this module only when a recipe names `policy.backend: scripted`.
"""

from __future__ import annotations

import re
import threading

import xxhash

from thresher.models.policy import BACKEND, Generation, Policy, Request


class ScriptedPolicy(Policy):
    """Answers with a Python function; counts every call it receives. A script that raises
    fails that request with the exception's `kind` attribute (default `backend_error`)."""

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
