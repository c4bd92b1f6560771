"""EDF+ export: MNE-Python reads back the same ECG (within quantization) and the same annotations."""

from __future__ import annotations

import stat

import edfio
import mne
import numpy as np
import pytest
from test_exports_sessions import FRAME, SECRET_NOTE, make_session

from recordings.ecg_time import map_ecg_chunks
from recordings.export_edf import EdfExportError, export_edf
from recordings.files import OutputExistsError
from recordings.store import Store


@pytest.fixture
def store(store_path):
    with Store(store_path) as st:
        yield st


def expected_annotations(store, sid):
    out = []
    for m in store.markers(sid):
        if m.kind in ("phase_start", "phase_end"):
            out.append((m.t, f"{m.kind}: {m.phase_name}"))
        elif m.kind == "manual":
            out.append((m.t, "manual"))
        else:
            out.append((m.t, f"{m.kind}: {m.label}"))
    return sorted(out)


def test_mne_reads_the_same_ecg_and_annotations(store, shared_data, tmp_path):
    sid = make_session(store, shared_data, "P-01", duration_s=120, drop_frames=range(40, 45))
    path = export_edf(store, sid, tmp_path / "s.edf")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    tl = map_ecg_chunks(store.ecg_chunks(sid))
    assert raw.info["sfreq"] == pytest.approx(tl.fs_hz, rel=1e-5)
    assert raw.info["meas_date"].isoformat().startswith("2025-03-07T09:30:00")
    ecg_uv = raw.get_data(picks="ECG")[0] * 1e6
    # the stored samples, in order, at their session-clock positions; quantization step = range / 65535
    lead = round(tl.t[0] * tl.fs_hz)
    _, grid = tl.regular_grid()
    present = ~np.isnan(grid)
    step = 2 * np.max(np.abs(tl.uv)) / 65535 + 1e-9
    got = ecg_uv[lead : lead + len(grid)]
    assert np.max(np.abs(got[present] - grid[present])) <= step
    np.testing.assert_array_equal(grid[present].astype(np.int32), np.concatenate([c[3] for c in store.ecg_chunks(sid)]))
    assert np.all(np.abs(got[~present]) <= step)  # the dropped frames are flat, not invented ECG
    ann = list(zip(raw.annotations.onset, raw.annotations.description, raw.annotations.duration, strict=True))
    markers = sorted((round(o, 3), d) for o, d, dur in ann if ":" in d or d == "manual")
    want = [(round(t, 3), d) for t, d in expected_annotations(store, sid)]
    phases = [(o, d) for o, d in markers if d.startswith("phase: ")]
    assert [(o, d) for o, d in markers if not d.startswith("phase: ")] == want
    assert [d for _, d in phases] == ["phase: baseline", "phase: soothing rhythm", "phase: compassionate image"]
    gaps = [(o, dur) for o, d, dur in ann if d == "ECG gap"]
    assert gaps[0][0] == 0.0 and gaps[0][1] == pytest.approx(tl.t[0], abs=0.01)  # before the strap streamed
    assert gaps[1][1] == pytest.approx(5 * FRAME / tl.fs_hz, abs=0.02)
    assert not any(SECRET_NOTE in d or "cough" in d for _, d, _ in ann)


def test_rr_channel_follows_the_beats_and_keeps_gaps(store, shared_data, tmp_path):
    ibi = np.loadtxt(shared_data / "polar_h10_dhyb_ibi.csv", delimiter=",", skiprows=1, usecols=1)[:200]
    t = 2.0 + np.cumsum(ibi) / 1000
    keep = np.r_[0:100, 115:200]  # 15 beats lost
    sid = store.create_session("P02", "whole", {}, "Polar H10", source="rr")
    store.add_beats(sid, [(t[i], ibi[i], i in (0, 115), 0.0, None) for i in keep])
    edf = edfio.read_edf(export_edf(store, sid, tmp_path / "s.edf"))
    (rr,) = edf.signals
    fs = rr.sampling_frequency
    assert rr.label == "RR" and rr.physical_dimension == "ms" and fs == pytest.approx(4.0, abs=1e-3)
    grid = np.arange(len(rr.data)) / fs
    for i in keep:
        inside = (grid > t[i] - ibi[i] / 1000 + 0.01) & (grid <= t[i] - 0.01)
        np.testing.assert_allclose(rr.data[inside], ibi[i], atol=0.1)
    lost = (grid > t[100] + 0.03) & (grid < t[115] - ibi[115] / 1000 - 0.03)
    assert lost.sum() > 20 and np.all(np.abs(rr.data[lost]) < 0.1)
    gaps = [a for a in edf.annotations if a.text == "RR gap"]
    assert any(a.onset == pytest.approx(t[99], abs=0.3) and a.duration > 5 for a in gaps)


def test_session_without_ecg_gets_rr_and_annotations_and_text_only_when_asked(store, shared_data, tmp_path):
    sid = make_session(store, shared_data, "P03", duration_s=90, ecg=False)
    raw = mne.io.read_raw_edf(export_edf(store, sid, tmp_path / "a.edf", include_text=True), verbose="error")
    assert raw.ch_names == ["RR"]
    descriptions = list(raw.annotations.description)
    assert f"note: {SECRET_NOTE}" in descriptions and "manual: cough" in descriptions
    assert "phase_end: compassionate image" in descriptions


def test_never_overwrites_and_refuses_an_empty_session(store, shared_data, tmp_path):
    sid = make_session(store, shared_data, "P04", duration_s=60)
    path = export_edf(store, sid, tmp_path / "s.edf")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        export_edf(store, sid, path)
    assert path.read_bytes() == before
    export_edf(store, sid, path, overwrite=True)
    empty = store.create_session("P05", "whole", {}, "none", source="rr")
    with pytest.raises(EdfExportError, match="neither ECG nor beats"):
        export_edf(store, empty, tmp_path / "e.edf")
    assert not (tmp_path / "e.edf").exists()


def test_record_layout_passes_edfios_duration_check_for_any_length():
    from recordings.export_edf import _fit_record

    rng = np.random.default_rng(0)
    for _ in range(500):
        wanted = round(float(rng.uniform(10, 9_999_999)) / 1000, 3)
        duration, counts, rates = _fit_record(wanted, [float(rng.uniform(100, 200)), 4.0])
        assert wanted - 0.05 <= duration <= wanted
        lengths = {round(n / fs, 12) for n, fs in zip(counts, rates, strict=True)}
        assert lengths == {round(duration, 12)}  # edfio's own consistency check
