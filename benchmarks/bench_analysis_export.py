"""Benchmark: analyse and export a 2-hour session with ECG, against neurokit2's stock pipeline on the same data.

Run:  python benchmarks/bench_analysis_export.py [--hours 2] [--seed 1] [--day-hours 24]

A 2-hour session is generated straight into a temporary store (beats from `devices.physiology.BeatModel`, ECG at
130 Hz from `devices.ecg_synth`, protocol phase markers), without running the live loop. Then it times:

* R-peak detection on the stored ECG (`neurokit2.ecg_peaks` alone, and our ECG beats: time map, neurokit2
  cleaning and peaks per stretch, sub-sample refinement, `biofeedback.analysis.ecg_beats.ecg_beats`), and the
  per-phase agreement of ECG and strap beats (`ecg_beats.session_agreement`),
* our artifact correction + per-phase HRV with every index (`biofeedback.analysis.analyze.analyze_session`: time and
  frequency domain, SD1/SD2, DFA α1, sample entropy, stress index, LF/HF nu, coherence ratio and index, and the
  ECG agreement), and the further indices alone (`biofeedback.analysis.indices.phase_indices`),
* BIDS and EDF+ export (`recordings.export_bids`, `recordings.export_edf`),
* the report (`biofeedback.analysis.report.render_report`),

and compares with neurokit2's stock `ecg_process` + `hrv` on the same ECG (whole recording, and once per phase).

Then a 24-hour RR series (`--day-hours`; RSA, Mayer wave, 1/f-like drift, a day-night trend, 0.3 % ectopic and
0.2 % missed beats; numpy, no live loop) is stored with one phase per hour and analysed per phase with
`analyze_session` (target: under 10 s for the 24 phases), and in the same run with neurokit2's `hrv()` on each
phase's beats (`--stock-phases K`: only the first K, extrapolated to all, since its nonlinear indices take about
two CPU minutes per hour of beats); the ratio is printed, in wall and CPU time (the process's own, which a loaded
machine does not inflate as much). Nothing is asserted (this is not a test).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import neurokit2 as nk

from biofeedback.analysis.analyze import analyze_session
from biofeedback.analysis.ecg_beats import ecg_beats, session_agreement
from biofeedback.analysis.hrv import corrected_beats, gap_free_runs
from biofeedback.analysis.indices import phase_indices
from biofeedback.analysis.report import render_report
from devices.ecg_synth import ecg_samples
from devices.physiology import BeatModel, GuideSegment, PacerSetting, ScheduledGuide, SimParticipant
from protocols.model import Pacer, Phase, PhaseKind, Protocol
from recordings.export_bids import export_bids
from recordings.export_edf import export_edf
from recordings.protocol_json import protocol_to_dict
from recordings.store import Store

FS = 130.0
FRAME = 73
CPU: dict[str, float] = {}
"""CPU seconds of each timed step (the process's own; on a shared, loaded machine wall time overstates it)."""


def long_protocol(hours: float) -> Protocol:
    """Baseline, then blocks of paced breathing / imagery / recall / recovery until `hours` are filled."""
    block = [
        ("breathing", PhaseKind.BREATHING, 600.0, Pacer(6.0)),
        ("imagery", PhaseKind.IMAGERY, 600.0, None),
        ("recall", PhaseKind.RECALL, 300.0, None),
        ("recovery", PhaseKind.RECOVERY, 300.0, None),
    ]
    phases = [Phase("baseline", PhaseKind.REST, 600.0)]
    total, k = 600.0, 0
    while total < hours * 3600 - 1:
        name, kind, dur, pacer = block[k % len(block)]
        dur = min(dur, hours * 3600 - total)
        phases.append(Phase(f"{name}-{k // len(block) + 1}", kind, dur, pacer=pacer))
        total += dur
        k += 1
    return Protocol("bench-long", "benchmark protocol", tuple(phases))


def generate(store: Store, protocol: Protocol, seed: int) -> int:
    starts = protocol.phase_starts_s
    guide = ScheduledGuide(tuple(
        GuideSegment(s, ph.kind.value, None if ph.pacer is None else PacerSetting(ph.pacer.rate_bpm, 2 / 3))
        for s, ph in zip(starts, protocol.phases, strict=True)
    ))  # fmt: skip
    model = BeatModel(SimParticipant(seed=seed, ectopic_rate=0.003, missed_beat_rate=0.002))
    end = protocol.total_duration_s
    beats, true_t, t = [], [], 0.0
    while t < end:
        b = model.next_beat(t, guide)
        if b.undetected_t is not None:
            true_t.append(b.undetected_t)
        true_t.append(b.t_beat)
        beats.append((b.t_beat, b.rr_ms))
        t = b.t_beat
    sid = store.create_session("P01", protocol.name, protocol_to_dict(protocol), "bench-sim", source="imported")
    store.add_beats(sid, [(bt, rr, i == 0, 0.0, None) for i, (bt, rr) in enumerate(beats) if bt < end])
    for i, (s, ph) in enumerate(zip(starts, protocol.phases, strict=True)):
        pacer = None if ph.pacer is None else ph.pacer.rate_bpm
        detail = {"kind": ph.kind.value, "feedback": "live", "pacer_bpm": pacer}
        store.add_marker(sid, s, "phase_start", ph.name, phase_index=i, phase_name=ph.name, detail=detail)
        store.add_marker(sid, s + ph.duration_s, "phase_end", ph.name, phase_index=i, phase_name=ph.name,
                         detail={"ended": "completed"})  # fmt: skip
    ecg = ecg_samples(true_t, 0.0, end, fs=FS, seed=seed)
    n_frames = len(ecg) // FRAME
    device0 = 600_000_000_000_000_000
    for k in range(n_frames):
        last = (k + 1) * FRAME - 1
        store.add_ecg_chunk(sid, last / FS + 0.02, device0 + round(last * 1e9 / FS), FS,
                            ecg[k * FRAME : (k + 1) * FRAME], None)  # fmt: skip
    store.end_session(sid, "imported")
    store.flush()
    return sid


def day_rr_series(hours: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Beat times (s) and RR (ms) of `hours` of sinus rhythm with ectopic and missed beats (numpy, vectorised)."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / 0.8) + 1000
    t_guess = np.arange(n) * 0.8
    day = 60.0 * np.cos(2 * np.pi * t_guess / 86400.0)  # slower at night
    walk = np.cumsum(rng.normal(0, 2.0, n))
    walk -= np.convolve(walk, np.ones(301) / 301, mode="same")  # drift without leaving the physiological range
    rr = (820 + day + walk + 35 * np.sin(2 * np.pi * 0.25 * t_guess) + 15 * np.sin(2 * np.pi * 0.1 * t_guess)
          + rng.normal(0, 8, n))  # fmt: skip
    ectopic = np.flatnonzero(rng.uniform(size=n - 1) < 0.003)
    rr[ectopic + 1] += 0.35 * rr[ectopic]  # compensatory pause after the premature beat
    rr[ectopic] *= 0.65
    missed = np.flatnonzero(rng.uniform(size=n - 1) < 0.002)
    rr[missed + 1] += rr[missed]
    rr = np.delete(rr, missed)
    t = np.cumsum(rr) / 1000.0
    keep = t < hours * 3600
    return t[keep], rr[keep]


def day_benchmark(hours: float, seed: int, root: Path, r: dict[str, float], stock_phases: int) -> None:
    store = Store(root / "day.sqlite")
    t, rr = timed(f"generate {hours:g} h RR series", lambda: day_rr_series(hours, seed), r)
    sid = store.create_session("P01", "day", {"name": "day"}, "bench-sim", source="imported")
    store.add_beats(sid, [(float(bt), float(v), i == 0, 0.0, None) for i, (bt, v) in enumerate(zip(t, rr,
                                                                                                   strict=True))])
    n_phases = int(np.ceil(hours))
    for i in range(n_phases):
        detail = {"kind": "rest", "feedback": "live", "pacer_bpm": None}
        store.add_marker(sid, i * 3600.0, "phase_start", f"hour-{i + 1}", phase_index=i, phase_name=f"hour-{i + 1}",
                         detail=detail)  # fmt: skip
        store.add_marker(sid, min((i + 1) * 3600.0, hours * 3600), "phase_end", f"hour-{i + 1}", phase_index=i,
                         phase_name=f"hour-{i + 1}", detail={"ended": "completed"})  # fmt: skip
    store.end_session(sid, "imported")
    store.flush()
    print(f"  ({len(t)} beats, {n_phases} hour-long phases)")
    analysis = timed(f"ours: analyze_session, {n_phases} phases", lambda: analyze_session(store, sid), r)
    missing = sum(getattr(p, k) is None for p in analysis.phases for k in ("rmssd_ms", "lf_ms2", "dfa_alpha1",
                                                                          "sample_entropy", "coherence_ratio"))
    print(f"  (indices missing over all phases: {missing})")
    peaks = np.round(t * 1000).astype(int)
    selected = [peaks[(t >= w.start_s) & (t < w.end_s)] for w in analysis.windows]

    def time_and_frequency():
        for sel in selected:
            nk.hrv_time(sel, sampling_rate=1000)
            nk.hrv_frequency(sel, sampling_rate=1000)

    timed(f"neurokit2: hrv_time + hrv_frequency, {n_phases} phases", time_and_frequency, r)
    k = min(stock_phases, n_phases)
    label = f"neurokit2: hrv() per phase, {k} of {n_phases} phases"

    def stock():
        for sel in selected[:k]:
            nk.hrv(sel, sampling_rate=1000)

    timed(label, stock, r)
    store.close()
    ours = f"ours: analyze_session, {n_phases} phases"
    scale = n_phases / k
    theirs, theirs_cpu = r[label] * scale, CPU[label] * scale
    verdict = "under" if r[ours] < 10.0 else "OVER"
    print(f"{hours:g} h per hour-long phase: ours {r[ours]:.2f} s wall ({verdict} the 10 s target), "
          f"CPU {CPU[ours]:.2f} s")
    print(f"  neurokit2 hrv() for the {n_phases} phases{'' if k == n_phases else f' (extrapolated from {k})'}: "
          f"{theirs:.0f} s wall, CPU {theirs_cpu:.0f} s; ratio neurokit2 / ours = {theirs / r[ours]:.0f}x wall, "
          f"{theirs_cpu / CPU[ours]:.0f}x CPU")  # fmt: skip
    tf = f"neurokit2: hrv_time + hrv_frequency, {n_phases} phases"
    print(f"  neurokit2 time + frequency domain alone: {r[tf]:.2f} s (ours adds correction and every index)")


def timed(label: str, fn, results: dict[str, float]):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    results[label] = time.perf_counter() - t0
    CPU[label] = time.process_time() - c0
    print(f"  {label:<44} {results[label]:8.2f} s  (CPU {CPU[label]:.2f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--day-hours", type=float, default=24.0, help="length of the RR-only day series (0: skip)")
    ap.add_argument("--stock-phases", type=int, default=24,
                    help="hour-long phases given to neurokit2 hrv() (about 2 CPU minutes each: its nonlinear "
                    "indices); the rest is extrapolated")  # fmt: skip
    args = ap.parse_args()
    protocol = long_protocol(args.hours)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store(root / "bench.sqlite")
        r: dict[str, float] = {}
        print(f"{args.hours:g} h session, {len(protocol.phases)} phases")
        sid = timed("generate session (beats + ECG into the store)", lambda: generate(store, protocol, args.seed), r)
        ecg = timed("read ECG from the store",
                    lambda: np.concatenate([s for *_x, s in store.ecg_chunks(sid)]).astype(float), r)  # fmt: skip
        print(f"  ({len(ecg)} ECG samples, {len(store.beats(sid).t)} beats)")
        print("ours:")
        timed("R-peak detection (nk.ecg_peaks)", lambda: nk.ecg_peaks(ecg, sampling_rate=FS), r)
        found = timed("ECG beats (map, clean, peaks, sub-sample)", lambda: ecg_beats(store, sid), r)
        print(f"  ({len(found.t)} ECG beats at {found.fs_hz:.3f} Hz)")
        analysis = timed("correction + per-phase HRV (analyze_session)", lambda: analyze_session(store, sid), r)
        spans = [(w.name, w.start_s, w.end_s) for w in analysis.windows]
        agree = timed("ECG/strap agreement (session_agreement)", lambda: session_agreement(store, sid, spans), r)
        worst = max((a.median_abs_drr_ms for a in agree if a.median_abs_drr_ms is not None), default=None)
        print(f"  (largest per-phase median |ΔRR| {worst if worst is None else f'{worst:.2f}'} ms)")
        beats = store.beats(sid)
        tl = corrected_beats(beats.t, beats.rr_ms, "kubios", beats.gap_before)

        def indices_only():
            for w in analysis.windows:
                runs = gap_free_runs(tl, w.start_s, w.end_s)
                phase_indices([(tl.t[x], tl.rr[x]) for x in runs], w.end_s - w.start_s, None, None)

        timed("further indices alone (phase_indices)", indices_only, r)
        timed("BIDS export", lambda: export_bids(store, root / "bids", [sid]), r)
        try:
            timed("EDF+ export", lambda: export_edf(store, sid, root / "s.edf"), r)
        except ValueError as exc:  # reported, so that the rest of the comparison still runs
            print(f"  EDF+ export FAILED: {exc}")
            r["EDF+ export"] = float("nan")
        timed("HTML report (render_report)", lambda: render_report(store, sid), r)
        print("neurokit2 stock:")
        signals, _info = timed("nk.ecg_process", lambda: nk.ecg_process(ecg, sampling_rate=FS), r)
        peaks = np.flatnonzero(signals["ECG_R_Peaks"].to_numpy())
        timed("nk.hrv (whole recording)", lambda: nk.hrv(peaks, sampling_rate=FS), r)

        def per_phase():
            for w in analysis.windows:
                sel = peaks[(peaks >= w.start_s * FS) & (peaks < w.end_s * FS)]
                nk.hrv(sel, sampling_rate=FS)

        timed("nk.hrv per phase", per_phase, r)
        store.close()
    ours = r["R-peak detection (nk.ecg_peaks)"] + r["correction + per-phase HRV (analyze_session)"]
    stock = r["nk.ecg_process"] + r["nk.hrv per phase"]
    exports = r["BIDS export"] + r["EDF+ export"]
    print(f"ours: peaks + correction + per-phase HRV = {ours:.2f} s (+ exports {exports:.2f} s)")
    print(f"stock: ecg_process + per-phase hrv = {stock:.2f} s; whole-recording hrv alone "
          f"{r['nk.hrv (whole recording)']:.2f} s")  # fmt: skip
    print(f"ratio stock / ours = {stock / ours:.1f}x; stock / (ours + exports) = {stock / (ours + exports):.1f}x")
    if args.day_hours > 0:
        print(f"{args.day_hours:g} h RR series:")
        with tempfile.TemporaryDirectory() as tmp:
            day_benchmark(args.day_hours, args.seed, Path(tmp), r, args.stock_phases)


if __name__ == "__main__":
    main()
