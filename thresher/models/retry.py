"""When the policy client tries a failed request again.

A server that says when to come back is believed: `retry-after-ms` (milliseconds; OpenAI and
some gateways send it), else `Retry-After` as delay-seconds or as an HTTP-date (RFC 9110
§10.2.3). That wait is capped by its own limit, `retry_after_max_s`, never by the client's
backoff cap. Without a hint: exponential backoff from `backoff_s`, doubling per attempt, capped
at `backoff_max_s`, with jitter (a random 50-100 % of it) so that many clients refused at the
same moment do not come back at the same moment.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        s = float(value.strip())
    except ValueError:
        return None
    return max(0.0, s) if math.isfinite(s) else None


def server_wait_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked the client to wait before retrying, or None when it did not
    say (or said something unreadable). An HTTP-date in the past means: now (0)."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    secs = _seconds(value)
    if secs is not None or value is None:
        return secs
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as UTC
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(attempt: int, server_wait: float | None, *, backoff_s: float, backoff_max_s: float,
                retry_after_max_s: float, rng: random.Random | None = None) -> float:
    """The wait before retry number `attempt + 1` (attempt 0 = after the first failure)."""
    if server_wait is not None:
        return min(server_wait, retry_after_max_s)
    base = min(backoff_max_s, backoff_s * (2.0 ** attempt))
    return base * (0.5 + (rng or random).random() / 2)
