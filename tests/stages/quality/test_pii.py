"""`pii`: PII planted in real pool rows is found, counted per kind and redacted (placeholders or
salted hashes), rows are dropped or flagged on request, near-misses and the GSM8K test
questions do not hit, and the RE2 prefilter never hides a hit the exact patterns would find."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest

from thresher.core.columns import set_columns
from thresher.stages.quality import pii_patterns as pat
from thresher.stages.quality.pii import Pii
from thresher.testing.harness import make_batch, run_stage

# (kind, value as written): several formats per kind, all valid (Luhn / mod 97 / RFC 4291).
PLANTED = [
    ("email", "jane.doe@example.com"), ("email", "j.smith+news@mail.example.co.uk"),
    ("email", "ADMIN_2@Example.ORG"), ("ipv4", "192.168.10.25"), ("ipv4", "8.8.4.4"),
    ("ipv6", "2001:db8:85a3::8a2e:370:7334"), ("ipv6", "fe80:0:0:0:202:b3ff:fe1e:8329"),
    ("phone", "+44 20 7946 0958"), ("phone", "(555) 123-4567"), ("phone", "555-867-5309"),
    ("phone", "+1 (202) 555-0143"), ("phone", "030-1234567"), ("phone", "01 23 45 67 89"),
    ("credit_card", "4111 1111 1111 1111"), ("credit_card", "5500-0000-0000-0004"),
    ("credit_card", "378282246310005"), ("credit_card", "3782 822463 10005"),
    ("iban", "DE89 3704 0044 0532 0130 00"), ("iban", "GB82WEST12345698765432"),
    ("iban", "FR14 2004 1010 0505 0001 3M02 606"), ("iban", "NL91 ABNA 0417 1643 00"),
]

# Look like PII, are not: bad checksums, versions, times, slices, prices, counts, loopback.
NEAR_MISSES = [
    "Card 4111 1111 1111 1112 was declined; IBAN DE89 3704 0044 0532 0130 01 too.",
    "Upgrade from 1.2.3.4.5 to 3.10 at 10:30:45 today; slice x[1:2:3] or a[::2]; ::1 is local.",
    "She paid $1,234,567,890,123 for 12 345 678 apples and 0000 0000 0000 0000 filler.",
    "Count 100 200 300 4000 and 555 1234 and 2024-05-17 and 1-2-3; ratio 3:4:5; user@localhost.",
]

KINDS = ("email", "ipv4", "ipv6", "phone", "credit_card", "iban")


def _score(params: dict, texts: list[str]) -> dict[str, list]:
    """The stage's columns for `texts`, without a pipeline (seed 0)."""
    out = Pii(params).score(make_batch([{"text": t} for t in texts]))
    return {k: v.to_pylist() for k, v in out.items()}


def _pool_rows(shared_data, n: int) -> list[dict]:
    out = []
    with gzip.open(shared_data / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % 50 == 0:
                row = json.loads(line)
                if "@" not in row["text"] and not any(ch.isdigit() for ch in row["text"]):
                    out.append({"id": row["id"], "text": row["text"]})
            if len(out) == n:
                return out
    raise AssertionError("general_pool has too few rows")


def _planted(shared_data) -> tuple[list[dict], list[dict]]:
    """(rows as read, the same rows with one planted value each, in the middle of the text)."""
    clean = _pool_rows(shared_data, len(PLANTED) + 4)
    planted = []
    for i, row in enumerate(clean):
        if i < len(PLANTED):
            words = row["text"].split(" ")
            mid = len(words) // 2
            text = " ".join(words[:mid] + [f"(write to {PLANTED[i][1]})"] + words[mid:])
            planted.append({**row, "text": text})
        else:
            planted.append(dict(row))
    return clean, planted


def test_pii_planted_in_real_rows_is_redacted_and_counted(shared_data):
    clean, planted = _planted(shared_data)
    assert _score({"action": "flag"}, [r["text"] for r in clean])["pii_count"] == [0] * len(clean)
    stage = Pii({})
    batch = make_batch(planted)
    batch = set_columns(batch, stage.score(batch))
    keep, _ = stage.decide(batch)
    report = stage.report(stage.summarise(batch, keep))
    n = len(PLANTED)
    assert keep.tolist() == [True] * (n + 4)
    assert batch.column("pii_count").to_pylist() == [1] * n + [0] * 4
    assert batch.column("pii_kinds").to_pylist() == [[k] for k, _ in PLANTED] + [[]] * 4
    texts = batch.column("text").to_pylist()
    for (kind, value), text, before in zip(PLANTED, texts, planted, strict=False):
        assert value not in text and f"(write to <{kind.upper()}>)" in text
        assert text == before["text"].replace(value, f"<{kind.upper()}>")
    assert texts[n:] == [r["text"] for r in planted[n:]]
    want = {k: sum(1 for kind, _ in PLANTED if kind == k) for k in KINDS}
    assert report["hits"] == want and report["rows_with"] == want
    assert report["rows"] == n + 4 and report["rows_touched"] == n and report["action"] == "redact"


def test_gsm8k_test_questions_have_no_pii(shared_data):
    with gzip.open(shared_data / "gsm8k" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line in fh]
    assert len(questions) == 1319
    assert sum(_score({}, questions)["pii_count"]) == 0
    assert [pat.find(q, KINDS) for q in questions] == [[]] * len(questions)


def test_near_misses_do_not_hit_and_prefilter_hides_nothing(shared_data):
    _, planted = _planted(shared_data)
    texts = [r["text"] for r in planted] + NEAR_MISSES + ["; ".join(v for _, v in PLANTED)]
    counts = _score({"action": "flag"}, texts)["pii_count"]
    # Every row scanned by the exact patterns alone, no prefilter: the same counts.
    assert counts == [len(pat.find(t, KINDS)) for t in texts]
    assert counts[-5:] == [0, 0, 0, 0, len(PLANTED)]


def test_hash_tokens_are_stable_salted_and_format_blind():
    texts = ["card 4111 1111 1111 1111, mail Jane@Example.com",
             "card 4111-1111-1111-1111, mail jane@example.com, ip 10.0.0.1"]
    a = _score({"replacement": "hash", "salt": "s1"}, texts)["text"]
    b = _score({"replacement": "hash", "salt": "s2"}, texts)["text"]
    card, mail = a[0].split(" ")[1].rstrip(","), a[0].split(" ")[-1]
    assert card.startswith("<CREDIT_CARD:") and len(card) == len("<CREDIT_CARD:>") + 10
    assert a[0] == f"card {card}, mail {mail}" and a[1].startswith(f"card {card}, mail {mail}, ip <IPV4:")
    assert b[0] != a[0] and b[0].startswith("card <CREDIT_CARD:")
    key = pat.salt_key("s1", 0)
    assert mail == pat.hashed("email", "jane@example.com", key) == pat.hashed("email", "JANE@example.COM", key)


@pytest.mark.slow
def test_drop_redact_and_flag_actions_in_a_pipeline_and_kind_selection():
    rows = [{"text": "reach me at a.b@example.com"}, {"text": "no personal data here"},
            {"text": "server 10.1.2.3, phone +44 20 7946 0958"}]
    dropped = run_stage(Pii, rows, {"action": "drop"})
    assert dropped.kept.column("text").to_pylist() == ["no personal data here"]
    assert dropped.dropped.column("drop_reason").to_pylist() == ["pii", "pii"]
    assert dropped.dropped.column("text").to_pylist() == [rows[0]["text"], rows[2]["text"]]
    assert dropped.counters["pii/dropped/pii/test"] == 2
    assert dropped.report["hits"]["phone"] == 1 and dropped.report["rows_touched"] == 2
    redacted = run_stage(Pii, rows, {"replacement": "hash"})
    assert redacted.kept.column("text").to_pylist()[1:] == [
        "no personal data here", f"server {pat.hashed('ipv4', '10.1.2.3', pat.salt_key('', 0))}, phone "
        f"{pat.hashed('phone', '+44 20 7946 0958', pat.salt_key('', 0))}"]
    assert redacted.kept.column("pii_count").to_pylist() == [1, 0, 2]
    assert "__pii_by_kind" not in dropped.kept.column_names
    flagged = _score({"action": "flag", "kinds": ["ipv4", "email"]}, [r["text"] for r in rows])
    assert "text" not in flagged and flagged["pii_kinds"] == [["email"], [], ["ipv4"]]


def test_params_are_checked():
    with pytest.raises(ValueError, match="name at least one kind"):
        Pii({"kinds": []})
    with pytest.raises(ValueError, match="Input should be 'redact', 'drop' or 'flag'"):
        Pii({"action": "mask"})
    batch = make_batch([{"text": "x"}])
    assert Pii({}).score(batch)["pii_count"].type == pa.int32()
