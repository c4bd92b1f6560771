"""Kubios HRV export: RR text (one interval in ms per line, `.txt`) plus the phase boundaries on Kubios's time axis.

Kubios builds its time axis from the RR values alone: beat i is at the sum of the first i+1 intervals (seconds),
so the first beat is at RR₀. `*_phases.csv` gives each phase's start and end on that axis (`kubios_start_s`,
`kubios_end_s`, to type in as Kubios samples) beside the session-clock times. Data lost in a gap is not in the RR
list, so Kubios time runs behind session time after a gap; the mapping accounts for it (boundaries are placed
between the right beats) and `gaps_inside` counts the breaks in each phase, which Kubios cannot see.

Each phase also gets its own RR text, `*_phase-<index>-<name>_rr.txt` (the beats from its start up to its end), so a
lab can analyse phases in Kubios one file at a time without typing sample boundaries; `rr_file` in `*_phases.csv`
names it (empty for a phase without beats). `beats` says which beats were written (`--beats`: reviewed, ECG
R-peaks, or the strap's as recorded).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from .files import OutputExistsError, open_private_for_write
from .store import Beats, Store


class KubiosExportError(ValueError):
    """A session without beats."""


def kubios_times(t: np.ndarray, rr_ms: np.ndarray, session_times: np.ndarray) -> np.ndarray:
    """Session-clock times mapped onto Kubios's axis (cumulative RR), piecewise linearly between beats."""
    axis = np.cumsum(rr_ms) / 1000.0
    out = np.interp(session_times, t, axis)
    before, after = session_times < t[0], session_times > t[-1]
    out[before] = axis[0] - (t[0] - session_times[before])
    out[after] = axis[-1] + (session_times[after] - t[-1])
    return out


def _phase_slug(index: int | None, name: str | None) -> str:
    return f"phase-{index if index is not None else 'x'}-{re.sub(r'[^A-Za-z0-9]', '', name or '') or 'phase'}"


def export_kubios(
    store: Store, session_id: int, out_dir: Path, *, overwrite: bool = False, beats: Beats | None = None
) -> list[Path]:
    """Write `sub-<ID>_ses-<n>_rr.txt`, `..._phases.csv` and one `..._phase-<i>-<name>_rr.txt` per phase with beats
    into `out_dir`; returns the paths written. `beats`: the beats to write (default the stored beats)."""
    info = store.session(session_id)
    beats = store.beats(session_id) if beats is None else beats
    if not len(beats.t):
        raise KubiosExportError(f"session {session_id} has no beats to export")
    stem = f"sub-{re.sub(r'[^A-Za-z0-9_-]', '', info.participant_id)}_ses-{session_id}"
    rr_path, phases_path = Path(out_dir) / f"{stem}_rr.txt", Path(out_dir) / f"{stem}_phases.csv"
    starts, rows = {}, []
    for mk in store.markers(session_id):
        if mk.kind == "phase_start":
            starts[mk.phase_index] = mk
        elif mk.kind == "phase_end" and mk.phase_index in starts:
            st = starts.pop(mk.phase_index)
            rows.append((st, mk.t))
    rows.sort(key=lambda r: r[0].t)
    inside = [(beats.t >= st.t) & (beats.t < end_t) for st, end_t in rows]
    phase_paths = [
        Path(out_dir) / f"{stem}_{_phase_slug(st.phase_index, st.phase_name)}_rr.txt" if mask.any() else None
        for (st, _end), mask in zip(rows, inside, strict=True)
    ]
    if not overwrite:
        for p in (rr_path, phases_path, *filter(None, phase_paths)):
            if p.exists():
                raise OutputExistsError(f"{p} exists; not overwriting it (use --force to replace it)")
    axis_end = float(np.sum(beats.rr_ms) / 1000.0)
    with open_private_for_write(rr_path, overwrite=overwrite) as fh:
        fh.writelines(f"{v:.3f}\n" for v in beats.rr_ms.tolist())
    written = [rr_path, phases_path]
    for path, mask in zip(phase_paths, inside, strict=True):
        if path is not None:
            with open_private_for_write(path, overwrite=overwrite) as fh:
                fh.writelines(f"{v:.3f}\n" for v in beats.rr_ms[mask].tolist())
            written.append(path)
    with open_private_for_write(phases_path, overwrite=overwrite) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["phase_index", "phase", "kind", "kubios_start_s", "kubios_end_s", "session_start_s",
                         "session_end_s", "n_beats", "gaps_inside", "rr_file", "beats"])  # fmt: skip
        source = beats.source or "the strap's beats as recorded"
        for (st, end_t), mask, path in zip(rows, inside, phase_paths, strict=True):
            k_start, k_end = kubios_times(beats.t, beats.rr_ms, np.array([st.t, end_t]))
            k_end = min(k_end, axis_end)
            writer.writerow([st.phase_index, st.phase_name, st.detail.get("kind", ""), f"{max(k_start, 0.0):.3f}",
                             f"{k_end:.3f}", f"{st.t:.3f}", f"{end_t:.3f}", int(mask.sum()),
                             int((beats.gap_before & mask).sum()), path.name if path else "", source])  # fmt: skip
    return written
