"""The OpenAI-compatible HTTP policy against a real local server that misbehaves on purpose:
500s, 429s, hangs, malformed JSON, refused connections. Runs finish, failures are counted by
kind, and no row is lost (the whole-recipe run of both model selectors is marked slow)."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from tests.conftest import run_recipe
from thresher.models.openai_policy import OpenAIPolicy
from thresher.models.policy import (
    CONNECTION,
    HTTP_4XX,
    HTTP_5XX,
    MALFORMED,
    TIMEOUT,
    PolicyParams,
    Request,
    SamplingParams,
    request_seed,
)

SECRET = "sk-test-very-secret-0123456789"


class _Handler(BaseHTTPRequestHandler):
    """Behaviour by words in the prompt: fail500, flaky (two 500s, then fine), busy (429 then
    fine), busydate (429 with an HTTP-date Retry-After, then fine), busyms (429 with
    retry-after-ms: 150, then fine), hang, garbage (invalid JSON), noshape (JSON without
    choices), reject (400), thinking (no content, only reasoning_content), wait=<s> (answer
    after that long), block (answer once the test sets `server.release`)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "messages" in body:
            text = next(m["content"] for m in body["messages"] if m["role"] == "user").strip()
        else:
            text = body["prompt"].strip()
        with srv.lock:
            srv.auth.append(self.headers.get("Authorization"))
            srv.paths.append(self.path)
            srv.seen[text] += 1
            nth = srv.seen[text]
            srv.in_flight += 1
            srv.most_in_flight = max(srv.most_in_flight, srv.in_flight)
        try:
            self._answer(srv, body, text, nth)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _answer(self, srv, body, text, nth):
        w = re.search(r"wait=(\S+)", text)
        if w:
            time.sleep(float(w.group(1)))
        if "block" in text:
            srv.release.wait(10)
        if "fail500" in text:
            return self._send(500, b'{"error": "boom"}')
        if "flaky" in text and nth <= 2:
            return self._send(503, b'{"error": "later"}')
        if "busydate" in text and nth <= 1:  # a date in the past: retry now
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
        if "busyms" in text and nth <= 1:
            srv.asked_to_wait_at = time.monotonic()
            return self._send(429, b'{"error": "slow down"}', {"retry-after-ms": "150", "Retry-After": "0"})
        if "busyms" in text:
            srv.waited = time.monotonic() - srv.asked_to_wait_at
        if "busy" in text and nth <= 1:
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if "thinking" in text:
            msg = {"role": "assistant", "content": None, "reasoning_content": "2 + 2 is 4, so the answer is 4"}
            return self._send(200, json.dumps({"choices": [{"message": msg, "finish_reason": "length"}]}).encode())
        if "hang" in text:
            time.sleep(1.0)
        if "garbage" in text:
            return self._send(200, b'{"choices": [{"text": "The ans')
        if "noshape" in text:
            return self._send(200, b'{"result": "The answer is 1"}')
        if "reject" in text:
            return self._send(400, b'{"error": "bad request"}')
        m = re.search(r"answer=(\S+)", text)
        # Right for even sample seeds, wrong for odd: a known 50 % solve rate.
        right = body.get("seed", 0) % 2 == 0
        answer = (m.group(1) if m else "0") if right else "-1"
        if "chat" in self.path:
            choice = {"message": {"role": "assistant", "content": f"The answer is {answer}."}, "finish_reason": "stop"}
        else:
            choice = {"text": f"The answer is {answer}.", "finish_reason": "stop"}
        self._send(200, json.dumps({"choices": [choice]}).encode())


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.handle_error = lambda *a: None  # a client that timed out hung up: expected here
    srv.lock = threading.Lock()
    srv.auth, srv.paths, srv.seen = [], [], Counter()
    srv.in_flight = srv.most_in_flight = 0
    srv.release = threading.Event()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _policy(base_url, **kw):
    params = dict(base_url=base_url, model="m", timeout_s=0.5, max_retries=2, backoff_s=0.01,
                  backoff_max_s=0.05, max_concurrency=4)
    params.update(kw)
    return OpenAIPolicy(PolicyParams(**params))


def test_each_failure_kind_is_reported(server, monkeypatch):
    monkeypatch.setenv("TEST_POLICY_KEY", SECRET)
    pol = _policy(_url(server), api_key_env="TEST_POLICY_KEY", timeout_s=2.0)
    impatient = _policy(_url(server), api_key_env="TEST_POLICY_KEY", timeout_s=0.25, max_retries=1)
    hang = impatient.submit([Request("hang")], SamplingParams(), seed=0)[0]  # meanwhile, the rest
    prompts = ["ok answer=5", "fail500", "flaky answer=6", "busy answer=7", "garbage", "noshape", "reject",
               "busydate answer=8", "busyms answer=9"]
    gens = pol.generate([Request(p, sample="0") for p in prompts], SamplingParams(), seed=0)
    got = {p: (g.text, g.error) for p, g in zip(prompts, gens, strict=True)}
    got["hang"] = (hang.result().text, hang.result().error)
    assert server.seen["hang"] == 2  # timed out, retried once, timed out
    impatient.close()
    assert got["ok answer=5"][0] in ("The answer is 5.", "The answer is -1.")
    assert got["flaky answer=6"][1] is None and got["busy answer=7"][1] is None  # retried, then fine
    assert got["busydate answer=8"][1] is None and got["busyms answer=9"][1] is None
    assert server.seen["busydate answer=8"] == 2 and server.seen["busyms answer=9"] == 2
    # retry-after-ms (150 ms) beat Retry-After: 0 and was not cut to backoff_max_s (50 ms).
    assert server.waited >= 0.15
    assert got["fail500"] == (None, HTTP_5XX)
    assert got["hang"] == (None, TIMEOUT)
    assert got["garbage"] == (None, MALFORMED) and got["noshape"] == (None, MALFORMED)
    assert got["reject"] == (None, HTTP_4XX)
    assert server.seen["fail500"] == 3 and server.seen["reject"] == 1  # 1 + max_retries; 4xx not retried
    assert server.seen["flaky answer=6"] == 3 and server.seen["busy answer=7"] == 2
    assert set(server.auth) == {f"Bearer {SECRET}"}
    assert SECRET not in repr(pol) and SECRET not in json.dumps(pol.cache_identity())
    pol.close()

    refused = _policy(f"http://127.0.0.1:{_free_port()}/v1")
    g = refused.generate([Request("x")], SamplingParams(), seed=0)[0]
    assert (g.text, g.error) == (None, CONNECTION)
    refused.close()


def test_in_flight_capped_and_results_taken_as_they_complete(server):
    pol = _policy(_url(server), max_concurrency=3, timeout_s=20)
    slow = pol.submit([Request("block answer=1")], SamplingParams(), seed=0)[0]
    fast = pol.submit([Request(f"wait=0.02 answer={i}", sample=str(i)) for i in range(12)], SamplingParams(), 0)
    assert all(f.result(timeout=20).error is None for f in fast)
    assert not slow.done()  # the fast ones did not wait for it (no lock-step groups)
    server.release.set()
    assert slow.result(timeout=20).error is None
    # 3 slots: the slow request held one, the other 12 went through the remaining two.
    assert server.most_in_flight == 3
    pol.close()


def test_reasoning_model_without_content_is_an_answer_not_a_retry(server):
    pol = _policy(_url(server), api="chat")
    g = pol.generate([Request("thinking answer=4")], SamplingParams(), seed=0)[0]
    assert (g.text, g.error, g.finish_reason) == ("2 + 2 is 4, so the answer is 4", None, "length")
    assert g.reasoning == g.text and server.seen["thinking answer=4"] == 1
    pol.close()


def test_chat_api_and_step_prefix(server):
    pol = _policy(_url(server), api="chat", system_prompt="Be brief.")
    g = pol.generate([Request("q answer=3", sample="2", prefix="Step 1.\n\n")], SamplingParams(), seed=0)[0]
    assert g.error is None and g.text.startswith("The answer is")
    assert server.paths == ["/v1/chat/completions"]
    pol.close()


def _rows(run):
    tables = [pa.ipc.open_stream(f"{run.out_dir}/{s['path']}").read_all() for s in run.shards]
    return pa.concat_tables(tables).to_pylist() if tables else []


@pytest.mark.slow
def test_pipeline_finishes_counts_failures_and_loses_nothing(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TEST_POLICY_KEY", SECRET)
    kinds = ["ok", "fail500", "hang", "garbage", "ok", "flaky"]
    with open(tmp_path / "p.jsonl", "w") as fh:
        for i, k in enumerate(kinds):
            fh.write(json.dumps({"question": f"Problem {i} {k} answer={i}", "answer": str(i), "i": i}) + "\n")
    policy = {"base_url": _url(server), "model": "m", "api_key_env": "TEST_POLICY_KEY", "timeout_s": 0.5,
              "max_retries": 1, "backoff_s": 0.01, "max_concurrency": 8}

    def recipe(stage, params):
        return {"sources": [{"name": "s", "paths": [str(tmp_path / "p.jsonl")], "text_field": "question"}],
                "stages": [{"type": stage, "params": {"policy": policy, **params}}],
                "output": {"dir": str(tmp_path / stage), "order": "sorted", "sort_by": "i"}, "batch_rows": 3}

    with caplog.at_level(logging.DEBUG):
        run = run_recipe(recipe("variance_filter", {"n": 4}), tmp_path)
    rows = _rows(run)
    # The server answers right exactly for even per-sample seeds.
    expected_rate = sum(request_seed(0, str(j)) % 2 == 0 for j in range(4)) / 4
    assert [r["i"] for r in rows] == list(range(6))  # every row written, failed ones with null scores
    status = {r["i"]: r["variance_status"] for r in rows}
    assert status == {0: "scored", 1: HTTP_5XX, 2: TIMEOUT, 3: MALFORMED, 4: "scored", 5: "scored"}
    for r in rows:
        if r["variance_status"] == "scored":
            assert r["solve_rate"] == expected_rate and r["rollout_failures"] == 0
        else:
            assert r["solve_rate"] is None and r["rollout_failures"] == 4
    rep = run.reports["variance_filter"]
    assert rep["failures_by_kind"] == {HTTP_5XX: 4, TIMEOUT: 4, MALFORMED: 4}
    assert rep["model_calls"] == 24 and rep["cache_hits"] == 0
    assert 0 < rep["slot_occupancy"] <= 1 and rep["reward_failures_by_kind"] == {}
    assert run.counters["variance_filter/failures/http_5xx"] == 4
    # The key never reaches a report, the run result or a log line.
    blobs = [json.dumps(run.to_json())] + [p.read_text() for p in (tmp_path / "variance_filter").rglob("*.json")]
    blobs.append(caplog.text)
    assert not any(SECRET in b for b in blobs)
    assert rep["policy"]["model"] == "m"

    # Rerun: successes come from the cache; failures are retried (still failing).
    again = run_recipe(recipe("variance_filter", {"n": 4}), tmp_path)
    rep2 = again.reports["variance_filter"]
    assert rep2["cache_hits"] == 12 and rep2["model_calls"] == 12

    run = run_recipe(recipe("mcts_difficulty", {"max_iterations": 4, "min_difficulty": 0,
                                                "max_failed_iterations": 2}), tmp_path)
    rows = _rows(run)
    assert [r["i"] for r in rows] == list(range(6))
    st = {r["i"]: r["mcts_status"] for r in rows}
    assert st[1] == HTTP_5XX and st[2] == TIMEOUT and st[3] == MALFORMED
    assert all(st[i] == "solved" for i in (0, 4, 5))
    rep = run.reports["mcts_difficulty"]
    assert set(rep["failures_by_kind"]) == {HTTP_5XX, TIMEOUT, MALFORMED}
    assert rep["failures_by_kind"][HTTP_5XX] == 2 * 3  # two failed iterations of 3 children
    assert 0 < rep["slot_occupancy"] <= 1
