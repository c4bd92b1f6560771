"""One mechanism for putting a device's own clock on the session clock: the lower envelope of arrival times.

A device stamps (or counts) time on its own clock `x`; the host sees each message arrive at `y` on the session
clock, after a transport delay that is never negative. So every point lies on or above the true line
`y = offset + slope · x`, and the best line is the one *below* every point with the least total distance to them
(a small linear programme): it rests on the least-delayed messages, and its slope is the clock drift, estimated
rather than accumulated. Used for Polar ECG/ACC frames (`recordings.ecg_time`) and for heart-rate beat times
(`recordings.beat_timeline`); several stretches can share one slope (one crystal) with an offset each.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

MAX_CLOCK_ERROR = 0.01
"""A clock off by more than 1 % is not a clock: the default slope bounds are 1 ± this."""


class ClockFitError(ValueError):
    """The points cannot be put under one line."""


def lower_envelope(
    x: np.ndarray,
    y: np.ndarray,
    seg: np.ndarray,
    slope_bounds: tuple[float, float] = (1.0 - MAX_CLOCK_ERROR, 1.0 + MAX_CLOCK_ERROR),
) -> tuple[float, np.ndarray]:
    """Common slope and per-stretch offsets of the line(s) below every (x, y) with the least total gap to them.

    `seg` is the 0-based stretch index of each point. With fewer than two distinct `x` the slope is 1 (clamped to
    `slope_bounds`) and each offset rests on its stretch's lowest point.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    seg = np.asarray(seg, dtype=int)
    n_seg = int(seg.max()) + 1 if seg.size else 0
    lo, hi = slope_bounds
    if len(x) < 2 or np.ptp(x) <= 0 or lo == hi:
        slope = float(np.clip(1.0, lo, hi))
        return slope, np.array([float(np.min(y[seg == s] - slope * x[seg == s])) for s in range(n_seg)])
    xm = float(np.mean(x))
    xc = x - xm
    # variables: slope, offsets[n_seg]; minimise Σ (y − offset − slope·xc)  ⇔  maximise Σ (offset + slope·xc)
    onehot = np.zeros((len(x), n_seg))
    onehot[np.arange(len(x)), seg] = 1.0
    a_ub = np.column_stack([xc, onehot])
    cost = -np.concatenate([[xc.sum()], onehot.sum(axis=0)])
    bounds = [(lo, hi)] + [(None, None)] * n_seg
    res = linprog(cost, A_ub=a_ub, b_ub=y, bounds=bounds, method="highs")
    if not res.success:
        raise ClockFitError(f"could not fit device time to arrival times: {res.message}")
    slope = float(res.x[0])
    offsets = res.x[1:] - slope * xm
    # the solver's tolerance can leave a point a hair below the line: rest each line exactly on its lowest point
    for s in range(n_seg):
        m = seg == s
        offsets[s] = min(offsets[s], float(np.min(y[m] - slope * x[m])))
    return slope, offsets


def block_floor_fit(
    x: np.ndarray,
    y: np.ndarray,
    seg: np.ndarray,
    block: float,
    slope_bounds: tuple[float, float] = (1.0 - MAX_CLOCK_ERROR, 1.0 + MAX_CLOCK_ERROR),
) -> tuple[float | None, np.ndarray]:
    """Like `lower_envelope`, for delays with a long tail (a heart-rate strap's beat-to-notification delay).

    The least-delayed point of every `block` of x (per stretch) gives one floor point (a stretch's last block only
    when it covers at least half a block: with few points its floor sits high); the common slope is the
    least-squares line through those floor points (one intercept per stretch), so it follows the trend of many
    minutes instead of the two lowest hull points; each stretch's line is then lowered onto its lowest point.
    Returns (slope, offsets); slope None when no stretch spans two blocks (drift cannot be told from delay: the
    offsets are then for slope 1).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    seg = np.asarray(seg, dtype=int)
    n_seg = int(seg.max()) + 1 if seg.size else 0
    fx, fy, fs = [], [], []
    for s in range(n_seg):
        m = np.flatnonzero(seg == s)
        rel = x[m] - x[m].min()
        blocks = np.floor(rel / block).astype(int)
        last = int(blocks.max()) if blocks.size else 0
        for b in np.unique(blocks):
            if b == last and b > 0 and rel.max() - b * block < block / 2:
                continue  # a short last block has few points: its floor sits high and would tilt the slope
            idx = m[blocks == b]
            k = idx[np.argmin(y[idx] - x[idx])]
            fx.append(x[k])
            fy.append(y[k])
            fs.append(s)
    fx_a, fy_a, fs_a = np.array(fx), np.array(fy), np.array(fs, dtype=int)
    counts = np.bincount(fs_a, minlength=n_seg)
    slope: float | None = None
    if np.any(counts >= 2):
        design = np.zeros((fx_a.size, 1 + n_seg))
        design[:, 0] = fx_a
        design[np.arange(fx_a.size), 1 + fs_a] = 1.0
        coef, *_ = np.linalg.lstsq(design, fy_a, rcond=None)
        slope = float(np.clip(coef[0], *slope_bounds))
    used = 1.0 if slope is None else slope
    offsets = np.array([float(np.min(y[seg == s] - used * x[seg == s])) for s in range(n_seg)])
    return slope, offsets
