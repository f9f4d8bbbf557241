"""The `vllm` policy backend: `vllm.LLM` in this process (optional; only when vllm is
installed). One `generate` call per batch of requests: vLLM batches them itself."""

from __future__ import annotations

import logging

from thresher.models.policy import BACKEND, Generation, Policy, PolicyParams, request_seed

log = logging.getLogger("thresher.policy")


class VllmPolicy(Policy):
    def __init__(self, params: PolicyParams):
        from vllm import LLM  # optional and heavy (torch, CUDA): only a worker that uses it

        self.p = params
        self.model_id = params.model
        self._llm = LLM(model=params.model, **params.vllm_kwargs)

    def cache_identity(self):
        return {"model": self.p.model, "api": "vllm", "template": self.p.prompt_template}

    def generate(self, requests, sampling, seed):
        from vllm import SamplingParams as VSP  # already loaded by __init__

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
