"""EDF+ export of one session (with edfio): ECG in µV, the RR series, and an annotation for every event.

Choices:

- Time 0 of the file is the session clock's 0; the EDF start date/time is the session's UTC start.
- Data records last about one second: a whole number of ECG samples (e.g. 130 samples = 0.998771 s at the strap's
  measured 130.16 Hz), or exactly 1 s without ECG; a record holds a few hundred bytes, far below the 61,440 the
  specification allows.
- Labels carry the signal type as the EDF+ standard texts do, so MNE (`read_raw_edf(..., infer_types=True)`) types
  them: `ECG chest` (type ecg, µV) and `MISC RR` (type misc, ms).
- `ECG chest` holds the stored samples unchanged, on the drift-corrected session clock (`ecg_time`); its sampling
  frequency is the *estimated true* rate (e.g. 130.16 Hz for an H10, not the nominal 130).
- `MISC RR` is the strap's RR interval in progress (step function of the beats) at the ECG's rate, so no reader
  resamples one channel to the other's rate; without ECG it is at 4 Hz (25 Hz when there is a `Resp chest`).
- `Resp chest` (type resp, m/s²), when the strap's accelerometer was recorded: the chest-movement breathing waveform
  (`recordings.breathing`: principal movement axis, band-pass 0.05-0.7 Hz, sign arbitrary) evaluated on the same
  sample grid as the other channels (the ECG's rate, else 25 Hz in records of exactly 1 s); a `Resp gap` annotation
  marks where the accelerometer was lost.
- No data (before the first sample, lost frames, no beat covering the time, the padding after the end) is the
  channel's *physical minimum* (its digital minimum −32768), a value no stored sample takes: for ECG −B µV where B
  lies above the recording's largest |sample|, for RR −1 ms. Each such stretch is also an `ECG gap` / `RR gap`
  annotation with its duration. A reader masks `value == physical minimum`.
- The recording extends past the last sample to cover every annotation (a marker after the strap stopped, the
  session end), so no reader drops one for lying outside the data.
- Beats are not annotated one by one (thousands of annotations swamp EDF viewers); they are exact in BIDS, CSV and
  Kubios exports, and the RR channel carries them here.
- Annotations: `phase_start: <phase>`, `phase_end: <phase>` (and a `phase: <phase>` with the phase's duration),
  every marker as `<kind>: <label>`, link events and gaps, and each sample of a marker stream recorded with
  `--lsl-in` as `<stream name>: <marker>`. Manual marker labels and notes only with `include_text`; the patient field
  holds the pseudonymous ID only.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording

from .breathing import MG_TO_M_S2, WAVEFORM_FS_HZ, breathing_waveform
from .ecg_time import map_ecg_chunks
from .files import open_private_for_write
from .rr_series import RR_SERIES_FS_HZ, rr_step_series
from .store import Beats, Store

ECG_LABEL = "ECG chest"
RR_LABEL = "MISC RR"
RESP_LABEL = "Resp chest"
RR_NO_DATA_MS = -1.0
"""RR value (the channel's physical minimum) where no beat covers the time."""
MAX_RECORD_BYTES = 61_440
"""The EDF specification's upper limit for one data record."""


class EdfExportError(ValueError):
    """A session that cannot be written as EDF+ (nothing to export)."""


def _header_duration(seconds: float) -> float:
    """`seconds` rounded to what the 8-character EDF header field holds."""
    decimals = max(0, 7 - len(str(int(seconds))))
    return round(seconds, decimals)


def _rate_for(n: int, duration: float) -> float:
    """A sampling rate whose `n` samples last `duration` as edfio checks it (to 12 decimals, equal for all signals)."""
    fs = n / duration
    for _ in range(256):
        if round(n / fs, 12) == round(duration, 12):
            return fs
        fs = float(np.nextafter(fs, np.inf if n / fs > duration else -np.inf))
    raise EdfExportError(f"no sampling rate gives {n} samples in exactly {duration} s")


def record_layout(fs_hz: float) -> tuple[float, int, float]:
    """(record duration, samples per record, rate as written) for a signal at `fs_hz`: the whole number of samples
    nearest one second, or a neighbour if the header's 8-character duration would move the rate by > 1 ppm."""
    centre = max(1, round(fs_hz))
    best = None
    for n in sorted(range(max(1, centre - 3), centre + 4), key=lambda k: abs(k - centre)):
        duration = _header_duration(n / fs_hz)
        try:
            fs = _rate_for(n, duration)
        except EdfExportError:
            continue
        err = abs(fs / fs_hz - 1.0)
        if err <= 1e-6:
            return duration, n, fs
        if best is None or err < best[0]:
            best = (err, duration, n, fs)
    if best is None:
        raise EdfExportError(f"no EDF data record of whole samples fits a rate of {fs_hz} Hz")
    return best[1], best[2], best[3]


def _ascii_label(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def edf_annotations(store: Store, session_id: int, include_text: bool) -> list[EdfAnnotation]:
    """Every phase boundary, phase span, marker and link event of a session as EDF+ annotations (onset s)."""
    out: list[EdfAnnotation] = []
    starts = {}
    for mk in store.markers(session_id):
        if mk.kind == "phase_start":
            starts[mk.phase_index] = mk
            out.append(EdfAnnotation(mk.t, None, f"phase_start: {mk.phase_name or mk.label}"))
        elif mk.kind == "phase_end":
            out.append(EdfAnnotation(mk.t, None, f"phase_end: {mk.phase_name or mk.label}"))
            st = starts.pop(mk.phase_index, None)
            if st is not None:
                out.append(EdfAnnotation(st.t, mk.t - st.t, f"phase: {mk.phase_name or mk.label}"))
        elif mk.kind == "manual":
            out.append(EdfAnnotation(mk.t, None, f"manual: {_ascii_label(mk.label)}" if include_text else "manual"))
        else:
            out.append(EdfAnnotation(mk.t, None, f"{mk.kind}: {_ascii_label(mk.label)}"))
    for t, _dev, state, _reason in store.link_events(session_id):
        out.append(EdfAnnotation(t, None, f"link {state}"))
    if include_text:
        for t, text in store.notes(session_id):
            out.append(EdfAnnotation(t, None, f"note: {_ascii_label(text)}"))
    for stream in store.lsl_streams(session_id):  # marker streams recorded with --lsl-in (e.g. PsychoPy)
        samples = store.lsl_samples(stream)
        for t, values in zip(samples.t, samples.values, strict=True):
            if values and isinstance(values[0], str):
                out.append(EdfAnnotation(float(t), None, f"{_ascii_label(stream.name)}: {_ascii_label(values[0])}"))
    return out


def _gap_annotations(values: np.ndarray, fs: float, label: str) -> list[EdfAnnotation]:
    missing = np.isnan(values).astype(np.int8)
    edges = np.diff(np.concatenate([[0], missing, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [EdfAnnotation(s / fs, (e - s) / fs, label) for s, e in zip(starts, ends, strict=True)]


def _fit(values: np.ndarray, n: int) -> np.ndarray:
    """`values` cut or padded with NaN (no data) to `n` samples."""
    return np.concatenate([values[:n], np.full(max(0, n - len(values)), np.nan)])


def export_edf(
    store: Store, session_id: int, path: Path, *, include_text: bool = False, overwrite: bool = False,
    beats: Beats | None = None,
) -> Path:
    """Write the session as an EDF+ file at `path`; returns the path. `beats`: the beats for the RR channel
    (default the stored beats)."""
    info = store.session(session_id)
    beats = store.beats(session_id) if beats is None else beats
    chunks = store.ecg_chunks(session_id)
    acc_chunks = store.acc_chunks(session_id)
    acc = map_ecg_chunks(acc_chunks) if acc_chunks else None
    if not chunks and not len(beats.t) and acc is None:
        raise EdfExportError(f"session {session_id} has neither ECG nor beats (nor ACC): nothing to put in an EDF file")
    annotations = edf_annotations(store, session_id, include_text)
    if beats.source:  # which beats the RR channel holds (`--beats`)
        annotations.append(EdfAnnotation(0.0, None, _ascii_label(f"beats: {beats.source}")))
    ecg = None
    start = datetime.fromisoformat(info.started_utc)
    shift = 0  # samples from the file's start to the session's
    if chunks:
        tl = map_ecg_chunks(chunks)
        t0, grid = tl.regular_grid()
        duration, per_record, fs = record_layout(tl.fs_hz)
        if start.microsecond and duration != 1.0:
            # EDFlib (pyedflib, EDFbrowser) refuses the record time stamps edfio writes after a fractional start
            # when records are not whole seconds: the file starts at the whole second before the session, and every
            # signal and annotation is led by the same whole number of samples (the wall-clock start of the
            # session in the file is then exact to half a sample; everything inside the file stays aligned)
            shift = round(start.microsecond / 1e6 * fs)
            start = start.replace(microsecond=0)
        lead = shift + max(0, round(t0 * fs))  # samples from the file's start to the first ECG sample
        ecg = np.concatenate([np.full(lead, np.nan), grid])
        data_end = len(ecg) / fs
    else:
        rate = WAVEFORM_FS_HZ if acc is not None else RR_SERIES_FS_HZ
        duration, per_record, fs = 1.0, int(rate), rate
        data_end = 0.0
    lead_s = shift / fs
    annotations = [EdfAnnotation(a.onset + lead_s, a.duration, a.text) for a in annotations] if shift else annotations
    if acc is not None:
        data_end = max(data_end, float(acc.t[-1]) + lead_s)
    if len(beats.t):
        data_end = max(data_end, float(beats.t[-1]) + lead_s)
    ann_end = max((a.onset + (a.duration or 0.0) for a in annotations), default=0.0)
    n_records = math.floor(max(data_end, ann_end) / duration + 1e-9) + 1  # the last annotation lies inside
    n = n_records * per_record
    signals = []
    if ecg is not None:
        ecg = _fit(ecg, n)
        annotations += _gap_annotations(ecg, fs, "ECG gap")
        present = ecg[~np.isnan(ecg)]
        peak = float(np.max(np.abs(present))) if len(present) else 0.0
        bound = max(1000.0, math.ceil((peak + 1.0) / 1000.0) * 1000.0)  # > peak: −bound is never a sample
        signals.append(
            EdfSignal(
                np.nan_to_num(ecg, nan=-bound),
                fs,
                label=ECG_LABEL,
                transducer_type="Polar H10 chest strap" if "h10" in info.device.lower() else info.device[:80],
                physical_dimension="uV",
                physical_range=(-bound, bound),
                prefiltering=f"drift {tl.drift_ppm:+.1f} ppm corrected; no data = physical minimum",
            )
        )
    if len(beats.t):
        _, rr = rr_step_series(beats.t, beats.rr_ms, fs, start=0.0)
        rr = _fit(np.concatenate([np.full(shift, np.nan), rr]), n)
        annotations += _gap_annotations(rr, fs, "RR gap")
        top = max(3000.0, math.ceil(float(np.nanmax(rr)) / 1000.0) * 1000.0)
        signals.append(
            EdfSignal(
                np.nan_to_num(rr, nan=RR_NO_DATA_MS), fs, label=RR_LABEL, physical_dimension="ms",
                physical_range=(RR_NO_DATA_MS, top), transducer_type="strap RR intervals",
                prefiltering="step function of the beats; no data = physical minimum (-1 ms)",
            )
        )  # fmt: skip
    if acc is not None:
        resp = breathing_waveform(acc, fs, start_s=-lead_s, n=n).values * MG_TO_M_S2
        annotations += _gap_annotations(resp, fs, "Resp gap")
        present = resp[~np.isnan(resp)]
        peak = float(np.max(np.abs(present))) if len(present) else 0.0
        bound = max(0.01, math.ceil(1.1 * peak / 0.01) * 0.01)  # > peak: −bound is never a sample
        signals.append(
            EdfSignal(
                np.nan_to_num(resp, nan=-bound), fs, label=RESP_LABEL, physical_dimension="m/s^2",
                physical_range=(-bound, bound), transducer_type="chest strap accelerometer",
                prefiltering="HP:0.05Hz LP:0.7Hz principal axis; no data = physical minimum",
            )
        )  # fmt: skip
    edf = Edf(
        signals,
        patient=Patient(code=re.sub(r"\s", "_", info.participant_id)),
        recording=Recording(startdate=start.date(), equipment_code=re.sub(r"\s", "_", info.device) or "X"),
        starttime=start.time().replace(tzinfo=None),
        data_record_duration=duration,
        annotations=sorted(annotations, key=lambda a: a.onset),
    )
    path = Path(path)
    with open_private_for_write(path, overwrite=overwrite, binary=True) as fh:
        edf.write(fh)
    return path
