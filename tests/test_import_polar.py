"""Imports: Polar Sensor Logger files (generated from a real H10 recording) and RR text with an events TSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from devices.polar_pmd import datetime_to_pmd_time
from recordings.capture import ImportFormatError
from recordings.ecg_time import map_ecg_chunks
from recordings.import_events import import_rr_with_events
from recordings.import_polar import import_polar
from recordings.store import Store

PHONE0 = datetime(2025, 3, 7, 10, 15, 2, 123000)


def rmssd(rr):
    return float(np.sqrt(np.mean(np.diff(rr) ** 2)))


@pytest.fixture(scope="module")
def psl_files(shared_data, tmp_path_factory):
    """Polar Sensor Logger `_ECG.txt` and `_RR.txt` written from the real H10 recording (first 4 minutes)."""
    df = pd.read_csv(shared_data / "polar_h10_detectpvc_ecg130hz_rr.csv")
    df = df[df.t_s < 240]
    folder = tmp_path_factory.mktemp("psl")
    d0 = datetime_to_pmd_time(datetime(2019, 6, 1, tzinfo=UTC))  # an H10 that was never synced
    uv = np.round(df.ecg.to_numpy() * 1000).astype(int)
    t = df.t_s.to_numpy()
    lines = ["Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]"]
    for start in range(0, len(uv) - 73 + 1, 73):
        phone = PHONE0 + timedelta(seconds=t[start + 72] + 0.015)
        for k in range(start, start + 73):
            ns = d0 + round(t[k] * (1 - 20e-6) * 1e9)
            lines.append(f"{phone.isoformat(timespec='milliseconds')};{ns};{(t[k] - t[0]) * 1000:.6f};{uv[k]}")
    ecg = folder / "Polar_H10_8C4D2A21_20250307_101502_ECG.txt"
    ecg.write_text("\n".join(lines) + "\n")
    rr_rows = df[df.rr.notna()]
    rr = folder / "Polar_H10_8C4D2A21_20250307_101502_RR.txt"
    rr.write_text("Phone timestamp;RR-interval [ms]\n" + "".join(
        f"{(PHONE0 + timedelta(seconds=ts + 0.02)).isoformat(timespec='milliseconds')};{int(v)}\n"
        for ts, v in zip(rr_rows.t_s, rr_rows.rr, strict=True)
    ))  # fmt: skip
    return ecg, rr, uv[: (len(uv) // 73) * 73], rr_rows.rr.to_numpy()


def test_polar_sensor_logger_round_trip(store_path, psl_files):
    ecg, rr, uv, rr_ms = psl_files
    with Store(store_path) as store:
        sid = import_polar(store, [ecg, rr], "P-01")
        info = store.session(sid)
        assert info.source == "imported-polar" and info.state == "imported"
        chunks = store.ecg_chunks(sid)
        np.testing.assert_array_equal(np.concatenate([c[3] for c in chunks]), uv)
        tl = map_ecg_chunks(chunks)
        assert tl.fs_hz == pytest.approx(130.16, abs=0.05) and tl.n_segments == 1
        assert tl.drift_ppm == pytest.approx(20.0, abs=5.0)  # device time = host · (1 − 20 ppm)
        beats = store.beats(sid)
        np.testing.assert_array_equal(beats.rr_ms, rr_ms)
        # analysable: the stored beats give the source's HRV, and beat times follow the RR chain
        assert rmssd(beats.rr_ms) == pytest.approx(rmssd(rr_ms))
        assert np.all(np.diff(beats.t) > 0)
        (start, end) = [m for m in store.markers(sid) if m.kind in ("phase_start", "phase_end")]
        assert start.phase_name == "whole" and end.t == pytest.approx(240, abs=1.0)


def test_analysis_of_imported_session(store_path, psl_files):
    analysis = pytest.importorskip("biofeedback.analysis.analyze", reason="HRV analysis lands with the analysis branch")
    ecg, rr, _, rr_ms = psl_files
    with Store(store_path) as store:
        sid = import_polar(store, [ecg, rr], "P-01")
        (phase,) = analysis.analyze_session(store, sid, correction="none").phases
    assert phase.n_beats == pytest.approx(len(rr_ms), abs=2)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ls: [*ls[:-1], ls[-1].rsplit(";", 2)[0]], r"line \d+: 2 fields, expected 4 \(truncated"),
        (lambda ls: [ls[0].replace("ecg [uV]", "ecg [mV]"), *ls[1:]], r"line 1: ECG column 'ecg \[mV\]' is not µV"),
        (lambda ls: [ls[0].replace("Phone timestamp", "Time"), *ls[1:]], "line 1: not a Polar Sensor Logger file"),
        (lambda ls: [*ls[:500], ls[500].replace("2025-03-07T", "07/03/2025 "), *ls[501:]], "line 501: 'Phone time"),
        (lambda ls: [*ls[:900], ls[900].replace(";", ";x", 1), *ls[901:]], "line 901: 'sensor timestamp"),
        (lambda ls: [*ls[:1000], ls[1000].rsplit(";", 1)[0] + ";12abc", *ls[1001:]], "line 1001: ecg"),
    ],
)
def test_broken_ecg_files_are_refused_and_nothing_is_stored(store_path, psl_files, tmp_path, mutate, message):
    ecg, rr, _, _ = psl_files
    bad = tmp_path / "bad_ECG.txt"
    bad.write_text("\n".join(mutate(ecg.read_text().splitlines())) + "\n")
    with Store(store_path) as store:
        with pytest.raises(ImportFormatError, match=message) as err:
            import_polar(store, [rr, bad], "P-02")
        assert str(bad) in str(err.value)
        assert store.sessions() == []


def test_rr_in_seconds_is_refused_with_a_hint(store_path, tmp_path):
    bad = tmp_path / "x_RR.txt"
    bad.write_text("Phone timestamp;RR-interval [ms]\n2025-03-07T10:00:00.000;0.85\n")
    with Store(store_path) as store, pytest.raises(ImportFormatError, match=r"line 2: RR 0.85 ms .*seconds\?"):
        import_polar(store, [bad], "P-03")


EVENTS = "onset\tduration\ttrial_type\tphase_kind\n0\t180\tbaseline\trest\n180\t220\tsoothing rhythm\tbreathing\n" \
         "250\t0\tcough\t\n400\t190\tcompassionate image\timagery\n"  # fmt: skip


def test_rr_text_with_events_round_trips_into_phases(store_path, shared_data, tmp_path):
    ibi = np.loadtxt(shared_data / "polar_h10_dhyb_ibi.csv", delimiter=",", skiprows=1, usecols=1)
    rr_file, events = tmp_path / "rr.txt", tmp_path / "events.tsv"
    rr_file.write_text("\n".join(f"{v:g}" for v in ibi) + "\n")
    events.write_text(EVENTS)
    with Store(store_path) as store:
        sid = import_rr_with_events(store, rr_file, "P-04", events)
        markers = store.markers(sid)
        beats = store.beats(sid)
        starts = [(m.t, m.phase_name, m.detail["kind"]) for m in markers if m.kind == "phase_start"]
        ends = [m.t for m in markers if m.kind == "phase_end"]
        manual = [(m.t, m.label) for m in markers if m.kind == "manual"]
    assert starts == [(0, "baseline", "rest"), (180, "soothing rhythm", "breathing"),
                      (400, "compassionate image", "imagery")]  # fmt: skip
    assert ends == [180, 400, 590] and manual == [(250, "cough")]
    np.testing.assert_allclose(beats.t, np.cumsum(ibi) / 1000)
    # per-phase HRV from the store equals HRV of the same beats taken straight from the file
    t_file = np.cumsum(ibi) / 1000
    for (a, _, _), b in zip(starts, ends, strict=True):
        inside = (beats.t >= a) & (beats.t < b)
        assert rmssd(beats.rr_ms[inside]) == pytest.approx(rmssd(ibi[(t_file >= a) & (t_file < b)]))


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ("onset\tlength\ttrial_type\n0\t10\ta\n", r"line 1: missing column\(s\) \['duration'\]"),
        ("onset\tduration\ttrial_type\n0\t100\ta\n50\t100\tb\n", "line 3: phase 'b' starts at 50 s, inside phase 'a'"),
        ("onset\tduration\ttrial_type\n0\t5000\ta\n", "line 2: event ends at 5000 s, after the RR series"),
        ("onset\tduration\ttrial_type\n0\t1O\ta\n", "line 2, column 'duration': '1O' is not a number"),
        ("onset\tduration\ttrial_type\tphase_kind\n0\t10\ta\tnap\n", "line 2, column 'phase_kind': 'nap'"),
    ],
)
def test_broken_events_are_refused_and_nothing_is_stored(store_path, tmp_path, events, message):
    rr_file, ev = tmp_path / "rr.txt", tmp_path / "events.tsv"
    rr_file.write_text("\n".join(["850"] * 700) + "\n")
    ev.write_text(events)
    with Store(store_path) as store:
        with pytest.raises(ImportFormatError, match=message):
            import_rr_with_events(store, rr_file, "P-05", ev)
        assert store.sessions() == []
