"""EDF+ export, read back by MNE, pyedflib and edfio: channel types, values, gaps, records and every annotation."""

from __future__ import annotations

import stat

import edfio
import mne
import numpy as np
import pyedflib
import pytest
from test_exports_sessions import FRAME, SECRET_NOTE, make_session

from recordings.ecg_time import map_ecg_chunks
from recordings.export_edf import MAX_RECORD_BYTES, RR_NO_DATA_MS, EdfExportError, export_edf, record_layout
from recordings.files import OutputExistsError
from recordings.rr_series import rr_step_series
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
    out += [(t, f"link {state}") for t, _d, state, _r in store.link_events(sid)]
    return sorted((round(t, 3), d) for t, d in out)


def _late_events(store, sid, end):
    """What a strap that stopped early leaves after its last sample: a disconnect, the last phase end, the end."""
    store.add_link_event(sid, end + 2.0, "Polar H10 8C4D2A21", "disconnected", "link lost")
    store.add_marker(sid, end + 16.8, "pause", "paused by the participant")
    store.add_marker(sid, end + 20.0, "session_end", "session ended", detail={"ended": "completed"})
    store.flush()


def test_mne_types_the_channels_and_reads_the_same_ecg_rr_and_every_annotation(store, shared_data, tmp_path):
    sid = make_session(store, shared_data, "P-01", duration_s=120, drop_frames=range(40, 45))
    tl = map_ecg_chunks(store.ecg_chunks(sid))
    ecg_end = float(tl.t[-1])
    _late_events(store, sid, ecg_end)
    path = export_edf(store, sid, tmp_path / "s.edf")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = mne.io.read_raw_edf(path, preload=True, infer_types=True, verbose="error")
    assert raw.ch_names == ["chest", "RR"]
    assert raw.get_channel_types() == ["ecg", "misc"]
    assert raw.info["sfreq"] == pytest.approx(tl.fs_hz, rel=1e-6)  # one rate: nothing was resampled
    assert raw.info["meas_date"].isoformat().startswith("2025-03-07T09:30:00")
    assert raw.times[-1] > ecg_end + 20.0  # the recording covers the markers after the last ECG sample
    ecg_uv = raw.get_data(picks="chest")[0] * 1e6
    # the stored samples, in order, at their session-clock positions; quantization step = range / 65535
    lead = round(tl.t[0] * raw.info["sfreq"])
    _, grid = tl.regular_grid()
    present = ~np.isnan(grid)
    bound = -float(np.min(ecg_uv))
    step = 2 * bound / 65535 + 1e-9
    got = ecg_uv[lead : lead + len(grid)]
    assert np.max(np.abs(got[present] - grid[present])) <= step
    np.testing.assert_array_equal(grid[present].astype(np.int32), np.concatenate([c[3] for c in store.ecg_chunks(sid)]))
    # no data is the physical minimum, a value no sample takes: before the strap, the dropped frames, after the end
    assert bound > np.max(np.abs(grid[present]))
    assert np.all(got[~present] == -bound) and np.all(ecg_uv[:lead] == -bound)
    assert np.all(ecg_uv[lead + len(grid) :] == -bound)
    assert np.sum(got[present] == -bound) == 0
    # RR at the ECG's rate, step function of the beats, −1 ms where no beat covers the time
    beats = store.beats(sid)
    rr = raw.get_data(picks="RR")[0]  # MNE leaves a misc channel in its own unit (ms)
    _, want = rr_step_series(beats.t, beats.rr_ms, raw.info["sfreq"], start=0.0)
    covered = ~np.isnan(want)
    np.testing.assert_allclose(rr[: len(want)][covered], want[covered], atol=0.05)
    assert np.allclose(rr[: len(want)][~covered], RR_NO_DATA_MS, atol=1e-6)
    assert np.allclose(rr[len(want) :], RR_NO_DATA_MS, atol=1e-6)
    ann = list(zip(raw.annotations.onset, raw.annotations.description, raw.annotations.duration, strict=True))
    events = sorted((round(o, 3), d) for o, d, _ in ann if not d.endswith(" gap") and not d.startswith("phase: "))
    assert events == expected_annotations(store, sid)
    assert any(d == "link disconnected" for _, d in events) and events[-1][1] == "session_end: session ended"
    phases = [d for _, d, _ in ann if d.startswith("phase: ")]
    assert phases == ["phase: baseline", "phase: soothing rhythm", "phase: compassionate image"]
    gaps = [(o, dur) for o, d, dur in ann if d == "ECG gap"]
    assert gaps[0][0] == 0.0 and gaps[0][1] == pytest.approx(tl.t[0], abs=0.01)  # before the strap streamed
    assert gaps[1][1] == pytest.approx(5 * FRAME / tl.fs_hz, abs=0.02)
    assert gaps[-1][0] == pytest.approx(ecg_end, abs=0.01)  # after the strap stopped
    assert not any(SECRET_NOTE in d or "cough" in d for _, d, _ in ann)


def test_pyedflib_and_edfio_read_one_second_records_the_values_and_every_annotation(store, shared_data, tmp_path):
    sid = make_session(store, shared_data, "P-02", duration_s=90, drop_frames=range(20, 22))
    tl = map_ecg_chunks(store.ecg_chunks(sid))
    _late_events(store, sid, float(tl.t[-1]))
    path = export_edf(store, sid, tmp_path / "s.edf")
    edf = edfio.read_edf(path)
    assert edf.data_record_duration == pytest.approx(1.0, abs=0.01)
    ecg, rr = edf.signals
    assert ecg.samples_per_data_record == round(tl.fs_hz) and rr.samples_per_data_record == round(tl.fs_hz)
    record_bytes = 2 * sum(s.samples_per_data_record for s in edf._signals)  # with the annotation signal
    assert record_bytes <= MAX_RECORD_BYTES
    assert (ecg.label, ecg.physical_dimension, rr.label, rr.physical_dimension) == ("ECG chest", "uV", "MISC RR", "ms")
    with pyedflib.EdfReader(str(path)) as f:
        assert f.getSignalLabels() == ["ECG chest", "MISC RR"]
        assert f.getFileDuration() == pytest.approx(edf.duration, abs=1e-6)
        assert f.getSampleFrequencies() == pytest.approx([ecg.sampling_frequency] * 2, rel=1e-6)
        np.testing.assert_allclose(f.readSignal(0), ecg.data, atol=1e-6)
        np.testing.assert_allclose(f.readSignal(1), rr.data, atol=1e-6)
        assert f.getPhysicalMinimum(0) == float(np.min(ecg.data))  # the no-data value
        onsets, _durations, texts = f.readAnnotations()
    from_pyedflib = sorted((round(float(o), 3), str(t)) for o, t in zip(onsets, texts, strict=True))
    from_edfio = sorted((round(a.onset, 3), a.text) for a in edf.annotations)
    assert from_pyedflib == from_edfio
    events = [(o, d) for o, d in from_edfio if not d.endswith(" gap") and not d.startswith("phase: ")]
    assert events == expected_annotations(store, sid)
    assert events[-1] == (round(float(tl.t[-1]) + 20.0, 3), "session_end: session ended")


def test_rr_only_session_has_rr_at_4_hz_and_keeps_gaps(store, shared_data, tmp_path):
    ibi = np.loadtxt(shared_data / "polar_h10_dhyb_ibi.csv", delimiter=",", skiprows=1, usecols=1)[:200]
    t = 2.0 + np.cumsum(ibi) / 1000
    keep = np.r_[0:100, 115:200]  # 15 beats lost
    sid = store.create_session("P02", "whole", {}, "Polar H10", source="rr")
    store.add_beats(sid, [(t[i], ibi[i], i in (0, 115), 0.0, None) for i in keep])
    path = export_edf(store, sid, tmp_path / "s.edf")
    edf = edfio.read_edf(path)
    (rr,) = edf.signals
    fs = rr.sampling_frequency
    assert rr.label == "MISC RR" and rr.physical_dimension == "ms" and fs == 4.0
    assert edf.data_record_duration == 1.0 and rr.samples_per_data_record == 4
    grid = np.arange(len(rr.data)) / fs
    for i in keep:
        inside = (grid > t[i] - ibi[i] / 1000 + 0.01) & (grid <= t[i] - 0.01)
        np.testing.assert_allclose(rr.data[inside], ibi[i], atol=0.1)
    lost = (grid > t[100] + 0.03) & (grid < t[115] - ibi[115] / 1000 - 0.03)
    assert lost.sum() > 20 and np.allclose(rr.data[lost], RR_NO_DATA_MS, atol=1e-6)
    gaps = [a for a in edf.annotations if a.text == "RR gap"]
    assert any(a.onset == pytest.approx(t[99], abs=0.3) and a.duration > 5 for a in gaps)
    raw = mne.io.read_raw_edf(path, infer_types=True, verbose="error")
    assert raw.get_channel_types() == ["misc"] and raw.info["sfreq"] == 4.0


def test_session_without_ecg_gets_rr_and_annotations_and_text_only_when_asked(store, shared_data, tmp_path):
    sid = make_session(store, shared_data, "P03", duration_s=90, ecg=False)
    raw = mne.io.read_raw_edf(export_edf(store, sid, tmp_path / "a.edf", include_text=True), verbose="error")
    assert raw.ch_names == ["MISC RR"]
    descriptions = list(raw.annotations.description)
    assert f"note: {SECRET_NOTE}" in descriptions and "manual: cough" in descriptions
    assert "phase_end: compassionate image" in descriptions and "session_end: session ended" in descriptions


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


def test_record_layout_is_a_whole_number_of_samples_near_one_second_for_any_rate():
    rng = np.random.default_rng(0)
    for _ in range(500):
        fs_true = float(rng.uniform(100, 200))
        duration, n, fs = record_layout(fs_true)
        assert abs(duration - 1.0) < 0.02 and len(f"{duration}") <= 8
        assert fs == pytest.approx(fs_true, rel=1e-6)  # the header's rounding moves the rate ≤ 1 ppm
        assert round(n / fs, 12) == round(duration, 12)  # edfio's own consistency check


def test_a_session_starting_at_a_fraction_of_a_second_opens_in_edflib_and_keeps_its_times(store, shared_data,
                                                                                           tmp_path):  # fmt: skip
    """A live session starts at a fraction of a second and its records are not whole seconds (ECG at the measured
    rate); EDFlib refused the record time stamps that gave. The file starts at the whole second before the session
    and leads everything by the same whole number of samples."""
    sid = make_session(store, shared_data, "P-02", duration_s=60, started_utc="2025-03-07T09:30:00.849+00:00")
    path = export_edf(store, sid, tmp_path / "s.edf")
    reader = pyedflib.EdfReader(str(path))
    try:
        assert reader.getSignalLabels() == ["ECG chest", "MISC RR"]
        assert reader.getStartdatetime().replace(microsecond=0).isoformat() == "2025-03-07T09:30:00"
    finally:
        reader.close()
    raw = mne.io.read_raw_edf(path, infer_types=True, verbose="error")
    fs = raw.info["sfreq"]
    lead_s = round(0.849 * fs) / fs
    assert abs(lead_s - 0.849) <= 0.5 / fs  # the session's wall-clock start, exact to half a sample
    ann = sorted((round(o - lead_s, 3), d) for o, d in zip(raw.annotations.onset, raw.annotations.description,
                                                           strict=True)
                 if not d.endswith(" gap") and not d.startswith(("phase: ", "beats: ")))  # fmt: skip
    assert ann == expected_annotations(store, sid)
    beats = store.beats(sid)
    rr = raw.get_data(picks="RR")[0]
    _, want = rr_step_series(beats.t, beats.rr_ms, fs, start=0.0)
    lead = round(lead_s * fs)
    covered = ~np.isnan(want)
    np.testing.assert_allclose(rr[lead:lead + len(want)][covered], want[covered], atol=0.05)
    assert np.allclose(rr[:lead], RR_NO_DATA_MS)  # before the session: no data, never a fake value
