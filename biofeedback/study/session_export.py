"""One session to files in one of the per-session formats: what `export SESSION --format F` and the console share."""

from __future__ import annotations

from pathlib import Path

from recordings.store import Store

SESSION_FORMATS = ("csv", "edf", "kubios", "capture", "bundle")
"""Formats written one session at a time (BIDS and the long table take a set of sessions)."""


def export_session(
    store: Store,
    session_id: int,
    fmt: str,
    out: Path,
    *,
    correction: str = "kubios",
    include_text: bool = False,
    overwrite: bool = False,
    own_folder: bool = False,
    beats: str | None = None,
) -> list[Path]:
    """Write session `session_id` as `fmt` into folder `out`; the files written. `own_folder`: CSV files go into
    `out/session-ID/` (when several sessions are exported together). `beats`: the beat source of CSV, EDF+ and
    Kubios files (`beat_source.select_beats`; None = reviewed when the session has a review, else auto)."""
    out = Path(out)
    if fmt == "capture":
        from recordings.capture import export_capture

        return [export_capture(store, session_id, out, overwrite=overwrite, include_text=include_text)]
    if fmt == "bundle":
        from recordings.bundle import export_bundle

        return [export_bundle(store, session_id, out, include_text=include_text, overwrite=overwrite)]
    if fmt == "csv":
        from biofeedback.analysis.analyze import analyze_session
        from recordings.export_csv import export_csv

        analysis = analyze_session(store, session_id, correction, beats=beats)
        folder = out / f"session-{session_id}" if own_folder else out
        return export_csv(store, session_id, folder, phases=analysis.phase_rows(), include_text=include_text,
                          overwrite=overwrite, beats=analysis.selection.beats)  # fmt: skip
    if fmt == "edf":
        from biofeedback.analysis.beat_source import select_beats
        from recordings.export_bids import bids_label
        from recordings.export_edf import export_edf

        info = store.session(session_id)
        path = out / f"sub-{bids_label(info.participant_id)}_ses-{session_id}.edf"
        return [export_edf(store, session_id, path, include_text=include_text, overwrite=overwrite,
                           beats=select_beats(store, session_id, beats).beats)]  # fmt: skip
    if fmt == "kubios":
        from biofeedback.analysis.beat_source import select_beats
        from recordings.export_kubios import export_kubios

        return export_kubios(store, session_id, out, overwrite=overwrite,
                             beats=select_beats(store, session_id, beats).beats)  # fmt: skip
    raise ValueError(f"unknown export format {fmt!r}; one session can be written as {', '.join(SESSION_FORMATS)}")
