"""Bench: the `quality_filter` stage's `gopher` preset vs datatrove's GopherQualityFilter +
GopherRepetitionFilter, on the same documents: agreement of the keep/drop decisions and docs/s.

    .venv/bin/python bench/filters.py [--rows 100000] [--batch-rows 4096]

Documents: ../shared/data/general_pool has 73,038 single paragraphs (median ~52 words, no line
breaks). The bench takes all of them, then makes the rest of `--rows` by joining 2-6 consecutive pool
rows of the same source with "\\n\\n" or "\\n" (seeded), so that line, paragraph and longer-document rules
are exercised too; below 73,038 rows it takes the first `--rows` paragraphs.

datatrove runs in its own virtualenv (`--datatrove-python`, default bench/.venvs/datatrove: `pip install
datatrove==0.10.1 spacy regex`), because its spaCy pins do not belong in ours. For English it splits
words with `spacy.blank("en")`; no download is needed. It runs the two filters one document at a time,
repetition only on what quality kept, as a datatrove pipeline does. thresher runs the stage's
`score()` + `decide()` (what each Beam worker runs per batch) over Arrow batches of `--batch-rows`, with a
cold token cache. One core each; the sides run in ABBA order over halves of the corpus so machine-load
drift hits both. Prints agreement, docs/s of each by wall clock and by process CPU time (the fairer one
on a shared machine) and the ratios (aim: >= 99 % agreement, >= 3x), and which rules the disagreements
come from.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "general_pool" / "pool.jsonl.gz"
DATATROVE_PY = ROOT / "bench" / ".venvs" / "datatrove" / "bin" / "python"

# datatrove's drop reasons -> the stage's rule names (the same checks, in the same order).
REASONS = {
    "gopher_short_doc": "gopher_min_words", "gopher_long_doc": "gopher_max_words",
    "gopher_below_avg_threshold": "gopher_min_mean_word_length",
    "gopher_above_avg_threshold": "gopher_max_mean_word_length", "gopher_too_many_hashes": "gopher_hash_ratio",
    "gopher_too_many_ellipsis": "gopher_ellipsis_ratio", "gopher_too_many_bullets": "gopher_bullet_lines",
    "gopher_too_many_end_ellipsis": "gopher_ellipsis_lines", "gopher_below_alpha_threshold": "gopher_alpha_words",
    "gopher_enough_stop_words": "gopher_stop_words", "dup_para_frac": "gopher_dup_para_frac",
    "dup_para_char_frac": "gopher_dup_para_char_frac", "dup_line_frac": "gopher_dup_line_frac",
    "dup_line_char_frac": "gopher_dup_line_char_frac",
    **{f"top_{n}_gram": f"gopher_top_{n}gram" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"gopher_dup_{n}gram" for n in range(5, 11)},
}

DATATROVE_SIDE = r"""
import json, sys, time
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

src, dst = sys.argv[1], sys.argv[2]
texts = [json.loads(line) for line in open(src, encoding="utf-8")]
quality, repetition = GopherQualityFilter(), GopherRepetitionFilter()
quality.filter(Document(text="warm up " * 60, id="w"))  # loads spaCy before the clock starts

def reason(result):
    return None if result is True else result[1]

t, c = time.perf_counter(), time.process_time()
out = []
for i, text in enumerate(texts):
    doc = Document(text=text, id=str(i))
    r = reason(quality.filter(doc))
    if r is None:
        r = reason(repetition.filter(doc))
    out.append(r)
secs, cpu = time.perf_counter() - t, time.process_time() - c
json.dump({"seconds": secs, "cpu": cpu, "reasons": out}, open(dst, "w"))
"""


TOKENIZER_DATA_SIDE = r'''
import sys

import spacy
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from spacy.pipeline.sentencizer import Sentencizer
from spacy.symbols import ORTH

nlp = spacy.blank("en")
keep, split = [], {}
for k, v in nlp.Defaults.tokenizer_exceptions.items():
    if any(c.isspace() for c in k):
        continue
    toks = tuple(t[ORTH] for t in v)
    if toks == (k,):
        keep.append(k)
    else:
        split[k] = toks


def wrap(items, indent="    ", width=118):
    lines, cur = [], indent
    for it in items:
        if len(cur) + len(it) + 2 > width and cur.strip():
            lines.append(cur.rstrip())
            cur = indent
        cur += it + ", "
    return "\n".join(lines + [cur.rstrip()] if cur.strip() else lines)


def chunks(s, n):
    return "\n".join("    " + repr(s[i:i + n]) for i in range(0, len(s), n))


Q3 = '"' * 3
doc = [
    Q3 + "Data for `words.py`, generated (not hand-edited) from the two libraries it stands in for.",
    "",
    "- `PUNCTUATION_CHARS`, `TERMINAL_PUNCTUATION`: datatrove 0.10.1 `datatrove.utils.text.PUNCTUATION_SET` and",
    "  `TERMINAL_PUNCTUATION` (Apache-2.0): what the Gopher non-symbol word test and FineWeb's line-punctuation",
    "  rule use.",
    "- `SPECIAL_CASES`, `KEEP_WHOLE`, `URL_PATTERN`: spaCy 3.8 English tokenizer exceptions and URL pattern (MIT):",
    '  `spacy.blank("en").Defaults.tokenizer_exceptions` / `.url_match`, the tokenizer datatrove uses for English.',
    "- `SENTENCE_PUNCT`: spaCy's `Sentencizer.default_punct_chars` (sentence ends for datatrove's C4 filter).",
    "",
    "Regenerate: `.venv/bin/python bench/filters.py --write-tokenizer-data` (runs spaCy and datatrove in",
    "bench/.venvs/datatrove).",
    Q3,
]
out = "\n".join(doc) + "\n\n" + "\n".join([
    "PUNCTUATION_CHARS = (", chunks("".join(sorted(PUNCTUATION_SET)), 60), ")",
    "TERMINAL_PUNCTUATION = (", chunks("".join(sorted(TERMINAL_PUNCTUATION)), 60), ")",
    "SENTENCE_PUNCT = frozenset((", wrap([repr(c) for c in Sentencizer.default_punct_chars]), "))",
    "URL_PATTERN = (", chunks(nlp.Defaults.url_match.__self__.pattern, 100), ")",
    "# Whitespace-free chunks spaCy keeps whole (abbreviations, emoticons, times).",
    "KEEP_WHOLE = frozenset((", wrap([repr(k) for k in sorted(keep)]), "))",
    "# Chunks spaCy splits its own way (contractions): chunk -> tokens.",
    "SPECIAL_CASES = {", wrap([f"{k!r}: {v!r}" for k, v in sorted(split.items())]), "}",
]) + "\n"
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    fh.write(out)
'''


def build_rows(n: int, seed: int = 0) -> list[str]:
    with gzip.open(POOL, "rt", encoding="utf-8") as fh:
        pool = [json.loads(line) for line in fh]
    if n <= len(pool):
        return [r["text"] for r in pool[:n]]
    texts = [r["text"] for r in pool]
    rng = random.Random(seed)
    while len(texts) < n:
        k = rng.randint(2, 6)
        i = rng.randrange(len(pool) - k)
        group = [r for r in pool[i:i + k] if r["source"] == pool[i]["source"]]
        texts.append(rng.choice(["\n\n", "\n"]).join(r["text"] for r in group))
    return texts


def run_datatrove(python: str, texts: list[str], tmp: str, tag: str) -> tuple[float, float, list[str | None]]:
    src, dst = os.path.join(tmp, f"{tag}.jsonl"), os.path.join(tmp, f"{tag}.out.json")
    with open(src, "w", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps(t) + "\n")
    subprocess.run([python, "-c", DATATROVE_SIDE, src, dst], check=True)
    with open(dst) as fh:
        got = json.load(fh)
    return got["seconds"], got["cpu"], got["reasons"]


def run_thresher(stage, texts: list[str], batch_rows: int) -> tuple[float, float, list[str | None]]:
    import pyarrow as pa

    from thresher.core.columns import set_columns

    batches = [pa.RecordBatch.from_pydict({"text": texts[i:i + batch_rows]}) for i in range(0, len(texts), batch_rows)]
    t, c = time.perf_counter(), time.process_time()
    reasons: list[str | None] = []
    for b in batches:
        scored = set_columns(b, stage.score(b))
        keep, reason = stage.decide(scored)
        reasons += [None if k else r for k, r in zip(keep, reason, strict=True)]
    return time.perf_counter() - t, time.process_time() - c, reasons


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--datatrove-python", default=str(DATATROVE_PY))
    ap.add_argument("--write-tokenizer-data", action="store_true", help="regenerate "
                    "thresher/stages/quality/tokenizer_data.py from spaCy and datatrove, then exit")
    args = ap.parse_args()
    if not Path(args.datatrove_python).exists():
        sys.exit(f"no datatrove virtualenv at {args.datatrove_python}: python -m venv bench/.venvs/datatrove && "
                 "bench/.venvs/datatrove/bin/pip install datatrove==0.10.1 spacy regex (or pass --datatrove-python)")
    if args.write_tokenizer_data:
        dst = ROOT / "thresher" / "stages" / "quality" / "tokenizer_data.py"
        subprocess.run([args.datatrove_python, "-c", TOKENIZER_DATA_SIDE, str(dst)], check=True)
        print(f"wrote {dst}")
        return

    from thresher.stages.quality.quality_filter import QualityFilter

    texts = build_rows(args.rows)
    pool_rows = min(args.rows, 73_038)
    print(f"documents: {len(texts):,} ({pool_rows:,} general_pool paragraphs + {len(texts) - pool_rows:,} "
          "joined from 2-6 consecutive same-source paragraphs)")
    QualityFilter({"preset": "gopher"}).score(__import__("pyarrow").RecordBatch.from_pydict(
        {"text": ["warm up imports"]}))
    stage = QualityFilter({"preset": "gopher"})  # cold token cache, kept across halves as on a worker
    half = len(texts) // 2
    halves = [texts[:half], texts[half:]]
    secs = {"datatrove": 0.0, "thresher": 0.0}
    cpu = {"datatrove": 0.0, "thresher": 0.0}
    got: dict[str, list] = {"datatrove": [[], []], "thresher": [[], []]}
    with tempfile.TemporaryDirectory() as tmp:
        for side, part in (("datatrove", 0), ("thresher", 0), ("thresher", 1), ("datatrove", 1)):
            if side == "datatrove":
                s, c, r = run_datatrove(args.datatrove_python, halves[part], tmp, f"half{part}")
            else:
                s, c, r = run_thresher(stage, halves[part], args.batch_rows)
            secs[side] += s
            cpu[side] += c
            got[side][part] = r
            print(f"  {side:9s} half {part}: {s:.1f} s wall, {c:.1f} s CPU", flush=True)
    theirs = [REASONS.get(r, r) if r else None for r in got["datatrove"][0] + got["datatrove"][1]]
    ours = got["thresher"][0] + got["thresher"][1]
    n = len(texts)
    same = sum((a is None) == (b is None) for a, b in zip(ours, theirs, strict=True))
    both_drop = [(a, b) for a, b in zip(ours, theirs, strict=True) if a and b]
    print(f"kept: datatrove {sum(r is None for r in theirs):,}, thresher {sum(r is None for r in ours):,} of {n:,}")
    print(f"same keep/drop decision: {same:,} / {n:,} = {100 * same / n:.2f} %")
    print(f"same first reason where both drop: {sum(a == b for a, b in both_drop):,} / {len(both_drop):,}")
    for clock, t in (("wall", secs), ("CPU", cpu)):
        dt, th = n / t["datatrove"], n / t["thresher"]
        print(f"{clock:4s} datatrove Gopher quality + repetition: {dt:,.0f} docs/s ({t['datatrove']:.1f} s)")
        print(f"{clock:4s} thresher quality_filter (gopher):      {th:,.0f} docs/s ({t['thresher']:.1f} s)")
        print(f"{clock:4s} ratio thresher/datatrove:              {th / dt:.1f}x")
    diff = Counter((a or "kept", b or "kept") for a, b in zip(ours, theirs, strict=True) if (a is None) != (b is None))
    if diff:
        print("disagreements (thresher -> datatrove):")
        for (a, b), c in diff.most_common(15):
            print(f"  {c:6,}  thresher {a}  /  datatrove {b}")
    ex = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if (a is None) != (b is None)][:3]
    for i in ex:
        print(f"  e.g. row {i}: thresher {ours[i]}, datatrove {theirs[i]}: {texts[i][:160]!r}")


if __name__ == "__main__":
    main()
