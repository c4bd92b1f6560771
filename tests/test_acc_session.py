"""Chest-movement breathing end to end: simulated ACC frames, decode and store, per-phase rate in the analysis."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from biofeedback.analysis.analyze import acc_timeline, analyze_session, phase_acc_rate, phase_windows
from biofeedback.analysis.hrv import analyze_phases
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.ble import ACC_SAMPLE_RATE_HZ
from devices.link import PMD_CONTROL_POINT_UUID, PMD_DATA_UUID
from devices.physiology import SimParticipant
from devices.polar_pmd import decode_pmd_frame, encode_acc_frame
from devices.simulator import ACC_FS_HZ as SIM_ACC_FS_HZ
from devices.virtual_time import LoopClock, run_virtual
from protocols.library import get_protocol
from recordings.decode import ACC_FS_HZ, decode_packets, redecode_session
from recordings.ecg_time import EcgTimeline
from recordings.store import Store

ROOT = Path(__file__).resolve().parents[1]


def record(path: Path, participant: SimParticipant) -> tuple[Store, int, object]:
    """cmt-soothing (25 min: spontaneous phases and a 6/min paced one) with ACC, on virtual time."""
    store = Store(path)
    session = build_session(
        store, get_protocol("cmt-soothing"), parse_device_specs(["sim"], "P01"), clock=LoopClock(), acc=True,
        participants={"P01": participant}, keep_history=True,
    )  # fmt: skip
    (sid,) = run_virtual(session.run())
    return store, sid, session.straps[0].binding.link


def true_rate_bpm(strap, start_s: float, end_s: float) -> float:
    """Breaths per minute the simulated participant took: rising zero crossings of the model's lung volume."""
    t = np.arange(start_s, end_s, 0.05)
    lung = np.asarray(strap.model.breathing_signal(t))
    rising = np.flatnonzero((lung[:-1] < 0) & (lung[1:] >= 0))
    return 60.0 * (len(rising) - 1) / float(t[rising[-1]] - t[rising[0]])


@pytest.fixture(scope="module")
def complying(tmp_path_factory):
    store, sid, strap = record(tmp_path_factory.mktemp("acc") / "store.sqlite", SimParticipant(seed=3))
    yield store, sid, strap
    store.close()


def test_simulated_acc_is_stored_at_50_hz_with_gravity_and_breathing(complying):
    store, sid, strap = complying
    assert SIM_ACC_FS_HZ == ACC_FS_HZ == ACC_SAMPLE_RATE_HZ
    chunks = store.acc_chunks(sid)
    n = sum(len(c[3]) for c in chunks)
    duration = get_protocol("cmt-soothing").total_duration_s
    assert n == pytest.approx(duration * ACC_FS_HZ, rel=0.01)
    acc = acc_timeline(store, sid)
    assert acc.fs_hz == pytest.approx(ACC_FS_HZ * (1 + strap.device_clock_drift_ppm * 1e-6), rel=1e-4)
    assert acc.n_segments == 1
    gravity = np.linalg.norm(np.median(acc.uv, axis=0))
    assert 950 < gravity < 1050
    # chest movement along the simulated direction follows the model's lung volume
    along = (acc.uv - np.median(acc.uv, axis=0)) @ strap.acc_chest_direction
    lung = np.asarray(strap.model.breathing_signal(acc.t))
    assert np.corrcoef(along, lung)[0, 1] > 0.8
    assert np.std(along) == pytest.approx(strap.acc_breath_amplitude_mg * np.std(lung), rel=0.15)


def test_phase_breathing_rate_from_chest_movement_matches_the_simulated_breathing(complying):
    store, sid, strap = complying
    analysis = analyze_session(store, sid)
    acc = acc_timeline(store, sid)
    paced = spontaneous = 0
    for metrics, window in zip(analysis.phases, phase_windows(store, sid), strict=True):
        truth = true_rate_bpm(strap, window.start_s, window.end_s)
        rate, note = phase_acc_rate(acc, window.start_s, window.end_s)
        assert note is None
        assert rate == pytest.approx(truth, abs=0.5), window.name
        if window.pacer_rate_bpm is None:
            spontaneous += 1
            assert 9.0 < truth < 17.0
            assert metrics.breathing_rate_source == "acc"
            assert metrics.breathing_rate_bpm == rate
        else:
            paced += 1
            assert truth == pytest.approx(6.0, abs=0.5)
            assert metrics.breathing_rate_source == "pacer"
            assert not any("participant breathed" in n for n in metrics.notes)  # it followed the pacer
            assert any("moves RSA into LF" in n for n in metrics.notes)
    assert paced == 1 and spontaneous == 5
    assert analysis.quality["acc_seconds"] == pytest.approx(get_protocol("cmt-soothing").total_duration_s, rel=0.01)


@pytest.mark.parametrize("seed", [8, 11])
def test_wandering_spontaneous_rates_are_counted_not_guessed_from_the_spectrum(seed, tmp_path):
    store, sid, strap = record(tmp_path / "s.sqlite", SimParticipant(seed=seed))
    acc = acc_timeline(store, sid)
    for window in phase_windows(store, sid):
        truth = true_rate_bpm(strap, window.start_s, window.end_s)
        rate, _note = phase_acc_rate(acc, window.start_s, window.end_s)
        assert rate == pytest.approx(truth, abs=0.5), window.name
    store.close()


def test_participant_ignoring_the_pacer_gets_a_neutral_note_and_no_slow_breathing_flag(tmp_path):
    store, sid, strap = record(tmp_path / "s.sqlite", SimParticipant(seed=5, complies_with_pacer=False))
    with store:
        analysis = analyze_session(store, sid)
        (paced,) = [p for p in analysis.phases if p.kind == "breathing"]
        (window,) = [w for w in phase_windows(store, sid) if w.kind == "breathing"]
    truth = true_rate_bpm(strap, window.start_s, window.end_s)
    assert paced.breathing_rate_source == "pacer" and paced.breathing_rate_bpm == 6.0
    (note,) = [n for n in paced.notes if n.startswith("participant breathed at ~")]
    breathed = float(note.removeprefix("participant breathed at ~").split("/min")[0])
    assert breathed == pytest.approx(truth, abs=1.0)
    assert note.endswith(", pacer 6/min")
    assert not any("moves RSA into LF" in n for n in paced.notes)  # HF judged on how they actually breathed


def test_session_without_acc_keeps_rsa_and_pacer_sources(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    session = build_session(store, get_protocol("rest-5min"), parse_device_specs(["sim"], "P01"), clock=LoopClock())
    (sid,) = run_virtual(session.run())
    with store:
        analysis = analyze_session(store, sid)
        assert store.acc_chunks(sid) == []
    assert {p.breathing_rate_source for p in analysis.phases} <= {"rsa", "pacer", None}
    assert analysis.quality["acc_seconds"] == 0.0


def test_short_acc_stretch_is_not_used_and_says_why():
    t = np.arange(0, 45, 1 / 50)
    samples = np.stack([np.zeros_like(t), -1000 + 10 * np.sin(2 * np.pi * 0.25 * t), np.zeros_like(t)], axis=1)
    acc = EcgTimeline(t=t, uv=samples, segment=np.zeros(len(t), int), fs_hz=50.0, fs_device_hz=50.0,
                      nominal_fs_hz=50.0, drift_ppm=0.0, min_latency_s=0.0, median_latency_s=0.0)  # fmt: skip
    rate, note = phase_acc_rate(acc, 0.0, 45.0)
    assert rate is None and "needs ≥ 60 s" in note
    longer = EcgTimeline(t=np.arange(0, 90, 1 / 50), uv=np.tile(samples, (2, 1)), segment=np.zeros(4500, int),
                         fs_hz=50.0, fs_device_hz=50.0, nominal_fs_hz=50.0, drift_ppm=0.0, min_latency_s=0.0,
                         median_latency_s=0.0)  # fmt: skip
    rate, note = phase_acc_rate(longer, 0.0, 90.0)
    assert note is None and rate == pytest.approx(15.0, abs=0.5)


# -- hrv: the "acc" source ----------------------------------------------------------------------------------


def _rsa_beats(seconds: float = 300.0, breath_hz: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    t, out_t, out_rr = 0.0, [], []
    while t < seconds:
        rr = 0.9 + 0.05 * np.sin(2 * np.pi * breath_hz * t)
        t += rr
        out_t.append(t)
        out_rr.append(rr * 1000)
    return np.array(out_t), np.array(out_rr)


def test_analyze_phases_prefers_pacer_then_acc_then_rsa():
    t, rr = _rsa_beats()
    phases = [("a", "rest", 0.0, 150.0, None), ("b", "rest", 150.0, 300.0, None), ("c", "breathing", 0, 300, 6.0)]
    m = analyze_phases(t, rr, phases, correction="none", acc_rates=[8.0, None, 14.0])
    assert (m[0].breathing_rate_source, m[0].breathing_rate_bpm) == ("acc", 8.0)
    assert any("~8.0/min moves RSA into LF" in n for n in m[0].notes)
    assert m[1].breathing_rate_source == "rsa" and m[1].breathing_rate_bpm == pytest.approx(15.0, abs=1.0)
    assert (m[2].breathing_rate_source, m[2].breathing_rate_bpm) == ("pacer", 6.0)
    assert "participant breathed at ~14.0/min, pacer 6/min" in m[2].notes
    assert not any("moves RSA into LF" in n for n in m[2].notes)
    close = analyze_phases(t, rr, phases[2:], correction="none", acc_rates=[7.4])[0]
    assert not any("participant breathed" in n for n in close.notes)  # within 1.5/min of the pacer
    assert any("~7.4/min moves RSA into LF" in n for n in close.notes)


@pytest.mark.parametrize(("rates", "message"), [([8.0], "1 values for 2 phases"), ([0.0, None], "acc_rates\\[0\\]"),
                                                ([None, float("nan")], "acc_rates\\[1\\]")])  # fmt: skip
def test_analyze_phases_rejects_bad_acc_rates(rates, message):
    t, rr = _rsa_beats(130.0)
    phases = [("a", "rest", 0.0, 60.0, None), ("b", "rest", 60.0, 120.0, None)]
    with pytest.raises(ValueError, match=message):
        analyze_phases(t, rr, phases, correction="none", acc_rates=rates)


# -- decode and store ---------------------------------------------------------------------------------------


def _acc_start_response(factor: float) -> bytes:
    return bytes([0xF0, 0x02, 0x02, 0x00, 0x00, 0x05, 0x01]) + struct.pack("<f", factor)


def test_store_round_trip_and_bad_shapes(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        sid = store.create_session("P01", "test", {}, "sim-1")
        a = np.array([[1, -2, 1000], [-32768, 32767, 5]], dtype=np.int32)
        b = np.array([[7, 8, 9]], dtype=np.int64)
        store.add_acc_chunk(sid, 2.0, 2_000, 50.0, b, 2)
        store.add_acc_chunk(sid, 1.0, 1_000, 50.0, a, 1)
        store.flush()
        chunks = store.acc_chunks(sid)
        assert [(t, ns, fs) for t, ns, fs, _ in chunks] == [(1.0, 1_000, 50.0), (2.0, 2_000, 50.0)]
        np.testing.assert_array_equal(chunks[0][3], a)
        np.testing.assert_array_equal(chunks[1][3], b)
        assert store.counts(sid)["acc_chunks"] == 2
        for bad in (np.zeros((3,), int), np.zeros((0, 3), int), np.zeros((2, 2), int), np.full((1, 3), 2**31)):
            with pytest.raises(ValueError, match="ACC samples"):
                store.add_acc_chunk(sid, 3.0, 3_000, 50.0, bad, None)


def test_decoder_uses_the_stored_factor_for_compressed_frames_and_keeps_raw_without_one(tmp_path):
    mg = np.array([[10, -1000, 3], [12, -998, 1], [9, -1003, 4]])
    raw = encode_acc_frame(5_000, mg)
    compressed1 = encode_acc_frame(6_000, mg, compressed=True)  # type 0x81: mG, scaled by a factor when known
    compressed0 = bytearray(encode_acc_frame(7_000, mg, compressed=True))
    compressed0[9] = 0x80  # type 0x80: units of FACTOR g, undecodable without it
    with Store(tmp_path / "s.sqlite") as store:
        sid = store.create_session("P01", "test", {}, "sim-1")
        packets = [
            (1, 0.5, PMD_DATA_UUID, bytes(compressed0)),  # before any start response: kept raw, reason recorded
            (2, 0.55, PMD_DATA_UUID, compressed1),  # decodes without a factor (mG)
            (3, 0.6, PMD_CONTROL_POINT_UUID, bytes([0x0F, 0x05, 0x00])),  # feature read: not a response
            (4, 0.7, PMD_CONTROL_POINT_UUID, _acc_start_response(0.002)),  # 2 mG per unit
            (5, 1.0, PMD_DATA_UUID, raw),
            (6, 1.1, PMD_DATA_UUID, compressed1),
            (7, 1.2, PMD_DATA_UUID, bytes(compressed0)),
        ]
        for pid, t, uuid, data in packets:
            assert store.add_packet(sid, t, uuid, data) == pid
        counts = decode_packets(store, sid, [(p, t, u, d) for p, t, u, d in packets])
        store.flush()
        assert counts.acc_samples == 12 and counts.unknown == 1 and counts.malformed == 0
        (error,) = store.packet_errors(sid)
        assert error[0] == 1 and "needs the FACTOR" in error[1]
        chunks = store.acc_chunks(sid)  # in device-time order
        assert [(c[0], c[1]) for c in chunks] == [(1.0, 5_000), (0.55, 6_000), (1.1, 6_000), (1.2, 7_000)]
        assert all(c[2] == ACC_FS_HZ for c in chunks)
        np.testing.assert_array_equal(chunks[0][3], mg)
        np.testing.assert_array_equal(chunks[1][3], mg)
        # once the start response gave a factor, compressed frames are scaled by it (as the Polar SDK does)
        np.testing.assert_array_equal(chunks[2][3], decode_pmd_frame(compressed1, acc_factor=0.002).samples_mg)
        expected = decode_pmd_frame(bytes(compressed0), acc_factor=0.002).samples_mg
        np.testing.assert_array_equal(chunks[3][3], expected)
        np.testing.assert_allclose(chunks[3][3], 2 * mg, atol=1)
        # re-decoding the raw layer gives the same decoded layer
        redecode_session(store, sid)
        again = store.acc_chunks(sid)
        assert len(again) == 4 and all(np.array_equal(a[3], c[3]) for a, c in zip(again, chunks, strict=True))


@pytest.mark.parametrize("factor", [0.0, 1e37, -1e5])
def test_unusable_factor_is_reported_not_used(tmp_path, factor):
    with Store(tmp_path / "s.sqlite") as store:
        sid = store.create_session("P01", "test", {}, "sim-1")
        frame = bytearray(encode_acc_frame(7_000, [[1, 2, 3], [2, 3, 4]], compressed=True))
        frame[9] = 0x80
        packets = [(1, 0.1, PMD_CONTROL_POINT_UUID, _acc_start_response(factor)), (2, 0.2, PMD_DATA_UUID, bytes(frame))]
        for _pid, t, uuid, data in packets:
            store.add_packet(sid, t, uuid, data)
        decode_packets(store, sid, packets)
        store.flush()
        errors = [e for _p, e in store.packet_errors(sid)]
        assert any("ACC start response FACTOR" in e and "is unusable" in e for e in errors)  # refused there
        assert any("needs the FACTOR" in e for e in errors)
        assert store.acc_chunks(sid) == []


def test_cli_session_run_with_acc_records_accelerometer(tmp_path):
    store_path = tmp_path / "store.sqlite"
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "session", "run", "--participant", "P01", "--protocol", "rest-5min",
         "--device", "sim", "--acc", "--speed", "300", "--headless", "--store", str(store_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Store(store_path) as store:
        (info,) = store.sessions()
        assert store.counts(info.id)["acc_chunks"] > 300 * ACC_FS_HZ / 36 * 0.9
        (phase,) = analyze_session(store, info.id).phases
    assert phase.breathing_rate_source == "acc"
