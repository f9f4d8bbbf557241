"""`decontaminate`: score/decide on a small hand-made benchmark and one Beam run of the stage
(fast); then real benchmarks (GSM8K test, MATH-500, HumanEval, MMLU) planted into real
general-pool text, through whole recipes (slow).

Plants: verbatim; re-cased and re-spaced; punctuation changed; embedded inside a longer
paragraph; only partly copied. Asserted: n-gram recall >= 0.99 on verbatim + reformatted
plants, >= 0.95 on embedded ones, <= 0.1% of clean pool rows removed, and every removed row in
the audit with the right benchmark item id. The embedding method's recall on hand-written
GSM8K paraphrases is printed (run with -s) and held to a floor.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import run_recipe
from thresher.core import columns as cols
from thresher.core.context import StageContext
from thresher.recipe.schema import Recipe, RecipeError
from thresher.stages.decontam.decontaminate import Decontaminate
from thresher.stages.decontam.ngram_index import normalise_one
from thresher.testing.harness import make_batch, run_stage

N_PER_BENCH = 30
N_CLEAN = 8000
MIN_WORDS = 6  # the stage's default: shorter items are not matched (documented limitation)


def _jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def _shard_ids(res) -> set[str]:
    ids: set[str] = set()
    for s in res.shards:
        with pa.ipc.open_stream(Path(res.out_dir) / s["path"]) as r:
            ids.update(r.read_all().column("id").to_pylist())
    return ids


def _audit(res, stage: str = "decontaminate") -> pa.Table:
    with pa.ipc.open_stream(Path(res.out_dir) / "reports" / f"{stage}-audit.arrow") as r:
        return r.read_all()


def _benchmarks(d: Path) -> list[dict]:
    return [
        {"preset": "gsm8k", "paths": [str(d / "gsm8k" / "test.jsonl.gz")]},
        {"preset": "math500", "paths": [str(d / "math500" / "test.jsonl.gz")]},
        {"preset": "humaneval", "paths": [str(d / "humaneval" / "HumanEval.jsonl.gz")]},
        {"preset": "mmlu", "paths": [str(d / "mmlu" / "test.jsonl.gz")]},
    ]


def _items(d: Path, rng: random.Random) -> list[tuple[str, str, str]]:
    """(benchmark, item id, text as it would appear in a web page) for sampled items."""
    out = []
    gsm = _jsonl(d / "gsm8k" / "test.jsonl.gz")
    for i in rng.sample(range(len(gsm)), N_PER_BENCH):
        out.append(("gsm8k", f"gsm8k/{i + 1}", gsm[i]["question"]))  # id = line number
    math = [r for r in _jsonl(d / "math500" / "test.jsonl.gz")
            if len(normalise_one(r["problem"]).split()) >= MIN_WORDS]
    for r in rng.sample(math, N_PER_BENCH):
        out.append(("math500", r["unique_id"], r["problem"]))
    he = _jsonl(d / "humaneval" / "HumanEval.jsonl.gz")
    for r in rng.sample(he, N_PER_BENCH):
        out.append(("humaneval", r["task_id"], r["prompt"] + r["canonical_solution"]))
    mmlu = _jsonl(d / "mmlu" / "test.jsonl.gz")
    for r in rng.sample(mmlu, N_PER_BENCH):
        # As exam pages print it: lettered choices, one per line.
        text = r["question"] + "\n" + "\n".join(f"{'ABCD'[k]}. {c}" for k, c in enumerate(r["choices"]))
        out.append(("mmlu", r["id"], text))
    return out


def _recase_respace(t: str, rng: random.Random) -> str:
    words = t.split(" ")
    out = [w.upper() if rng.random() < 0.3 else w.lower() if rng.random() < 0.5 else w.title() for w in words]
    return "".join(w + rng.choice([" ", "  ", "\n", " \t "]) for w in out).strip()


_PUNCT = ",.;:!?\"'()-’"


def _change_punctuation(t: str, rng: random.Random) -> str:
    """Sentence punctuation replaced, dropped or added; apostrophes swapped for curly ones.
    Punctuation inside a word (Liam's, 3.5) only changes its apostrophe style: turning it into
    a space would split the word, which is a different text, not a reformatting."""
    out = []
    for i, ch in enumerate(t):
        next_space = i + 1 == len(t) or t[i + 1].isspace()
        prev_space = i == 0 or t[i - 1].isspace()
        if ch in "'’" and not (next_space or prev_space):
            out.append("’" if ch == "'" else "'")
        elif ch in _PUNCT and (next_space or prev_space) and rng.random() < 0.7:
            # Deleting it cannot glue two words together: a space is on one side.
            out.append(rng.choice([c for c in ",.;!?:" if c != ch] + [" ", ""]))
        elif ch == " " and rng.random() < 0.05:
            out.append(rng.choice([", ", " - ", "; "]))
        else:
            out.append(ch)
    return "".join(out)


def _partial(t: str, frac: float) -> str:
    w = t.split()
    return " ".join(w[: max(1, int(len(w) * frac))])


# ---------------------------------------------------------------------------------------
# Fast: a hand-made benchmark

TRIVIA = [
    {"qid": "t1", "q": "Which river flows through the city of Vienna on its way to the Black Sea?"},
    {"qid": "t2", "q": "How many legs does a spider have if two of them are missing today?"},
    {"qid": "t3", "q": "Name it."},  # below min_words: never matched
]
POOL = [
    {"id": "clean", "text": "Birds sing in the morning and the trees sway in the warm summer wind."},
    {"id": "copy", "text": "Quiz: which river flows through the city of Vienna on its way to the Black Sea? "
                           "Answer below."},
    {"id": "reformatted", "text": "HOW many legs does a spider have, if two of them are MISSING today"},
    {"id": "partial", "text": "Which river flows through the city of Vienna on"},
    {"id": "short", "text": "Name it."},
]


def _stage(tmp_path: Path, **params) -> Decontaminate:
    _write(tmp_path / "trivia.jsonl", TRIVIA)
    recipe = Recipe.model_validate({"sources": [{"name": "test", "paths": ["<memory>"]}], "base_dir": str(tmp_path)})
    ctx = StageContext(name="decon", seed=0, out_dir=str(tmp_path), work_dir=str(tmp_path / "_work"), recipe=recipe,
                       write_dropped=True)
    bench = {"name": "trivia", "paths": ["trivia.jsonl"], "fields": ["q"], "id_field": "qid"}
    return Decontaminate({"benchmarks": [bench], "n": 8, **params}, ctx)


def test_score_finds_copies_and_decide_drops_them(tmp_path):
    stage = _stage(tmp_path)
    assert stage.check() == []
    batch = make_batch(POOL)
    scored = cols.set_columns(batch, stage.score(batch))
    assert scored.column("decontam_ngram_score").to_pylist()[:2] == [0.0, 1.0]
    assert scored.column("decontam_ngram_score").to_pylist()[2] == 1.0  # case and punctuation do not matter
    assert scored.column("decontam_ngram_score").to_pylist()[3] == 0.25  # 2 of the item's 8 8-grams
    assert "decontam_benchmark" not in scored.schema.names  # match columns only with action: flag
    audit = scored.column("__decontam_audit").to_pylist()
    assert [[e["item_id"] for e in a] for a in audit] == [[], ["t1"], ["t2"], [], []]
    assert audit[1][0]["method"] == "ngram" and audit[1][0]["benchmark"] == "trivia"
    assert "vienna" in audit[1][0]["span"].lower()
    keep, reasons = stage.decide(scored)
    assert keep.tolist() == [True, False, False, True, True]
    assert reasons[1:3] == ["contaminated:trivia", "contaminated:trivia"]


def test_flag_mode_keeps_every_row_with_match_columns(tmp_path):
    stage = _stage(tmp_path, action="flag", mode="any")
    batch = make_batch(POOL)
    scored = cols.set_columns(batch, stage.score(batch))
    assert scored.column("decontam_benchmark").to_pylist() == [None, "trivia", "trivia", "trivia", None]
    assert scored.column("decontam_item").to_pylist() == [None, "t1", "t2", "t1", None]
    assert scored.column("decontam_method").to_pylist() == [None, "ngram", "ngram", "ngram", None]
    keep, _ = stage.decide(scored)
    assert keep.all()


def test_stage_run_drops_counts_and_writes_the_audit(tmp_path):
    stage = _stage(tmp_path)
    res = run_stage(stage, POOL * 2, batch_rows=3, out_dir=str(tmp_path))
    assert res.kept.column("id").to_pylist() == ["clean", "partial", "short"] * 2
    assert res.dropped.column("id").to_pylist() == ["copy", "reformatted"] * 2
    assert set(res.dropped.column("drop_reason").to_pylist()) == {"contaminated:trivia"}
    for t in (res.kept, res.dropped):  # internal columns never leave the stage
        assert not [c for c in t.schema.names if c.startswith("__decontam")]
    assert res.counters["decon/in/test"] == 10
    assert res.counters["decon/dropped/contaminated:trivia/test"] == 4
    assert res.counters["decon/flagged/test"] == 4
    rep = res.report
    assert rep["rows_flagged"] == 4 and rep["audit_entries"] == 4
    assert rep["benchmarks"]["trivia"] == {
        "items": 3, "items_found": 2, "contamination_rate": pytest.approx(2 / 3), "rows_flagged": 4,
        "rows_flagged_by_source": {"test": 4}, "items_found_by_method": {"ngram": 2}, "segments_unreadable": 0}
    assert rep["index"]["segments"] == 3 and rep["index"]["segments_too_short"] == 1
    assert rep["artifacts"] == ["reports/decon-audit.arrow", "reports/decon-audit.csv"]
    audit = _audit(res, "decon")
    assert audit.schema.names == ["row_id", "source", "benchmark", "item_id", "segment", "method", "score", "span"]
    assert audit.column("row_id").to_pylist() == ["copy", "reformatted"] * 2  # in row order
    assert audit.column("item_id").to_pylist() == ["t1", "t2", "t1", "t2"]
    csv = (tmp_path / "reports" / "decon-audit.csv").read_text()
    assert csv.count("\n") == 5 and csv.startswith('"row_id","source","benchmark"')


def test_clean_run_writes_an_empty_audit(tmp_path):
    res = run_stage(_stage(tmp_path), POOL[:1], out_dir=str(tmp_path))
    assert res.kept.num_rows == 1 and res.report["rows_flagged"] == 0 and "decon/flagged/test" not in res.counters
    assert _audit(res, "decon").num_rows == 0


# ---------------------------------------------------------------------------------------
# Slow: real benchmarks, whole recipes


@pytest.mark.slow
def test_ngram_recall_false_positives_and_audit(shared_data, tmp_path):
    rng = random.Random(7)
    pool = _jsonl(shared_data / "general_pool" / "pool.jsonl.gz")
    clean = pool[::9][:N_CLEAN]  # every source of the pool
    context = pool[1::9][:4000]
    items = _items(shared_data, rng)
    plants: dict[str, tuple[str, str, str]] = {}  # row id -> (variant, benchmark, item id)
    records = [{"id": r["id"], "text": r["text"]} for r in clean]
    for k, (bench, item_id, text) in enumerate(items):
        before, after = rng.sample(context, 2)
        variants = {
            "verbatim": text,
            "recase_respace": _recase_respace(text, rng),
            "punctuation": _change_punctuation(text, rng),
            "embedded": f"{before['text']}\n\n{text}\n\n{after['text']}",
            "partial_70": _partial(text, 0.7),
            "partial_30": _partial(text, 0.3),
        }
        for v, t in variants.items():
            rid = f"plant/{v}/{k}"
            plants[rid] = (v, bench, item_id)
            records.append({"id": rid, "text": t})
    rng.shuffle(records)
    _write(tmp_path / "pool.jsonl", records)
    res = run_recipe({
        "sources": [{"name": "pool", "paths": ["pool.jsonl"], "id_field": "id"}],
        "stages": [{"type": "decontaminate", "params": {"benchmarks": _benchmarks(shared_data)}}],
        "output": {"dir": "out"},
    }, tmp_path)

    kept = _shard_ids(res)
    removed = {r["id"] for r in records} - kept
    audit = _audit(res)
    audit_items: dict[str, set[str]] = {}
    for rid, item in zip(audit.column("row_id").to_pylist(), audit.column("item_id").to_pylist(), strict=True):
        audit_items.setdefault(rid, set()).add(item)

    # Every removed row is in the audit, and nothing else is.
    assert set(audit_items) == removed
    caught: dict[str, list[bool]] = {}
    for rid, (v, _bench, item_id) in plants.items():
        hit = rid in removed
        if hit:  # ... with the item it was planted from
            assert item_id in audit_items[rid], (rid, item_id, audit_items[rid])
        caught.setdefault(v, []).append(hit)
    recall = {v: sum(h) / len(h) for v, h in caught.items()}
    fp = len(removed - set(plants)) / len(clean)
    print(f"\nn-gram recall by plant variant: {recall}; clean rows removed: {fp:.4%}")

    exact_like = caught["verbatim"] + caught["recase_respace"] + caught["punctuation"]
    assert sum(exact_like) / len(exact_like) >= 0.99
    assert recall["embedded"] >= 0.95
    assert fp <= 0.001
    # Partial copies: 70% of an item keeps most of its n-grams, 30% keeps few (threshold 0.5).
    assert recall["partial_70"] > recall["partial_30"]
    assert recall["partial_30"] <= 0.2

    rep = res.reports["decontaminate"]
    assert rep["benchmarks"]["gsm8k"]["items"] == 1319
    assert rep["benchmarks"]["mmlu"]["items"] == 14042
    for bench in ("gsm8k", "math500", "humaneval", "mmlu"):
        b = rep["benchmarks"][bench]
        assert N_PER_BENCH * 0.95 <= b["items_found"] <= N_PER_BENCH + 5
        assert b["contamination_rate"] == pytest.approx(b["items_found"] / b["items"])
    assert rep["rows_flagged"] == len(removed)
    assert set(rep["artifacts"]) >= {"reports/decontaminate-audit.arrow", "reports/decontaminate-audit.csv"}
    assert (Path(res.out_dir) / "reports" / "decontaminate-audit.csv").read_text().count("\n") == audit.num_rows + 1
    dropped = sum(v for k, v in res.counters.items() if k.startswith("decontaminate/dropped/contaminated:"))
    assert dropped == len(removed)


@pytest.mark.slow
def test_flag_mode_short_items_presets_and_any(shared_data, tmp_path):
    _write(tmp_path / "trivia.jsonl", [
        {"qid": "t1", "q": "Which river flows through the city of Vienna?"},  # 8 words: matched whole
        {"qid": "t2", "q": "Name it."},  # 2 words: below min_words, never matched
    ])
    pool = _jsonl(shared_data / "general_pool" / "pool.jsonl.gz")[:200]
    gsm = _jsonl(shared_data / "gsm8k" / "test.jsonl.gz")
    q = gsm[0]["question"]
    records = [{"id": r["id"], "text": r["text"]} for r in pool] + [
        {"id": "short_whole", "text": "Quiz night! Which river flows through the city of Vienna? Answer below."},
        {"id": "short_part", "text": "Which river flows through the city?"},
        {"id": "name_it", "text": "Name it."},
        {"id": "gsm_third", "text": " ".join(q.split()[:15])},  # a third of the item: one n-gram shared
    ]
    _write(tmp_path / "pool.jsonl", records)

    def run(params, out):
        return run_recipe({
            "sources": [{"name": "pool", "paths": ["pool.jsonl"], "id_field": "id"}],
            "stages": [{"type": "decontaminate", "params": {
                "benchmarks": [{"name": "trivia", "paths": ["trivia.jsonl"], "fields": ["q"], "id_field": "qid"},
                               {"preset": "gsm8k", "paths": [str(shared_data / "gsm8k" / "test.jsonl.gz")]}],
                "action": "flag", **params}}],
            "output": {"dir": out},
        }, tmp_path)

    res = run({}, "out_fraction")
    table = pa.concat_tables(pa.ipc.open_stream(Path(res.out_dir) / s["path"]).read_all() for s in res.shards)
    assert table.num_rows == len(records)  # flag keeps every row
    flagged = {i: (b, it) for i, b, it in zip(*(table.column(c).to_pylist() for c in
                                               ("id", "decontam_benchmark", "decontam_item")), strict=True) if b}
    assert flagged == {"short_whole": ("trivia", "t1")}
    scores = dict(zip(table.column("id").to_pylist(), table.column("decontam_ngram_score").to_pylist(), strict=True))
    n_words = len(normalise_one(q).split())
    assert scores["short_whole"] == 1.0
    assert scores["gsm_third"] == pytest.approx(3 / (n_words - 12))  # 3 of the item's 13-grams
    assert res.reports["decontaminate"]["index"]["segments_too_short"] == 1

    # gpt3 preset: 13-grams, one shared n-gram is enough.
    res = run({"ngram_preset": "gpt3"}, "out_any")
    rep = res.reports["decontaminate"]
    assert rep["ngram"]["n"] == 13 and rep["ngram"]["mode"] == "any"
    assert set(_audit(res).column("row_id").to_pylist()) == {"short_whole", "gsm_third"}


def test_missing_file_or_field_is_an_error_before_work(shared_data, tmp_path):
    _write(tmp_path / "pool.jsonl", [{"id": "a", "text": "hello world"}])
    base = {"sources": [{"name": "pool", "paths": ["pool.jsonl"]}], "output": {"dir": "out"}}
    cases = {
        "file not found": {"preset": "gsm8k", "paths": ["nope/test.jsonl.gz"]},
        "field 'problem' is not in the records": {"preset": "math500",
                                                  "paths": [str(shared_data / "gsm8k" / "test.jsonl.gz")]},
    }
    for needle, bench in cases.items():
        with pytest.raises(RecipeError) as err:
            run_recipe({**base, "stages": [{"type": "decontaminate", "params": {"benchmarks": [bench]}}]}, tmp_path)
        assert needle in str(err.value) and "benchmarks.0" in str(err.value)
        assert not (tmp_path / "out" / "_work").exists()  # nothing ran


# Hand-written paraphrases of GSM8K test questions (line number -> rewording).
PARAPHRASES = {int(line): text for line, text in json.loads(
    (Path(__file__).parent / "data" / "gsm8k_test_paraphrases.json").read_text(encoding="utf-8")).items()}


@pytest.mark.slow
def test_embedding_method_paraphrase_recall(shared_data, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("faiss")
    from tests._general_pool import short_rows

    clean = short_rows(shared_data, 120, max_words=40)
    # Near-domain clean rows: GSM8K *train* questions (same style, different problems).
    near = [{"id": f"train/{i}", "text": r["question"]}
            for i, r in enumerate(_jsonl(shared_data / "gsm8k" / "train.jsonl.gz")[:40])]
    long_ctx = [r for r in _jsonl(shared_data / "general_pool" / "pool.jsonl.gz")[20000:20400]
                if 90 <= len(r["text"].split()) <= 130][:4]
    records = [{"id": r["id"], "text": r["text"]} for r in clean] + near
    records += [{"id": f"para/{line}", "text": t} for line, t in PARAPHRASES.items()]
    # A paraphrase buried in a long paragraph: only the row's windows can see it.
    buried = {}
    for (line, t), ctx in zip(list(PARAPHRASES.items())[:4], long_ctx, strict=False):
        w = ctx["text"].split()
        buried[f"buried/{line}"] = line
        records.append({"id": f"buried/{line}", "text": " ".join(w[:60] + [t] + w[60:])})
    _write(tmp_path / "pool.jsonl", records)
    thr = 0.8
    res = run_recipe({
        "sources": [{"name": "pool", "paths": ["pool.jsonl"], "id_field": "id"}],
        "stages": [{"type": "decontaminate", "params": {
            "benchmarks": [{"preset": "gsm8k", "paths": [str(shared_data / "gsm8k" / "test.jsonl.gz")],
                            "limit": 200}],
            "embed_threshold": thr, "action": "flag"}}],
        "output": {"dir": "out"},
    }, tmp_path)
    table = pa.concat_tables(pa.ipc.open_stream(Path(res.out_dir) / s["path"]).read_all() for s in res.shards)
    got = {i: (s, n, it) for i, s, n, it in zip(*(table.column(c).to_pylist() for c in (
        "id", "decontam_embed_score", "decontam_ngram_score", "decontam_item")), strict=True)}
    para = [got[f"para/{line}"] for line in PARAPHRASES]
    clean_scores = sorted((got[r["id"]][0] for r in clean), reverse=True)
    near_scores = sorted((got[r["id"]][0] for r in near), reverse=True)
    buried_scores = [got[rid][0] for rid in buried]
    lines = []
    for t in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
        lines.append(f"  cos>={t:.2f}: paraphrase recall {sum(s >= t for s, _, _ in para) / len(para):.2f}, "
                     f"buried {sum(s >= t for s in buried_scores)}/{len(buried_scores)}, "
                     f"GSM8K-train rows over {sum(s >= t for s in near_scores) / len(near_scores):.3f}, "
                     f"general rows over {sum(s >= t for s in clean_scores) / len(clean_scores):.3f}")
    ngram_rec = sum(n >= 0.5 for _, n, _ in para) / len(para)
    print(f"\nembedding method (bundled all-MiniLM-L6-v2), {len(para)} hand-written GSM8K paraphrases; "
          f"n-gram recall on them {ngram_rec:.2f}; max cos of general rows {clean_scores[0]:.2f}, "
          f"of GSM8K-train rows {near_scores[0]:.2f}; buried scores {[round(s, 2) for s in buried_scores]}:\n"
          + "\n".join(lines))
    assert ngram_rec <= 0.2  # these really are paraphrases, not copies
    flagged = [(line, got[f"para/{line}"]) for line in PARAPHRASES if got[f"para/{line}"][0] >= thr]
    assert len(flagged) / len(PARAPHRASES) >= 0.9
    assert all(item == f"gsm8k/{line}" for line, (_, _, item) in flagged)  # the item it rewords
    assert clean_scores[0] < thr and near_scores[2] < thr  # at most 2 of 40 near-domain rows flagged
    # Windows make a buried paraphrase stand out above every unrelated row.
    assert min(buried_scores) > clean_scores[0]
    rep = res.reports["decontaminate"]
    assert rep["benchmarks"]["gsm8k"]["items"] == 200
    assert rep["benchmarks"]["gsm8k"]["items_found_by_method"]["embedding"] >= 20
    assert any(a.startswith("indexes/") for a in rep["artifacts"])
