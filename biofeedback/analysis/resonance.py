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

A rate is **eligible** when the phase has at least `MIN_RUN_S` s and `MIN_RUN_SHARE` of its length gap-free, at
most `MAX_CORRECTED_PCT` % corrected beats, and its LF peak lies within `FOLLOW_TOLERANCE_HZ` of the pacer
frequency (otherwise the participant was not breathing at that rate, and the rate says nothing). Ineligible rates
are shown with the reason and take no part in the choice.

**Choosing the resonance rate.** Lehrer's criteria are the largest LF peak and the largest peak-to-trough heart
rate, which usually agree. Each eligible rate scores ``lf_peak / max(lf_peak) + rsa / max(rsa)`` (both criteria
weighted equally, each relative to the participant's own best rate); the highest score is the resonance rate.
Tie-breaking: rates scoring within `TIE_SCORE` of the best count as tied, and of tied rates the *fastest* is named
(the slower the pacing, the harder it is to sustain comfortably and the likelier over-breathing). `close_rates`
lists every rate within `CLOSE_SCORE` of the best, for fine-tuning in the first training sessions. At least
`MIN_ELIGIBLE_RATES` eligible rates are needed to name one (a maximum needs neighbours); otherwise the rate is None
and `reason` says why (repeat the assessment).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import neurokit2 as nk
import numpy as np
from scipy.signal import periodogram

from biofeedback.analysis import hrv
from biofeedback.analysis.analyze import phase_windows
from biofeedback.live.metrics import rsa_peak_to_trough
from recordings.store import Store

RESONANCE_PROTOCOL = "resonance-assessment"
LF_BAND_HZ = hrv.LF_BAND_HZ
PEAK_HALF_WIDTH_HZ = 0.015
FOLLOW_TOLERANCE_HZ = 0.015
"""The LF peak must lie this close to the pacer frequency (0.9 breaths/min) for the rate to count."""
MIN_RUN_S = 60.0
MIN_RUN_SHARE = 0.8
MAX_CORRECTED_PCT = 10.0
MIN_ELIGIBLE_RATES = 3
TIE_SCORE = 0.02
CLOSE_SCORE = 0.10
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
            "rates": [r.to_dict() for r in self.rates],
        }


PacedPhase = tuple[str, float, float, float]
"""(name, start_s, end_s, pacer rate in breaths/min)."""


def assess_resonance(
    beat_t: np.ndarray,
    rr_ms: np.ndarray,
    phases: list[PacedPhase],
    *,
    gap_before: np.ndarray | None = None,
    correction: str = "kubios",
) -> ResonanceAssessment:
    """Per-rate RSA amplitude and LF peak, and the resonance rate (pure; see the module docstring)."""
    if correction not in ("kubios", "none"):
        raise ValueError(f"correction must be 'kubios' or 'none', got {correction!r}")
    for name, start, end, rate in phases:
        if not end > start or not rate > 0:
            raise ValueError(f"paced phase {name!r}: needs end > start and a rate > 0, got {start}, {end}, {rate}")
    # the same corrected beats as the per-phase analysis (`analyze`), so the two tables agree
    timeline = hrv.corrected_beats(beat_t, rr_ms, correction, gap_before)  # type: ignore[arg-type]
    per_phase = hrv.analyze_phases(
        beat_t, rr_ms, [(n, "breathing", s, e, r) for n, s, e, r in phases], correction=correction,
        gap_before=gap_before,
    )  # fmt: skip
    results = [
        _rate_result(timeline, phase, metrics.corrected_pct) for phase, metrics in zip(phases, per_phase, strict=True)
    ]
    return choose_resonance(results)


def _rate_result(tl: hrv.CorrectedBeats, phase: PacedPhase, corrected_pct: float | None) -> RateResult:
    name, start, end, rate = phase
    runs = hrv.gap_free_runs(tl, start, end)
    res = RateResult(name, rate, start, end, int(sum(len(r) for r in runs)), corrected_pct=corrected_pct)
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
    res.rsa_amplitude_bpm = rsa_peak_to_trough(60000.0 / tach, fs, 60.0 / rate)
    problems = []
    if run_s < needed:
        problems.append(f"only {run_s:.0f} s of {end - start:.0f} s gap-free")
    if corrected_pct is not None and corrected_pct > MAX_CORRECTED_PCT:
        problems.append(f"{corrected_pct:.1f}% of beats corrected (above {MAX_CORRECTED_PCT:.0f}%)")
    if abs(peak - rate / 60.0) > FOLLOW_TOLERANCE_HZ:
        problems.append(
            f"heart-rate peak at {60 * peak:.1f}/min, not the paced {rate:g}/min: the pacer was probably not followed"
        )
    if res.rsa_amplitude_bpm is None:
        problems.append("shorter than one breath cycle")
    res.notes.extend(problems)
    res.eligible = not problems
    return res


def choose_resonance(results: list[RateResult]) -> ResonanceAssessment:
    """Score the eligible rates and name the resonance rate (tie-breaking in the module docstring)."""
    ok = [r for r in results if r.eligible]
    if len(ok) < MIN_ELIGIBLE_RATES:
        return ResonanceAssessment(
            results,
            None,
            f"only {len(ok)} of {len(results)} paced rates are usable (need {MIN_ELIGIBLE_RATES}); "
            "repeat the assessment",
        )
    lf_max = max(r.lf_peak_ms2 for r in ok)  # type: ignore[type-var]
    rsa_max = max(r.rsa_amplitude_bpm for r in ok)  # type: ignore[type-var]
    for r in ok:
        r.score = (r.lf_peak_ms2 / lf_max if lf_max > 0 else 0.0) + (
            r.rsa_amplitude_bpm / rsa_max if rsa_max > 0 else 0.0
        )
    best = max(r.score for r in ok)  # type: ignore[type-var]
    tied = [r for r in ok if r.score >= best - TIE_SCORE]
    chosen = max(tied, key=lambda r: r.rate_bpm)
    by_lf = max(ok, key=lambda r: r.lf_peak_ms2).rate_bpm  # type: ignore[arg-type,return-value]
    by_rsa = max(ok, key=lambda r: r.rsa_amplitude_bpm).rate_bpm  # type: ignore[arg-type,return-value]
    if by_lf == by_rsa == chosen.rate_bpm:
        reason = f"{chosen.rate_bpm:g}/min has both the largest LF peak and the largest RSA amplitude"
    else:
        reason = (
            f"largest LF peak at {by_lf:g}/min, largest RSA amplitude at {by_rsa:g}/min; "
            f"{chosen.rate_bpm:g}/min scores best on both together"
        )
    if len(tied) > 1:
        others = ", ".join(f"{r.rate_bpm:g}" for r in tied if r is not chosen)
        reason += f" (tied with {others}/min: the faster rate is named)"
    close = sorted((r.rate_bpm for r in ok if r.score >= best - CLOSE_SCORE), reverse=True)
    return ResonanceAssessment(results, chosen.rate_bpm, reason, by_lf, by_rsa, close)


def is_resonance_assessment(protocol: dict[str, Any]) -> bool:
    """The built-in protocol, or a lab's own variant: at least three paced phases at different rates."""
    if protocol.get("name") == RESONANCE_PROTOCOL:
        return True
    rates = {ph["pacer"]["rate_bpm"] for ph in protocol.get("phases", []) if ph.get("pacer")}
    return len(rates) >= MIN_ELIGIBLE_RATES


class NotAnAssessmentError(ValueError):
    """The session did not run a resonance assessment."""


def assess_session(store: Store, session_id: int, correction: str = "kubios") -> ResonanceAssessment:
    """The resonance assessment of a stored session (its paced phases, from the stored markers and beats)."""
    info = store.session(session_id)
    if not is_resonance_assessment(store.protocol_dict(session_id)):
        raise NotAnAssessmentError(
            f"session {session_id} ran {info.protocol_name!r}, not a resonance assessment "
            f"(record one with --protocol {RESONANCE_PROTOCOL})"
        )
    beats = store.beats(session_id)
    paced = [(w.name, w.start_s, w.end_s, float(w.pacer_rate_bpm)) for w in phase_windows(store, session_id)
             if w.pacer_rate_bpm is not None and w.end_s > w.start_s]  # fmt: skip
    result = assess_resonance(beats.t, beats.rr_ms, paced, gap_before=beats.gap_before, correction=correction)
    result.session_id = session_id
    result.participant_id = info.participant_id
    return result


def save_resonance_rate(store: Store, assessment: ResonanceAssessment) -> float:
    """Store the named rate for the participant (used by later sessions' pacers); refuses when none was named."""
    if assessment.resonance_rate_bpm is None or assessment.participant_id is None:
        raise NotAnAssessmentError(f"no resonance rate to save: {assessment.reason}")
    store.set_resonance_rate(assessment.participant_id, assessment.resonance_rate_bpm)
    return assessment.resonance_rate_bpm
