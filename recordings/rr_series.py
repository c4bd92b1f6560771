"""The strap's beats as a regularly sampled RR series, for formats that need a sampled channel (BIDS physio, EDF+)."""

from __future__ import annotations

import numpy as np

RR_SERIES_FS_HZ = 4.0
_SLACK_S = 0.02  # tolerance between a beat's RR and the time since the previous beat


def rr_step_series(
    t: np.ndarray, rr_ms: np.ndarray, fs_hz: float = RR_SERIES_FS_HZ, start: float | None = None
) -> tuple[float, np.ndarray]:
    """(start time, values): at each grid time the RR (ms) of the interval in progress, NaN where no beat covers it.

    The interval ending at beat i covers (t_i − RR_i, t_i]; time not covered by any interval (before the first
    beat's interval, lost data) is NaN, so a gap is never bridged with an invented interval.
    """
    t = np.asarray(t, dtype=float)
    rr_ms = np.asarray(rr_ms, dtype=float)
    if not len(t):
        return (start or 0.0), np.zeros(0)
    t0 = float(t[0] - rr_ms[0] / 1000.0) if start is None else float(start)
    n = int(np.floor((t[-1] - t0) * fs_hz)) + 1
    grid = t0 + np.arange(n) / fs_hz
    idx = np.searchsorted(t, grid, side="left")  # first beat at or after each grid time
    idx_c = np.minimum(idx, len(t) - 1)
    covered = (idx < len(t)) & (grid >= t[idx_c] - rr_ms[idx_c] / 1000.0 - _SLACK_S)
    values = np.where(covered, rr_ms[idx_c], np.nan)
    return t0, values
