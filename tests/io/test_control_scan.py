"""`normalize_text` skips its control-character regex on batches a byte scan finds clean: the
result must equal the regex applied to every batch, for each character it removes (C0 but
tab/newline/CR, DEL, C1), characters next to them that it keeps, and any array layout."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from thresher.io.records import normalize_text
from thresher.recipe.schema import Normalize

REGEX = r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{7f}-\x{9f}]"
KEEP = ["plain ascii", "tab\tnew\nline\rcr", "é à ½ \u00a0 \u00a0nbsp", "日本語 😀", "\u00bf\u00c0 edges", ""]
REMOVED = [chr(c) for c in [*range(0x9), 0xB, 0xC, *range(0xE, 0x20), *range(0x7F, 0xA0)]]


def _layouts(values):
    return [pa.array(values, pa.string()), pa.array(values, pa.large_string()),
            pa.array(["\x01pad"] + values + ["\x85pad"], pa.string()).slice(1, len(values))]


def test_control_characters_are_removed_exactly_as_by_the_regex():
    norm = Normalize(nfc=False)
    for values in ([*KEEP, None], *[[*KEEP, f"a{ch}b", None] for ch in REMOVED]):
        for arr in _layouts(values):
            got = normalize_text(arr, norm)
            assert got.to_pylist() == pc.replace_substring_regex(arr, REGEX, "").to_pylist()
    # a clean batch comes back untouched; one control character anywhere is removed
    assert normalize_text(pa.array(KEEP), norm).to_pylist() == KEEP
    assert normalize_text(pa.array([*KEEP, "x\x00y\x9fz"]), norm).to_pylist() == [*KEEP, "xyz"]
    assert normalize_text(pa.array([None, None], pa.string()), norm).to_pylist() == [None, None]
