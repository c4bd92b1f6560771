"""Batch HRV per protocol phase: artifact correction, time and frequency domain, breathing rate.

Pure functions on arrays (no store access). Inputs are beat times in seconds on the session clock, the RR
interval in ms that *ends* at each beat, an optional `gap_before` mask (the beat starts a new gap-free stretch:
its RR is still a measured interval and counts, but no successive difference spans the gap), and phases
`(name, kind, start_s, end_s, pacer_rate_bpm | None)`.

Method, in order:

1. **Segments.** The recording is split at gaps (`gap_before` or a missing/NaN RR). Nothing is ever
   interpolated across a gap and no successive difference spans one. The first beat of a segment keeps its RR
   (the strap measured it from a beat before the gap, which is placed at `t − RR` as the segment's anchor);
   only a missing/NaN RR is not an interval.
2. **Artifact correction** (``correction="kubios"``): Lipponen & Tarvainen (2019) detection by neurokit2 with
   our own correction (`biofeedback.analysis.artifacts`: an ectopic beat and its compensatory pause are one artifact,
   corrected intervals are the smoothest fill between clean neighbours on both sides, recorded beats outside
   an artifact never move and untouched RR keep the strap's exact value), run once per gap-free segment over
   the whole recording (the method needs context), then cut per phase. ``corrected_pct`` is artifact events /
   recorded beats in the phase (an event belongs to the phase of its first replaced beat), and a note is
   added above `CORRECTED_NOTE_PCT`.
3. **Phase cut.** A beat belongs to a phase when ``start_s <= beat time < end_s`` (the phase that ends last
   also takes a beat exactly at its end, so a recording's last beat is never lost); its RR is the interval
   ending at that beat.
4. **Time domain** over the phase's NN intervals: mean HR = 60000 / mean NN, SDNN (ddof=1), RMSSD over
   successive differences inside gap-free runs, pNN50 = #(|diff| > 50 ms) / #NN x 100. On gap-free data these
   equal ``neurokit2.hrv_time`` (which uses #diff + 1 = #NN as denominator). Each beat the correction placed
   takes one from both denominators (`artifacts.rmssd`: it absorbed one difference's worth of variance).
5. **Frequency domain** on the longest gap-free run of the phase: the RR tachogram interpolated at 4 Hz
   (``neurokit2.intervals_process``, quadratic spline, times from the cumulative RR sum), Welch PSD
   (``neurokit2.signal_psd``: mean removed, Hann window of half the run, 50 % overlap, no normalisation)
   and trapezoid band integrals over [lo, hi): LF 0.04–0.15 Hz, HF 0.15–0.40 Hz, in ms² absolute. This is
   the same computation as ``neurokit2.hrv_frequency(..., interpolation_rate=4, normalize=False)``.
6. **Breathing rate**: the pacer rate when the phase has a pacer, else a rate measured from chest movement (the
   strap's accelerometer, `acc_rates`, source "acc") when the caller has one, else the respiratory sinus
   arrhythmia peak of the same PSD, x 60: the highest local maximum in 0.13–0.5 Hz (not a band edge on a slower
   peak's slope), or the highest in 0.05–0.13 Hz when that one is at least 5x stronger (slow breathing makes a
   dominant slow peak; Mayer waves at rest do not). Limits: it assumes breathing drives the main HR oscillation;
   Mayer waves (~0.1 Hz), irregular breathing, talking or movement can dominate instead (short resting records
   often peak near 0.05–0.1 Hz); the PSD starts at 4 / run length Hz (60 s run: nothing below 4/min is visible)
   and its resolution is 2 / run length Hz; above about half the heart rate the tachogram cannot represent
   breathing at all. Below `SLOW_BREATHING_BPM` RSA falls into LF and HF is flagged as not vagal (judged on the
   chest-movement rate when there is one, since that is how the participant actually breathed). With a pacer and a
   chest-movement rate more than `PACER_DISAGREEMENT_BPM` away from it, a neutral experimenter-facing note gives
   both rates.

7. **Further indices** (SD1/SD2, DFA α1, sample entropy, Baevsky's stress index, LF/HF in normalised units,
   HeartMath coherence ratio and the project's coherence index): `biofeedback.analysis.indices`, with their own
   window rules.

Window rules: RMSSD/SDNN/pNN50 and HF need >= 60 s of data in the phase, LF needs >= 120 s; otherwise the
value is None and a note says why. "Data in the phase" is the phase time covered by gap-free segments (a
segment spans its first to its last beat), so a gap-free 60 s phase has 60 s although its NN sum is a
fraction of a beat shorter; LF/HF use the coverage of the longest gap-free stretch alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import neurokit2 as nk
import numpy as np
from scipy.signal import find_peaks

from biofeedback.analysis import artifacts
from biofeedback.analysis.indices import phase_indices

Phase = tuple[str, str, float, float, float | None]

CORRECTED_NOTE_PCT = 5.0
MIN_SHORT_WINDOW_S = 60.0
MIN_LF_WINDOW_S = 120.0
SLOW_BREATHING_BPM = 9.0
PACER_DISAGREEMENT_BPM = 1.5
"""A chest-movement breathing rate this far (breaths/min) from the pacer gets a note."""
LF_BAND_HZ = (0.04, 0.15)
HF_BAND_HZ = (0.15, 0.40)
RSA_BAND_HZ = (0.05, 0.5)
SPONTANEOUS_BREATHING_HZ = 0.13
"""Below this (7.8/min) a spectral peak is more often a Mayer wave than breathing, unless it dominates."""
SLOW_PEAK_DOMINANCE = 5.0
INTERPOLATION_HZ = 4
_MIN_SEGMENT_BEATS_FOR_CORRECTION = 5
EVENT_MATCH_S = 0.001
"""A reviewer's decision names an artifact by its first replaced beat's time; it matches within this many seconds."""


@dataclass
class PhaseMetrics:
    """HRV of one protocol phase; None where a value cannot be computed (see `notes`).

    `n_beats` counts the usable NN intervals ending in the phase after correction; `corrected_pct` is None
    when no correction was run; `breathing_rate_source` is None when the rate is unknown.
    """

    name: str
    kind: str
    start_s: float
    end_s: float
    n_beats: int
    corrected_pct: float | None = None
    mean_hr_bpm: float | None = None
    rmssd_ms: float | None = None
    sdnn_ms: float | None = None
    pnn50_pct: float | None = None
    lf_ms2: float | None = None
    hf_ms2: float | None = None
    lf_peak_hz: float | None = None
    breathing_rate_bpm: float | None = None
    breathing_rate_source: Literal["pacer", "acc", "rsa"] | None = None
    sd1_ms: float | None = None
    sd2_ms: float | None = None
    dfa_alpha1: float | None = None
    sample_entropy: float | None = None
    stress_index: float | None = None
    lf_nu: float | None = None
    hf_nu: float | None = None
    coherence_ratio: float | None = None
    coherence_index: float | None = None
    notes: list[str] = field(default_factory=list)
    # breath by breath from chest movement (`breath_cycles`; set by `analyze`, None without ACC)
    acc_breathing_rate_bpm: float | None = None
    pacer_rate_bpm: float | None = None
    n_breaths: int | None = None
    rsa_p2t_bpm: float | None = None
    pacer_compliance_pct: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (floats, None for missing values)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, np.floating | np.integer):
                out[key] = value.item()
        out["notes"] = list(self.notes)
        return out


@dataclass
class CorrectedBeats:
    """Beats after correction: times, RR ending at each beat (NaN = unusable), gap-free segment id."""

    t: np.ndarray
    rr: np.ndarray
    seg: np.ndarray
    seg_span: np.ndarray  # (n_segments, 2): first and last beat time of each gap-free segment
    changed_t: np.ndarray  # times of beats placed by the correction
    removed_t: np.ndarray  # times of recorded beats the correction replaced
    recorded_t: np.ndarray  # times of all recorded beats
    placed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per beat: placed by the correction
    event_t: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per artifact: its first recorded beat's time
    rejected_t: np.ndarray = field(default_factory=lambda: np.zeros(0))  # artifacts a reviewer kept as recorded


def analyze_phases(
    beat_t: np.ndarray,
    rr_ms: np.ndarray,
    phases: list[Phase],
    correction: Literal["kubios", "none"] = "kubios",
    gap_before: np.ndarray | None = None,
    acc_rates: Sequence[float | None] | None = None,
    timeline: CorrectedBeats | None = None,
) -> list[PhaseMetrics]:
    """HRV metrics for each phase, in the order given (see the module docstring for the method).

    `acc_rates`: per phase, the breathing rate (breaths/min) measured from chest movement, or None.
    `timeline`: the caller's `corrected_beats` of these beats (to correct them once), else computed here.
    """
    if timeline is None:
        timeline = corrected_beats(beat_t, rr_ms, correction, gap_before)
    checked = [_validate_phase(i, p) for i, p in enumerate(phases)]
    if acc_rates is None:
        acc_rates = [None] * len(checked)
    if len(acc_rates) != len(checked):
        raise ValueError(f"acc_rates has {len(acc_rates)} values for {len(checked)} phases")
    for i, rate in enumerate(acc_rates):
        if rate is not None and not (np.isfinite(rate) and rate > 0):
            raise ValueError(f"acc_rates[{i}] must be a breathing rate > 0 or None, got {rate!r}")
    last_end = max((p[3] for p in checked), default=None)
    return [
        _phase_metrics(timeline, p, corrected=correction == "kubios", acc_rate=None if r is None else float(r),
                       closed=p[3] == last_end)
        for p, r in zip(checked, acc_rates, strict=True)
    ]


def corrected_beats(
    beat_t: np.ndarray,
    rr_ms: np.ndarray,
    correction: Literal["kubios", "none"] = "kubios",
    gap_before: np.ndarray | None = None,
    keep_events: Sequence[float] = (),
) -> CorrectedBeats:
    """The beats exactly as `analyze_phases` uses them (validated, corrected per gap-free segment).

    `keep_events`: times of artifacts (their first replaced beat, as in `event_t`) a reviewer rejected: those are
    left as recorded (`artifacts.revert_events`); `rejected_t` lists the ones found.
    """
    t, rr, starts = _validate(beat_t, rr_ms, gap_before)
    if correction not in ("kubios", "none"):
        raise ValueError(f"correction must be 'kubios' or 'none', got {correction!r}")
    keep = np.asarray(keep_events, dtype=float)
    return _build_timeline(t, rr, starts, correct=correction == "kubios", keep=keep)


def gap_free_runs(beats: CorrectedBeats, start_s: float, end_s: float) -> list[np.ndarray]:
    """Index arrays of the usable beats in [start_s, end_s), one per gap-free stretch."""
    mask = (beats.t >= start_s) & (beats.t < end_s) & np.isfinite(beats.rr)
    return _runs(mask, beats.seg)


# ----------------------------------------------------------------------------------------------- input


def _validate(
    beat_t: np.ndarray, rr_ms: np.ndarray, gap_before: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(beat_t, dtype=float)
    rr = np.asarray(rr_ms, dtype=float)
    if t.ndim != 1 or rr.ndim != 1:
        raise ValueError(f"beat_t and rr_ms must be 1-D, got shapes {t.shape} and {rr.shape}")
    if t.shape != rr.shape:
        raise ValueError(f"beat_t has {t.size} beats but rr_ms has {rr.size}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"beat_t has {int(np.sum(~np.isfinite(t)))} non-finite value(s)")
    if t.size > 1 and np.any(np.diff(t) <= 0):
        i = int(np.argmax(np.diff(t) <= 0)) + 1
        raise ValueError(f"beat_t must increase strictly; beat {i} at {t[i]} s follows {t[i - 1]} s")
    bad = np.isfinite(rr) & (rr <= 0)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"rr_ms must be > 0; beat {i} has {rr[i]} ms")
    if gap_before is None:
        gap = np.zeros(t.size, dtype=bool)
    else:
        gap = np.asarray(gap_before)
        if gap.shape != t.shape or gap.dtype != bool:
            raise ValueError(
                f"gap_before must be a bool array of {t.size} beats, got {gap.dtype} {gap.shape}"
            )
    starts = gap | ~np.isfinite(rr)  # the beat starts a new gap-free segment
    return t, rr, starts


def _validate_phase(i: int, phase: Phase) -> Phase:
    try:
        name, kind, start, end, pacer = phase
    except (TypeError, ValueError):
        raise ValueError(
            f"phase {i} must be (name, kind, start_s, end_s, pacer_rate_bpm|None), got {phase!r}"
        ) from None
    if not end > start:
        raise ValueError(f"phase {i} ({name!r}) ends at {end} s, not after its start {start} s")
    if pacer is not None and not pacer > 0:
        raise ValueError(f"phase {i} ({name!r}) has pacer rate {pacer}; give a rate > 0 or None")
    return str(name), str(kind), float(start), float(end), None if pacer is None else float(pacer)


# ------------------------------------------------------------------------------------- correction


def _segments(starts: np.ndarray) -> list[tuple[int, int]]:
    """[first, last] beat index of each gap-free run: every beat after `first` continues it."""
    bounds = [0, *list(np.flatnonzero(starts[1:]) + 1), starts.size]
    return [(a, b - 1) for a, b in itertools.pairwise(bounds) if b > a]


def _build_timeline(
    t: np.ndarray, rr: np.ndarray, starts: np.ndarray, correct: bool, keep: np.ndarray | None = None
) -> CorrectedBeats:
    keep = np.zeros(0) if keep is None else keep
    rejected: list[np.ndarray] = []
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    changed: list[np.ndarray] = []
    removed: list[np.ndarray] = []
    events: list[np.ndarray] = []
    for first, last in _segments(starts):
        seg_t = t[first : last + 1]
        seg_rr = rr[first : last + 1].copy()
        if np.isfinite(seg_rr[0]):  # anchor: the beat (not recorded) that started the segment's first RR
            seg_t = np.concatenate([[seg_t[0] - seg_rr[0] / 1000.0], seg_t])
            seg_rr = np.concatenate([[np.nan], seg_rr])
        else:
            seg_rr[0] = np.nan
        if correct and seg_t.size >= _MIN_SEGMENT_BEATS_FOR_CORRECTION:
            new_t, new_rr, ch, rm, ev, rej = _corrected_segment(seg_t, seg_rr, keep)
            rejected.append(rej)
            changed.append(ch)
            removed.append(rm)
            events.append(ev)
            parts.append((new_t, new_rr))
        else:
            parts.append((seg_t, seg_rr))
    if not parts:
        empty = np.zeros(0)
        return CorrectedBeats(empty, empty, np.zeros(0, dtype=int), np.zeros((0, 2)), empty, empty, t)
    seg_ids = np.concatenate([np.full(p[0].size, k) for k, p in enumerate(parts)])
    return CorrectedBeats(
        t=np.concatenate([p[0] for p in parts]),
        rr=np.concatenate([p[1] for p in parts]),
        seg=seg_ids,
        seg_span=np.array([[p[0][0], p[0][-1]] for p in parts]),
        changed_t=np.concatenate(changed) if changed else np.zeros(0),
        removed_t=np.concatenate(removed) if removed else np.zeros(0),
        recorded_t=t,
        placed=np.isin(np.concatenate([p[0] for p in parts]), np.concatenate(changed) if changed else []),
        event_t=np.concatenate(events) if events else np.zeros(0),
        rejected_t=np.concatenate(rejected) if rejected else np.zeros(0),
    )


def _corrected_segment(
    seg_t: np.ndarray, seg_rr: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Correct one gap-free segment (`biofeedback.analysis.artifacts`); returns new times, new RR, placed-beat times,
    replaced-beat times, artifact times and the times of artifacts left as recorded because they are in `keep`.
    Recorded beats keep their time and untouched RR their value."""
    fix = artifacts.correct_rr(seg_rr[1:])
    rejected = [e for e in fix.events if keep.size and np.min(np.abs(keep - seg_t[e.first + 1])) < EVENT_MATCH_S]
    if rejected:
        fix = artifacts.revert_events(seg_rr[1:], fix, rejected)
    src = fix.beat_source
    cum_orig = np.concatenate([[0.0], np.cumsum(seg_rr[1:])])
    cum_new = np.concatenate([[0.0], np.cumsum(fix.rr)])
    new_t = np.interp(cum_new, cum_orig, seg_t)  # placed beats: on the recorded beats' clock
    new_t[src >= 0] = seg_t[src[src >= 0]]
    new_rr = np.concatenate([[np.nan], fix.rr])
    removed = seg_t[np.setdiff1d(np.arange(seg_t.size), src)]
    event_t = np.array([seg_t[e.first + 1] for e in fix.events])
    return new_t, new_rr, new_t[src < 0], removed, event_t, np.array([seg_t[e.first + 1] for e in rejected])


# ------------------------------------------------------------------------------------------ metrics


def _runs(mask: np.ndarray, seg: np.ndarray) -> list[np.ndarray]:
    """Index arrays of consecutive usable beats within one segment."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero((np.diff(idx) != 1) | (np.diff(seg[idx]) != 0)) + 1
    return np.split(idx, breaks)


def _phase_metrics(
    tl: CorrectedBeats, phase: Phase, corrected: bool, acc_rate: float | None = None, closed: bool = False
) -> PhaseMetrics:
    """Metrics of one phase; `closed`: the phase also takes a beat exactly at its end (the last phase)."""
    name, kind, start, end, pacer = phase
    hi = float(np.nextafter(end, np.inf)) if closed else end
    in_phase = (tl.t >= start) & (tl.t < hi)
    mask = in_phase & np.isfinite(tl.rr)
    nn = tl.rr[mask]
    m = PhaseMetrics(name=name, kind=kind, start_s=start, end_s=end, n_beats=int(nn.size))
    recorded = int(np.sum((tl.recorded_t >= start) & (tl.recorded_t < hi)))
    if corrected and recorded:
        # artifact events, not moved beats: an ectopic beat and its compensatory pause are one artifact
        n_events = np.sum((tl.event_t >= start) & (tl.event_t < hi))
        m.corrected_pct = float(100.0 * n_events / recorded)
        if m.corrected_pct > CORRECTED_NOTE_PCT:
            m.notes.append(
                f"{m.corrected_pct:.1f}% of beats corrected (above {CORRECTED_NOTE_PCT:.0f}%): "
                "interpret HRV with caution"
            )
    elif corrected:
        m.corrected_pct = 0.0
    if nn.size == 0:
        m.notes.append("no usable beats in this phase")
        _breathing(m, pacer, None, acc_rate)
        return m
    m.mean_hr_bpm = float(60000.0 / np.mean(nn))
    runs = _runs(mask, tl.seg)
    cover = np.clip(np.minimum(tl.seg_span[:, 1], end) - np.maximum(tl.seg_span[:, 0], start), 0.0, None)
    duration = float(np.sum(cover))
    if duration >= MIN_SHORT_WINDOW_S:
        diffs = np.concatenate([np.diff(tl.rr[r]) for r in runs])
        placed = int(np.sum(tl.placed[mask])) if tl.placed.size else 0  # see artifacts.rmssd
        m.sdnn_ms = float(np.std(nn, ddof=1))
        m.rmssd_ms = float(np.sqrt(np.sum(diffs**2) / (diffs.size - placed))) if diffs.size > placed else None
        m.pnn50_pct = float(100.0 * np.sum(np.abs(diffs) > 50) / (nn.size - placed))
    else:
        m.notes.append(f"RMSSD/SDNN/pNN50 need ≥ {MIN_SHORT_WINDOW_S:.0f} s; phase has {duration:.1f} s")
    if len(runs) > 1:
        m.notes.append(f"phase has {len(runs)} gap-free stretches; differences never span a gap")
    longest = max(runs, key=lambda r: float(cover[tl.seg[r[0]]]))
    run_s = float(cover[tl.seg[longest[0]]])
    if len(runs) > 1:
        m.notes.append(f"LF/HF and RSA from the longest gap-free stretch ({run_s:.1f} s of {duration:.1f} s)")
    psd = None
    if run_s >= MIN_SHORT_WINDOW_S:
        psd = tachogram_psd(tl.t[longest], tl.rr[longest])
        m.hf_ms2 = band_power(psd, HF_BAND_HZ)
    else:
        m.notes.append(f"HF needs ≥ {MIN_SHORT_WINDOW_S:.0f} s; phase has {run_s:.1f} s")
    if run_s >= MIN_LF_WINDOW_S and psd is not None:
        m.lf_ms2 = band_power(psd, LF_BAND_HZ)
        m.lf_peak_hz = _peak_hz(psd, LF_BAND_HZ)
    else:
        m.notes.append(f"LF needs ≥ {MIN_LF_WINDOW_S:.0f} s; phase has {run_s:.1f} s")
    _add_indices(m, [(tl.t[r], tl.rr[r]) for r in runs], duration)
    _breathing(m, pacer, psd, acc_rate)
    return m


def _add_indices(m: PhaseMetrics, runs: list[tuple[np.ndarray, np.ndarray]], duration: float) -> None:
    """SD1/SD2, DFA α1, sample entropy, stress index, LF/HF nu and coherence (`biofeedback.analysis.indices`)."""
    ix = phase_indices(runs, duration, m.lf_ms2, m.hf_ms2)
    for name in ("sd1_ms", "sd2_ms", "dfa_alpha1", "sample_entropy", "stress_index", "lf_nu", "hf_nu",
                 "coherence_ratio", "coherence_index"):  # fmt: skip
        setattr(m, name, getattr(ix, name))
    m.notes.extend(ix.notes)


def _breathing(
    m: PhaseMetrics, pacer: float | None, psd: tuple[np.ndarray, np.ndarray] | None, acc_rate: float | None = None
) -> None:
    if pacer is not None:
        m.breathing_rate_bpm, m.breathing_rate_source = pacer, "pacer"
        if acc_rate is not None and abs(acc_rate - pacer) > PACER_DISAGREEMENT_BPM:
            m.notes.append(f"participant breathed at ~{acc_rate:.1f}/min, pacer {pacer:g}/min")
    elif acc_rate is not None:
        m.breathing_rate_bpm, m.breathing_rate_source = acc_rate, "acc"
    elif psd is not None:
        peak = _respiratory_peak_hz(psd)
        if peak is not None:
            m.breathing_rate_bpm, m.breathing_rate_source = 60.0 * peak, "rsa"
    if m.breathing_rate_bpm is None:
        m.notes.append(f"breathing rate unknown: no pacer and RSA needs ≥ {MIN_SHORT_WINDOW_S:.0f} s")
    elif (breathed := m.breathing_rate_bpm if acc_rate is None else acc_rate) < SLOW_BREATHING_BPM:
        m.notes.append(
            f"breathing ~{breathed:.1f}/min moves RSA into LF; "
            "HF does not index vagal activity here"
        )


# --------------------------------------------------------------------------------------- spectrum


def tachogram_psd(beat_t: np.ndarray, rr_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD (ms²/Hz) of one gap-free run of RR, interpolated at `INTERPOLATION_HZ`.

    Beat times are rebuilt from the cumulative RR sum (anchored at the first beat) so host-clock jitter does
    not enter the spectrum. Same steps and parameters as ``neurokit2.hrv_frequency`` with
    ``interpolation_rate=4, normalize=False`` (Welch, Hann, nperseg = half the samples).
    """
    rr = np.asarray(rr_ms, dtype=float)
    t_rr = float(beat_t[0]) + (np.cumsum(rr) - rr[0]) / 1000.0
    tach, _, fs = nk.intervals_process(
        rr, intervals_time=t_rr, interpolate=True, interpolation_rate=INTERPOLATION_HZ
    )
    psd = nk.signal_psd(
        tach, sampling_rate=fs, method="welch", normalize=False, max_frequency=0.5, silent=True
    )
    return psd["Frequency"].to_numpy(), psd["Power"].to_numpy()


def band_power(psd: tuple[np.ndarray, np.ndarray], band: tuple[float, float]) -> float | None:
    """Trapezoid integral of the PSD over [lo, hi) in ms²; None when the band holds no PSD bins."""
    f, p = psd
    where = (f >= band[0]) & (f < band[1])
    if np.sum(where) < 2:
        return None
    return float(np.trapezoid(p[where], f[where]))


def _respiratory_peak_hz(psd: tuple[np.ndarray, np.ndarray]) -> float | None:
    """The RSA peak: in the spontaneous-breathing range, unless a slow peak clearly dominates (slow breathing).

    Slow oscillations (Mayer waves, ~0.1 Hz) often rival the respiratory peak at rest, so a peak below
    `SPONTANEOUS_BREATHING_HZ` is taken as the breathing rate only when its power is at least
    `SLOW_PEAK_DOMINANCE` times the strongest peak above it, as it is with slow (e.g. paced) breathing.
    """
    f, p = psd
    slow = _local_peak_hz(psd, (RSA_BAND_HZ[0], SPONTANEOUS_BREATHING_HZ))
    fast = _local_peak_hz(psd, (SPONTANEOUS_BREATHING_HZ, RSA_BAND_HZ[1]))
    if slow is None or fast is None:
        return slow if fast is None else fast
    power = dict(zip(f, p, strict=True))
    return slow if power[slow] >= SLOW_PEAK_DOMINANCE * power[fast] else fast


def _local_peak_hz(psd: tuple[np.ndarray, np.ndarray], band: tuple[float, float]) -> float | None:
    """The highest true peak (a local maximum, not the band's edge on a neighbour's slope) within `band`."""
    f, p = psd
    peaks, _ = find_peaks(p)
    inside = [i for i in peaks if band[0] <= f[i] <= band[1]]
    return float(f[max(inside, key=lambda i: p[i])]) if inside else None


def _peak_hz(psd: tuple[np.ndarray, np.ndarray], band: tuple[float, float]) -> float | None:
    f, p = psd
    where = (f >= band[0]) & (f <= band[1])
    if not np.any(where):
        return None
    return float(f[where][np.argmax(p[where])])
