"""Benchmark decontamination on real benchmarks (GSM8K test, MATH-500, HumanEval, MMLU) planted
into real general-pool text, through a real Beam pipeline.

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
import re
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import run_recipe
from thresher.recipe.schema import RecipeError
from thresher.stages.decontam.ngram_index import normalise_one

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
    for rid, item in zip(audit.column("row_id").to_pylist(), audit.column("item_id").to_pylist()):
        audit_items.setdefault(rid, set()).add(item)

    # Every removed row is in the audit, and nothing else is.
    assert set(audit_items) == removed
    caught: dict[str, list[bool]] = {}
    for rid, (v, bench, item_id) in plants.items():
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


def test_flag_mode_short_items_presets_and_any(shared_data, tmp_path):
    custom = _write(tmp_path / "trivia.jsonl", [
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
                                               ("id", "decontam_benchmark", "decontam_item"))) if b}
    assert flagged == {"short_whole": ("trivia", "t1")}
    scores = dict(zip(table.column("id").to_pylist(), table.column("decontam_ngram_score").to_pylist()))
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
        "no field 'problem'": {"preset": "math500", "paths": [str(shared_data / "gsm8k" / "test.jsonl.gz")]},
    }
    for needle, bench in cases.items():
        with pytest.raises(RecipeError) as err:
            run_recipe({**base, "stages": [{"type": "decontaminate", "params": {"benchmarks": [bench]}}]}, tmp_path)
        assert needle in str(err.value) and "benchmarks.0" in str(err.value)
        assert not (tmp_path / "out" / "_work").exists()  # nothing ran


# Hand-written paraphrases of GSM8K test questions (line number -> rewording).
PARAPHRASES = {
    1: "Every day Janet's ducks produce sixteen eggs. Three get eaten at breakfast and four go into muffins she bakes for friends. The rest she sells at the market for two dollars each. What are her daily market earnings?",
    2: "To make a robe you need two bolts of blue fabric and half as much white fabric. What is the total number of bolts required?",
    3: "Josh flips a house: he pays $80,000 for it and spends another $50,000 fixing it up, which raises its value by 150%. What was his profit?",
    4: "Three times each week James runs three sprints of 60 meters apiece. How many meters does he cover weekly?",
    6: "Kylar needs 16 glasses for his apartment. A glass is $5, but every other glass is sold at 60% of that price. What will he pay in total?",
    7: "Seattle has 20 sheep. Charleston owns four times as many as Seattle, and Toulouse owns twice as many as Charleston. How many sheep do the three cities have altogether?",
    8: "Carla wants to download a 200 GB file at 2 GB per minute. When she is 40% done, Windows restarts for updates, taking 20 minutes, and she must start the download over. How long does the whole thing take?",
    10: "Eliza earns $10 an hour for her first 40 hours each week, and overtime is paid at 1.2 times that rate. She worked 45 hours this week. What did she earn?",
    11: "A program was downloaded 60 times in its first month, three times as often in the second month, and 30% less than that in the third month. What is the total number of downloads over the three months?",
    12: "At the bakery Toula bought 3 dozen donuts at $68 a dozen, 2 dozen mini cupcakes at $80 a dozen and 6 dozen mini cheesecakes at $55 a dozen. What did she spend in total?",
    13: "Planting a lemon tree costs Carlos $90. The tree yields 7 lemons a year that sell for $1.50 each, and upkeep costs $3 per year. After how many years will he begin to make money?",
    14: "A door-to-door saleswoman, Melanie, sold a third of her vacuums at the green house, two more at the red house and half of the remainder at the orange house. She has 5 left. How many did she begin with?",
    15: "Of 20 students in a dance class, 20% chose contemporary, 25% of those remaining chose jazz, and everyone else chose hip-hop. What percent of all the students chose hip-hop?",
    17: "Two trains depart San Rafael together and travel 80 miles west. The following day they go 150 miles north. How far has each train gone over the two days?",
    18: "Jill is paid $20 an hour as a teacher and $30 an hour as a cheerleading coach. Working 50 weeks a year, she teaches 35 hours and coaches 15 hours each week. What is her yearly salary?",
    19: "Each morning Claire eats an omelet made with 3 eggs. How many dozen eggs does she go through in 4 weeks?",
    20: "Marissa hikes a 12-mile trail. The first 4 miles take her an hour and the next 2 miles another hour. To average 4 miles per hour overall, how fast must she walk for the rest?",
    22: "Raymond is 6 years older than his cousin Samantha and had a son when he was 23. Samantha is 31 now. How many years ago was the son born?",
    23: "On Tuesday Billy had 8 customers for his DVDs: the first 3 bought one each, the next 2 bought two each, and the final 3 bought none. How many DVDs did he sell?",
    24: "A burning candle gets 2 cm shorter every hour. By how many centimeters will it shrink if it burns from 1 PM until 5 PM?",
    25: "Kyle paid $19.50 for last year's bestseller after a 25% discount. What was the price before the discount?",
    26: "Marie bought a $12 chicken meal, five packs of milk at $3 each, four apples at $1.50 each and some pizzas at $8.50 a box, paying $50 altogether. How many pizza boxes did she buy?",
    27: "Mishka purchased 3 pairs each of shorts, pants and shoes. Shorts cost $16.50 a pair, pants $22.50 a pair and shoes $42 a pair. How much did she spend on clothes in total?",
    28: "Cynthia has a serving of ice cream every night. A carton holds 15 servings and costs $4. How much does she spend on ice cream over 60 days?",
    29: "On a 60-mile bike ride Henry stopped twice: first after 20 miles, and again 15 miles before the finish. How far did he ride between the two stops?",
}


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
    for (line, t), ctx in zip(list(PARAPHRASES.items())[:4], long_ctx):
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
        "id", "decontam_embed_score", "decontam_ngram_score", "decontam_item")))}
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
