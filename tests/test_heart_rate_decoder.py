"""Heart Rate Measurement (0x2A37): public vectors, round trips, malformed input and fuzzing."""

from __future__ import annotations

import csv
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.errors import DecodeError
from devices.heart_rate import HeartRateMeasurement, SensorContact, decode_heart_rate, encode_heart_rate


def test_uint8_hr_with_contact_and_two_rr() -> None:
    m = decode_heart_rate(bytes.fromhex("16 48 54 01 ec 02"))
    assert m.heart_rate_bpm == 72
    assert m.contact is SensorContact.DETECTED
    assert m.energy_expended_kj is None
    assert m.rr_1024 == (340, 748)
    assert m.rr_ms == (340 / 1024 * 1000, 748 / 1024 * 1000)
    assert m.rr_ms == pytest.approx((332.03, 730.47), abs=0.005)


def test_uint16_hr_zero_and_extreme_rr() -> None:
    m = decode_heart_rate(bytes.fromhex("11 00 00 ff ff 7f 80"))
    assert m.heart_rate_bpm == 0
    assert m.contact is SensorContact.NOT_SUPPORTED
    assert m.rr_1024 == (0xFFFF, 0x807F)
    assert m.rr_ms == (65535 * 1000 / 1024, 32895 * 1000 / 1024)  # 63999.0234375, 32124.0234375
    assert m.rr_ms == pytest.approx((63999.0, 32124.0), abs=0.05)


def test_energy_expended_max() -> None:
    m = decode_heart_rate(bytes.fromhex("09 00 00 ff ff"))
    assert m.energy_expended_kj == 65535
    assert m.rr_1024 == ()


def test_uint16_hr_uses_both_bytes() -> None:
    assert decode_heart_rate(bytes.fromhex("01 80 80")).heart_rate_bpm == 32896


@pytest.mark.parametrize(
    ("flags", "contact"),
    [(0x00, SensorContact.NOT_SUPPORTED), (0x02, SensorContact.NOT_SUPPORTED),
     (0x04, SensorContact.SUPPORTED_NOT_DETECTED), (0x06, SensorContact.DETECTED)],
)
def test_contact_bits(flags: int, contact: SensorContact) -> None:
    assert decode_heart_rate(bytes([flags, 0])).contact is contact


def test_supported_not_detected_vector() -> None:
    m = decode_heart_rate(bytes.fromhex("04 00"))
    assert m.contact is SensorContact.SUPPORTED_NOT_DETECTED
    assert m.heart_rate_bpm == 0


def test_rr_flag_with_no_rr_is_valid_and_empty() -> None:
    assert decode_heart_rate(bytes.fromhex("10 3c")).rr_1024 == ()


def test_reserved_flag_bits_are_ignored() -> None:
    assert decode_heart_rate(bytes.fromhex("e0 3c")).heart_rate_bpm == 60


@pytest.mark.parametrize(
    ("hexstr", "field", "offset"),
    [
        ("", "flags", 0),
        ("00", "heart_rate (uint8)", 1),
        ("01 48", "heart_rate (uint16)", 1),
        ("08 48 01", "energy_expended", 2),
        ("19 48 00 10", "energy_expended", 3),
        ("10 48 54 01 ec", "rr_interval", 4),
        ("10 48 54", "rr_interval", 2),
        ("00 48 54 01", "trailing", 2),
    ],
)
def test_malformed_input_names_field_offset_and_packet(hexstr: str, field: str, offset: int) -> None:
    data = bytes.fromhex(hexstr)
    with pytest.raises(DecodeError) as info:
        decode_heart_rate(data)
    err = info.value
    assert err.field == field
    assert err.offset == offset
    assert err.data == data
    assert field in str(err) and f"offset {offset}" in str(err)
    assert data.hex(" ") in str(err)
    assert isinstance(err, ValueError)


def test_decode_error_survives_pickling() -> None:
    with pytest.raises(DecodeError) as info:
        decode_heart_rate(b"\x01\x48")
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.field, clone.offset, clone.data, str(clone)) == (
        info.value.field, info.value.offset, info.value.data, str(info.value))


def test_encode_matches_public_vectors() -> None:
    assert encode_heart_rate(72, [340, 748]) == bytes.fromhex("16 48 54 01 ec 02")
    assert encode_heart_rate(0, [0xFFFF, 0x807F], contact=SensorContact.NOT_SUPPORTED,
                             force_uint16=True) == bytes.fromhex("11 00 00 ff ff 7f 80")
    assert encode_heart_rate(0, contact=SensorContact.NOT_SUPPORTED, energy_expended_kj=65535,
                             force_uint16=True) == bytes.fromhex("09 00 00 ff ff")
    assert encode_heart_rate(32896, contact=SensorContact.NOT_SUPPORTED) == bytes.fromhex("01 80 80")
    assert encode_heart_rate(0, contact=SensorContact.SUPPORTED_NOT_DETECTED) == bytes.fromhex("04 00")


@pytest.mark.parametrize(
    "kwargs",
    [{"heart_rate_bpm": -1}, {"heart_rate_bpm": 65536}, {"heart_rate_bpm": 60, "rr_1024": [70000]},
     {"heart_rate_bpm": 60, "rr_1024": [-5]}, {"heart_rate_bpm": 60, "energy_expended_kj": 1 << 16}],
)
def test_encode_rejects_out_of_range(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        encode_heart_rate(**kwargs)


def test_real_polar_h10_rr_stream_round_trips(shared_data) -> None:
    """Real H10 RR (ms) → 1/1024 s units → packets of up to 2 RR → decoded again, within quantisation."""
    with open(shared_data / "polar_h10_dhyb_ibi.csv", newline="") as fh:
        ibi_ms = [float(row["ibi_ms"]) for row in csv.DictReader(fh)]
    assert len(ibi_ms) > 500
    rr = [round(v * 1024 / 1000) for v in ibi_ms]
    decoded: list[float] = []
    for i in range(0, len(rr), 2):
        chunk = rr[i:i + 2]
        hr = round(60_000 / ibi_ms[i])
        m = decode_heart_rate(encode_heart_rate(hr, chunk))
        assert m.heart_rate_bpm == hr
        decoded.extend(m.rr_ms)
    assert len(decoded) == len(ibi_ms)
    assert max(abs(a - b) for a, b in zip(decoded, ibi_ms, strict=True)) <= 1000 / 1024 / 2 + 1e-9


@given(st.binary(max_size=64))
def test_fuzz_only_decode_error_escapes(data: bytes) -> None:
    try:
        m = decode_heart_rate(data)
    except DecodeError:
        return
    assert isinstance(m, HeartRateMeasurement)
    assert 0 <= m.heart_rate_bpm <= 0xFFFF
    assert all(0 <= rr <= 0xFFFF for rr in m.rr_1024)


_u16 = st.integers(0, 0xFFFF)


@given(
    hr=_u16,
    rr=st.lists(_u16, max_size=9),
    contact=st.sampled_from(SensorContact),
    energy=st.none() | _u16,
    force=st.booleans(),
)
def test_encode_decode_identity(hr: int, rr: list[int], contact: SensorContact, energy: int | None,
                                force: bool) -> None:
    m = decode_heart_rate(encode_heart_rate(hr, rr, contact, energy, force))
    assert m == HeartRateMeasurement(hr, contact, energy, tuple(rr))
    assert m.rr_ms == tuple(v * 1000 / 1024 for v in rr)


@given(st.binary(min_size=1, max_size=40))
def test_decode_encode_identity_for_canonical_packets(data: bytes) -> None:
    """Every packet that decodes and uses canonical flags re-encodes to exactly the same bytes."""
    try:
        m = decode_heart_rate(data)
    except DecodeError:
        return
    flags = data[0]
    canonical = not flags & 0xE0 and (flags >> 1) & 0b11 != 0b01 and bool(flags & 0x10) == bool(m.rr_1024)
    if canonical:
        assert encode_heart_rate(m.heart_rate_bpm, m.rr_1024, m.contact, m.energy_expended_kj,
                                 force_uint16=bool(flags & 1)) == data
