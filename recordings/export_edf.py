"""EDF+ export of one session (with edfio): ECG in µV, the RR series, and an annotation for every event.

Choices:

- Time 0 of the file is the session clock's 0; the EDF start date/time is the session's UTC start.
- `ECG` (µV) holds the stored samples unchanged, on the drift-corrected session clock (`ecg_time`); its sampling
  frequency is the *estimated true* rate (e.g. 130.16 Hz for an H10, not the nominal 130). Because EDF needs a whole
  number of samples per data record, the file is written as a single data record. Before the first sample and where
  ECG was lost the channel is 0 µV and an `ECG gap` annotation with a duration says so.
- `RR` (ms, 4 Hz) is the strap's RR interval in progress (step function of the beats), 0 where no beat covers the
  time (with an `RR gap` annotation). Sessions without ECG are exported with the RR channel alone, not refused.
- Beats are not annotated one by one (thousands of annotations swamp EDF viewers); they are exact in BIDS, CSV and
  Kubios exports, and the RR channel carries them here.
- Annotations: `phase_start: <phase>`, `phase_end: <phase>` (and a `phase: <phase>` with the phase's duration),
  every marker as `<kind>: <label>`, link events and gaps. Manual marker labels and notes only with `include_text`;
  the patient field holds the pseudonymous ID only.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording

from .ecg_time import map_ecg_chunks
from .files import open_private_for_write
from .rr_series import RR_SERIES_FS_HZ, rr_step_series
from .store import Store


class EdfExportError(ValueError):
    """A session that cannot be written as EDF+ (nothing to export)."""


def _record_duration(seconds: float) -> float:
    """The longest duration ≤ `seconds` that the 8-character EDF header field holds exactly."""
    for decimals in range(6, -1, -1):
        text = f"{math.floor(seconds * 10**decimals) / 10**decimals:.{decimals}f}"
        if len(text) <= 8:
            return float(text)
    raise EdfExportError(f"a recording of {seconds:.0f} s is too long for one EDF data record")


def _fit_record(duration: float, rates_hz: list[float]) -> tuple[float, list[int], list[float]]:
    """The longest record ≤ `duration` (as the header writes it) in which every signal's sample count and rate agree
    on its length as edfio checks it; returns (duration, sample counts, rates)."""
    decimals = max(0, 7 - len(str(int(duration))))  # the header field holds 8 characters
    step = 10.0**-decimals
    for k in range(1000):
        d = round(duration - k * step, decimals)
        counts = [max(1, round(d * r)) for r in rates_hz]
        try:
            return d, counts, [_rate_for(n, d) for n in counts]
        except EdfExportError:
            continue
    raise EdfExportError(f"no EDF record length near {duration} s fits sampling rates {rates_hz}")


def _rate_for(n: int, duration: float) -> float:
    """A sampling rate whose `n` samples last `duration` as edfio checks it (to 12 decimals, equal for all signals)."""
    fs = n / duration
    for _ in range(256):
        if round(n / fs, 12) == round(duration, 12):
            return fs
        fs = float(np.nextafter(fs, np.inf if n / fs > duration else -np.inf))
    raise EdfExportError(f"no sampling rate gives {n} samples in exactly {duration} s")


def _physical_range(values: np.ndarray) -> tuple[float, float]:
    peak = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
    bound = max(1000.0, math.ceil(peak / 1000.0) * 1000.0)
    return -bound, bound


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
    return out


def _gap_annotations(values: np.ndarray, fs: float, label: str) -> list[EdfAnnotation]:
    missing = np.isnan(values).astype(np.int8)
    edges = np.diff(np.concatenate([[0], missing, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [EdfAnnotation(s / fs, (e - s) / fs, label) for s, e in zip(starts, ends, strict=True)]


def export_edf(
    store: Store, session_id: int, path: Path, *, include_text: bool = False, overwrite: bool = False
) -> Path:
    """Write the session as an EDF+ file at `path`; returns the path."""
    info = store.session(session_id)
    beats = store.beats(session_id)
    chunks = store.ecg_chunks(session_id)
    if not chunks and not len(beats.t):
        raise EdfExportError(f"session {session_id} has neither ECG nor beats: nothing to put in an EDF file")
    annotations = edf_annotations(store, session_id, include_text)
    signals = []
    ecg = None
    if chunks:
        tl = map_ecg_chunks(chunks)
        t0, grid = tl.regular_grid()
        lead = max(0, round(t0 * tl.fs_hz))  # samples from session start to the first ECG sample
        ecg = np.concatenate([np.full(lead, np.nan), grid])
        wanted, rates = _record_duration(len(ecg) / tl.fs_hz), [tl.fs_hz]
    else:
        end = float(beats.t[-1]) if len(beats.t) else 0.0
        wanted, rates = _record_duration(math.ceil(end * RR_SERIES_FS_HZ + 1) / RR_SERIES_FS_HZ), []
    if len(beats.t):
        rates.append(RR_SERIES_FS_HZ)
    duration, counts, fitted = _fit_record(wanted, rates)
    if ecg is not None:
        ecg, fs_ecg = ecg[: counts[0]], fitted[0]
        ecg = np.concatenate([ecg, np.full(counts[0] - len(ecg), np.nan)])
        annotations += _gap_annotations(ecg, fs_ecg, "ECG gap")
        signals.append(
            EdfSignal(
                np.nan_to_num(ecg, nan=0.0),
                fs_ecg,
                label="ECG",
                transducer_type="Polar H10 chest strap" if "h10" in info.device.lower() else info.device[:80],
                physical_dimension="uV",
                physical_range=_physical_range(ecg),
                prefiltering=f"drift {tl.drift_ppm:+.1f} ppm corrected",
            )
        )
    if len(beats.t):
        n_rr, fs_rr = counts[-1], fitted[-1]
        _, rr = rr_step_series(beats.t, beats.rr_ms, fs_rr, start=0.0)
        rr = np.concatenate([rr, np.full(max(0, n_rr - len(rr)), np.nan)])[:n_rr]
        annotations += _gap_annotations(rr, fs_rr, "RR gap")
        signals.append(
            EdfSignal(
                np.nan_to_num(rr, nan=0.0), fs_rr, label="RR", physical_dimension="ms",
                physical_range=(0.0, 3000.0), transducer_type="strap RR intervals", prefiltering="step",
            )
        )  # fmt: skip
    start = datetime.fromisoformat(info.started_utc)
    edf = Edf(
        signals,
        patient=Patient(code=re.sub(r"\s", "_", info.participant_id)),
        recording=Recording(startdate=start.date(), equipment_code=re.sub(r"\s", "_", info.device) or "X"),
        starttime=start.time().replace(tzinfo=None),
        data_record_duration=duration,
        annotations=sorted((a for a in annotations if a.onset <= duration), key=lambda a: a.onset),
    )
    path = Path(path)
    with open_private_for_write(path, overwrite=overwrite, binary=True) as fh:
        edf.write(fh)
    return path
