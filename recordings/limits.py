"""Plausibility limits for what the recorder takes in from straps and files (the README's table lists them all).

A value outside a limit is never stored as data: a strap's RR outside the RR range is kept raw and explained (the
next beat starts a new stretch); in an imported file it is a gap with a note; a time or start outside its range
refuses the file with one line naming the file, the line and the limit. Protocol and questionnaire maxima live
with their parsers (`protocols.model`), the notification size with the decoders (`devices.heart_rate`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

RR_RANGE_ENV = "CMT_RR_RANGE_MS"
DEFAULT_RR_RANGE_MS = (200.0, 3000.0)
MAX_RECORDING_S = 7 * 24 * 3600.0
"""Longest recording on one session clock: a week (longer than any Holter recording a lab would import)."""
EARLIEST_START_UTC = datetime(1980, 1, 1, tzinfo=UTC)
"""No digital RR recorder existed before; a start time earlier than this is a broken clock or a wrong column."""
FUTURE_TOLERANCE = timedelta(days=1)
"""A start time may be at most this far after now (clocks and time zones that are a little off)."""


class LimitError(ValueError):
    """A value outside a documented plausibility limit; the message names where it was and the limit."""


def rr_range_ms() -> tuple[float, float]:
    """Plausible RR (ms): 200–3000 (300–20 beats/min), or `$CMT_RR_RANGE_MS` as `MIN-MAX`."""
    value = os.environ.get(RR_RANGE_ENV, "").strip()
    if not value:
        return DEFAULT_RR_RANGE_MS
    try:
        lo, hi = (float(x) for x in value.split("-", 1))
    except ValueError:
        raise ValueError(f"${RR_RANGE_ENV}={value!r}: expected MIN-MAX in ms, e.g. 200-3000") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"${RR_RANGE_ENV}={value!r}: needs 0 < MIN < MAX")
    return lo, hi


def rr_range_text() -> str:
    lo, hi = rr_range_ms()
    return f"{lo:g}–{hi:g} ms (${RR_RANGE_ENV} overrides)"


def check_start(start: datetime | None, where: str) -> datetime | None:
    """A recording's start time (UTC or local) within 1980 … now + 1 day, else LimitError."""
    if start is None:
        return None
    aware = start if start.tzinfo else start.replace(tzinfo=UTC)  # local offsets do not matter at this scale
    latest = datetime.now(UTC) + FUTURE_TOLERANCE
    if not EARLIEST_START_UTC <= aware <= latest:
        raise LimitError(f"{where}: start time {start.isoformat()} is outside {EARLIEST_START_UTC:%Y-%m-%d} … "
                         f"{latest:%Y-%m-%d} (a broken clock or the wrong column?)")  # fmt: skip
    return start


def check_span(times: Iterable[float], where: str) -> None:
    """Session-clock times that are finite and span at most MAX_RECORDING_S, else LimitError."""
    lo = hi = None
    for t in times:
        if not math.isfinite(t):
            raise LimitError(f"{where}: time {t!r} is not a finite number of seconds")
        lo = t if lo is None or t < lo else lo
        hi = t if hi is None or t > hi else hi
    if lo is not None and hi is not None and hi - lo > MAX_RECORDING_S:
        raise LimitError(f"{where}: times span {(hi - lo) / 86400:.4g} days; a recording is at most "
                         f"{MAX_RECORDING_S / 86400:g} days")  # fmt: skip


def timestamp_utc(seconds: float, where: str) -> datetime:
    """A Unix time (s) as a UTC datetime within the start range, else LimitError (never OverflowError)."""
    try:
        dt = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise LimitError(f"{where}: Unix time {seconds!r} is not a date this recorder can take") from None
    check_start(dt, where)
    return dt
