"""When the policy client retries: the server's Retry-After in every form it is sent, its own
cap, and the client's exponential backoff; and how a response becomes a Generation
(reasoning models included)."""

from __future__ import annotations

import random

import pytest

from thresher.models.http_client import parse_generation
from thresher.models.retry import retry_delay, server_wait_s

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.mark.parametrize(("headers", "wait"), [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": " 2.5 "}, 2.5),
    ({"retry-after": "-3"}, 0.0),
    ({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, 30.0),  # HTTP-date, 30 s ahead
    ({"retry-after": "Tue, 14 Nov 2023 22:13:50"}, 30.0),  # no zone: read as GMT
    ({"retry-after": "Tue, 14 Nov 2023 22:00:00 GMT"}, 0.0),  # in the past: now
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the finer one wins
    ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
    ({"retry-after": "whenever"}, None),
    ({"retry-after": "nan"}, None),
    ({}, None),
])
def test_server_wait_in_every_form(headers, wait):
    assert server_wait_s(headers, now=NOW) == wait


def test_server_wait_is_capped_by_its_own_limit_not_the_backoff_cap():
    kw = dict(backoff_s=0.5, backoff_max_s=2.0, retry_after_max_s=60.0)
    assert retry_delay(0, 45.0, **kw) == 45.0  # longer than backoff_max_s: honoured
    assert retry_delay(3, 600.0, **kw) == 60.0
    assert retry_delay(0, 0.0, **kw) == 0.0


def test_backoff_doubles_with_jitter_up_to_its_cap():
    kw = dict(backoff_s=0.5, backoff_max_s=3.0, retry_after_max_s=60.0)
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:
        delays = [retry_delay(attempt, None, rng=random.Random(s), **kw) for s in range(50)]
        assert all(base / 2 <= d <= base for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > base / 4  # jittered, not one value
    assert retry_delay(1, None, rng=random.Random(0), **kw) == 1.0 * (0.5 + random.Random(0).random() / 2)


def _chat(**message):
    return {"choices": [{"message": {"role": "assistant", **message}, "finish_reason": "stop"}]}


def test_reasoning_models_answer_from_content_else_their_reasoning():
    g = parse_generation(_chat(content="The answer is 4.", reasoning_content="2+2... is 4"))
    assert (g.text, g.reasoning, g.finish_reason) == ("The answer is 4.", "2+2... is 4", "stop")
    # Stopped while thinking (content empty or null): the reasoning is what the reward judges.
    for content in (None, ""):
        g = parse_generation(_chat(content=content, reasoning_content="so it is 4"))
        assert (g.text, g.reasoning, g.error) == ("so it is 4", "so it is 4", None)
    assert parse_generation(_chat(content=None, reasoning="r1 style")).text == "r1 style"
    assert parse_generation(_chat(content="")).text == ""  # an empty step is an answer (MCTS: final)
    assert parse_generation({"choices": [{"text": "t", "finish_reason": "length"}]}).finish_reason == "length"
    for bad in (_chat(content=None), _chat(content=5), {"choices": []}, {"result": 1}, _chat(content="x",
                                                                                            reasoning_content=[1])):
        with pytest.raises((KeyError, IndexError, TypeError)):
            parse_generation(bad)
