"""The `code` reward: run a completion's code against HumanEval-style tests in a sandboxed
subprocess; score 1 when every assert passes.

The reference is either the JSON of a HumanEval row (`humaneval_reference(row)`: `test`,
`entry_point`, optionally `prompt`), or plain test code that runs its own checks — test code
that defines `check(candidate)` without calling it gets `check(<last function the completion
defines>)` appended. The completion's code is its last ```python fenced block (else the whole
text); when the row has a `prompt` and the code does not define the entry point itself, the
code is taken as the body that continues the prompt (a base model's completion).

What the sandbox does: a fresh `python -I -S` (no environment variables, no site-packages
unless `site_packages=True`, not the caller's cwd on sys.path) in a new temporary directory as
cwd with a clean environment, in its own session (the whole process group is killed at the time
limit), with limits on address space (RLIMIT_AS: a memory bomb fails with MemoryError), CPU
seconds, file size and core dumps, and with `socket.socket` (also `_socket.socket`,
`socketpair`, `create_connection`) replaced by a function that raises, so ordinary network
access fails.

What it does NOT stop (it is meant for honest-but-buggy model code, not for hostile code): code
that spawns a program (`subprocess.run(["curl", ...])`) or uses `ctypes` reaches the network;
files outside the temp dir are readable and writable with the caller's permissions; a fork bomb
is bounded only by the time limit (no RLIMIT_NPROC: it counts all of the user's processes); a
program written to fool the grader can, since it shares the interpreter with the check. Run
untrusted code in a container or VM (no network namespace is available here without root).
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from thresher.models.reward_grade import (
    BAD_REFERENCE,
    MEMORY_LIMIT,
    NO_ANSWER,
    RUNTIME_ERROR,
    SANDBOX_ERROR,
    TESTS_FAILED,
    TIMEOUT,
    Grade,
    RewardBase,
)
from thresher.models.reward_timeout import DEFAULT_TIMEOUT_S, POOL_SIZE

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n", re.I)
_PASSED, _ASSERT, _MEMORY, _RAISED = 0, 3, 4, 5

# Runs inside the sandbox: limits first, then the network switched off, then the program. The
# pass token arrives on stdin (read before the program runs), so a program that exits early
# with status 0 (`os._exit(0)`) has not passed: only a run that wrote the token has.
_RUNNER = r"""
import os, resource, sys
mem, cpu = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 24, 1 << 24))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
token = sys.stdin.readline().strip()
sys.stdin.close()
import socket, _socket
def _no_network(*args, **kwargs):
    raise PermissionError("network access is blocked in the thresher code sandbox")
class _NoSocket(socket.socket):  # a class, so that ssl can still subclass it; never constructed
    def __init__(self, *args, **kwargs):
        _no_network()
for mod in (socket, _socket):
    mod.socket = mod.SocketType = _NoSocket
    mod.socketpair = _no_network
socket.create_connection = socket.fromfd = _no_network
sys.argv = ["solution.py"]
with open("solution.py") as fh:
    src = fh.read()
try:
    exec(compile(src, "solution.py", "exec"), {"__name__": "__main__"})
except AssertionError:
    import traceback; traceback.print_exc(); sys.exit(3)
except MemoryError:
    sys.exit(4)
except BaseException:
    import traceback; traceback.print_exc(); sys.exit(5)
with open("passed", "w") as fh:
    fh.write(token)
"""


def humaneval_reference(row: dict) -> str:
    """A `code` reference from a HumanEval row (its `test`, `entry_point` and `prompt`)."""
    return json.dumps({k: row[k] for k in ("test", "entry_point", "prompt") if k in row})


def extract_code(completion: str) -> str:
    """The last fenced ```python (or untagged) block; else what follows an opening fence that
    was never closed (a completion cut at its token limit); else the whole completion."""
    blocks = [m.group(2) for m in _FENCE.finditer(completion)]
    if blocks:
        return blocks[-1]
    opened = _OPEN_FENCE.search(completion)
    return completion[opened.end():] if opened else completion


def _defined_functions(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def build_program(code: str, reference: str) -> str | None:
    """Completion code + tests + the call that runs them, or None when the reference is unusable."""
    ref = str(reference)
    try:
        spec = json.loads(ref) if ref.lstrip().startswith("{") else None
    except json.JSONDecodeError:
        spec = None
    if isinstance(spec, dict):
        test, entry = spec.get("test"), spec.get("entry_point")
        if not isinstance(test, str) or not isinstance(entry, str) or not entry.isidentifier():
            return None
        if spec.get("prompt") and entry not in _defined_functions(code):
            code = spec["prompt"] + code
        return f"{code}\n\n{test}\n\ncheck({entry})\n"
    if "def check(" in ref and not re.search(r"^check\(", ref, re.M):
        defined = _defined_functions(code)
        if not defined:
            return f"{code}\n\n{ref}\n\nraise AssertionError('the completion defines no function')\n"
        return f"{code}\n\n{ref}\n\ncheck({defined[-1]})\n"
    return f"{code}\n\n{ref}\n"


@dataclass(frozen=True)
class CodeReward(RewardBase):
    """1 when the completion's code passes the reference's tests in the sandbox."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = 1024
    # Without site-packages (`python -S`) a run starts in ~60 ms instead of ~160 ms; HumanEval
    # needs only the standard library. True lets the code import installed packages.
    site_packages: bool = False
    parallel: int = POOL_SIZE  # programs run at once by grade_many (each is its own process)

    def grade_many(self, pairs):
        if self.parallel <= 1 or len(pairs) <= 1:
            return [self.grade_here(c, r) for c, r in pairs]
        with ThreadPoolExecutor(self.parallel) as ex:
            return list(ex.map(lambda p: self.grade_here(*p), pairs))

    def grade_here(self, completion: str, reference: str) -> Grade:
        code = extract_code(completion or "")
        if not code.strip():
            return Grade(0.0, None, NO_ANSWER)
        program = build_program(code, reference)
        if program is None:
            return Grade(0.0, code, BAD_REFERENCE)
        failure = self._run(program)
        return Grade(0.0 if failure else 1.0, code, failure)

    def _run(self, program: str) -> str | None:
        """None when the program passed, else its failure kind."""
        token = os.urandom(8).hex()
        with tempfile.TemporaryDirectory(prefix="thresher-code-") as tmp:
            with open(os.path.join(tmp, "solution.py"), "w") as fh:
                fh.write(program)
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp}
            flags = ["-I", "-B"] if self.site_packages else ["-I", "-B", "-S"]
            cmd = [sys.executable, *flags, "-c", _RUNNER, str(self.memory_mb << 20),
                   str(max(1, int(self.timeout_s + 0.999)))]
            try:
                with open(os.path.join(tmp, "out.txt"), "wb") as out:
                    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=out,
                                            stderr=out, start_new_session=True)
            except OSError:
                return SANDBOX_ERROR
            try:
                proc.communicate(input=(token + "\n").encode(), timeout=self.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # The whole session: children the program started die with it.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
            if timed_out or proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
                return TIMEOUT
            passed = os.path.join(tmp, "passed")
            if proc.returncode == _PASSED and os.path.exists(passed):
                with open(passed) as fh:
                    if fh.read() == token:
                        return None
            return {_ASSERT: TESTS_FAILED, _MEMORY: MEMORY_LIMIT}.get(proc.returncode, RUNTIME_ERROR)
