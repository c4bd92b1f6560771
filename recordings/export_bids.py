"""BIDS export (raw dataset, BIDS 1.10 physio/physioevents in the `beh` datatype) of one or many sessions.

Layout, per session::

    sub-<label>/ses-<n>/beh/sub-<label>_ses-<n>_task-<protocol>_events.tsv + .json        phases and markers
    sub-<label>/ses-<n>/beh/..._recording-ecg_physio.tsv.gz + .json                       raw ECG (when recorded)
    sub-<label>/ses-<n>/beh/..._recording-ecg_physioevents.tsv.gz + .json                 beats (R times, RR ms)
    sub-<label>/ses-<n>/beh/..._recording-resp_physio.tsv.gz + .json                      breathing (when ACC recorded)

Choices (documented in the dataset's README as well):

- Time zero of every file is the session clock's zero (session start, `acq_time` in `sub-<label>_sessions.tsv`).
  Event onsets, the ECG `timestamp` column and beat onsets are all seconds on that clock; the ECG sidecar's
  `StartTime` is its first sample on it. ECG sample times come from `ecg_time` (strap clock drift corrected); a
  break in the ECG is a run of `n/a` rows, never interpolated.
- Participant labels are the store's pseudonymous ID with every character that is not a letter or digit removed
  (`P-01` → `P01`); two IDs that collapse to the same label are refused. `participants.tsv` keeps the store ID.
- `ses-<n>` is the store's session id. It never changes, so re-exporting into the same folder only adds sessions;
  a participant's sessions are therefore numbered with gaps, in the order they were recorded.
- Sessions already in the folder are left untouched (reported as kept) unless `overwrite=True`; `participants.tsv`
  and `sub-<label>_sessions.tsv` are merged with what is there, so earlier exports stay valid. A session folder is
  written as `.ses-<n>.partial` and renamed when complete; one found without all its files is redone, not kept.
- `trial_type` of a phase is its kind (`rest_phase`, `breathing_phase`, …; see `phase_kind`); other events carry
  the marker kind (`prompt`, `pause`, `manual`, …). Beats in `physioevents` have `duration` 0.
- `acq_time` is the recording's start: for live sessions the session start, for imports the start read from the
  file; imports whose file gives none (captures, plain RR files) have `n/a`, not the import time.
- A lab-level `dataset.toml` (`Name`, `Authors`, `License`, `Institution`, optional `Acknowledgements`,
  `HowToAcknowledge`, `Funding`, `EthicsApprovals`, `ReferencesAndLinks`, `DatasetDOI`, `Keywords`,
  `InstitutionAddress`, `InstitutionalDepartmentName`) fills dataset_description.json and the physio sidecars'
  institution fields; the command line reads `--dataset-info FILE`, else `dataset.toml` beside the store file.
  The strap's serial number (from a Polar name such as `Polar H10 8C4D2A21`) is the sidecars' `DeviceSerialNumber`.
- Only the pseudonymous ID leaves the store. Free-text notes and typed labels of manual markers are exported only
  with `include_text=True`; otherwise such a marker is exported as `manual` without its label (the monitor's fixed
  labels, see `privacy`, are kept).
- Streams recorded with `--lsl-in`: a numeric stream (skin conductance, a respiration belt …) is its own
  `..._recording-<stream name, letters and digits>_physio.tsv.gz` with a `timestamp` column (each sample's LSL stamp
  mapped onto the session clock, as received, never resampled) and one column per channel (labels and units from
  the stream's description when it has them). `SamplingFrequency` is the stream's nominal rate, or for an irregular
  stream (nominal rate 0) the mean rate measured over its samples, which the sidecar says (BIDS requires a number;
  the `timestamp` column holds the real times). `StartTime` is the first sample's session time. A marker stream
  (PsychoPy) goes into `events.tsv`: trial_type `lsl_marker`, the marker in `value`, the stream in `lsl_stream`.
- Sessions without ECG get `..._recording-rr_physio.tsv.gz`, the RR interval in progress sampled at 4 Hz (n/a
  where data were lost), with the beats as its `physioevents`: a BIDS `physioevents` file must belong to a `physio`
  file.
- Sessions with the strap's accelerometer get `..._recording-resp_physio.tsv.gz`: the chest-movement breathing waveform
  (`recordings.breathing`: principal movement axis, band-pass 0.05-0.7 Hz, 25 Hz) in the BIDS column `respiratory`,
  m/s², with a `timestamp` column on the session clock; rows where the accelerometer was lost are `n/a`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .breathing import BREATHING_BAND_HZ, MG_TO_M_S2, MIN_STRETCH_S, breathing_waveform
from .ecg_time import map_ecg_chunks
from .files import OutputExistsError, open_private_for_write, remove_stale
from .privacy import exportable_label, fixed_labels
from .rr_series import RR_SERIES_FS_HZ, rr_step_series
from .store import Beats, LslSamples, LslStream, Marker, SessionInfo, Store

BIDS_VERSION = "1.10.0"
GENERATOR = {"Name": "cmt-biofeedback", "Version": "0.1.0", "Description": "biofeedback session recorder"}
MANUFACTURER = "Polar Electro Oy"

PHASE_KINDS = {
    "rest": "Resting baseline",
    "breathing": "Soothing-rhythm (paced) breathing",
    "grounding": "Sensory grounding (attention to a held object or a safe place)",
    "imagery": "Compassionate imagery",
    "recall": "Recall of a self-critical or threat memory",
    "refocus": "Compassionate refocusing",
    "recovery": "Recovery after a task",
    "diary": "Diary or questionnaire",
    "meditation": "Compassionate meditation",
    "other": "Other",
}


def phase_trial_type(kind: Any) -> str:
    """A phase's trial_type names what the phase asks (`breathing_phase`); `phase` when its kind is unknown."""
    return f"{kind}_phase" if kind in PHASE_KINDS else "phase"


EVENT_LEVELS = {
    **{
        phase_trial_type(k): f"A protocol phase of kind {k!r} ({v.lower()}), from its start to its end (duration)"
        for k, v in PHASE_KINDS.items()
    },
    "phase": "A protocol phase of unknown kind, from its start to its end (duration)",
    "session_start": "The protocol started",
    "session_end": "The protocol ended (completed or stopped)",
    "prompt": "A scripted prompt was shown or spoken to the participant; `label` holds the protocol's text",
    "pause": "The experimenter paused the whole session",
    "resume": "The session resumed after a pause",
    "skip": "The rest of the phase was skipped",
    "stop": "The session was stopped early (recorded neutrally; not a failure)",
    "manual": "A marker set by the experimenter during the session",
    "participant": "The participant paused, continued or stopped their own display (the others went on)",
    "diary": "The participant sent or set aside the diary form (the answers themselves stay in the store)",
    "note": "A free-text note by the experimenter (exported only when asked for)",
    "disconnected": "The strap's link dropped; no data until the next `connected`",
    "connected": "The strap's link was (re-)established",
    "ecg_gap": "No ECG samples in this interval (duration); the physio file holds n/a rows",
    "lsl_marker": "A marker another program sent on a Lab Streaming Layer stream (e.g. PsychoPy); the marker is in "
    "`value`, the stream's name in `lsl_stream`",
}
_POINT_KINDS = {
    "session_start", "session_end", "prompt", "pause", "resume", "skip", "stop", "manual", "diary", "participant"
}


class BidsExportError(ValueError):
    """A BIDS export that cannot be done as asked (for example two IDs that map to one label)."""


def bids_label(participant_id: str) -> str:
    """Deterministic BIDS label: the pseudonymous ID without characters other than letters and digits."""
    label = re.sub(r"[^A-Za-z0-9]", "", participant_id)
    if not label:
        raise BidsExportError(f"participant ID {participant_id!r} has no letters or digits for a BIDS label")
    return label


def task_label(protocol_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", protocol_name) or "session"


@dataclass
class BidsExportResult:
    root: Path
    written: list[Path] = field(default_factory=list)
    exported_sessions: list[int] = field(default_factory=list)
    kept_sessions: list[int] = field(default_factory=list)
    redone_sessions: list[int] = field(default_factory=list)  # found incomplete (e.g. a killed export) and rewritten
    labels: dict[str, str] = field(default_factory=dict)  # store participant ID -> BIDS label


# -- small writers -------------------------------------------------------------------------------------------------


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _tsv_text(header: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write(path: Path, text: str, overwrite: bool, written: list[Path]) -> None:
    with open_private_for_write(path, overwrite=overwrite) as fh:
        fh.write(text)
    written.append(path)


def _write_gz(path: Path, text: str, overwrite: bool, written: list[Path]) -> None:
    with (
        open_private_for_write(path, overwrite=overwrite, binary=True) as fh,
        gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz,
    ):
        gz.write(text.encode("utf-8"))
    written.append(path)


def _num(value: float | None, spec: str = ".6f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "n/a"
    return str(value).replace("\t", " ").replace("\n", " ")


# -- events ------------------------------------------------------------------------------------------------------


def _event_rows(
    store: Store,
    session_id: int,
    markers: Sequence[Marker],
    ecg_gaps: Sequence[tuple[float, float]],
    text: bool,
    fixed: frozenset[str] = frozenset(),
) -> list[list[str]]:
    rows: list[tuple[float, list[str]]] = []
    starts: dict[int, Marker] = {}
    last_t = max([m.t for m in markers] + [0.0])
    for mk in markers:
        if mk.kind == "phase_start" and mk.phase_index is not None:
            starts[mk.phase_index] = mk
        elif mk.kind == "phase_end" and mk.phase_index in starts:
            st = starts.pop(mk.phase_index)
            rows.append((st.t, _phase_event(st, mk.t, mk.detail.get("ended", "completed"))))
        elif mk.kind in _POINT_KINDS:
            label = exportable_label(mk.kind, mk.label, fixed, text)
            rows.append((mk.t, [_num(mk.t), "0", mk.kind, "n/a", _cell(mk.phase_index), _cell(mk.phase_name),
                                "n/a", "n/a", "n/a", "n/a", _cell(label)]))  # fmt: skip
    for st in starts.values():  # a phase that never ended (interrupted session): up to the last marker
        rows.append((st.t, _phase_event(st, last_t, "interrupted")))
    for t, _dev, state, _reason in store.link_events(session_id):
        if state in ("disconnected", "connected"):
            rows.append((t, [_num(t), "0", state] + ["n/a"] * 8))
    for before, after in ecg_gaps:
        rows.append((before, [_num(before), _num(after - before), "ecg_gap"] + ["n/a"] * 8))
    if text:
        for t, note in store.notes(session_id):
            rows.append((t, [_num(t), "0", "note"] + ["n/a"] * 7 + [_cell(note)]))
    for stream, samples in lsl_marker_streams(store, session_id):
        for t, values in zip(samples.t.tolist(), samples.values, strict=True):
            rows.append((t, [_num(t), "0", "lsl_marker", _cell(values[0] if values else None)] + ["n/a"] * 7
                         + [_cell(stream.name)]))  # fmt: skip
    rows.sort(key=lambda r: r[0])
    return [r if len(r) == len(EVENT_COLUMNS) else [*r, "n/a"] for _, r in rows]


def _phase_event(start: Marker, end_t: float, ended: str) -> list[str]:
    d = start.detail
    return [
        _num(start.t),
        _num(end_t - start.t),
        phase_trial_type(d.get("kind")),
        "n/a",
        _cell(start.phase_index),
        _cell(start.phase_name),
        _cell(d.get("kind")),
        _cell(d.get("feedback")),
        _num(d.get("pacer_bpm"), "g") if d.get("pacer_bpm") is not None else "n/a",
        _cell(ended),
        "n/a",
    ]


EVENT_COLUMNS = ["onset", "duration", "trial_type", "value", "phase_index", "phase_name", "phase_kind", "feedback",
                 "pacer_bpm", "ended", "label", "lsl_stream"]  # fmt: skip


def _events_sidecar(task: str, text: bool, present: Sequence[str] | None = None) -> dict[str, Any]:
    """The events.json sidecar; `present` limits the trial_type levels to those in the file."""
    levels = {k: v for k, v in EVENT_LEVELS.items() if (text or k != "note") and (present is None or k in present)}
    return {
        "TaskName": task,
        "TaskDescription": f"Scripted biofeedback protocol {task!r}: phases and markers on the session clock",
        "onset": {"Description": "Time of the event on the session clock (0 = session start)", "Units": "s"},
        "duration": {"Description": "Duration of the event (0 for point events)", "Units": "s"},
        "trial_type": {"LongName": "Event type", "Description": "What happened", "Levels": levels},
        "value": {"Description": "The marker an LSL marker stream sent (trial_type lsl_marker); n/a otherwise"},
        "phase_index": {"Description": "0-based index of the protocol phase the event belongs to"},
        "phase_name": {"Description": "Name of the protocol phase"},
        "phase_kind": {"Description": "What the phase asks of the participant", "Levels": dict(PHASE_KINDS)},
        "feedback": {"Description": "What the participant display showed during the phase (protocol setting)"},
        "pacer_bpm": {"Description": "Breathing pacer rate during the phase", "Units": "1/min"},
        "ended": {"Description": "How the phase ended: completed, skipped or stopped"},
        "label": {
            "Description": "Prompt text of the protocol, or an experimenter marker/note (exported only when asked)"
        },
        "lsl_stream": {"Description": "Name of the LSL stream a lsl_marker came from (recorded with --lsl-in)"},
    }


# -- one session -------------------------------------------------------------------------------------------------


_POLAR_ID = re.compile(r"^Polar\s+\S+\s+([0-9A-Fa-f]{8})$")


def device_serial(device: str) -> str | None:
    """The strap's serial number when the device name carries it (Polar straps advertise `Polar H10 8C4D2A21`)."""
    m = _POLAR_ID.match(device.strip())
    return m.group(1).upper() if m else None


def _device_fields(info: SessionInfo, extra: dict[str, Any]) -> dict[str, Any]:
    serial = device_serial(info.device)
    return {**({"DeviceSerialNumber": serial} if serial else {}), **extra}


def _ecg_files(
    store: Store,
    info: SessionInfo,
    stem: str,
    dest: Path,
    overwrite: bool,
    written: list[Path],
    extra: dict[str, Any] | None = None,
):
    chunks = store.ecg_chunks(info.id)
    if not chunks:
        return None
    tl = map_ecg_chunks(chunks)
    t0, grid = tl.regular_grid()
    times = t0 + np.arange(len(grid)) / tl.fs_hz
    lines = [f"{t:.6f}\t{'n/a' if np.isnan(v) else int(v)}" for t, v in zip(times.tolist(), grid.tolist(), strict=True)]
    _write_gz(dest / f"{stem}_recording-ecg_physio.tsv.gz", "\n".join(lines) + "\n", overwrite, written)
    sidecar = {
        "TaskName": info.protocol_name,
        "SamplingFrequency": round(tl.fs_hz, 6),
        "StartTime": round(t0, 6),
        "Columns": ["timestamp", "ecg"],
        "PhysioType": "generic",
        "Manufacturer": MANUFACTURER if "polar" in info.device.lower() or "h10" in info.device.lower() else "n/a",
        "ManufacturersModelName": info.device,
        **_device_fields(info, extra or {}),
        "SoftwareVersions": GENERATOR["Version"],
        "RecordingType": "continuous",
        "timestamp": {
            "Description": "Sample time on the session clock (0 = session start): the strap's clock mapped with "
            "drift correction; rows where the ECG was lost have ecg n/a",
            "Units": "s",
        },
        "ecg": {
            "LongName": "Electrocardiogram",
            "Description": "Single-lead chest-strap ECG as sent by the strap",
            "Units": "uV",
        },
        "DeviceClock": {
            "NominalSamplingFrequency": tl.nominal_fs_hz,
            "DeviceSamplingFrequency": round(tl.fs_device_hz, 6),
            "DriftPpm": round(tl.drift_ppm, 3),
            "MedianTransportLatency": round(tl.median_latency_s, 4),
            "Segments": tl.n_segments,
        },
    }
    _write(dest / f"{stem}_recording-ecg_physio.json", _json_text(sidecar), overwrite, written)
    return tl


def _resp_files(
    store: Store, info: SessionInfo, stem: str, dest: Path, overwrite: bool, written: list[Path], extra: dict[str, Any]
) -> None:
    """With ACC: the chest-movement breathing waveform as `recording-resp` physio (column `respiratory`, m/s²)."""
    chunks = store.acc_chunks(info.id)
    if not chunks:
        return
    acc = map_ecg_chunks(chunks)
    wf = breathing_waveform(acc)
    lines = [f"{t:.6f}\t{_num(v * MG_TO_M_S2, '.7f')}" for t, v in zip(wf.t.tolist(), wf.values.tolist(), strict=True)]
    _write_gz(dest / f"{stem}_recording-resp_physio.tsv.gz", "\n".join(lines) + "\n", overwrite, written)
    lo, hi = BREATHING_BAND_HZ
    sidecar = {
        "TaskName": info.protocol_name,
        "SamplingFrequency": wf.fs_hz,
        "StartTime": round(wf.t0, 6),
        "Columns": ["timestamp", "respiratory"],
        "PhysioType": "generic",
        "Manufacturer": MANUFACTURER if "polar" in info.device.lower() or "h10" in info.device.lower() else "n/a",
        "ManufacturersModelName": info.device,
        **_device_fields(info, extra),
        "SoftwareVersions": GENERATOR["Version"],
        "RecordingType": "continuous",
        "timestamp": {"Description": "Sample time on the session clock (0 = session start)", "Units": "s"},
        "respiratory": {
            "LongName": "Respiration (chest movement)",
            "Description": "Breathing waveform from the chest strap's accelerometer: per gap-free stretch, each axis's "
            f"median removed, zero-phase 2nd-order Butterworth band-pass {lo:g}-{hi:g} Hz, projected onto the "
            "direction of largest band-passed variance (its sign is arbitrary: no inhale/exhale reference), "
            f"linearly resampled; n/a where the accelerometer was lost or a stretch was shorter than "
            f"{MIN_STRETCH_S:g} s",
            "Units": "m/s^2",
        },
        "DeviceClock": {
            "NominalSamplingFrequency": acc.nominal_fs_hz,
            "DeviceSamplingFrequency": round(acc.fs_device_hz, 6),
            "DriftPpm": round(acc.drift_ppm, 3),
            "Segments": acc.n_segments,
        },
    }
    _write(dest / f"{stem}_recording-resp_physio.json", _json_text(sidecar), overwrite, written)


def _beat_lines(beats) -> list[str]:
    return [
        f"{t:.6f}\t0\t{rr:.3f}\t{int(g)}"
        for t, rr, g in zip(beats.t.tolist(), beats.rr_ms.tolist(), beats.gap_before.tolist(), strict=True)
    ]


def _rr_files(
    info: SessionInfo,
    beats,
    stem: str,
    dest: Path,
    overwrite: bool,
    written: list[Path],
    extra: dict[str, Any] | None = None,
) -> None:
    """Without ECG: the beats as an RR series (physio, 4 Hz) with the beats themselves as its physioevents."""
    t0, values = rr_step_series(beats.t, beats.rr_ms, RR_SERIES_FS_HZ)
    times = t0 + np.arange(len(values)) / RR_SERIES_FS_HZ
    lines = [f"{t:.6f}\t{_num(v, '.3f')}" for t, v in zip(times.tolist(), values.tolist(), strict=True)]
    _write_gz(dest / f"{stem}_recording-rr_physio.tsv.gz", "\n".join(lines) + "\n", overwrite, written)
    sidecar = {
        "TaskName": info.protocol_name,
        "SamplingFrequency": RR_SERIES_FS_HZ,
        "StartTime": round(t0, 6),
        "Columns": ["timestamp", "rr"],
        "PhysioType": "generic",
        "ManufacturersModelName": info.device,
        **_device_fields(info, extra or {}),
        "SoftwareVersions": GENERATOR["Version"],
        "RecordingType": "continuous",
        "timestamp": {"Description": "Sample time on the session clock (0 = session start)", "Units": "s"},
        "rr": {
            "LongName": "RR interval in progress",
            "Description": "The strap's RR interval covering each sample time (a step function of the beats in "
            "the physioevents file); n/a where no beat interval covers the time (data lost)",
            "Units": "ms",
        },
    }
    _write(dest / f"{stem}_recording-rr_physio.json", _json_text(sidecar), overwrite, written)
    body = "\n".join(_beat_lines(beats)) + "\n"
    _write_gz(dest / f"{stem}_recording-rr_physioevents.tsv.gz", body, overwrite, written)
    beats_json = _json_text(_beats_sidecar("timestamp", info.protocol_name, beats.source))
    _write(dest / f"{stem}_recording-rr_physioevents.json", beats_json, overwrite, written)


def _beats_sidecar(onset_source: str, task: str, source: str = "") -> dict[str, Any]:
    what = f"Heart beats from {source}" if source else "Heart beats as reported by the strap"
    return {
        "TaskName": task,
        "Description": f"{what}: beat time and the RR interval ending at it",
        "Columns": ["onset", "duration", "rr", "gap_before"],
        "OnsetSource": onset_source,
        "onset": {"Description": "Beat time on the session clock (0 = session start)", "Units": "s"},
        "duration": {"Description": "Duration of the event: 0, a beat is a point in time", "Units": "s"},
        "rr": {"LongName": "RR interval", "Description": "Interval from the previous beat to this one", "Units": "ms"},
        "gap_before": {
            "Description": "1 if data were lost before this beat (the previous beat is not in the file)",
            "Levels": {"0": "continuous", "1": "after a gap"},
        },
    }


# -- streams recorded with --lsl-in --------------------------------------------------------------------------------

_RESERVED_RECORDINGS = {"ecg", "rr", "resp"}


def _is_marker_stream(stream: LslStream, samples: LslSamples) -> bool:
    return stream.type.lower() == "markers" or any(v and isinstance(v[0], str) for v in samples.values[:1])


def lsl_marker_streams(store: Store, session_id: int) -> list[tuple[LslStream, LslSamples]]:
    """The session's LSL marker streams (string samples, e.g. PsychoPy) with their samples."""
    out = []
    for stream in store.lsl_streams(session_id):
        samples = store.lsl_samples(stream)
        if len(samples.t) and _is_marker_stream(stream, samples):
            out.append((stream, samples))
    return out


def lsl_physio_streams(store: Store, session_id: int) -> list[tuple[LslStream, LslSamples, str]]:
    """The session's numeric LSL streams with at least two samples, each with its `recording-<label>`: the stream
    name's letters and digits (`ecg`, `rr`, `resp` and repeated labels get the stream's id appended)."""
    out: list[tuple[LslStream, LslSamples, str]] = []
    used = set(_RESERVED_RECORDINGS)
    for stream in store.lsl_streams(session_id):
        samples = store.lsl_samples(stream)
        if len(samples.t) < 2 or _is_marker_stream(stream, samples):
            continue
        label = re.sub(r"[^A-Za-z0-9]", "", stream.name) or f"lsl{stream.id}"
        if label.lower() in used:
            label = f"{label}{stream.id}"
        used.add(label.lower())
        out.append((stream, samples, label))
    return out


def lsl_channels(stream: LslStream) -> list[tuple[str, str, str]]:
    """(column name, unit, type) per channel from the stream's description (desc/channels/channel); the label
    falls back to ch1, ch2 … and the unit to "" when the sender gave none."""
    import xml.etree.ElementTree as ET

    found: list[tuple[str, str, str]] = []
    try:
        root = ET.fromstring(stream.info_xml)
        found = [((c.findtext("label") or "").strip(), (c.findtext("unit") or "").strip(),
                  (c.findtext("type") or "").strip()) for c in root.findall("./desc/channels/channel")]  # fmt: skip
    except ET.ParseError:
        pass
    if len(found) != stream.channel_count:
        found = [("", "", "")] * stream.channel_count
    labels = [lab for lab, _, _ in found]
    if not all(labels) or len(set(labels)) != len(labels) or "timestamp" in labels:
        labels = [f"ch{i + 1}" for i in range(stream.channel_count)]
    return [(lab, unit, kind) for lab, (_, unit, kind) in zip(labels, found, strict=True)]


def _desc_text(stream: LslStream, path: str) -> str | None:
    import xml.etree.ElementTree as ET

    try:
        text = ET.fromstring(stream.info_xml).findtext(path)
    except ET.ParseError:
        return None
    return text.strip() if text and text.strip() else None


def measured_rate(t: np.ndarray) -> float:
    """Mean sampling rate (Hz) over sample times `t` (at least two, increasing overall)."""
    span = float(t[-1] - t[0])
    return (len(t) - 1) / span if span > 0 else 0.0


def _lsl_physio_files(
    info: SessionInfo,
    stream: LslStream,
    samples: LslSamples,
    base: str,
    dest: Path,
    written: list[Path],
    extra: dict[str, Any],
) -> None:
    """One numeric LSL stream as a physio file pair (see the module docstring)."""
    channels = lsl_channels(stream)
    t = np.asarray(samples.t, dtype=float)
    lines = []
    for ti, values in zip(t.tolist(), samples.values, strict=True):
        cells = [_num(float(v) if isinstance(v, int | float) else None, ".9g") for v in values]
        lines.append("\t".join([f"{ti:.6f}", *cells]))
    _write_gz(dest / f"{base}_physio.tsv.gz", "\n".join(lines) + "\n", True, written)
    measured = measured_rate(t)
    nominal = float(stream.nominal_srate)
    if nominal > 0:  # per second of LSL time; the session clock runs `rate` times faster (1 but in simulations)
        rate = nominal / float(stream.rate or 1.0)
        rate_note = "the stream's nominal rate (its LSL description)"
        if stream.rate != 1.0:
            rate_note += f", per second of a session clock running ×{stream.rate:g}"
    else:
        rate = measured
        rate_note = ("the mean rate measured over the samples: the stream is irregular (LSL nominal rate 0), so the "
                     "timestamp column holds each sample's time")  # fmt: skip
    sidecar: dict[str, Any] = {
        "TaskName": info.protocol_name,
        "SamplingFrequency": round(rate, 6),
        "StartTime": round(float(t[0]), 6),
        "Columns": ["timestamp", *(c[0] for c in channels)],
        "PhysioType": "generic",
        "RecordingType": "continuous",
    }
    for key, path in (("Manufacturer", "./desc/acquisition/manufacturer"),
                      ("ManufacturersModelName", "./desc/acquisition/model")):  # fmt: skip
        if value := _desc_text(stream, path):
            sidecar[key] = value
    sidecar |= extra
    sidecar["timestamp"] = {
        "Description": "Sample time on the session clock (0 = session start): the sender's LSL time stamp mapped "
        "through the inlet's clock offset; samples as received, not resampled",
        "Units": "s",
    }
    for label, unit, kind in channels:
        col: dict[str, Any] = {"Description": f"Channel {label!r} of LSL stream {stream.name!r}"
                               + (f" (type {kind})" if kind else "")}  # fmt: skip
        if unit:
            col["Units"] = unit
        sidecar[label] = col
    sidecar["LslStream"] = {
        "Name": stream.name,
        "Type": stream.type,
        "SourceId": stream.source_id,
        "NominalSamplingFrequency": nominal,
        "MeasuredSamplingFrequency": round(measured, 6),
        "SamplingFrequencySource": rate_note,
    }
    _write(dest / f"{base}_physio.json", _json_text(sidecar), True, written)


def _expected_files(store: Store, info: SessionInfo, stem: str) -> set[str]:
    """The files a complete export of the session holds (to tell a complete session folder from a broken one)."""
    names = {f"{stem}_events.tsv", f"{stem}_events.json"}
    for _stream, _samples, label in lsl_physio_streams(store, info.id):
        names |= {f"{stem}_recording-{label}_physio.tsv.gz", f"{stem}_recording-{label}_physio.json"}
    counts = store.counts(info.id)
    if counts["acc_chunks"]:
        names |= {f"{stem}_recording-resp_physio.tsv.gz", f"{stem}_recording-resp_physio.json"}
    if counts["ecg_chunks"]:
        rec = "ecg"
    elif counts["beats"]:
        rec = "rr"
    else:
        return names
    for suffix in ("physio", "physioevents"):
        names |= {f"{stem}_recording-{rec}_{suffix}.tsv.gz", f"{stem}_recording-{rec}_{suffix}.json"}
    return names


def _is_complete(folder: Path, expected: set[str]) -> bool:
    beh = folder / "beh"
    return folder.is_dir() and not folder.is_symlink() and beh.is_dir() and expected <= {p.name for p in beh.iterdir()}


def export_bids_session(
    store: Store,
    session_id: int,
    root: Path,
    *,
    include_text: bool = False,
    overwrite: bool = False,
    result: BidsExportResult | None = None,
    info_fields: dict[str, Any] | None = None,
    beats_for: Callable[[int], Beats] | None = None,
) -> BidsExportResult:
    """Write one session under `root` (a BIDS dataset, created if needed); the dataset index files are the caller's.

    The session folder is written as `sub-<label>/.ses-<n>.partial` and renamed to `ses-<n>` only when every file
    is in it, so a killed export never leaves a folder that looks done. A `ses-<n>` found without all of its files
    (from an older version, or edited by hand) is redone, not kept; a stale `.partial` folder is removed.
    """
    result = result or BidsExportResult(Path(root))
    info = store.session(session_id)
    label = _label_for(store, info.participant_id, result)
    ses = f"ses-{info.id}"
    final = Path(root) / f"sub-{label}" / ses
    stem = f"sub-{label}_{ses}_task-{task_label(info.protocol_name)}"
    complete = _is_complete(final, _expected_files(store, info, stem))
    was_there = os.path.lexists(final)
    if complete and not overwrite:
        result.kept_sessions.append(session_id)
        return result
    staging = final.with_name(f".{ses}.partial")
    if os.path.lexists(staging):
        remove_stale(staging)
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging.mkdir(mode=0o700)
    dest = staging / "beh"
    written: list[Path] = []
    try:
        beats = beats_for(session_id) if beats_for is not None else store.beats(session_id)
        _session_files(store, info, stem, dest, include_text, written, info_fields or {}, beats)
        if os.path.lexists(final):  # an incomplete folder, or one to be replaced (--force): swap, then drop
            old = final.with_name(f".{ses}.old")
            if os.path.lexists(old):
                remove_stale(old)
            os.replace(final, old)
            os.replace(staging, final)
            remove_stale(old)
        else:
            os.replace(staging, final)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_stale(staging)
        raise
    result.written.extend(final / "beh" / p.name for p in written)
    if was_there and not complete:
        result.redone_sessions.append(session_id)
    result.exported_sessions.append(session_id)
    return result


def _session_files(
    store: Store,
    info: SessionInfo,
    stem: str,
    dest: Path,
    include_text: bool,
    written: list[Path],
    info_fields: dict[str, Any],
    beats: Beats,
) -> None:
    """Every file of one session into the (fresh) folder `dest`."""
    session_id = info.id
    tl = _ecg_files(store, info, stem, dest, True, written, info_fields)
    if tl is not None:
        body = "\n".join(_beat_lines(beats)) + ("\n" if len(beats.t) else "")
        _write_gz(dest / f"{stem}_recording-ecg_physioevents.tsv.gz", body, True, written)
        beats_json = _json_text(_beats_sidecar("timestamp", info.protocol_name, beats.source))
        _write(dest / f"{stem}_recording-ecg_physioevents.json", beats_json, True, written)
    elif len(beats.t):
        _rr_files(info, beats, stem, dest, True, written, info_fields)
    for stream, samples, label in lsl_physio_streams(store, session_id):
        _lsl_physio_files(info, stream, samples, f"{stem}_recording-{label}", dest, written, info_fields)
    _resp_files(store, info, stem, dest, True, written, info_fields)
    fixed = fixed_labels(store.protocol_dict(session_id))
    rows = _event_rows(store, session_id, store.markers(session_id), tl.gaps if tl else [], include_text, fixed)
    _write(dest / f"{stem}_events.tsv", _tsv_text(EVENT_COLUMNS, rows), True, written)
    kinds = sorted({r[2] for r in rows})
    events_json = _json_text(_events_sidecar(info.protocol_name, include_text, kinds))
    _write(dest / f"{stem}_events.json", events_json, True, written)


def _label_for(store: Store, participant_id: str, result: BidsExportResult) -> str:
    if participant_id not in result.labels:
        label = bids_label(participant_id)
        clash = [p for p in store.participants() if p != participant_id and bids_label(p) == label]
        if clash:
            raise BidsExportError(
                f"participant IDs {participant_id!r} and {clash[0]!r} both become BIDS label sub-{label}; "
                "rename one of them in the store before exporting"
            )
        result.labels[participant_id] = label
    return result.labels[participant_id]


# -- dataset level -----------------------------------------------------------------------------------------------

README = """# Biofeedback sessions (cmt-biofeedback export)

Heart-rate-variability biofeedback sessions recorded with a chest strap during scripted protocols
(Compassionate Mind Training research). Exported by cmt-biofeedback {version}.

- `sub-<label>/ses-<n>/beh/*_events.tsv`: protocol phases (trial_type `<kind>_phase`, e.g. `breathing_phase`, with
  duration) and markers (trial_type the marker kind).
- `*_recording-ecg_physio.tsv.gz`: raw ECG (µV) with a `timestamp` column; `*_recording-ecg_physioevents.tsv.gz`:
  the strap's beats (onset = beat time, `rr` in ms). Sessions without ECG have
  `*_recording-rr_physio.tsv.gz` (RR in progress at 4 Hz) with the beats in `*_recording-rr_physioevents.tsv.gz`.
- Streams of other programs recorded over Lab Streaming Layer (`--lsl-in`): numeric ones in
  `*_recording-<stream>_physio.tsv.gz` (a `timestamp` column, then the stream's channels); markers (e.g. PsychoPy)
  in `*_events.tsv` as trial_type `lsl_marker` (the marker in `value`, the stream in `lsl_stream`).
- `*_recording-resp_physio.tsv.gz` (sessions with the strap's accelerometer): the chest-movement breathing waveform
  (column `respiratory`, m/s², 25 Hz; its sign is arbitrary), n/a where the accelerometer was lost.
- Time zero of all files is the session start (`acq_time` in `sub-<label>_sessions.tsv`). ECG times are the strap's
  clock mapped onto the session clock with drift correction; lost ECG is `n/a`, never interpolated.
- Participant labels are the pseudonymous IDs of the recorder without separators (P-01 -> P01); `session_id`
  `ses-<n>` is the recorder's session number, stable across exports (so numbers may have gaps).
- No names or free text are included unless the export was made with `--include-text`.
"""


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _merge_tsv(path: Path, key: str, header: Sequence[str], new_rows: Sequence[dict[str, str]]) -> str:
    rows = {r[key]: r for r in _read_tsv(path)}
    for r in new_rows:
        rows[r[key]] = r
    ordered = sorted(rows.values(), key=lambda r: _sort_key(r[key]))
    return _tsv_text(header, ([r.get(h) or "n/a" for h in header] for r in ordered))


def _sort_key(value: str) -> tuple[str, int]:
    m = re.match(r"^(.*?)(\d+)$", value)
    return (m.group(1), int(m.group(2))) if m else (value, -1)


UNKNOWN_START_SOURCES = {"capture", "rr", "imported-capture", "imported-rr"}
"""Imports whose files carry no wall-clock start: the store's `started_utc` is the import time, not the recording's."""


def _acq_time(started_utc: str) -> str:
    dt = datetime.fromisoformat(started_utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + ("Z" if dt.utcoffset() is not None else "")


def session_acq_time(info: SessionInfo) -> str:
    """The recording's start for `acq_time`: a live session's start, an import's start as read from its file
    (`settings["recording_start_utc"]`, or `started_utc` for imports that read it), `n/a` when no file said it."""
    start = info.settings.get("recording_start_utc")
    if isinstance(start, str) and start:
        return _acq_time(start)
    if info.source in UNKNOWN_START_SOURCES:
        return "n/a"
    return _acq_time(info.started_utc)


# -- dataset.toml ----------------------------------------------------------------------------------------------

DATASET_TOML = "dataset.toml"
_DESCRIPTION_KEYS = {"Name": str, "Authors": list, "License": str, "Acknowledgements": str, "HowToAcknowledge": str,
                     "Funding": list, "EthicsApprovals": list, "ReferencesAndLinks": list, "DatasetDOI": str,
                     "Keywords": list}  # fmt: skip
_SIDECAR_KEYS = {"Institution": "InstitutionName", "InstitutionAddress": "InstitutionAddress",
                 "InstitutionalDepartmentName": "InstitutionalDepartmentName"}  # fmt: skip


@dataclass(frozen=True)
class DatasetInfo:
    """A lab's dataset facts, set once in `dataset.toml`: dataset_description fields and institution sidecar fields."""

    description: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, str] = field(default_factory=dict)
    source: Path | None = None


def default_dataset_info_path(store_path: Path) -> Path:
    """Where `dataset.toml` is looked up when `--dataset-info` is not given: beside the store file."""
    return Path(store_path).resolve().parent / DATASET_TOML


def load_dataset_info(path: Path) -> DatasetInfo:
    """Read and check `dataset.toml` (Name, Authors, License, Institution, …); BidsExportError names file and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BidsExportError(f"{path}: cannot read the dataset information ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BidsExportError(f"{path}: not valid TOML ({exc})") from None
    description: dict[str, Any] = {}
    sidecar: dict[str, str] = {}
    for key, value in data.items():
        if key in _DESCRIPTION_KEYS:
            want = _DESCRIPTION_KEYS[key]
            ok = (
                isinstance(value, str)
                if want is str
                else (isinstance(value, list) and all(isinstance(v, str) for v in value))
            )
            if not ok or (want is str and not value.strip()):
                kind = "a non-empty string" if want is str else "a list of strings"
                raise BidsExportError(f"{path}: {key} must be {kind}, got {value!r}")
            description[key] = value
        elif key in _SIDECAR_KEYS:
            if not isinstance(value, str) or not value.strip():
                raise BidsExportError(f"{path}: {key} must be a non-empty string, got {value!r}")
            sidecar[_SIDECAR_KEYS[key]] = value
        else:
            known = ", ".join(sorted([*_DESCRIPTION_KEYS, *_SIDECAR_KEYS]))
            raise BidsExportError(f"{path}: unknown key {key!r}; expected one of {known}")
    return DatasetInfo(description, sidecar, path)


def _write_dataset_files(
    store: Store,
    root: Path,
    result: BidsExportResult,
    sessions: Sequence[SessionInfo],
    existing_desc: dict[str, Any] | None,
    dataset_info: DatasetInfo | None,
) -> None:
    written = result.written
    desc = root / "dataset_description.json"
    if existing_desc is None or (dataset_info and dataset_info.description):
        base = existing_desc or {
            "Name": "Biofeedback sessions (cmt-biofeedback export)",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": [GENERATOR],
        }
        merged = {**base, **(dataset_info.description if dataset_info else {})}
        if merged != existing_desc:
            _write(desc, _json_text(merged), True, written)
    if not (root / "README").exists() and not (root / "README.md").exists():
        _write(root / "README", README.format(version=GENERATOR["Version"]), False, written)
    participants = [{"participant_id": f"sub-{result.labels[p]}", "recorder_id": p} for p in sorted(result.labels)]
    text = _merge_tsv(root / "participants.tsv", "participant_id", ["participant_id", "recorder_id"], participants)
    _write(root / "participants.tsv", text, True, written)
    _write(root / "participants.json", _json_text({
        "participant_id": {"Description": "BIDS label: the pseudonymous recorder ID without separators"},
        "recorder_id": {"Description": "Pseudonymous participant ID as kept by the recorder"},
    }), True, written)  # fmt: skip
    by_participant: dict[str, list[SessionInfo]] = {}
    for s in sessions:
        by_participant.setdefault(s.participant_id, []).append(s)
    header = ["session_id", "acq_time", "protocol", "device", "source", "state"]
    for pid, infos in by_participant.items():
        label = result.labels[pid]
        path = root / f"sub-{label}" / f"sub-{label}_sessions.tsv"
        rows = [
            {"session_id": f"ses-{s.id}", "acq_time": session_acq_time(s), "protocol": s.protocol_name,
             "device": s.device, "source": s.source, "state": s.state}
            for s in infos
        ]  # fmt: skip
        _write(path, _merge_tsv(path, "session_id", header, rows), True, written)
        _write(path.with_suffix(".json"), _json_text({
            "acq_time": {"Description": "Session start (UTC): time zero of every file of the session; n/a for an "
                         "import whose file gave no start time"},
            "protocol": {"Description": "Name of the protocol run in the session"},
            "device": {"Description": "Strap or source of the recording"},
            "source": {"Description": "live recording, or the kind of file it was imported from"},
            "state": {"Description": "completed, stopped, interrupted or imported"},
        }), True, written)  # fmt: skip


def _sweep_leftovers(root: Path) -> None:
    """Remove what killed exports left in the dataset: staged session folders and partial index files."""
    if not root.is_dir():
        return
    for sub in [root, *(p for p in root.glob("sub-*") if p.is_dir() and not p.is_symlink())]:
        for p in [*sub.glob(".ses-*.partial"), *sub.glob(".ses-*.old"), *sub.glob(".*.partial")]:
            if os.path.lexists(p):
                remove_stale(p)


def export_bids(
    store: Store,
    root: Path,
    session_ids: Sequence[int],
    *,
    include_text: bool = False,
    overwrite: bool = False,
    on_session: Callable[[int], None] | None = None,
    dataset_info: DatasetInfo | None = None,
    beats_for: Callable[[int], Beats] | None = None,
) -> BidsExportResult:
    """Export sessions into the BIDS dataset at `root` (created or extended); `on_session` is called after each.

    `dataset_info` (from `load_dataset_info`) fills dataset_description.json (Name, Authors, License, …) and the
    institution fields of every physio sidecar; the description of an existing dataset is updated with it.
    """
    if not session_ids:
        raise BidsExportError("no sessions to export")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{root} exists and is not a folder")
    desc_path = root / "dataset_description.json"
    desc: dict[str, Any] | None = None
    if desc_path.exists():
        try:
            desc = json.loads(desc_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            msg = f"{desc_path}: not valid JSON ({exc}); fix or remove it, or choose another folder"
            raise BidsExportError(msg) from None
        if not isinstance(desc, dict) or desc.get("DatasetType", "raw") != "raw" or "BIDSVersion" not in desc:
            raise BidsExportError(f"{root} holds a dataset that is not a raw BIDS dataset; choose another folder")
    _sweep_leftovers(root)
    result = BidsExportResult(root)
    infos = [store.session(sid) for sid in session_ids]
    for info in infos:
        _label_for(store, info.participant_id, result)  # refuse label clashes before writing anything
    sidecar = dict(dataset_info.sidecar) if dataset_info else {}
    for info in infos:
        export_bids_session(store, info.id, root, include_text=include_text, overwrite=overwrite, result=result,
                            info_fields=sidecar, beats_for=beats_for)  # fmt: skip
        if on_session is not None:
            on_session(info.id)
    _write_dataset_files(store, root, result, infos, desc, dataset_info)
    return result
