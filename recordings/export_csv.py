"""Tidy CSV export of a session: beats.csv, markers.csv, (given by the caller) phases.csv, resp.csv (with the strap's
accelerometer: the chest-movement breathing waveform of `recordings.breathing`, 25 Hz, m/s², empty where lost), and one
`lsl_<stream name>.csv` per Lab Streaming Layer stream recorded with `--lsl-in` (session time, the sender's LSL
stamp, one column per channel named by the stream's channel labels).

The per-phase table comes from the analysis layer above this one, so it is passed in as rows. Free-text notes and
free-text manual-marker labels (see `privacy`) leave the store only with `include_text=True`; without it such a
marker's `label` cell is empty. Files are private to the user and never silently overwritten.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .breathing import MG_TO_M_S2, breathing_waveform
from .ecg_time import map_ecg_chunks
from .files import OutputExistsError, clean_partials, open_private_for_write
from .privacy import exportable_label, fixed_labels
from .store import Beats, LslStream, Store


def lsl_channel_labels(stream: LslStream) -> list[str]:
    """The channel labels in a stream's XML description (desc/channels/channel/label), else ch1, ch2 ..."""
    labels: list[str] = []
    try:
        root = ET.fromstring(stream.info_xml)
        labels = [(c.findtext("label") or "").strip() for c in root.findall("./desc/channels/channel")]
    except ET.ParseError:
        pass
    if len(labels) != stream.channel_count or not all(labels) or len(set(labels)) != len(labels):
        labels = [f"ch{i + 1}" for i in range(stream.channel_count)]
    return labels


def lsl_file_name(stream: LslStream) -> str:
    return f"lsl_{re.sub(r'[^A-Za-z0-9_-]+', '_', stream.name).strip('_') or stream.id}.csv"


def _write_csv(path: Path, header: Sequence[str], rows, overwrite: bool) -> Path:
    with open_private_for_write(path, overwrite=overwrite) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def export_csv(
    store: Store,
    session_id: int,
    out_dir: Path,
    *,
    phases: Sequence[dict[str, Any]] | None = None,
    include_text: bool = False,
    overwrite: bool = False,
    beats: Beats | None = None,
) -> list[Path]:
    """Write the session's tables into `out_dir`; returns the files written. `beats`: the beats to write (chosen
    above, `biofeedback.analysis.beat_source`; default the stored beats)."""
    out_dir = Path(out_dir)
    names = ["beats.csv", "markers.csv"] + (["phases.csv"] if phases is not None else [])
    names += ["notes.csv"] if include_text else []
    acc_chunks = store.acc_chunks(session_id)
    names += ["resp.csv"] if acc_chunks else []
    streams = store.lsl_streams(session_id)
    names += [lsl_file_name(st) for st in streams]
    clean_partials(out_dir, names)
    if not overwrite:
        existing = [n for n in names if (out_dir / n).exists()]
        if existing:
            raise OutputExistsError(f"{out_dir} already holds {existing}; not overwriting (use --force)")
    info = store.session(session_id)
    beats = store.beats(session_id) if beats is None else beats
    fixed = fixed_labels(store.protocol_dict(session_id))
    written = [
        _write_csv(
            out_dir / "beats.csv",
            ["participant_id", "session_id", "t_s", "rr_ms", "gap_before", "arrival_lag_s"],
            (
                (info.participant_id, session_id, f"{t:.6f}", f"{rr:.4f}", int(g), f"{lag:.4f}")
                for t, rr, g, lag in zip(beats.t, beats.rr_ms, beats.gap_before, beats.arrival_lag_s, strict=True)
            ),
            overwrite,
        ),
        _write_csv(
            out_dir / "markers.csv",
            ["participant_id", "session_id", "t_s", "kind", "phase_index", "phase_name", "label", "detail"],
            (
                (
                    info.participant_id,
                    session_id,
                    f"{m.t:.6f}",
                    m.kind,
                    "" if m.phase_index is None else m.phase_index,
                    m.phase_name or "",
                    exportable_label(m.kind, m.label, fixed, include_text),
                    json.dumps(m.detail, sort_keys=True),
                )
                for m in store.markers(session_id)
            ),
            overwrite,
        ),
    ]
    if phases is not None:
        keys = list(phases[0].keys()) if phases else ["name"]
        written.append(
            _write_csv(
                out_dir / "phases.csv",
                ["participant_id", "session_id", *keys],
                (
                    [info.participant_id, session_id]
                    + [
                        "; ".join(row[k]) if isinstance(row[k], list) else ("" if row[k] is None else row[k])
                        for k in keys
                    ]
                    for row in phases
                ),
                overwrite,
            )
        )
    for st in streams:
        samples = store.lsl_samples(st)
        written.append(
            _write_csv(
                out_dir / lsl_file_name(st),
                ["participant_id", "session_id", "t_s", "lsl_time_s", *lsl_channel_labels(st)],
                (
                    (info.participant_id, session_id, f"{t:.6f}", f"{lsl:.6f}", *values)
                    for t, lsl, values in zip(samples.t, samples.lsl_t, samples.values, strict=True)
                ),
                overwrite,
            )
        )
    if acc_chunks:
        wf = breathing_waveform(map_ecg_chunks(acc_chunks))
        written.append(
            _write_csv(
                out_dir / "resp.csv",
                ["participant_id", "session_id", "t_s", "resp_m_s2"],
                (
                    (info.participant_id, session_id, f"{t:.6f}", "" if v != v else f"{v * MG_TO_M_S2:.7f}")
                    for t, v in zip(wf.t.tolist(), wf.values.tolist(), strict=True)
                ),
                overwrite,
            )
        )
    if include_text:
        written.append(
            _write_csv(
                out_dir / "notes.csv",
                ["participant_id", "session_id", "t_s", "text"],
                ((info.participant_id, session_id, f"{t:.6f}", text) for t, text in store.notes(session_id)),
                overwrite,
            )
        )
    return written
