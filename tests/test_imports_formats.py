"""Imports of files other apps wrote: every file in ../shared/data/formats/ imported (values checked against the
file) or refused with one line, plus generated edge cases (decimal commas, 0 values, a time column with a gap,
--unit s, a phone clock stepping back, H10 accelerometer, XDF recorded by LabRecorder)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import app
from recordings.import_formats import ImportFormatError, sniff
from recordings.import_polar import import_polar
from recordings.import_rr import import_rr
from recordings.store import Store


def _formats(shared_data: Path) -> Path:
    return shared_data / "formats"


def _text_numbers(path: Path) -> list[float]:
    return [float(v) for v in path.read_text().split()]


# -- every real file, one by one -----------------------------------------------------------------------------------


def check_welltory(store, sid, path):
    rr = _text_numbers(path)
    beats = store.beats(sid)
    assert len(rr) == 100
    np.testing.assert_array_equal(beats.rr_ms, rr)  # the first and the last interval included
    np.testing.assert_allclose(beats.t, np.cumsum(rr) / 1000)
    assert beats.gap_before.tolist() == [True] + [False] * 99


def check_empatica(store, sid, path):
    rows = np.loadtxt(path, delimiter=",", skiprows=1)
    beats = store.beats(sid)
    np.testing.assert_allclose(beats.rr_ms, rows[:, 1] * 1000)
    np.testing.assert_allclose(beats.t, rows[:, 0], atol=1e-4)  # beats at the E4's own offsets from its start
    missing = np.concatenate([[True], np.diff(rows[:, 0]) - rows[1:, 1] > 0.3])
    assert beats.gap_before.tolist() == missing.tolist() and missing.sum() == 203
    start = float(path.read_text().split(",", 1)[0])
    assert datetime.fromisoformat(store.session(sid).started_utc) == datetime.fromtimestamp(start, UTC)


def check_hrm(store, sid, path):
    assert store.beats(sid).rr_ms.tolist() == [800, 810, 815, 750]  # the [HRData] section
    started = datetime.fromisoformat(store.session(sid).started_utc)
    assert started == datetime(2008, 2, 9, 9, 28, 17).astimezone()  # [Params] Date + StartTime, local time


def check_real_rri(store, sid, path):
    rr = _text_numbers(path)
    assert rr[-1] == 0 and 0 not in rr[:-1]
    beats = store.beats(sid)
    np.testing.assert_array_equal(beats.rr_ms, rr[:-1])  # the trailing 0 is not an interval; nothing else is lost
    notes = store.session(sid).settings["import_notes"]
    assert any("0 (line 772)" in n for n in notes)


def check_fit(store, sid, path):
    import fitdecode

    rr = []
    with fitdecode.FitReader(str(path)) as reader:
        for frame in reader:
            if isinstance(frame, fitdecode.FitDataMessage) and frame.name == "hrv":
                rr += [v * 1000 for v in frame.get_value("time") if v is not None]
    beats = store.beats(sid)
    assert len(rr) == 62
    np.testing.assert_allclose(beats.rr_ms, rr)
    assert datetime.fromisoformat(store.session(sid).started_utc) == datetime(2017, 6, 11, 14, 32, 51, tzinfo=UTC)


def check_psl_hr(store, sid, path):
    rows = [line.split(";") for line in path.read_text().splitlines()[1:]]
    t, hr = store.heart_rate(sid)
    assert len(hr) == len(rows) == 548 and t[0] == 0 and t[-1] == pytest.approx(546.964)
    assert hr.tolist() == [float(r[1]) for r in rows]
    contact = [c for (c,) in store.connection.execute("SELECT contact FROM heart_rate WHERE session_id=? ORDER BY t",
                                                      (sid,))]  # fmt: skip
    assert contact.count("supported_not_detected") == sum(r[1] == "0" for r in rows) == 73
    assert store.counts(sid)["beats"] == 0


def check_psl_ppi(store, sid, path):
    rows = [line.split(";") for line in path.read_text().splitlines()[1:]]
    valid = [float(r[1]) for r in rows if r[3] == "0"]  # blocker 0: the sensor's valid intervals
    beats = store.beats(sid)
    assert len(valid) == 421
    np.testing.assert_array_equal(beats.rr_ms, valid)  # PP intervals as beats, not taken for heart rate
    assert store.heart_rate(sid)[0].size == 0
    assert np.all(np.diff(beats.t) > 0)
    # within a stretch beats are spaced exactly by their intervals
    inside = ~beats.gap_before[1:]
    np.testing.assert_allclose(np.diff(beats.t)[inside], beats.rr_ms[1:][inside] / 1000, atol=1e-9)
    notes = " | ".join(store.session(sid).settings["import_notes"])
    assert "line 69: the phone timestamp steps back 0.114 s" in notes
    assert "line 130: the phone timestamp steps back 3.065 s" in notes


FILES = {
    "welltory_subject_01_RR.txt": ("rr", check_welltory),
    "empatica_IBI.csv": ("rr", check_empatica),
    "polar_test_file_2.hrm": ("rr", check_hrm),
    "hrv_real_rri.txt": ("rr", check_real_rri),
    "garmin-fenix-5-walk.fit": ("rr", check_fit),
    "Polar_Sense_HR.txt": ("polar", check_psl_hr),
    "Polar_Sense_PPI.txt": ("polar", check_psl_ppi),
    "Polar_Sense_ACC.txt": ("polar", r"accelerometer at 51\.7 Hz is not a Polar H10 chest strap's"),
    "MARKER.txt": ("polar", r"only markers: import them together with the recording's HR, RR, PPI or ECG files"),
}


def test_the_table_covers_every_file_in_formats(shared_data):
    assert {p.name for p in _formats(shared_data).iterdir() if p.is_file()} == set(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_each_real_file_is_imported_or_refused_in_one_line(shared_data, store_path, name):
    path = _formats(shared_data) / name
    how, expect = FILES[name]
    with Store(store_path) as store:
        if callable(expect):
            sid = (import_rr if how == "rr" else lambda s, p, who: import_polar(s, [p], who))(store, path, "P01")
            assert store.session(sid).state == "imported"
            expect(store, sid, path)
        else:
            with pytest.raises(ImportFormatError, match=expect) as err:
                (import_rr if how == "rr" else lambda s, p, who: import_polar(s, [p], who))(store, path, "P01")
            assert "\n" not in str(err.value)
            assert store.sessions() == []


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("command", ["rr", "polar"])
def test_the_command_line_never_shows_a_traceback(shared_data, tmp_path, capsys, name, command):
    """Both import commands on every file: a session or one `error:` line, exit status 0 or 2."""
    path = _formats(shared_data) / name
    rc = app.main(["import", command, str(path), "--participant", "P01", "--store", str(tmp_path / "s.sqlite")])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if rc == 0:
        assert out.startswith("imported session 1 ")
        assert err.splitlines()[-1] == f"progress: import of {path} 2/2 done" and err.count("error") == 0  # stderr
        assert all(line.startswith("progress: ") for line in err.splitlines())  # has progress only, stdout none
    else:
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert sniff(path.read_bytes()) != "text" or "expected" in err or "column" in err


def test_a_whole_polar_sensor_logger_recording(shared_data, store_path):
    """HR + PPI + ACC + MARKER of one Verity Sense recording: the marked span is a phase, the arm ACC is refused."""
    d = _formats(shared_data)
    with Store(store_path) as store:
        sid = import_polar(store, [d / "Polar_Sense_HR.txt", d / "Polar_Sense_PPI.txt", d / "Polar_Sense_ACC.txt",
                                   d / "MARKER.txt"], "P01")  # fmt: skip
        phases = [(m.kind, m.phase_name, round(m.t, 3)) for m in store.markers(sid)]
        notes = " | ".join(store.session(sid).settings["import_notes"])
        counts = store.counts(sid)
        first_hr = datetime.fromisoformat(store.session(sid).started_utc)
    # MARKER_START 11:40:02.383 and MARKER_STOP 11:48:03.398; the session starts with the HR file (11:39:02.323)
    assert phases == [("phase_start", "marked 1", 60.06), ("phase_end", "marked 1", 541.075)]
    assert first_hr.replace(tzinfo=None) == datetime(2022, 4, 25, 11, 39, 2, 323000).astimezone().replace(tzinfo=None) \
        or first_hr == datetime(2022, 4, 25, 11, 39, 2, 323000).astimezone()  # fmt: skip
    assert counts["beats"] == 421 and counts["acc_chunks"] == 0
    assert "Polar_Sense_ACC.txt: accelerometer of an optical sensor" in notes


# -- generated edge cases ------------------------------------------------------------------------------------------


def _import_text(store, tmp_path, text, name="rr.txt", **kw):
    path = tmp_path / name
    path.write_text(text)
    sid = import_rr(store, path, "P02", **kw)
    return sid, store.beats(sid), store.session(sid).settings["import_notes"]


def test_decimal_commas(store_path, tmp_path):
    with Store(store_path) as store:
        _, beats, notes = _import_text(store, tmp_path, "812,5\n798,25\n805,0\n")
        assert beats.rr_ms.tolist() == [812.5, 798.25, 805.0] and "decimal commas" in notes[0]
        _, beats, _ = _import_text(store, tmp_path, "t_s;rr_ms\n0,8125;812,5\n1,61075;798,25\n", name="b.csv")
        assert beats.rr_ms.tolist() == [812.5, 798.25]
        np.testing.assert_allclose(beats.t, [0.8125, 1.61075])


def test_zeros_are_gaps_not_refusals(store_path, tmp_path):
    with Store(store_path) as store:
        _, beats, notes = _import_text(store, tmp_path, "800\n810\n0\n820\n830\n0\n")
    assert beats.rr_ms.tolist() == [800, 810, 820, 830]
    assert beats.gap_before.tolist() == [True, False, True, False]
    assert np.all(np.diff(beats.t) > 0)
    assert notes[0].startswith("2 value(s) of 0 (2 lines, first 3)")


def test_a_time_column_with_a_gap_keeps_the_gap_and_the_start_time(store_path, tmp_path):
    rng = np.random.default_rng(3)
    rr = rng.normal(850, 40, 200).round()
    t = 1_700_000_000 + np.cumsum(rr) / 1000  # Unix beat times
    keep = np.r_[0:90, 100:200]  # ten beats missing: 8.5 s without intervals
    jitter = rng.uniform(0, 0.3, len(keep))  # an app that stamps rows on arrival, up to 0.3 s late
    lines = ["timestamp,rr_ms"] + [f"{t[i] + j:.3f},{rr[i]:g}" for i, j in zip(keep, jitter, strict=True)]
    with Store(store_path) as store:
        sid, beats, notes = _import_text(store, tmp_path, "\n".join(lines) + "\n", name="t.csv")
        started = datetime.fromisoformat(store.session(sid).started_utc)
    np.testing.assert_array_equal(beats.rr_ms, rr[keep])
    assert np.flatnonzero(beats.gap_before).tolist() == [0, 90]
    # the gap is not stitched over: the second stretch starts where the file puts it
    assert beats.t[90] - beats.t[89] == pytest.approx(t[100] - t[89], abs=0.3)
    first_interval_start = datetime.fromtimestamp(t[0] - rr[0] / 1000, UTC)
    assert abs((started - first_interval_start).total_seconds()) < 0.3
    assert any("1 where the times run ahead of the RR sum" in n for n in notes)


def test_unit_seconds(store_path, tmp_path):
    with Store(store_path) as store:
        _, beats, _ = _import_text(store, tmp_path, "0.8\n0.81\n0.79\n", unit="s")
        assert beats.rr_ms.tolist() == pytest.approx([800, 810, 790])
        with pytest.raises(ImportFormatError, match=r"look like seconds, not ms: give --unit s"):
            _import_text(store, tmp_path, "0.8\n0.81\n0.79\n")
        _, beats, _ = _import_text(store, tmp_path, "ibi_s\n0.8\n0.81\n", name="named.csv")  # the header says s
        assert beats.rr_ms.tolist() == pytest.approx([800, 810])


def test_unrecognised_files_get_one_line_saying_what_was_expected(store_path, tmp_path):
    with Store(store_path) as store:
        for text, message in [("hello world\nfoo\n", "several values on a line|is not a number"),
                              ("a,b,c\n1,2,3\n", r"no RR column in header \['a', 'b', 'c'\]; give one with --column"),
                              ("", "empty; expected RR intervals as one number per line")]:  # fmt: skip
            with pytest.raises(ImportFormatError, match=message) as err:
                _import_text(store, tmp_path, text)
            assert "\n" not in str(err.value)
        path = tmp_path / "blob.bin"
        path.write_bytes(bytes(range(256)) * 4)
        with pytest.raises(ImportFormatError, match="not a text file and not FIT or XDF; expected"):
            import_rr(store, path, "P02")
        assert store.sessions() == []


def test_hrm_with_heart_rate_samples_is_refused(shared_data, store_path, tmp_path):
    text = (_formats(shared_data) / "polar_test_file_2.hrm").read_text().replace("Interval=238", "Interval=5")
    with Store(store_path) as store, pytest.raises(ImportFormatError, match=r"heart rate every 5 s, not RR intervals"):
        _import_text(store, tmp_path, text, name="hr.hrm")


def _psl_rr(rows: list[tuple[datetime, int]]) -> str:
    return "Phone timestamp;RR-interval [ms]\n" + "".join(f"{p.isoformat(timespec='milliseconds')};{v}\n"
                                                          for p, v in rows)  # fmt: skip


def test_psl_rr_with_a_phone_clock_stepping_back(store_path, tmp_path):
    p0 = datetime(2025, 3, 7, 10, 0, 0)
    rr = [800 + 10 * (i % 5) for i in range(120)]
    t = np.cumsum(rr) / 1000
    stamps = [p0 + timedelta(seconds=float(x) + 0.05) for x in t]
    stamps[60] -= timedelta(seconds=1.5)  # the phone's clock steps back once (an NTP correction)
    stamps[61:] = [s - timedelta(seconds=1.5) for s in stamps[61:]]
    path = tmp_path / "x_RR.txt"
    path.write_text(_psl_rr(list(zip(stamps, rr, strict=True))))
    with Store(store_path) as store:
        sid = import_polar(store, [path], "P03")
        beats = store.beats(sid)
        notes = store.session(sid).settings["import_notes"]
    np.testing.assert_array_equal(beats.rr_ms, rr)
    assert np.all(np.diff(beats.t) > 0)
    assert any(re.search(r"line 62: the phone timestamp steps back 0\.700 s \(tolerated\)", n) for n in notes)


def test_two_files_of_beats_are_not_mixed_into_one_session(shared_data, store_path, tmp_path):
    other = tmp_path / "copy_PPI.txt"
    other.write_text((_formats(shared_data) / "Polar_Sense_PPI.txt").read_text())
    with Store(store_path) as store, pytest.raises(ImportFormatError, match="several files of beats in one recording"):
        import_polar(store, [_formats(shared_data) / "Polar_Sense_PPI.txt", other], "P03")


def test_h10_accelerometer_goes_into_acc_chunks(store_path, tmp_path):
    p0 = datetime(2025, 3, 7, 10, 0, 0)
    ns0 = 800_000_000_000_000_000
    n = 50 * 70
    lines = ["Phone timestamp;sensor timestamp [ns];X [mg];Y [mg];Z [mg]"]
    for i in range(n):
        z = round(-1000 + 30 * np.sin(2 * np.pi * 0.25 * i / 50))
        lines.append(f"{(p0 + timedelta(seconds=i / 50 + 0.03)).isoformat(timespec='milliseconds')};"
                     f"{ns0 + i * 20_000_000};5;-12;{z}")  # fmt: skip
    path = tmp_path / "h10_ACC.txt"
    path.write_text("\n".join(lines) + "\n")
    with Store(store_path) as store:
        sid = import_polar(store, [path], "P04")
        chunks = store.acc_chunks(sid)
    xyz = np.concatenate([c[3] for c in chunks])
    assert xyz.shape == (n, 3) and {c[2] for c in chunks} == {50.0}
    assert xyz[:3].tolist() == [[5, -12, -1000], [5, -12, round(-1000 + 30 * np.sin(2 * np.pi * 0.25 / 50))],
                                [5, -12, round(-1000 + 30 * np.sin(2 * np.pi * 0.5 / 50))]]  # fmt: skip


# -- XDF recorded by LabRecorder -----------------------------------------------------------------------------------


_RECORD_XDF = """
import gc, json, sys, time
import numpy as np, pylsl, labrecorder
tag, xdf = sys.argv[1], sys.argv[2]
rr = json.loads(sys.argv[3])
rr_out = pylsl.StreamOutlet(pylsl.StreamInfo("Test-RR", "RR", 2, pylsl.IRREGULAR_RATE, pylsl.cf_float32, "rr-" + tag))
mk_out = pylsl.StreamOutlet(pylsl.StreamInfo("Test-Markers", "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string,
                                             "mk-" + tag))
ecg_out = pylsl.StreamOutlet(pylsl.StreamInfo("Test-ECG", "ECG", 1, 130.0, pylsl.cf_float32, "ecg-" + tag))
found = [pylsl.resolve_byprop("source_id", k + "-" + tag, timeout=5)[0] for k in ("rr", "mk", "ecg")]
rec = labrecorder.Recording(xdf, found)  # collect_offsets=False crashes this build's stop()
time.sleep(1.0)
t0 = pylsl.local_clock()
beat = t0 + np.cumsum(rr) / 1000
beat[20:] += 3.0  # three seconds without beats: the stream's gap flag says so
for i, (v, ts) in enumerate(zip(rr, beat)):
    rr_out.push_sample([v, 1.0 if i == 20 else 0.0], ts)
mk_out.push_sample(["phase_start: baseline"], t0 + 1.0)
mk_out.push_sample(["cough"], t0 + 5.0)
mk_out.push_sample(["phase_end: baseline"], float(beat[-1]))
ecg = (400 * np.sin(np.arange(1300) / 7.0)).round()
for i, v in enumerate(ecg):
    ecg_out.push_sample([float(v)], t0 + i / 130.0)
time.sleep(1.0)
rec.stop()
del rec
gc.collect()
print(json.dumps({"t0": t0, "beat": beat.tolist(), "ecg": ecg.tolist()}))
"""


@pytest.mark.slow
def test_xdf_from_labrecorder_rr_and_markers(store_path, tmp_path):
    """Real LSL outlets (RR with a gap flag, ECG, Markers) recorded by LabRecorder (its Python bindings, in a child
    process), read by `import rr`."""
    pytest.importorskip("labrecorder", reason="pip install 'labrecorder>=1.0.0rc0' to record XDF with LabRecorder")
    import json
    import subprocess
    import sys

    xdf = tmp_path / "recording.xdf"
    rr = [800.0 + 5 * (i % 7) for i in range(40)]
    done = subprocess.run([sys.executable, "-c", _RECORD_XDF, f"{os.getpid()}-{id(xdf)}", str(xdf), json.dumps(rr)],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    sent = json.loads(done.stdout.strip().splitlines()[-1])
    beat, t0 = np.array(sent["beat"]), sent["t0"]
    with Store(store_path) as store:
        sid = import_rr(store, xdf, "P05")
        beats = store.beats(sid)
        markers = [(m.kind, m.label, m.t) for m in store.markers(sid)]
        info = store.session(sid)
        chunks = store.ecg_chunks(sid)
    assert info.settings["format"] == "XDF (LabRecorder)"
    np.testing.assert_array_equal(np.concatenate([c[3] for c in chunks]), sent["ecg"])
    assert chunks[0][2] == pytest.approx(130.0, abs=0.01)
    np.testing.assert_array_equal(beats.rr_ms, rr)
    assert np.flatnonzero(beats.gap_before).tolist() == [0, 20]
    # session clock 0 = start of the first interval; beats and markers keep their LSL spacing
    zero = beat[0] - rr[0] / 1000
    np.testing.assert_allclose(beats.t, beat - zero, atol=1e-3)
    (start, point, end) = sorted(markers, key=lambda m: m[2])
    assert start[:2] == ("phase_start", "baseline") and end[:2] == ("phase_end", "baseline")
    assert point[:2] == ("manual", "cough") and point[2] == pytest.approx(t0 + 5.0 - zero, abs=1e-3)
