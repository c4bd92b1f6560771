"""Small-n statistics for pre/post designs, reported the way SPSS does (as in the CMT pilot).

`wilcoxon_spss` gives T, Z and two-sided p of the Wilcoxon signed-rank test by normal approximation with
tie correction and without continuity correction (SPSS "Asymp. Sig."); `describe` gives n, mean, SD, median
and IQR so medians can be reported beside means.

Differences are compared at a fixed precision (`DIFFERENCE_DECIMALS` decimal places) before zeros are dropped and
ties are ranked: prorated scores such as 16/3 - 4 and 4 - 8/3 are the same 4/3 but differ in the last bits as
floats, and without rounding they would get different ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

MIN_N_NORMAL_APPROX = 6
DIFFERENCE_DECIMALS = 9
"""Differences are rounded to this many decimal places, so equal scores computed differently tie."""


@dataclass(frozen=True)
class Description:
    """Summary of one variable over its non-missing values; None where undefined (n too small)."""

    n: int
    mean: float | None
    sd: float | None
    median: float | None
    q1: float | None
    q3: float | None
    iqr: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of paired before/after values (differences are after - before).

    `n` counts complete pairs, `n_nonzero` those with a non-zero difference (the ones ranked). `w_positive`
    and `w_negative` are the rank sums of increases and decreases; `t_stat` is the smaller of the two, and
    `z` is computed from it, so `z` <= 0 as in SPSS (the sign does not tell the direction: compare the rank
    sums or the medians). Descriptives are over the complete pairs.
    """

    n: int
    n_nonzero: int
    w_positive: float
    w_negative: float
    t_stat: float
    z: float | None
    p_two_sided: float | None
    mean_before: float | None
    sd_before: float | None
    median_before: float | None
    mean_after: float | None
    sd_after: float | None
    median_after: float | None
    note: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def describe(values: Sequence[float | None] | np.ndarray) -> Description:
    """n, mean, SD (n - 1), median and IQR (linear-interpolated quartiles) of the non-missing values."""
    x = _as_float(values, "values")
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Description(0, None, None, None, None, None, None)
    q1, med, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    sd = float(np.std(x, ddof=1)) if x.size > 1 else None
    return Description(int(x.size), float(np.mean(x)), sd, med, q1, q3, q3 - q1)


def wilcoxon_spss(
    before: Sequence[float | None] | np.ndarray, after: Sequence[float | None] | np.ndarray
) -> WilcoxonResult:
    """Wilcoxon signed-rank test as SPSS reports it.

    Pairs with a missing value (None/NaN) are dropped; differences are rounded to `DIFFERENCE_DECIMALS` places;
    zero differences are dropped before ranking; tied |differences| get average ranks. T = min(W+, W-), the
    smaller rank sum. With N non-zero differences, Z = (T - N(N+1)/4) / sqrt(N(N+1)(2N+1)/24 - sum(t^3 - t)/48)
    over tie groups of size t (no continuity correction), p = 2 * Phi(-|Z|). A note says when N < 6 (normal
    approximation unreliable; SPSS still prints it) or when no difference is non-zero (Z and p undefined).
    """
    b = _as_float(before, "before")
    a = _as_float(after, "after")
    if b.shape != a.shape:
        raise ValueError(f"before has {b.size} values but after has {a.size}; pairs must line up")
    complete = np.isfinite(b) & np.isfinite(a)
    b, a = b[complete], a[complete]
    d = np.round(a - b, DIFFERENCE_DECIMALS)
    d = d[d != 0]
    n_nz = int(d.size)
    ranks = stats.rankdata(np.abs(d)) if n_nz else np.zeros(0)
    w_pos = float(np.sum(ranks[d > 0]))
    w_neg = float(np.sum(ranks[d < 0]))
    t_stat = min(w_pos, w_neg)
    db, da = describe(b), describe(a)
    notes = []
    dropped = int(np.sum(~complete))
    if dropped:
        notes.append(f"{dropped} pair(s) with a missing value dropped")
    z = p = None
    if n_nz == 0:
        notes.append("no non-zero differences: Z and p are undefined")
    else:
        _, tie_counts = np.unique(np.abs(d), return_counts=True)
        var = n_nz * (n_nz + 1) * (2 * n_nz + 1) / 24.0 - np.sum(tie_counts**3 - tie_counts) / 48.0
        if var > 0:
            z = float((t_stat - n_nz * (n_nz + 1) / 4.0) / np.sqrt(var))
            p = float(2.0 * stats.norm.sf(abs(z)))
        else:
            notes.append("zero variance: Z and p are undefined")
        if n_nz < MIN_N_NORMAL_APPROX:
            notes.append(
                f"only {n_nz} non-zero difference(s): the normal approximation is unreliable below "
                f"{MIN_N_NORMAL_APPROX}; report individual values and medians"
            )
    return WilcoxonResult(
        n=int(b.size),
        n_nonzero=n_nz,
        w_positive=w_pos,
        w_negative=w_neg,
        t_stat=t_stat,
        z=z,
        p_two_sided=p,
        mean_before=db.mean,
        sd_before=db.sd,
        median_before=db.median,
        mean_after=da.mean,
        sd_after=da.sd,
        median_after=da.median,
        note="; ".join(notes) or None,
    )


def _as_float(values: Sequence[float | None] | np.ndarray, name: str) -> np.ndarray:
    try:
        x = np.array([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold numbers or None: {err}") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    return x
