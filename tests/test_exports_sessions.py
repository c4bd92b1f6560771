"""Stored sessions for the export tests, built from the real Polar H10 recording in /work/shared/data.

`make_session` writes what a live session writes: ECG frames (73 samples, strap clock in 2019 with drift, arrival
with BLE latency jitter), the strap's beats, protocol markers, a manual marker, a private note and a link drop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from devices.polar_pmd import datetime_to_pmd_time
from recordings.ecg_time import map_ecg_chunks
from recordings.store import Store

FRAME = 73
SECRET_NOTE = "mentioned her sister Anna by name"
PHASES = [("baseline", "rest", None), ("soothing rhythm", "breathing", 6.0), ("compassionate image", "imagery", None)]


@cache
def h10_recording(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / "polar_h10_detectpvc_ecg130hz_rr.csv")


def make_session(
    store: Store,
    data_dir: Path,
    participant: str,
    *,
    start_s: float = 0.0,
    duration_s: float = 180.0,
    ecg: bool = True,
    drop_frames: range = range(0),
    seed: int = 0,
    started_utc: str = "2025-03-07T09:30:00.000+00:00",
    drift_ppm: float = 35.0,
) -> int:
    rng = np.random.default_rng(seed)
    df = h10_recording(data_dir)
    part = df[(df.t_s >= start_s) & (df.t_s < start_s + duration_s)]
    lead_in = 1.5  # the strap starts streaming 1.5 s after the session starts
    t_host = part.t_s.to_numpy() - start_s + lead_in
    sid = store.create_session(participant, "cmt-soothing", {"name": "cmt-soothing"}, "Polar H10 8C4D2A21",
                               started_utc=started_utc)  # fmt: skip
    if ecg:
        uv = np.round(part.ecg.to_numpy() * 1000).astype(np.int32)
        d0 = datetime_to_pmd_time(datetime(2019, 1, 1, 0, 0, tzinfo=UTC))
        for i, start in enumerate(range(0, len(uv) - FRAME + 1, FRAME)):
            if i in drop_frames:
                continue
            last_t = t_host[start + FRAME - 1]
            device_ns = d0 + round((last_t - lead_in) * (1 + drift_ppm * 1e-6) * 1e9)
            arrival = last_t + 0.008 + rng.exponential(0.02)
            store.add_ecg_chunk(sid, arrival, device_ns, 130.0, uv[start : start + FRAME], None)
    rr = part.rr.notna().to_numpy()
    rows = [
        (float(t), float(r), i == 0, 0.05, None) for i, (t, r) in enumerate(zip(t_host[rr], part.rr[rr], strict=True))
    ]
    store.add_beats(sid, rows)
    third = duration_s / 3
    store.add_marker(sid, 0.0, "session_start", "session started")
    for i, (name, kind, pacer) in enumerate(PHASES):
        detail = {"kind": kind, "feedback": "calm", "pacer_bpm": pacer}
        store.add_marker(sid, i * third, "phase_start", name, phase_index=i, phase_name=name, detail=detail)
        store.add_marker(sid, (i + 1) * third, "phase_end", name, phase_index=i, phase_name=name,
                         detail={"ended": "completed", "planned_s": third})  # fmt: skip
    store.add_marker(sid, third + 5.0, "prompt", "Let your breath find a slower rhythm", phase_index=1,
                     phase_name="soothing rhythm")  # fmt: skip
    store.add_marker(sid, 2 * third + 12.5, "manual", "cough", phase_index=2, phase_name="compassionate image")
    store.add_marker(sid, duration_s, "session_end", "session ended", detail={"ended": "completed"})
    store.add_note(sid, 2 * third + 12.5, SECRET_NOTE)
    store.add_link_event(sid, 0.2, "Polar H10 8C4D2A21", "connected")
    store.flush()
    store.end_session(sid)
    return sid


def test_made_session_is_what_a_live_session_stores(shared_data, store_path):
    with Store(store_path) as store:
        sid = make_session(store, shared_data, "P-01", drop_frames=range(100, 104))
        counts = store.counts(sid)
        assert counts["beats"] > 200 and counts["markers"] == 10 and counts["notes"] == 1
        tl = map_ecg_chunks(store.ecg_chunks(sid))
        # the real strap samples at about 130.16 Hz on the host clock; the 2019 strap clock and drift do not matter
        assert tl.fs_hz == pytest.approx(130.16, abs=0.05)
        assert tl.drift_ppm == pytest.approx(-35.0, abs=5.0)
        assert tl.n_segments == 2
