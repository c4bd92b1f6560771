"""Polar PMD: Polar BLE SDK test vectors, real H10 ECG round trip, malformed frames and fuzzing."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import DecodeError
from devices.heart_rate import decode_heart_rate
from devices.polar_pmd import (
    POLAR_EPOCH,
    AccFrame,
    ControlOpCode,
    ControlResponse,
    EcgFrame,
    MeasurementType,
    PmdControlError,
    ResponseCode,
    SettingType,
    UnknownFrame,
    datetime_to_pmd_time,
    decode_control_response,
    decode_features,
    decode_pmd_frame,
    decode_settings,
    ecg_settings_request,
    encode_acc_frame,
    encode_control_response,
    encode_ecg_frame,
    encode_features,
    encode_settings,
    pmd_time_to_datetime,
    raise_for_response,
    settings_request,
    start_acc_request,
    start_ecg_request,
    start_request,
    stop_request,
)

TS_2E9 = "00 94 35 77 00 00 00 00"  # 2,000,000,000 ns, little endian


def _raises(fn, data: bytes, field: str, offset: int) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        fn(data)
    assert (info.value.field, info.value.offset) == (field, offset), str(info.value)
    assert data.hex(" ") in str(info.value)
    return info.value


# ------------------------------------------------------------------ control point


def test_request_builders() -> None:
    assert ecg_settings_request() == bytes.fromhex("01 00")
    assert settings_request(MeasurementType.ACC) == bytes.fromhex("01 02")
    assert start_ecg_request() == bytes.fromhex("02 00 00 01 82 00 01 01 0e 00")
    assert start_acc_request(sample_rate=200, resolution=16, range_g=8) == bytes.fromhex(
        "02 02 00 01 c8 00 01 01 10 00 02 01 08 00")
    assert stop_request(MeasurementType.ECG) == bytes.fromhex("03 00")
    assert stop_request(MeasurementType.ACC) == bytes.fromhex("03 02")


def test_start_request_channels_is_one_byte() -> None:
    assert start_request(MeasurementType.PPG, {SettingType.CHANNELS: 4}) == bytes.fromhex("02 01 04 01 04")


@pytest.mark.parametrize(
    ("settings", "message"),
    [({SettingType.FACTOR: 1}, "FACTOR"), ({SettingType.SAMPLE_RATE: 70000}, "SAMPLE_RATE"),
     ({SettingType.CHANNELS: -1}, "CHANNELS")],
)
def test_start_request_rejects_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        start_request(MeasurementType.ECG, settings)


def test_features_bit_n_is_measurement_type_n() -> None:
    assert decode_features(bytes.fromhex("0f 05 00")) == {MeasurementType.ECG, MeasurementType.ACC}
    # bits as the Polar SDK reads them: byte 1 0x20 gyro, 0x40 magnetometer; byte 2 0x08 pressure, 0x02 SDK
    assert decode_features(bytes.fromhex("0f 60 0a")) == {
        MeasurementType.GYRO, MeasurementType.MAGNETOMETER, MeasurementType.PRESSURE,
        MeasurementType.SDK_MODE}
    assert decode_features(bytes.fromhex("0f 10")) == frozenset()  # bit 4 is no known type


def test_features_malformed() -> None:
    _raises(decode_features, b"", "features", 0)
    _raises(decode_features, b"\x0f", "features", 1)
    _raises(decode_features, bytes.fromhex("f0 05"), "feature_code", 0)


def test_control_response_sdk_vector_success() -> None:
    r = decode_control_response(bytes.fromhex("f0 01 02 00 00 ff ff ff"))
    assert r == ControlResponse(opcode=ControlOpCode.GET_MEASUREMENT_SETTINGS,
                                measurement_type=MeasurementType.ACC, error_code=0, more=False,
                                parameters=b"\xff\xff\xff")
    assert r.ok and r.error_message == "SUCCESS"
    assert raise_for_response(r) is r


def test_control_response_sdk_vector_failure_raises_clear_error() -> None:
    r = decode_control_response(bytes.fromhex("f0 01 06 07 00"))
    assert not r.ok
    assert r.error_message == "INVALID_RESOLUTION"
    with pytest.raises(PmdControlError) as info:
        raise_for_response(r)
    msg = str(info.value)
    assert "INVALID_RESOLUTION" in msg and "MAGNETOMETER" in msg and "GET_MEASUREMENT_SETTINGS" in msg
    assert info.value.response is r


def test_control_response_more_flag_and_short_form() -> None:
    assert decode_control_response(bytes.fromhex("f0 02 00 00 01 05 01 00 00 80 3f")).more
    short = decode_control_response(bytes.fromhex("f0 02 00 06"))
    assert (short.more, short.parameters, short.error_message) == (False, b"", "ALREADY_IN_STATE")


def test_error_messages_for_all_codes() -> None:
    names = ["SUCCESS", "INVALID_OP_CODE", "INVALID_MEASUREMENT_TYPE", "NOT_SUPPORTED", "INVALID_LENGTH",
             "INVALID_PARAMETER", "ALREADY_IN_STATE", "INVALID_RESOLUTION", "INVALID_SAMPLE_RATE",
             "INVALID_RANGE", "INVALID_MTU", "INVALID_NUMBER_OF_CHANNELS", "INVALID_STATE",
             "DEVICE_IN_CHARGER"]
    for code, name in enumerate(names):
        assert ControlResponse(2, 0, code, False, b"").error_message == name
    unknown = ControlResponse(2, 0x2A, 200, False, b"")
    assert unknown.error_message == "UNKNOWN_ERROR_200"
    with pytest.raises(PmdControlError, match=r"UNKNOWN_ERROR_200.*200"):
        raise_for_response(unknown)


def test_control_response_malformed() -> None:
    _raises(decode_control_response, b"", "response_code", 0)
    _raises(decode_control_response, bytes.fromhex("f0 02"), "measurement_type", 2)
    _raises(decode_control_response, bytes.fromhex("f0 02 00"), "error_code", 3)
    _raises(decode_control_response, bytes.fromhex("0f 02 00 00"), "response_code", 0)


def test_settings_sdk_vector() -> None:
    params = bytes.fromhex("00 01 34 00 01 01 10 00 02 04 f5 00 f4 01 e8 03 d0 07 04 01 03")
    assert decode_settings(params) == {"sample_rate": (52,), "resolution": (16,),
                                       "range": (245, 500, 1000, 2000), "channels": (3,)}


def test_settings_range_milliunit_is_signed_and_factor_is_float32() -> None:
    params = bytes.fromhex("03 02 ff ff ff ff ff 00 00 00 01 01 0e 00")
    assert decode_settings(params) == {"range_milliunit": (-1, 255), "resolution": (14,)}
    factor = bytes([SettingType.FACTOR, 1]) + struct.pack("<f", 2.44e-4)
    (value,) = decode_settings(factor)["factor"]
    assert value == pytest.approx(2.44e-4, rel=1e-6)


def test_settings_empty_and_lone_byte_are_no_settings() -> None:
    assert decode_settings(b"") == {}
    assert decode_settings(b"\x00") == {}  # as the Polar SDK treats it


def test_settings_malformed() -> None:
    _raises(decode_settings, bytes.fromhex("00 01 82 00 09 01 00"), "setting_type", 4)
    _raises(decode_settings, bytes.fromhex("00 01 82 00 01"), "RESOLUTION count", 5)
    _raises(decode_settings, bytes.fromhex("00 02 82 00 fa"), "SAMPLE_RATE values", 2)


def test_settings_round_trip_for_simulator() -> None:
    settings = {"sample_rate": (130,), "resolution": (14,)}
    params = encode_settings(settings)
    assert params == bytes.fromhex("00 01 82 00 01 01 0e 00")
    response = encode_control_response(ControlOpCode.GET_MEASUREMENT_SETTINGS, MeasurementType.ECG,
                                       parameters=params)
    assert decode_settings(decode_control_response(response).parameters) == settings


# ------------------------------------------------------------------ data frames


def test_ecg_sdk_vector() -> None:
    frame = decode_pmd_frame(bytes.fromhex(f"00 {TS_2E9} 00 02 80 ff 02 80 00"))
    assert isinstance(frame, EcgFrame)
    assert frame.timestamp_ns == 2_000_000_000
    assert frame.samples_uv.dtype == np.int32
    assert frame.samples_uv.tolist() == [-32766, 32770]
    assert pmd_time_to_datetime(frame.timestamp_ns) == datetime(2000, 1, 1, 0, 0, 2, tzinfo=UTC)


def test_ecg_int24_extremes_round_trip() -> None:
    samples = [-(1 << 23), -1, 0, 1, (1 << 23) - 1]
    data = encode_ecg_frame(7, samples)
    assert data[10:13] == bytes.fromhex("00 00 80") and data[-3:] == bytes.fromhex("ff ff 7f")
    assert decode_pmd_frame(data).samples_uv.tolist() == samples


def test_acc_raw_type1_sdk_vector() -> None:
    payload = "f7 ff ff ff e7 03 f8 ff fe ff e5 03"
    frame = decode_pmd_frame(bytes.fromhex(f"02 {TS_2E9} 01 {payload}"))
    assert isinstance(frame, AccFrame)
    assert frame.timestamp_ns == 2_000_000_000
    assert frame.samples_mg.tolist() == [[-9, -1, 999], [-8, -2, 997]]


def test_acc_raw_type0_and_type2_are_int8_and_int24() -> None:
    t0 = decode_pmd_frame(bytes.fromhex(f"02 {TS_2E9} 00 ff 7f 80 01 02 03"))
    assert t0.samples_mg.tolist() == [[-1, 127, -128], [1, 2, 3]]
    t2 = decode_pmd_frame(bytes.fromhex(f"02 {TS_2E9} 02 ff ff ff e8 03 00 00 00 80"))
    assert t2.samples_mg.tolist() == [[-1, 1000, -(1 << 23)]]


def test_acc_compressed_type1_sdk_vector() -> None:
    data = bytes.fromhex("02 65 00 00 00 00 00 00 00 81 f1 ff 14 00 f0 03 06 01 7b 0f 08")
    frame = decode_pmd_frame(data)
    assert isinstance(frame, AccFrame)
    assert frame.timestamp_ns == 101
    assert frame.samples_mg.tolist() == [[-15, 20, 1008], [-20, 17, 1008]]


# Polar BLE SDK AccDataTest "process acc compressed data type 0": 1 reference + 56 deltas of 10 bits.
_ACC_COMPRESSED_TYPE0 = (
    "71 07 f0 6a 9e 8d 0a 38 be 5c be ba 2f 96 b3 ee 4b e5 ad fb 42 b9 eb be 4c fe ba 2f 92 bf ee 4b"
    " e4 b1 fb 12 b9 ec bd 3c 3e bb 2f 8f d3 de 4b e3 b5 f7 d2 b8 ed bd 30 7e 7b 2f 8b e3 ce 8b e2 ba"
    " f7 a2 b8 ee bc 20 be 7b 2f 88 f3 ce cb e1 bd ef 52 f8 ef bc 18 fe 3b 2f 84 03 bf cb e0 c2 ef 32"
    " b8 f0 bb 04 4e bc 2e 81 13 af 0b e0 c6 ef f2 f7 f1 b9 fc 7d bc 2e 7d 27 9f 4b df ca eb c2 f7 f2"
    " b8 ec cd 7c 2e 7b 37 8f 4b de ce e3 92 f7 f3 b8 e0 0d fd 2d 77 4b 7f cb dd d2 df 62 37 f5 b7 d4"
    " 4d bd 2d 74 5b 6f cb dc d7 d7 32 37 f6 b5 c8 8d 7d 2d 71 6b 4f 4b dc dc d3 f2 36 f7 b4 bc dd fd"
    " 2c 6f 7b 3f 4b db e0 cf d2 36 f8 b2 b0 2d be 2c 6c 8f 1f cb da e3 c7 a2 76 f9"
)


def test_acc_compressed_type0_sdk_vector_needs_factor() -> None:
    data = bytes.fromhex(f"02 {TS_2E9} 80 {_ACC_COMPRESSED_TYPE0}")
    unknown = decode_pmd_frame(data)
    assert isinstance(unknown, UnknownFrame)
    assert unknown.data == data and unknown.frame_type == 0x80 and "FACTOR" in unknown.reason
    frame = decode_pmd_frame(data, acc_factor=2.44e-4)
    assert isinstance(frame, AccFrame)
    assert frame.samples_mg.shape == (57, 3)
    # raw reference (1905, 27376, -29282), then deltas (+190, -105, -85); mG = trunc(raw * 0.244)
    assert frame.samples_mg[0].tolist() == [464, 6679, -7144]
    assert frame.samples_mg[1].tolist() == [511, 6654, -7165]
    assert np.abs(frame.samples_mg).max() <= 8000  # the ±8 g range of the recording


def test_unknown_types_are_kept_raw_not_guessed() -> None:
    ppi = bytes.fromhex(f"03 {TS_2E9} 00 01 02 03 04 05 06")
    frame = decode_pmd_frame(ppi)
    assert frame == UnknownFrame(measurement_type=3, frame_type=0, timestamp_ns=2_000_000_000, data=ppi,
                                 reason=frame.reason)
    assert "PPI" in frame.reason
    for head in ("00", "02"):  # compressed ECG and unsupported ACC frame types
        for frame_type in ("80", "03", "82"):
            data = bytes.fromhex(f"{head} {TS_2E9} {frame_type} 01 02 03 04 05 06")
            got = decode_pmd_frame(data)
            assert isinstance(got, UnknownFrame) and got.data == data
            assert got.frame_type == int(frame_type, 16)


@pytest.mark.parametrize(
    ("hexstr", "field", "offset"),
    [
        ("", "measurement_type", 0),
        ("00 00 94", "timestamp", 3),
        (f"00 {TS_2E9}", "frame_type", 9),
        (f"00 {TS_2E9} 00", "ecg_samples", 10),
        (f"00 {TS_2E9} 00 02 80 ff 02", "ecg_samples", 13),
        (f"02 {TS_2E9} 01 f7 ff ff ff e7", "acc_samples", 10),
        (f"02 {TS_2E9} 01 f7 ff ff ff e7 03 f8", "acc_samples", 16),
        (f"02 {TS_2E9} 00 01 02", "acc_samples", 10),
        (f"02 {TS_2E9} 01", "acc_samples", 10),
        (f"02 {TS_2E9} 81 f1 ff 14 00 f0", "reference_sample", 10),
        (f"02 {TS_2E9} 81 f1 ff 14 00 f0 03 06", "delta_block_header", 16),
        (f"02 {TS_2E9} 81 f1 ff 14 00 f0 03 06 01 7b 0f", "delta_block", 18),
        (f"02 {TS_2E9} 81 f1 ff 14 00 f0 03 00 01 00", "delta_bit_width", 16),
        (f"02 {TS_2E9} 81 f1 ff 14 00 f0 03 21 01 00", "delta_bit_width", 16),
    ],
)
def test_malformed_frames(hexstr: str, field: str, offset: int) -> None:
    _raises(decode_pmd_frame, bytes.fromhex(hexstr), field, offset)


def test_bad_factor_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="acc_factor"):
        decode_pmd_frame(bytes.fromhex(f"02 {TS_2E9} 01 00 00 00 00 00 00"), acc_factor=float("nan"))


def test_time_conversions() -> None:
    assert pmd_time_to_datetime(0) == POLAR_EPOCH == datetime(2000, 1, 1, tzinfo=UTC)
    when = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
    assert pmd_time_to_datetime(datetime_to_pmd_time(when)) == when
    assert datetime_to_pmd_time(POLAR_EPOCH + timedelta(seconds=2)) == 2_000_000_000
    with pytest.raises(ValueError, match="aware"):
        datetime_to_pmd_time(datetime(2025, 1, 1))


def test_real_h10_ecg_round_trips_through_frames(shared_data) -> None:
    """10 min of real H10 ECG (mV, 130 Hz) → µV → 73-sample frames as the H10 sends → decoded identically."""
    import pandas as pd

    ecg_mv = pd.read_csv(shared_data / "polar_h10_detectpvc_ecg130hz_rr.csv")["ecg"]
    ecg_uv = np.rint(ecg_mv * 1000).astype(int)
    period_ns = round(1e9 / 130)
    out = []
    for start in range(0, len(ecg_uv), 73):
        chunk = ecg_uv[start:start + 73]
        ts = 800_000_000_000_000_000 + (start + len(chunk) - 1) * period_ns
        frame = decode_pmd_frame(encode_ecg_frame(ts, chunk))
        assert frame.timestamp_ns == ts
        out.append(frame.samples_uv)
    assert np.array_equal(np.concatenate(out), ecg_uv)


def test_compressed_acc_is_smaller_and_exact_on_smooth_signal() -> None:
    t = np.arange(36) / 50  # 36 raw samples: the most a 232-byte H10 notification carries
    acc = np.stack([np.rint(300 * np.sin(2 * np.pi * 0.1 * t)), np.rint(50 * np.cos(t)),
                    np.full_like(t, 1000)], axis=1).astype(int)
    raw, packed = encode_acc_frame(1, acc), encode_acc_frame(1, acc, compressed=True)
    assert len(packed) < len(raw) / 2
    assert np.array_equal(decode_pmd_frame(packed).samples_mg, acc)
    assert np.array_equal(decode_pmd_frame(raw).samples_mg, acc)


def test_a_notification_longer_than_any_bluetooth_attribute_is_a_decode_error() -> None:
    acc = np.zeros((200, 3), dtype=int)
    big = encode_acc_frame(1, acc)
    assert len(big) > 512
    with pytest.raises(DecodeError, match="512 bytes a Bluetooth notification"):
        decode_pmd_frame(big)
    with pytest.raises(DecodeError, match="512 bytes"):
        decode_heart_rate(bytes([0x10, 60]) + b"\x00\x04" * 300)
    with pytest.raises(DecodeError) as refused:
        decode_control_response(b"\xf0" * 100_000)
    assert len(str(refused.value)) < 600  # the message shows the start of the bytes, not 100 kB of hex


# ------------------------------------------------------------------ property-based


_frame_types = st.sampled_from([0x00, 0x01, 0x02, 0x80, 0x81]) | st.integers(0, 255)
_structured_frames = st.builds(
    lambda mt, ts, ft, payload: bytes([mt]) + ts.to_bytes(8, "little") + bytes([ft]) + payload,
    st.sampled_from([0x00, 0x02, 0x42]) | st.integers(0, 255), st.integers(0, (1 << 64) - 1), _frame_types,
    st.binary(max_size=120),
)


@given(st.binary(max_size=80) | _structured_frames,
       st.none() | st.floats(min_value=1e-6, max_value=1e3) | st.floats(min_value=-1e3, max_value=-1e-6))
def test_fuzz_frames_only_decode_error_escapes(data: bytes, factor: float | None) -> None:
    try:
        frame = decode_pmd_frame(data, acc_factor=factor)
    except DecodeError:
        return
    assert isinstance(frame, EcgFrame | AccFrame | UnknownFrame)
    if isinstance(frame, AccFrame):
        assert frame.samples_mg.ndim == 2 and frame.samples_mg.shape[1] == 3 and len(frame.samples_mg)
        assert frame.samples_mg.dtype == np.int32


@given(st.binary(max_size=40) | st.binary(max_size=40).map(lambda b: b"\xf0" + b))
def test_fuzz_control_response_only_decode_error_escapes(data: bytes) -> None:
    try:
        r = decode_control_response(data)
    except DecodeError:
        return
    assert r.parameters == data[5:] and isinstance(r.error_message, str)


@given(st.binary(max_size=40))
def test_fuzz_settings_and_features_only_decode_error_escapes(data: bytes) -> None:
    for fn in (decode_settings, decode_features):
        with contextlib.suppress(DecodeError):
            fn(data)


_ts = st.integers(0, (1 << 64) - 1)


@given(_ts, st.lists(st.integers(-(1 << 23), (1 << 23) - 1), min_size=1, max_size=80))
def test_ecg_encode_decode_identity(ts: int, samples: list[int]) -> None:
    frame = decode_pmd_frame(encode_ecg_frame(ts, samples))
    assert frame.timestamp_ns == ts and frame.samples_uv.tolist() == samples


_acc = st.lists(st.tuples(*[st.integers(-(1 << 15), (1 << 15) - 1)] * 3), min_size=1, max_size=300)


@given(_ts, _acc, st.booleans())
def test_acc_encode_decode_identity(ts: int, samples: list[tuple[int, int, int]], compressed: bool) -> None:
    frame = decode_pmd_frame(encode_acc_frame(ts, samples, compressed=compressed))
    assert frame.timestamp_ns == ts
    assert frame.samples_mg.tolist() == [list(s) for s in samples]


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.booleans(), st.binary(max_size=30))
def test_control_response_encode_decode_identity(op: int, mt: int, code: int, more: bool,
                                                 params: bytes) -> None:
    assert decode_control_response(encode_control_response(op, mt, code, more, params)) == ControlResponse(
        op, mt, code, more, params)
    assert ControlResponse(op, mt, code, more, params).ok == (code == ResponseCode.SUCCESS)


_setting_values = {
    "sample_rate": st.integers(0, 0xFFFF), "resolution": st.integers(0, 0xFFFF),
    "range": st.integers(0, 0xFFFF),
    "range_milliunit": st.integers(-(1 << 31), (1 << 31) - 1), "channels": st.integers(0, 255),
    "factor": st.floats(width=32, allow_nan=False),
}


@given(st.fixed_dictionaries({}, optional={k: st.lists(v, min_size=1, max_size=5).map(tuple)
                                           for k, v in _setting_values.items()}))
def test_settings_encode_decode_identity(settings: dict) -> None:
    params = encode_settings(settings)
    assert decode_settings(params) == (settings if len(params) > 1 else {})


@given(st.sets(st.sampled_from(MeasurementType)))
def test_features_encode_decode_identity(types: set[MeasurementType]) -> None:
    assert decode_features(encode_features(types)) == types
