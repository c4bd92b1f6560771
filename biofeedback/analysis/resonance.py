"""Resonance-frequency assessment (after Lehrer, Vaschillo & Vaschillo 2000; Lehrer 2013; Shaffer & Meehan 2020).

A participant breathes with a pacer at several rates (the built-in `resonance-assessment`: 6.5, 6.0, 5.5, 5.0 and
4.5 breaths/min, two minutes each). For every paced phase this module reports, from the stored beats:

- **RSA amplitude** (bpm): mean peak-to-trough heart rate per breath cycle. The artifact-corrected NN series of the
  phase's longest gap-free stretch is interpolated at 4 Hz on its RR-sum time axis (the same tachogram as the batch
  spectrum, `neurokit2.intervals_process`), turned into heart rate (60000 / RR) and cut into complete pacer
  cycles counted back from the end; each cycle gives max - min (`biofeedback.live.metrics.rsa_peak_to_trough`, which is
  phase-independent because each cycle spans one full period).
- **LF peak** of the phase's spectrum: a Hann-windowed, linearly detrended periodogram of that tachogram over the
  whole stretch, zero-padded to a grid finer than 0.001 Hz (`scipy.signal.periodogram`), so rates 0.5/min apart
  (0.008 Hz) are told apart; Welch's half-length segments (used for LF/HF per phase) would quantise the peak to
  1/60 Hz. `peak_hz` is the highest density in 0.04-0.15 Hz; `lf_peak_ms2` is the power within ±0.015 Hz of it
  (the narrow band of the coherence index); `lf_ms2` is the whole LF band of the same periodogram.

Further criteria of Shaffer & Meehan (2020), per rate, from the same stretch:

- **phase synchrony** (`phase_sync_plv`, needs the chest accelerometer): the phase-locking value between heart rate
  and the chest-movement breathing signal (`recordings.breathing.breathing_waveform`) at the pacer rate: both resampled
  on the 4 Hz tachogram's times, band-passed to pacer ± `SYNC_HALF_BAND_HZ` (2nd-order Butterworth, zero-phase),
  Hilbert phases, ``|mean(exp(i(φ_HR − φ_breath)))|`` over the middle 80 % (the filter's edges left out). 1 = a
  constant phase relation, 0 = none. Only its strength is used: the sign of the chest-movement axis is not known
  (the principal direction of the movement), so the angle itself (0° at resonance) is not reported;
- **peak-to-trough HR**: the RSA amplitude above;
- **LF power** (`lf_ms2`) and **LF peak** (`lf_peak_ms2`), above;
- **curve smoothness** (`smoothness`, 0-1): the share of the linearly detrended heart-rate curve's variance that a
  single sinusoid at the pacer rate explains (least squares of HR on 1, t, cos 2πft, sin 2πft against 1, t). A
  smooth, sine-like HR curve that follows the breath scores near 1; beat-to-beat noise, Mayer waves or a second
  rhythm lower it;
- **number of LF peaks** (`n_lf_peaks`): local maxima of the periodogram in 0.04-0.15 Hz at least
  `LF_PEAK_MIN_SHARE` of the highest and at least one frequency resolution (1 / stretch length) apart. One peak is
  the resonance pattern; fewer is better.

A rate is **eligible** when the phase has at least `MIN_RUN_S` s and `MIN_RUN_SHARE` of its length gap-free, at
most `MAX_CORRECTED_PCT` % corrected beats, and its breathing peak (the HR spectrum's LF peak) is nearer its own
pacer rate than any other rate of the assessment (and within `FOLLOW_TOLERANCE_HZ` of it, which matters only for
the fastest and slowest rates); with chest movement recorded, the breathing rate measured from it must pass the
same test (a phase whose chest movement gives no rate gets a note, not a veto). Otherwise the participant was not
breathing at that rate and the rate says nothing. Ineligible rates are shown with the reason and take no part in
the choice.

**Choosing the resonance rate.** Lehrer's criteria are the largest LF peak and the largest peak-to-trough heart
rate; Shaffer & Meehan (2020) compare the six above across the rates. A criterion is used when every eligible rate
has a value for it (phase synchrony only with ACC). Each used criterion gives one vote to its best rate (every
rate that equals the best); each rate also has a score, the mean over the used criteria of its value relative to
the participant's own best rate (``value / max``; for the number of LF peaks ``min / value``). The rate with the
most votes is named; among rates with as many votes, the higher score; rates scoring within `TIE_SCORE` of the
best of those count as tied, and of tied rates the *fastest* is named (the slower the pacing, the harder it is to
sustain comfortably and the likelier over-breathing). `close_rates` lists every eligible rate within `CLOSE_SCORE`
of the best score, for fine-tuning in the first training sessions. At least `MIN_ELIGIBLE_RATES` eligible rates
are needed to name one (a maximum needs neighbours); otherwise the rate is None and `reason` says why (repeat the
assessment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import neurokit2 as nk
import numpy as np
from scipy.signal import butter, find_peaks, hilbert, periodogram, sosfiltfilt

from biofeedback.analysis import hrv
from biofeedback.analysis.analyze import acc_timeline, phase_acc_rate, phase_windows
from biofeedback.analysis.beat_source import select_beats
from biofeedback.live.metrics import rsa_peak_to_trough
from recordings.breathing import breathing_waveform
from recordings.store import Store

RESONANCE_PROTOCOL = "resonance-assessment"
LF_BAND_HZ = hrv.LF_BAND_HZ
PEAK_HALF_WIDTH_HZ = 0.015
FOLLOW_TOLERANCE_HZ = 0.015
"""Besides being nearest its own pacer rate, the LF peak must lie this close to it (0.9 breaths/min)."""
SYNC_HALF_BAND_HZ = 0.03
LF_PEAK_MIN_SHARE = 0.2
MIN_RUN_S = 60.0
MIN_RUN_SHARE = 0.8
MAX_CORRECTED_PCT = 10.0
MIN_ELIGIBLE_RATES = 3
TIE_SCORE = 0.01
CLOSE_SCORE = 0.05
GRID_HZ = 0.001
INTERPOLATION_HZ = hrv.INTERPOLATION_HZ


@dataclass
class RateResult:
    """One paced phase of an assessment. Values are None when they cannot be computed (see `notes`)."""

    phase: str
    rate_bpm: float
    start_s: float
    end_s: float
    n_beats: int
    corrected_pct: float | None = None
    rsa_amplitude_bpm: float | None = None
    lf_peak_ms2: float | None = None
    lf_ms2: float | None = None
    peak_hz: float | None = None
    eligible: bool = False
    score: float | None = None
    notes: list[str] = field(default_factory=list)
    acc_rate_bpm: float | None = None
    phase_sync_plv: float | None = None
    smoothness: float | None = None
    n_lf_peaks: int | None = None
    votes: list[str] = field(default_factory=list)
    """The criteria this rate is best on (see the module docstring)."""

    @property
    def peak_bpm(self) -> float | None:
        return None if self.peak_hz is None else 60.0 * self.peak_hz

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["peak_bpm"] = self.peak_bpm
        return out


@dataclass
class ResonanceAssessment:
    """The per-rate table and the named resonance rate (None when it cannot be named; `reason` says why)."""

    rates: list[RateResult]
    resonance_rate_bpm: float | None
    reason: str
    by_lf_peak_bpm: float | None = None
    by_rsa_bpm: float | None = None
    close_rates_bpm: list[float] = field(default_factory=list)
    criteria: list[str] = field(default_factory=list)
    """The criteria used for the choice (those every eligible rate has)."""
    session_id: int | None = None
    participant_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "participant_id": self.participant_id,
            "resonance_rate_bpm": self.resonance_rate_bpm,
            "reason": self.reason,
            "by_lf_peak_bpm": self.by_lf_peak_bpm,
            "by_rsa_bpm": self.by_rsa_bpm,
            "close_rates_bpm": list(self.close_rates_bpm),
            "criteria": list(self.criteria),
            "rates": [r.to_dict() for r in self.rates],
        }


PacedPhase = tuple[str, float, float, float]
"""(name, start_s, end_s, pacer rate in breaths/min)."""


Breathing = tuple[np.ndarray, np.ndarray]
"""(times s, chest-movement signal) on the session clock; NaN between accelerometer stretches."""


def assess_resonance(
    beat_t: np.ndarray,
    rr_ms: np.ndarray,
    phases: list[PacedPhase],
    *,
    gap_before: np.ndarray | None = None,
    correction: str = "kubios",
    acc_rates: Sequence[float | None] | None = None,
    breathing: Breathing | None = None,
) -> ResonanceAssessment:
    """Per-rate criteria and the resonance rate (pure; see the module docstring).

    `acc_rates`: per phase, the breathing rate measured from chest movement (None: none measured);
    `breathing`: the chest-movement signal for phase synchrony (None without ACC).
    """
    if correction not in ("kubios", "none"):
        raise ValueError(f"correction must be 'kubios' or 'none', got {correction!r}")
    for name, start, end, rate in phases:
        if not end > start or not rate > 0:
            raise ValueError(f"paced phase {name!r}: needs end > start and a rate > 0, got {start}, {end}, {rate}")
    if acc_rates is not None and len(acc_rates) != len(phases):
        raise ValueError(f"acc_rates has {len(acc_rates)} values for {len(phases)} paced phases")
    # the same corrected beats as the per-phase analysis (`analyze`), so the two tables agree
    timeline = hrv.corrected_beats(beat_t, rr_ms, correction, gap_before)  # type: ignore[arg-type]
    per_phase = hrv.analyze_phases(
        beat_t, rr_ms, [(n, "breathing", s, e, r) for n, s, e, r in phases], correction=correction,
        gap_before=gap_before,
    )  # fmt: skip
    tested = sorted({rate for *_, rate in phases})
    results = [
        _rate_result(timeline, phase, metrics.corrected_pct, tested, None if acc_rates is None else acc_rates[i],
                     breathing)
        for i, (phase, metrics) in enumerate(zip(phases, per_phase, strict=True))
    ]  # fmt: skip
    return choose_resonance(results)


def follows(measured_bpm: float, pacer_bpm: float, tested: Sequence[float]) -> bool:
    """A measured breathing rate is nearer its own pacer rate than any other tested rate, and within
    `FOLLOW_TOLERANCE_HZ` of it."""
    own = abs(measured_bpm - pacer_bpm)
    others = [abs(measured_bpm - r) for r in tested if r != pacer_bpm]
    return own <= 60.0 * FOLLOW_TOLERANCE_HZ and all(own < o for o in others)


def phase_synchrony(hr: np.ndarray, breath: np.ndarray, fs: float, pacer_hz: float) -> float | None:
    """Phase-locking value of HR and breathing at `pacer_hz` (module docstring); None when too short."""
    ok = np.concatenate([[False], np.isfinite(breath), [False]])
    edges = np.flatnonzero(np.diff(ok.astype(int)))
    if not len(edges):
        return None
    a, b = max(zip(edges[::2], edges[1::2], strict=True), key=lambda ab: ab[1] - ab[0])  # longest with ACC
    hr, breath = hr[a:b], breath[a:b]
    if len(hr) < MIN_RUN_S * fs:
        return None
    sos = butter(2, [pacer_hz - SYNC_HALF_BAND_HZ, pacer_hz + SYNC_HALF_BAND_HZ], btype="bandpass", fs=fs,
                 output="sos")  # fmt: skip
    ph_hr = np.angle(hilbert(sosfiltfilt(sos, hr - hr.mean())))
    ph_br = np.angle(hilbert(sosfiltfilt(sos, breath - breath.mean())))
    edge = len(hr) // 10
    diff = (ph_hr - ph_br)[edge : len(hr) - edge]
    return float(np.abs(np.mean(np.exp(1j * diff))))


def curve_smoothness(hr: np.ndarray, fs: float, pacer_hz: float) -> float | None:
    """Share of the detrended HR variance a sinusoid at `pacer_hz` explains (module docstring)."""
    t = np.arange(len(hr)) / fs
    trend = np.column_stack([np.ones_like(t), t])
    full = np.column_stack([trend, np.cos(2 * np.pi * pacer_hz * t), np.sin(2 * np.pi * pacer_hz * t)])
    res_trend = hr - trend @ np.linalg.lstsq(trend, hr, rcond=None)[0]
    res_full = hr - full @ np.linalg.lstsq(full, hr, rcond=None)[0]
    total = float(res_trend @ res_trend)
    return None if total <= 0 else float(1.0 - (res_full @ res_full) / total)


def _rate_result(
    tl: hrv.CorrectedBeats,
    phase: PacedPhase,
    corrected_pct: float | None,
    tested: Sequence[float],
    acc_rate: float | None,
    breathing: Breathing | None,
) -> RateResult:
    name, start, end, rate = phase
    runs = hrv.gap_free_runs(tl, start, end)
    res = RateResult(name, rate, start, end, int(sum(len(r) for r in runs)), corrected_pct=corrected_pct)
    res.acc_rate_bpm = acc_rate
    if not runs:
        res.notes.append("no usable beats in this phase")
        return res
    longest = max(runs, key=lambda r: float(np.sum(tl.rr[r])))
    run_s = float(np.sum(tl.rr[longest])) / 1000.0
    needed = max(MIN_RUN_S, MIN_RUN_SHARE * (end - start))
    if run_s < MIN_RUN_S or len(longest) < 8:
        res.notes.append(f"only {run_s:.0f} s gap-free; the spectrum needs ≥ {MIN_RUN_S:.0f} s")
        return res
    rr = tl.rr[longest]
    t_rr = float(tl.t[longest][0]) + (np.cumsum(rr) - rr[0]) / 1000.0
    tach, _, fs = nk.intervals_process(rr, intervals_time=t_rr, interpolate=True, interpolation_rate=INTERPOLATION_HZ)
    tach = np.asarray(tach, dtype=float)
    nfft = max(len(tach), int(2 ** np.ceil(np.log2(fs / GRID_HZ))))
    freqs, psd = periodogram(tach, fs=fs, window="hann", nfft=nfft, detrend="linear", scaling="density")
    df = float(freqs[1] - freqs[0])
    lf = (freqs >= LF_BAND_HZ[0]) & (freqs < LF_BAND_HZ[1])
    peak = float(freqs[lf][np.argmax(psd[lf])])
    near = (freqs >= peak - PEAK_HALF_WIDTH_HZ) & (freqs <= peak + PEAK_HALF_WIDTH_HZ)
    res.peak_hz = peak
    res.lf_peak_ms2 = float(np.sum(psd[near]) * df)
    res.lf_ms2 = float(np.sum(psd[lf]) * df)
    hr = 60000.0 / tach
    res.rsa_amplitude_bpm = rsa_peak_to_trough(hr, fs, 60.0 / rate)
    res.smoothness = curve_smoothness(hr, fs, rate / 60.0)
    lf_psd = psd[lf]
    found, _ = find_peaks(lf_psd, height=LF_PEAK_MIN_SHARE * float(lf_psd.max()),
                          distance=max(1, int(np.ceil(1.0 / (run_s * df)))))  # fmt: skip
    res.n_lf_peaks = max(1, len(found))  # the maximum at a band edge is a peak too
    if breathing is not None:
        t0 = float(t_rr[0]) + np.arange(len(tach)) / fs
        bt, bv = breathing
        inside = (bt >= t0[0]) & (bt <= t0[-1])
        if inside.any():
            br = np.interp(t0, bt, bv, left=np.nan, right=np.nan)
            res.phase_sync_plv = phase_synchrony(hr, br, fs, rate / 60.0)
    problems = []
    if run_s < needed:
        problems.append(f"only {run_s:.0f} s of {end - start:.0f} s gap-free")
    if corrected_pct is not None and corrected_pct > MAX_CORRECTED_PCT:
        problems.append(f"{corrected_pct:.1f}% of beats corrected (above {MAX_CORRECTED_PCT:.0f}%)")
    if not follows(60.0 * peak, rate, tested):
        problems.append(
            f"heart-rate peak at {60 * peak:.1f}/min is not nearest the paced {rate:g}/min: the pacer was probably "
            "not followed"
        )
    if acc_rate is not None and not follows(acc_rate, rate, tested):
        problems.append(f"chest movement shows breathing at {acc_rate:.1f}/min, not nearest the paced {rate:g}/min: "
                        "the pacer was not followed")  # fmt: skip
    if res.rsa_amplitude_bpm is None:
        problems.append("shorter than one breath cycle")
    res.notes.extend(problems)
    res.eligible = not problems
    return res


CRITERIA: tuple[tuple[str, str, bool], ...] = (
    ("phase synchrony", "phase_sync_plv", True),
    ("peak-to-trough HR", "rsa_amplitude_bpm", True),
    ("LF power", "lf_ms2", True),
    ("LF peak", "lf_peak_ms2", True),
    ("smoothness", "smoothness", True),
    ("fewest LF peaks", "n_lf_peaks", False),
)
"""(name, RateResult field, higher is better) of every criterion the choice can use."""


def choose_resonance(results: list[RateResult]) -> ResonanceAssessment:
    """Votes and scores of the eligible rates, and the named resonance rate (rule in the module docstring)."""
    ok = [r for r in results if r.eligible]
    if len(ok) < MIN_ELIGIBLE_RATES:
        return ResonanceAssessment(
            results,
            None,
            f"only {len(ok)} of {len(results)} paced rates are usable (need {MIN_ELIGIBLE_RATES}); "
            "repeat the assessment",
        )
    used = [(name, key, up) for name, key, up in CRITERIA if all(getattr(r, key) is not None for r in ok)]
    parts: dict[int, list[float]] = {id(r): [] for r in ok}
    for name, key, up in used:
        values = [float(getattr(r, key)) for r in ok]
        best = max(values) if up else min(values)
        for r, v in zip(ok, values, strict=True):
            if v == best:
                r.votes.append(name)
            if up:
                parts[id(r)].append(v / best if best > 0 else 0.0)
            else:
                parts[id(r)].append(best / v if v > 0 else 0.0)
    for r in ok:
        r.score = float(np.mean(parts[id(r)])) if parts[id(r)] else 0.0
    most = max(len(r.votes) for r in ok)
    leaders = [r for r in ok if len(r.votes) == most]
    best_score = max(r.score for r in leaders)  # type: ignore[type-var]
    tied = [r for r in leaders if r.score >= best_score - TIE_SCORE]  # type: ignore[operator]
    chosen = max(tied, key=lambda r: r.rate_bpm)
    by_lf = max(ok, key=lambda r: r.lf_peak_ms2).rate_bpm  # type: ignore[arg-type,return-value]
    by_rsa = max(ok, key=lambda r: r.rsa_amplitude_bpm).rate_bpm  # type: ignore[arg-type,return-value]
    if by_lf == by_rsa == chosen.rate_bpm:
        reason = f"{chosen.rate_bpm:g}/min has both the largest LF peak and the largest RSA amplitude"
    else:
        reason = (
            f"largest LF peak at {by_lf:g}/min, largest RSA amplitude at {by_rsa:g}/min; "
            f"{chosen.rate_bpm:g}/min is best on the most criteria and scores best on them together"
        )
    reason += f"; best on {len(chosen.votes)} of {len(used)} criteria ({', '.join(chosen.votes) or 'none'})"
    if len(tied) > 1:
        others = ", ".join(f"{r.rate_bpm:g}" for r in tied if r is not chosen)
        reason += f" (tied with {others}/min: the faster rate is named)"
    top = max(r.score for r in ok)  # type: ignore[type-var]
    close = sorted((r.rate_bpm for r in ok if r.score >= top - CLOSE_SCORE), reverse=True)  # type: ignore[operator]
    return ResonanceAssessment(results, chosen.rate_bpm, reason, by_lf, by_rsa, close, [n for n, _, _ in used])


def is_resonance_assessment(protocol: dict[str, Any]) -> bool:
    """The built-in protocol, or a lab's own variant: at least three paced phases at different rates."""
    if protocol.get("name") == RESONANCE_PROTOCOL:
        return True
    rates = {ph["pacer"]["rate_bpm"] for ph in protocol.get("phases", []) if ph.get("pacer")}
    return len(rates) >= MIN_ELIGIBLE_RATES


class NotAnAssessmentError(ValueError):
    """The session did not run a resonance assessment."""


def assess_session(store: Store, session_id: int, correction: str = "kubios",
                   beats: str | None = None) -> ResonanceAssessment:  # fmt: skip
    """The resonance assessment of a stored session (its paced phases, from the stored markers and the beats of
    `beats`: `beat_source.select_beats`, None = reviewed when the session has a review, else auto)."""
    info = store.session(session_id)
    if not is_resonance_assessment(store.protocol_dict(session_id)):
        raise NotAnAssessmentError(
            f"session {session_id} ran {info.protocol_name!r}, not a resonance assessment "
            f"(record one with --protocol {RESONANCE_PROTOCOL})"
        )
    selection = select_beats(store, session_id, beats)
    chosen = selection.beats
    correction = correction if selection.correct else "none"
    paced = [(w.name, w.start_s, w.end_s, float(w.pacer_rate_bpm)) for w in phase_windows(store, session_id)
             if w.pacer_rate_bpm is not None and w.end_s > w.start_s]  # fmt: skip
    acc = acc_timeline(store, session_id)
    acc_rates = [phase_acc_rate(acc, s, e)[0] for _, s, e, _ in paced] if acc is not None else None
    breathing = None if acc is None else breathing_signal(acc)
    result = assess_resonance(chosen.t, chosen.rr_ms, paced, gap_before=chosen.gap_before, correction=correction,
                              acc_rates=acc_rates, breathing=breathing)  # fmt: skip
    result.session_id = session_id
    result.participant_id = info.participant_id
    return result


def breathing_signal(acc) -> Breathing:
    """The chest-movement waveform as (times, values), NaN where there is none (`recordings.breathing`, the one
    derivation the exports, breath cycles and this assessment share)."""
    waveform = breathing_waveform(acc)
    return waveform.t, waveform.values


def save_resonance_rate(store: Store, assessment: ResonanceAssessment) -> float:
    """Store the named rate for the participant (used by later sessions' pacers); refuses when none was named."""
    if assessment.resonance_rate_bpm is None or assessment.participant_id is None:
        raise NotAnAssessmentError(f"no resonance rate to save: {assessment.reason}")
    store.set_resonance_rate(assessment.participant_id, assessment.resonance_rate_bpm)
    return assessment.resonance_rate_bpm
