"""`pii`: find personal data in `text` — emails, IPv4/IPv6 addresses, phone numbers, credit-card
numbers (Luhn-checked) and IBANs (mod-97-checked) — and redact it, drop the row or flag it.

In:  canonical batches (`text`).
Out: the same plus `pii_count` (validated hits in the row) and `pii_kinds` (the kinds found, in
     the order of `kinds`). `action: redact` (default) replaces each hit in `text` with
     `<EMAIL>`, `<IPV4>`, `<IPV6>`, `<PHONE>`, `<CREDIT_CARD>` or `<IBAN>` — or, with
     `replacement: hash`, `<EMAIL:1a2b3c4d5e>`: a keyed BLAKE2b hash of the normalised value
     (salt = `salt` + the recipe seed), so one value always maps to one token within a salt
     and guessing values does not reverse it without the salt. `action: drop` drops rows with any hit (reason
     `pii`; the rows in `dropped/` keep their text as it was). `action: flag` only adds the
     columns. Phone numbers are matched conservatively (international `+CC`, North-American
     and trunk-prefix national formats, never a bare run of digits); a four-part version
     number (`3.10.2.1`) cannot be told from an IPv4 address and counts as one.
Cost: CPU only. One vectorised RE2 pass (pyarrow) per batch finds the rows that could hold a
     hit; only those rows are scanned with the exact patterns and checksums in Python.
Stats (report): hits per kind, rows with each kind, rows touched, rows scanned in Python.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from thresher.core import Selector, StageParams, rows
from thresher.stages.quality import pii_patterns as pat

PII_COUNT, PII_KINDS = "pii_count", "pii_kinds"
BY_KIND = "__pii_by_kind"  # hits per kind, for the report only
SCANNED = "__pii_scanned"


class PiiParams(StageParams):
    kinds: list[Literal["email", "ipv4", "ipv6", "phone", "credit_card", "iban"]] = Field(
        default_factory=lambda: ["email", "ipv4", "ipv6", "phone", "credit_card", "iban"],
        description="Kinds of PII to look for.")
    action: Literal["redact", "drop", "flag"] = Field("redact", description="`redact`: replace hits in "
                                                      "`text`; `drop`: drop rows with a hit (reason `pii`); "
                                                      "`flag`: only add `pii_count` / `pii_kinds`.")
    replacement: Literal["placeholder", "hash"] = Field("placeholder", description="What a redacted hit "
                                                        "becomes: `<EMAIL>`, or `<EMAIL:hash>` (salted, stable).")
    salt: str = Field("", description="Secret mixed (with the recipe seed) into `hash` tokens; keep it out "
                      "of the published recipe if the tokens must not be reversible by guessing.")

    @field_validator("kinds")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one kind")
        return list(dict.fromkeys(v))


class Pii(Selector):
    __doc__ = __doc__
    type_name = "pii"
    Params = PiiParams
    cost = "CPU: one RE2 pass per batch; Python regex + checksums only on rows that may hold PII"
    internal_columns = (BY_KIND, SCANNED)

    def _kinds(self) -> tuple[str, ...]:
        return tuple(self.params.kinds)

    def _token(self, hit: pat.Hit) -> str:
        if self.params.replacement == "placeholder":
            return pat.placeholder(hit.kind)
        return pat.hashed(hit.kind, hit.value, pat.salt_key(self.params.salt, self.ctx.seed))

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        kinds = self._kinds()
        texts = pc.fill_null(batch.column(rows.TEXT), "")
        prefilter = "|".join(f"(?:{pat.PREFILTER[k]})" for k in kinds)
        maybe = np.flatnonzero(pc.match_substring_regex(texts, prefilter).to_numpy(zero_copy_only=False))
        n = batch.num_rows
        by_kind = np.zeros((n, len(kinds)), np.int32)
        new_text = None
        if maybe.size:
            values = texts.take(pa.array(maybe)).to_pylist()
            replaced: dict[int, str] = {}
            for i, text in zip(maybe.tolist(), values, strict=True):
                hits = pat.find(text, kinds)
                for h in hits:
                    by_kind[i, kinds.index(h.kind)] += 1
                if hits and self.params.action == "redact":
                    replaced[i] = pat.redact(text, hits, self._token)
            if replaced:
                new_text = texts.to_pylist()
                for i, t in replaced.items():
                    new_text[i] = t
        scanned = np.zeros(n, bool)
        scanned[maybe] = True
        out = {
            PII_COUNT: pa.array(by_kind.sum(axis=1), pa.int32()),
            PII_KINDS: pa.array([[k for k, c in zip(kinds, row, strict=True) if c] for row in by_kind.tolist()],
                                pa.list_(pa.string())),
            BY_KIND: pa.array(list(by_kind), pa.list_(pa.int32())),
            SCANNED: pa.array(scanned, pa.bool_()),
        }
        if new_text is not None:
            out[rows.TEXT] = pa.array(new_text, batch.schema.field(rows.TEXT).type)
        return out

    def decide(self, batch: pa.RecordBatch):
        count = batch.column(PII_COUNT).to_numpy(zero_copy_only=False)
        if self.params.action == "drop":
            return count == 0, "pii"
        return np.ones(batch.num_rows, bool), None

    def summarise(self, batch: pa.RecordBatch, keep: np.ndarray) -> dict[str, Any]:
        kinds = self._kinds()
        by_kind = np.asarray(batch.column(BY_KIND).to_pylist(), dtype=np.int64).reshape(batch.num_rows, len(kinds))
        return {
            "hits": {k: int(by_kind[:, j].sum()) for j, k in enumerate(kinds)},
            "rows_with": {k: int((by_kind[:, j] > 0).sum()) for j, k in enumerate(kinds)},
            "rows": int(batch.num_rows),
            "rows_touched": int((by_kind.sum(axis=1) > 0).sum()),
            "rows_scanned": int(np.sum(batch.column(SCANNED).to_numpy(zero_copy_only=False))),
        }

    def report(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"action": self.params.action, "replacement": self.params.replacement, **summary}
