"""Text samples shared by the tokeniser/hasher tests: edge cases and the first lines of real files."""

from __future__ import annotations

import gzip
import json

TRICKY = ["", "   \n\t", "ΑΣ ΟΔΟΣ Σ", "İstanbul naïve CAFÉ", "a_b c-d 3.14 ¼ x² ٣", "emoji 😀😀 ok!!",
          "x", "tab\tsep\x1cfs\x85nel\u00a0nbsp\u2009thin", "--- ... ?!", "中文字符 和 标点。"]


def first_lines(path, n, field="text") -> list[str]:
    """`field` of the first `n` records of a .jsonl.gz file."""
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            out.append(json.loads(line)[field])
            if len(out) == n:
                break
    return out
