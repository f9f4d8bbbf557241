"""What counts as PII in text, kind by kind: a fast RE2 prefilter (run by pyarrow over a whole
batch), the exact pattern (Python `re`, which has the look-arounds RE2 lacks) and a checksum or
parser that confirms each candidate.

Hand-written patterns rather than presidio or scrubadub: both pull spaCy and its downloaded
models for names/addresses we do not detect, and run per row in Python. The validation that is
easy to get wrong is left to well-kept code: Luhn and IBAN (mod 97 + per-country format) to
python-stdnum, IPv6 to the standard library's `ipaddress`.

Phone numbers are matched conservatively — an international `+CC ...` number, North-American
`(555) 123-4567` / `555-123-4567` / `555.123.4567`, and trunk-prefix national numbers
(`020 7946 0958`, `030-1234567`, `01 23 45 67 89`) — never a bare run of digits, so prices,
counts and years in maths problems do not hit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from stdnum import iban as stdnum_iban
from stdnum import luhn

KINDS = ("email", "iban", "credit_card", "ipv6", "ipv4", "phone")  # overlap priority: first wins

# Necessary substrings of each exact pattern below (RE2 syntax): a row that matches none of its
# kinds' prefilters cannot contain a hit, so Python only looks at the rows that do.
PREFILTER = {
    "email": r"[\w%+-]@[A-Za-z0-9]",
    "ipv4": r"\d\.\d{1,3}\.\d{1,3}\.\d",
    "ipv6": r":[0-9A-Fa-f]{0,4}:",
    "phone": r"\+\d|\d{3}[.-]\d{3}[.-]\d{4}|\(\d{3}\)|0\d{0,4}\)?[ -]\d{3}|0\d[ .]\d{2}[ .]\d{2}",
    "credit_card": r"\d{13}|\d{4}[ -]\d{4}[ -]\d{4}|\d{4}[ -]\d{6}[ -]\d{4}",
    "iban": r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}",
}

_END = r"(?![\w]|[.-]\d)"  # not in the middle of a longer token or number
# ASCII: `\d` and `\w` mean what they mean to RE2, so the prefilters stay supersets.
_EXACT = {
    "email": (r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?@"
              r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"),
    "ipv4": (r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
             + _END),
    "ipv6": (r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]|\.\d)"),
    "phone": (
        r"(?<![\w+.-])(?:"
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # international
        r"|(?:1[ .-])?\(\d{3}\)[ .-]?\d{3}[.-]\d{4}"  # North America, (555) 123-4567
        r"|(?:1[.-])?\d{3}(?P<sep>[.-])\d{3}(?P=sep)\d{4}"  # North America, 555-123-4567
        r"|\(?0[1-9]\d{0,3}\)?[ -]\d{3,4}[ -]?\d{3,4}"  # trunk-prefix national, 020 7946 0958
        r"|0[1-9](?P<fr>[ .])\d{2}(?P=fr)\d{2}(?P=fr)\d{2}(?P=fr)\d{2}"  # 01 23 45 67 89
        r")" + _END),
    "credit_card": (
        # A whole group sequence only: not the tail or head of a longer run of digit groups.
        r"(?<![\w.,-])(?<!\d[ -])(?:\d{13,19}"
        r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{3})?(?!(?P=s)\d)"  # 4-4-4-4[-3]
        r"|\d{4}(?P<a>[ -])\d{6}(?P=a)\d{4,5}(?!(?P=a)\d))(?![\w]|[.,-]\d)"),  # 4-6-5 (Amex)
    "iban": (r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"),
}
EXACT = {kind: re.compile(pattern, re.ASCII) for kind, pattern in _EXACT.items()}


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _phone(s: str) -> str | None:
    d = _digits(s)
    return s if 7 <= len(d) <= 15 and len(set(d)) > 2 else None


def _card(s: str) -> str | None:
    d = _digits(s)
    # All-one-digit runs (0000 0000 0000 0000) pass Luhn but are filler, not card numbers.
    return s if 13 <= len(d) <= 19 and len(set(d)) > 1 and luhn.is_valid(d) else None


def _iban(s: str) -> str | None:
    # The pattern may swallow a following all-caps word as a last group: try without it.
    while len(s.replace(" ", "")) >= 15:
        if stdnum_iban.is_valid(s):
            return s
        if " " not in s:
            return None
        s = s.rsplit(" ", 1)[0]
    return None


def _ipv6(s: str) -> str | None:
    # Three or more groups: `::1`, `fe80::1` and slices like `1::2` are not personal data.
    if sum(1 for g in s.split(":") if g) < 3:
        return None
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return s


VALIDATE: dict[str, Callable[[str], str | None]] = {
    "email": lambda s: s, "ipv4": lambda s: s, "ipv6": _ipv6, "phone": _phone, "credit_card": _card, "iban": _iban,
}


def normalise(kind: str, value: str) -> str:
    """The form a value is hashed in, so one number written two ways maps to one token."""
    if kind == "email":
        return value.lower()
    if kind in ("phone", "credit_card"):
        return _digits(value)
    if kind in ("iban", "ipv6"):
        return value.replace(" ", "").upper()
    return value


@dataclass
class Hit:
    kind: str
    start: int
    end: int
    value: str


def find(text: str, kinds: tuple[str, ...]) -> list[Hit]:
    """Validated, non-overlapping hits in text order (on overlap the earlier kind in KINDS wins)."""
    hits: list[Hit] = []
    taken: list[tuple[int, int]] = []
    for kind in KINDS:
        if kind not in kinds:
            continue
        pattern, pos = EXACT[kind], 0
        while (m := pattern.search(text, pos)) is not None:
            value = VALIDATE[kind](m.group())
            if value is None:
                pos = m.start() + 1  # a rejected match may hide a shorter one inside it
                continue
            start, end = m.start(), m.start() + len(value)
            pos = end  # the value may be shorter than the match (an IBAN's swallowed word)
            if any(start < e and s < end for s, e in taken):
                continue
            hits.append(Hit(kind, start, end, value))
            taken.append((start, end))
    return sorted(hits, key=lambda h: h.start)


def placeholder(kind: str) -> str:
    return f"<{kind.upper()}>"


def hashed(kind: str, value: str, key: bytes) -> str:
    """A stable, salted token: the same value and salt always give the same token."""
    digest = hashlib.blake2b(normalise(kind, value).encode(), digest_size=5, key=key).hexdigest()
    return f"<{kind.upper()}:{digest}>"


def salt_key(salt: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{salt}\x00{seed}".encode(), digest_size=32).digest()


def redact(text: str, hits: list[Hit], token: Callable[[Hit], str]) -> str:
    out, pos = [], 0
    for h in hits:
        out += [text[pos:h.start], token(h)]
        pos = h.end
    out.append(text[pos:])
    return "".join(out)
