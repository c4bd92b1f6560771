"""Group synchrony: whether the heart rates of participants recorded together move together, per phase.

A group session is the set of sessions recorded in one run (`session run --device sim=P01 --device sim=P02 ...`):
they share `SessionInfo.group_id`, one protocol and one session clock (their phase markers coincide). Per phase
(the windows of the session asked about):

1. **HR series.** Each participant's corrected NN beats (`hrv.corrected_beats`, the correction `analyze` uses) as
   instantaneous heart rate 60000 / NN at each beat time, linearly interpolated onto one grid for everyone:
   `GRID_HZ` (4 Hz) samples at k / 4 s of the session clock within the phase. Grid times outside a gap-free run of
   beats are NaN, never bridged.
2. **Detrend.** Each gap-free run of a series loses its least-squares line and then its slow components below
   `HIGHPASS_HZ` (0.02 Hz, periods over 50 s; zero-phase 2nd-order Butterworth, ``scipy.signal.sosfiltfilt``), so a
   heart rate that simply drifts as everyone settles does not count as synchrony. The high-pass is also what keeps
   the surrogate test honest: a phase holds only a few cycles of slower components, which a circular shift cannot
   reproduce, and without it independent hearts came out "synchronous" (p < 0.05) in 8-21 % of simulated groups
   instead of 5 %. A run shorter than 1 / `HIGHPASS_HZ` is left out (NaN).
3. **Pairwise Pearson r** over the grid times where both have data; a pair needs `MIN_OVERLAP_S` (60 s) of joint data.
4. **Group synchrony**: the Fisher-z mean of the pairwise r, tanh(mean(arctanh r)). A participant's own synchrony
   is the same mean over the pairs that include them.
5. **Surrogate test** (is it more than chance?): `N_SURROGATES` (1000) times, every participant's series but the
   first is shifted circularly by its own random lag, uniform in [`MIN_SHIFT_S`, length − `MIN_SHIFT_S`], and the
   group mean is recomputed. A circular shift keeps each heart's own rhythm, variability and autocorrelation and
   only breaks the alignment in time between hearts. One-sided p = (1 + #(surrogate mean ≥ observed)) / (1 + N).
   Seeded (`seed`, default 0), so the same data give the same p.

Window rules: a phase needs at least two participants with data and `MIN_PHASE_S` (120 s), so the shifts have room;
otherwise its values are None and `notes` says why. The correlation measures co-movement of heart rate on the
shared clock at zero lag; it does not say who leads, and a shared pacer or a shared scripted prompt is a legitimate
common cause (that is what synchrony in a group session measures).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.signal import butter, sosfiltfilt

from biofeedback.analysis.analyze import PhaseWindow, phase_windows
from biofeedback.analysis.hrv import CorrectedBeats, corrected_beats, gap_free_runs
from recordings.store import SessionInfo, Store

GRID_HZ = 4.0
HIGHPASS_HZ = 0.02
MIN_OVERLAP_S = 60.0
MIN_PHASE_S = 120.0
MIN_SHIFT_S = 30.0
N_SURROGATES = 1000
SETTINGS = {
    "synchrony": f"pairwise Pearson r of HR (60000/NN, corrected beats) on a shared {GRID_HZ:g} Hz grid, linear "
    f"detrend and {HIGHPASS_HZ:g} Hz high-pass per gap-free run, "
    f"pairs need >= {MIN_OVERLAP_S:g} s joint data; group mean = Fisher-z mean; p = one-sided surrogate test, "
    f"{N_SURROGATES} circular shifts of >= {MIN_SHIFT_S:g} s per participant; phases need >= {MIN_PHASE_S:g} s",
}


class GroupError(ValueError):
    """A session that is not part of a group session with at least two participants."""


@dataclass
class PhaseSynchrony:
    """Synchrony of one phase: pairwise r (with joint seconds), the Fisher-z group mean, and its surrogate p."""

    phase_index: int
    name: str
    kind: str
    start_s: float
    end_s: float
    participants: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str, float, float]] = field(default_factory=list)  # (a, b, r, joint seconds)
    mean_r: float | None = None
    p_value: float | None = None
    surrogate_mean_r: float | None = None
    surrogate_95_r: float | None = None
    notes: list[str] = field(default_factory=list)

    def participant_r(self, participant: str) -> float | None:
        """Fisher-z mean of the pairwise r of the pairs that include `participant`."""
        rs = [r for a, b, r, _ in self.pairs if participant in (a, b)]
        return fisher_mean(rs) if rs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase_index": self.phase_index, "name": self.name, "kind": self.kind, "start_s": self.start_s,
            "end_s": self.end_s, "participants": list(self.participants), "mean_r": self.mean_r,
            "p_value": self.p_value, "surrogate_mean_r": self.surrogate_mean_r,
            "surrogate_95_r": self.surrogate_95_r,
            "pairs": [{"a": a, "b": b, "r": r, "joint_s": s} for a, b, r, s in self.pairs],
            "notes": list(self.notes),
        }  # fmt: skip


@dataclass
class GroupSynchrony:
    """Per-phase synchrony of one group session; `sessions` maps participant → session id."""

    group_id: str
    sessions: dict[str, int]
    correction: str
    seed: int
    phases: list[PhaseSynchrony]

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id, "sessions": dict(self.sessions), "correction": self.correction,
            "seed": self.seed, "settings": dict(SETTINGS), "phases": [p.to_dict() for p in self.phases],
        }  # fmt: skip


# -- pure maths ------------------------------------------------------------------------------------------------


def fisher_mean(rs: list[float] | np.ndarray) -> float:
    """tanh of the mean Fisher z (arctanh) of correlations (clipped just inside ±1)."""
    z = np.arctanh(np.clip(np.asarray(rs, dtype=float), -0.999999, 0.999999))
    return float(np.tanh(z.mean()))


def hr_on_grid(beats: CorrectedBeats, grid: np.ndarray) -> np.ndarray:
    """Instantaneous HR (bpm) of the corrected beats interpolated at `grid` times; NaN outside gap-free runs."""
    out = np.full(len(grid), np.nan)
    if not len(grid):
        return out
    for run in gap_free_runs(beats, float(grid[0]) - 5.0, float(grid[-1]) + 5.0):
        if len(run) < 2:
            continue
        t = beats.t[run]
        inside = (grid >= t[0]) & (grid <= t[-1])
        out[inside] = np.interp(grid[inside], t, 60000.0 / beats.rr[run])
    return out


def detrend(x: np.ndarray, fs_hz: float = GRID_HZ) -> np.ndarray:
    """Each gap-free run of `x` without its least-squares line and its components below HIGHPASS_HZ (NaN kept;
    runs shorter than 1 / HIGHPASS_HZ become NaN)."""
    x = np.asarray(x, dtype=float)
    out = np.full(len(x), np.nan)
    sos = butter(2, HIGHPASS_HZ, btype="highpass", fs=fs_hz, output="sos")
    edges = np.diff(np.concatenate([[0], np.isfinite(x).astype(np.int8), [0]]))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if b - a < fs_hz / HIGHPASS_HZ:
            continue
        k = np.arange(b - a, dtype=float)
        line = np.polyval(np.polyfit(k, x[a:b], 1), k)
        out[a:b] = sosfiltfilt(sos, x[a:b] - line)
    return out


def pairwise_r(series: np.ndarray, min_joint: int) -> tuple[np.ndarray, np.ndarray]:
    """(r, joint sample counts) for every pair of rows of `series` (NaN = missing); r is NaN below `min_joint`."""
    mask = np.isfinite(series).astype(float)
    x = np.where(mask > 0, series, 0.0)
    n = mask @ mask.T
    sx = x @ mask.T  # sx[i, j]: sum of x_i where both i and j have data
    sxx = (x * x) @ mask.T
    sxy = x @ x.T
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / n
        var_i = sxx - sx**2 / n
        r = cov / np.sqrt(var_i * var_i.T)
    r[n < min_joint] = np.nan
    return r, n


def phase_synchrony(
    series: Mapping[str, np.ndarray], fs_hz: float = GRID_HZ, *, n_surrogates: int = N_SURROGATES, seed: int = 0
) -> tuple[list[tuple[str, str, float, float]], float | None, float | None, float | None, float | None]:
    """(pairs, group mean r, p, surrogate mean r, surrogate 95th percentile r) of HR series on one grid (NaN gaps).

    The series are detrended here; see the module doc for the surrogate test.
    """
    if n_surrogates < 1:
        raise ValueError(f"need at least one surrogate, got {n_surrogates}")
    names = list(series)
    data = np.array([detrend(series[k], fs_hz) for k in names]) if names else np.zeros((0, 0))
    min_joint = math.ceil(MIN_OVERLAP_S * fs_hz)
    r, n = pairwise_r(data, min_joint)
    iu = [(i, j) for i, j in itertools.combinations(range(len(names)), 2) if np.isfinite(r[i, j])]
    pairs = [(names[i], names[j], float(r[i, j]), float(n[i, j] / fs_hz)) for i, j in iu]
    if not pairs:
        return pairs, None, None, None, None
    observed = float(np.mean(np.arctanh(np.clip([r[i, j] for i, j in iu], -0.999999, 0.999999))))
    length = data.shape[1]
    lo = math.ceil(MIN_SHIFT_S * fs_hz)
    rng = np.random.default_rng(seed)
    lags = rng.integers(lo, length - lo + 1, (n_surrogates, len(names) - 1))
    shifts = np.concatenate([np.zeros((n_surrogates, 1), int), lags], axis=1)  # the first participant stays put
    z = np.full((n_surrogates, len(iu)), np.nan)
    for k, (i, j) in enumerate(iu):
        r_lag, n_lag = lagged_r(data[i], data[j])
        d = (shifts[:, j] - shifts[:, i]) % length
        ok = n_lag[d] >= min_joint
        z[ok, k] = np.arctanh(np.clip(r_lag[d][ok], -0.999999, 0.999999))
    counted = np.isfinite(z).sum(axis=1)
    surrogate = np.where(np.isfinite(z), z, 0.0).sum(axis=1)[counted > 0] / counted[counted > 0]
    p = float((1 + np.sum(surrogate >= observed)) / (1 + len(surrogate)))
    return (pairs, float(np.tanh(observed)), p, float(np.tanh(surrogate.mean())),
            float(np.tanh(np.percentile(surrogate, 95))))  # fmt: skip


def lagged_r(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r (and joint sample count) of x[u] with y[u - d] circularly, for every lag d, NaN = missing.

    Six FFT cross-correlations (counts, sums, sums of squares and products over the jointly valid samples) give
    every lag at once, exactly as `pairwise_r` gives lag 0.
    """
    mx, my = np.isfinite(x).astype(float), np.isfinite(y).astype(float)
    x0, y0 = np.where(mx > 0, x, 0.0), np.where(my > 0, y, 0.0)
    length = len(x)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.fft.irfft(np.fft.rfft(a) * np.conj(np.fft.rfft(b)), n=length)

    n = np.round(corr(mx, my))
    sx, sy = corr(x0, my), corr(mx, y0)
    sxx, syy, sxy = corr(x0 * x0, my), corr(mx, y0 * y0), corr(x0, y0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (sxy - sx * sy / n) / np.sqrt((sxx - sx**2 / n) * (syy - sy**2 / n))
    return r, n.astype(int)


# -- from the store ------------------------------------------------------------------------------------------


def group_members(store: Store, session_id: int) -> list[SessionInfo]:
    """The finished sessions recorded together with `session_id` (itself included; sessions excluded from the study,
    `sessions exclude`, left out); GroupError when fewer than two participants remain."""
    info = store.session(session_id)
    if not info.group_id:
        raise GroupError(f"session {session_id} was not recorded as part of a group session")
    excluded = store.exclusions("session")
    members = [s for s in store.sessions() if s.group_id == info.group_id and s.state != "running"
               and (s.id not in excluded or s.id == session_id)]  # fmt: skip
    if len({s.participant_id for s in members}) < 2:
        raise GroupError(f"session {session_id}'s group {info.group_id} has fewer than two finished participants")
    return members


def group_synchrony(
    store: Store, session_id: int, correction: str = "kubios", *, seed: int = 0, n_surrogates: int = N_SURROGATES
) -> GroupSynchrony:
    """Per-phase synchrony of the group session that `session_id` belongs to (see the module doc)."""
    members = group_members(store, session_id)
    windows = phase_windows(store, session_id)
    beats: dict[str, CorrectedBeats] = {}
    for info in members:
        b = store.beats(info.id)
        if len(b.t):
            beats[info.participant_id] = corrected_beats(b.t, b.rr_ms, correction, b.gap_before)  # type: ignore[arg-type]
    phases = [_phase(window, beats, seed, n_surrogates) for window in windows]
    info = store.session(session_id)
    return GroupSynchrony(str(info.group_id), {m.participant_id: m.id for m in members}, correction, seed, phases)


def _phase(window: PhaseWindow, beats: Mapping[str, CorrectedBeats], seed: int, n_surrogates: int) -> PhaseSynchrony:
    out = PhaseSynchrony(window.index, window.name, window.kind, window.start_s, window.end_s)
    if window.end_s - window.start_s < MIN_PHASE_S:
        out.notes.append(f"synchrony needs ≥ {MIN_PHASE_S:.0f} s; phase has {window.end_s - window.start_s:.0f} s")
        return out
    grid = np.arange(math.ceil(window.start_s * GRID_HZ), math.floor(window.end_s * GRID_HZ)) / GRID_HZ
    series = {pid: hr_on_grid(b, grid) for pid, b in sorted(beats.items())}
    series = {pid: x for pid, x in series.items() if np.isfinite(x).sum() >= MIN_OVERLAP_S * GRID_HZ}
    out.participants = list(series)
    if len(series) < 2:
        out.notes.append(f"synchrony needs ≥ 2 participants with ≥ {MIN_OVERLAP_S:.0f} s of beats; "
                         f"{len(series)} had")  # fmt: skip
        return out
    pairs, mean_r, p, s_mean, s_95 = phase_synchrony(series, GRID_HZ, n_surrogates=n_surrogates, seed=seed)
    out.pairs, out.mean_r, out.p_value, out.surrogate_mean_r, out.surrogate_95_r = pairs, mean_r, p, s_mean, s_95
    if not pairs:
        out.notes.append(f"no pair of participants has ≥ {MIN_OVERLAP_S:.0f} s of beats at the same time")
    return out
