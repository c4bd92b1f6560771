"""Polar Measurement Data (PMD) service: control-point requests, responses and data frames. Pure functions.

Byte layouts follow the public Polar BLE SDK (polarofficial/polar-ble-sdk, Android `pmd` package and tests).

Control point (write): ``opcode, measurement type[, settings]``; each setting is ``type, count, value(s)``
with little-endian values (sample rate, resolution, range: uint16; channels: uint8; range in milli-units:
int32; factor: IEEE-754 float32). Reading the control point gives the features: ``0x0F`` then a bitmask in
which bit *n* (little endian across the bytes) means measurement type *n* is supported. Responses are
notifications ``0xF0, opcode, measurement type, error code, more, parameters...``.

Data frame (notify): byte 0 measurement type (low 6 bits, as the SDK masks it), bytes 1-8 uint64 LE timestamp
(ns since 2000-01-01T00:00:00Z, time of the LAST sample in the frame), byte 9 frame type (bit 7 = delta
compressed), then samples. Decoded here: ECG frame type 0 (int24 µV), ACC raw types 0/1/2 (int8/int16/int24
x,y,z mG) and ACC delta-compressed types 0 and 1. Anything else is returned as `UnknownFrame`, never guessed.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from devices.errors import DecodeError, check_notification_size

POLAR_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
FEATURES_CODE = 0x0F
CONTROL_RESPONSE_CODE = 0xF0
HEADER_SIZE = 10
_COMPRESSED = 0x80
_MEASUREMENT_TYPE_MASK = 0x3F
_UINT64_MAX = (1 << 64) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


class ControlOpCode(enum.IntEnum):
    GET_MEASUREMENT_SETTINGS = 0x01
    REQUEST_MEASUREMENT_START = 0x02
    STOP_MEASUREMENT = 0x03


class MeasurementType(enum.IntEnum):
    ECG = 0x00
    PPG = 0x01
    ACC = 0x02
    PPI = 0x03
    GYRO = 0x05
    MAGNETOMETER = 0x06
    SKIN_TEMP = 0x07
    SDK_MODE = 0x09
    LOCATION = 0x0A
    PRESSURE = 0x0B
    TEMPERATURE = 0x0C
    OFFLINE_RECORDING = 0x0D
    OFFLINE_HR = 0x0E


class SettingType(enum.IntEnum):
    SAMPLE_RATE = 0x00
    RESOLUTION = 0x01
    RANGE = 0x02
    RANGE_MILLIUNIT = 0x03
    CHANNELS = 0x04
    FACTOR = 0x05


class ResponseCode(enum.IntEnum):
    SUCCESS = 0
    INVALID_OP_CODE = 1
    INVALID_MEASUREMENT_TYPE = 2
    NOT_SUPPORTED = 3
    INVALID_LENGTH = 4
    INVALID_PARAMETER = 5
    ALREADY_IN_STATE = 6
    INVALID_RESOLUTION = 7
    INVALID_SAMPLE_RATE = 8
    INVALID_RANGE = 9
    INVALID_MTU = 10
    INVALID_NUMBER_OF_CHANNELS = 11
    INVALID_STATE = 12
    DEVICE_IN_CHARGER = 13
    DISK_FULL = 14


# setting type -> (bytes per value, struct format of one value)
_SETTING_FIELDS: dict[SettingType, tuple[int, str]] = {
    SettingType.SAMPLE_RATE: (2, "<H"),
    SettingType.RESOLUTION: (2, "<H"),
    SettingType.RANGE: (2, "<H"),
    SettingType.RANGE_MILLIUNIT: (4, "<i"),
    SettingType.CHANNELS: (1, "<B"),
    SettingType.FACTOR: (4, "<f"),
}


def _type_name(measurement_type: int) -> str:
    try:
        return MeasurementType(measurement_type).name
    except ValueError:
        return f"type 0x{measurement_type:02x}"


# ---------------------------------------------------------------- time


def pmd_time_to_datetime(ns: int) -> datetime:
    """A PMD timestamp (ns since 2000-01-01 UTC) as an aware UTC datetime (truncated to microseconds)."""
    return POLAR_EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_pmd_time(dt: datetime) -> int:
    """An aware datetime as a PMD timestamp in ns since 2000-01-01 UTC."""
    if dt.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return (dt - POLAR_EPOCH) // timedelta(microseconds=1) * 1000


# ---------------------------------------------------------------- control point: requests


def settings_request(measurement_type: MeasurementType) -> bytes:
    """Ask which settings a measurement supports (the answer comes as a control-point response)."""
    return bytes([ControlOpCode.GET_MEASUREMENT_SETTINGS, measurement_type])


def ecg_settings_request() -> bytes:
    return settings_request(MeasurementType.ECG)


def start_request(measurement_type: MeasurementType, settings: Mapping[SettingType, int]) -> bytes:
    """Start a measurement with one selected value per setting (in the given order)."""
    out = bytearray([ControlOpCode.REQUEST_MEASUREMENT_START, measurement_type])
    for setting, value in settings.items():
        setting = SettingType(setting)
        if setting is SettingType.FACTOR:
            raise ValueError("FACTOR is reported by the device, it cannot be requested")
        size, fmt = _SETTING_FIELDS[setting]
        try:
            packed = struct.pack(fmt, value)
        except struct.error as exc:
            raise ValueError(f"{setting.name} value {value!r} does not fit {size} byte(s)") from exc
        out += bytes([setting, 1]) + packed
    return bytes(out)


def start_ecg_request(sample_rate: int = 130, resolution: int = 14) -> bytes:
    """Start ECG (Polar H10: 130 Hz, 14-bit)."""
    return start_request(MeasurementType.ECG,
                         {SettingType.SAMPLE_RATE: sample_rate, SettingType.RESOLUTION: resolution})


def start_acc_request(sample_rate: int = 50, resolution: int = 16, range_g: int = 8) -> bytes:
    """Start the accelerometer (Polar H10 offers 25/50/100/200 Hz, 16-bit, ±2/4/8 g)."""
    return start_request(MeasurementType.ACC, {SettingType.SAMPLE_RATE: sample_rate,
                                               SettingType.RESOLUTION: resolution,
                                               SettingType.RANGE: range_g})


def stop_request(measurement_type: MeasurementType) -> bytes:
    return bytes([ControlOpCode.STOP_MEASUREMENT, measurement_type])


# ---------------------------------------------------------------- control point: features and responses


def decode_features(data: bytes) -> frozenset[MeasurementType]:
    """The measurement types a device offers, from a read of the control point (``0x0F`` + bitmask)."""
    data = bytes(data)
    if len(data) < 2:
        raise DecodeError("feature read too short (needs 0x0F and at least one bitmask byte)",
                          field="features", offset=len(data), data=data)
    if data[0] != FEATURES_CODE:
        raise DecodeError(f"expected feature code 0x0f, got 0x{data[0]:02x}", field="feature_code",
                          offset=0, data=data)
    mask = int.from_bytes(data[1:], "little")
    return frozenset(t for t in MeasurementType if mask >> t & 1)


def encode_features(types: Iterable[MeasurementType]) -> bytes:
    """The control-point read value advertising `types` (for the simulator)."""
    mask = 0
    for t in types:
        mask |= 1 << MeasurementType(t)
    return bytes([FEATURES_CODE]) + mask.to_bytes(2, "little")


@dataclass(frozen=True, slots=True)
class ControlResponse:
    """A control-point response. Type codes are kept as raw ints so nothing a device sends is lost."""

    opcode: int
    measurement_type: int
    error_code: int
    more: bool
    parameters: bytes

    @property
    def ok(self) -> bool:
        return self.error_code == ResponseCode.SUCCESS

    @property
    def error_message(self) -> str:
        try:
            return ResponseCode(self.error_code).name
        except ValueError:
            return f"UNKNOWN_ERROR_{self.error_code}"


class PmdControlError(Exception):
    """A PMD control-point request was refused by the device."""

    def __init__(self, response: ControlResponse) -> None:
        self.response = response
        try:
            op = ControlOpCode(response.opcode).name
        except ValueError:
            op = f"opcode 0x{response.opcode:02x}"
        super().__init__(f"PMD {op} for {_type_name(response.measurement_type)} failed: "
                         f"{response.error_message} (error code {response.error_code})")


def raise_for_response(resp: ControlResponse) -> ControlResponse:
    """Return `resp` if it reports success, else raise `PmdControlError`."""
    if not resp.ok:
        raise PmdControlError(resp)
    return resp


def decode_control_response(data: bytes) -> ControlResponse:
    """Decode a control-point notification ``F0 op type error [more] [parameters...]``."""
    data = bytes(data)
    check_notification_size(data)
    for offset, field in enumerate(("response_code", "opcode", "measurement_type", "error_code")):
        if len(data) <= offset:
            raise DecodeError("control response truncated", field=field, offset=offset, data=data)
    if data[0] != CONTROL_RESPONSE_CODE:
        raise DecodeError(f"expected response code 0xf0, got 0x{data[0]:02x}", field="response_code",
                          offset=0, data=data)
    return ControlResponse(opcode=data[1], measurement_type=data[2], error_code=data[3],
                           more=len(data) > 4 and data[4] != 0, parameters=data[5:])


def encode_control_response(opcode: int, measurement_type: int, error_code: int = 0, more: bool = False,
                            parameters: bytes = b"") -> bytes:
    """A control-point response notification (for the simulator)."""
    return bytes([CONTROL_RESPONSE_CODE, opcode, measurement_type, error_code, int(more)]) + bytes(parameters)


def decode_settings(parameters: bytes) -> dict[str, tuple[int | float, ...]]:
    """Settings from response parameters, e.g. ``{"sample_rate": (130,), "resolution": (14,)}``.

    Keys are lower-case `SettingType` names; values keep the device's order. ``factor`` is a float (a scale
    for compressed frames, reported in start responses). As in the Polar SDK, a lone byte is no settings.
    """
    data = bytes(parameters)
    settings: dict[str, tuple[int | float, ...]] = {}
    if len(data) <= 1:
        return settings
    offset = 0
    while offset < len(data):
        try:
            setting = SettingType(data[offset])
        except ValueError:
            raise DecodeError(f"unknown setting type 0x{data[offset]:02x} (its size is unknown)",
                              field="setting_type", offset=offset, data=data) from None
        if offset + 1 >= len(data):
            raise DecodeError("setting truncated before its value count", field=f"{setting.name} count",
                              offset=offset + 1, data=data)
        count = data[offset + 1]
        size, fmt = _SETTING_FIELDS[setting]
        start = offset + 2
        if start + count * size > len(data):
            left = len(data) - start
            raise DecodeError(f"{count} value(s) of {size} byte(s) announced, {left} byte(s) left",
                              field=f"{setting.name} values", offset=start, data=data)
        values = tuple(struct.unpack_from(fmt, data, start + i * size)[0] for i in range(count))
        key = setting.name.lower()
        settings[key] = settings.get(key, ()) + values
        offset = start + count * size
    return settings


def encode_settings(settings: Mapping[str, Sequence[int | float]]) -> bytes:
    """Response parameters listing available settings (the inverse of `decode_settings`)."""
    out = bytearray()
    for key, values in settings.items():
        setting = SettingType[key.upper()]
        if len(values) > 255:
            raise ValueError(f"at most 255 values per setting, got {len(values)} for {key}")
        _, fmt = _SETTING_FIELDS[setting]
        out += bytes([setting, len(values)])
        for v in values:
            try:
                out += struct.pack(fmt, v)
            except struct.error as exc:
                raise ValueError(f"{key} value {v!r} does not fit its field") from exc
    return bytes(out)


# ---------------------------------------------------------------- data frames


@dataclass(frozen=True, eq=False)
class EcgFrame:
    """ECG samples in µV (int32), oldest first; `timestamp_ns` is the time of the last sample."""

    timestamp_ns: int
    samples_uv: np.ndarray


@dataclass(frozen=True, eq=False)
class AccFrame:
    """Accelerometer samples, shape (n, 3) x/y/z in mG (int32); `timestamp_ns` is the time of the last one."""

    timestamp_ns: int
    samples_mg: np.ndarray


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame this module does not decode, kept whole (`data` is the entire packet) with the reason."""

    measurement_type: int
    frame_type: int
    timestamp_ns: int
    data: bytes
    reason: str


def _signed_le(payload: bytes, width: int, field: str, packet: bytes, group: int = 1) -> np.ndarray:
    """Little-endian signed integers of `width` bytes as int32, in whole groups of `group` values."""
    step = width * group
    if len(payload) % step:
        whole = len(payload) - len(payload) % step
        raise DecodeError(f"payload of {len(payload)} bytes is not a whole number of {step}-byte samples",
                          field=field, offset=HEADER_SIZE + whole, data=packet)
    if width == 1:
        return np.frombuffer(payload, dtype=np.int8).astype(np.int32)
    if width == 2:
        return np.frombuffer(payload, dtype="<i2").astype(np.int32)
    b = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    return (value ^ 0x800000) - 0x800000


def _delta_decode(payload: bytes, channels: int, ref_bytes: int, packet: bytes) -> np.ndarray:
    """Polar delta-compressed samples: a reference sample, then blocks ``bit width, count, packed deltas``.

    Deltas are two's-complement, `bit width` bits each, packed least-significant bit first, channel by
    channel; a block is rounded up to whole bytes. Returns an (n, channels) int64 array of running values.
    """
    ref_len = channels * ref_bytes
    if len(payload) < ref_len:
        raise DecodeError(f"reference sample needs {ref_len} bytes, {len(payload)} present",
                          field="reference_sample", offset=HEADER_SIZE, data=packet)
    ref = np.array([int.from_bytes(payload[i * ref_bytes:(i + 1) * ref_bytes], "little", signed=True)
                    for i in range(channels)], dtype=np.int64)
    rows = [ref[None, :]]
    last = ref
    offset = ref_len
    while offset < len(payload):
        at = HEADER_SIZE + offset
        if offset + 2 > len(payload):
            raise DecodeError("delta block header truncated (needs bit width and count)",
                              field="delta_block_header", offset=at, data=packet)
        width, count = payload[offset], payload[offset + 1]
        if not 1 <= width <= 32:
            raise DecodeError(f"delta bit width {width} outside 1..32", field="delta_bit_width",
                              offset=at, data=packet)
        n_bits = width * count * channels
        n_bytes = (n_bits + 7) // 8
        offset += 2
        if offset + n_bytes > len(payload):
            raise DecodeError(f"delta block needs {n_bytes} bytes, {len(payload) - offset} left",
                              field="delta_block", offset=HEADER_SIZE + offset, data=packet)
        block = np.frombuffer(payload, dtype=np.uint8, count=n_bytes, offset=offset)
        bits = np.unpackbits(block, bitorder="little")[:n_bits].reshape(-1, width).astype(np.int64)
        values = bits @ (np.int64(1) << np.arange(width, dtype=np.int64))
        values -= (values >> (width - 1)) << width  # two's complement sign
        if count:
            cumulative = last + np.cumsum(values.reshape(count, channels), axis=0)
            rows.append(cumulative)
            last = cumulative[-1]
        offset += n_bytes
    return np.concatenate(rows)


def _to_int32(values: np.ndarray, field: str, packet: bytes) -> np.ndarray:
    if values.size and (values.min() < _INT32_MIN or values.max() > _INT32_MAX):
        raise DecodeError("decoded value outside the int32 range", field=field, offset=HEADER_SIZE,
                          data=packet)
    return values.astype(np.int32)


def _scale(raw: np.ndarray, factor: float, packet: bytes) -> np.ndarray:
    """Scale in float32 and truncate toward zero, as the Polar SDK does."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.trunc(raw.astype(np.float32) * np.float32(factor)).astype(np.float64)
    if not np.isfinite(scaled).all():
        raise DecodeError("scaled value overflows", field="scaled_samples", offset=HEADER_SIZE, data=packet)
    return _to_int32(scaled, "scaled_samples", packet)


def decode_pmd_frame(data: bytes, *, acc_factor: float | None = None) -> EcgFrame | AccFrame | UnknownFrame:
    """Decode one PMD data notification. Raises `DecodeError` on a truncated or misaligned frame.

    `acc_factor` is the FACTOR setting from the ACC start response. Compressed ACC frame type 0 carries
    samples in units of ``factor`` g and cannot be decoded without it (it is then returned as `UnknownFrame`);
    compressed type 1 is in mG, scaled by the factor when one other than 1 is given.
    """
    data = bytes(data)
    check_notification_size(data)
    if len(data) < HEADER_SIZE:
        field = "measurement_type" if not data else "timestamp" if len(data) < 9 else "frame_type"
        raise DecodeError(f"frame header needs {HEADER_SIZE} bytes, {len(data)} present", field=field,
                          offset=min(len(data), 9) if data else 0, data=data)
    if acc_factor is not None:
        with np.errstate(over="ignore"):
            f32 = np.float32(acc_factor) * np.float32(1000)
        if not (np.isfinite(f32) and np.float32(acc_factor) != 0):
            raise ValueError(f"acc_factor must be a finite, non-zero float32, got {acc_factor}")
    raw_type, frame_type = data[0], data[9]
    timestamp = int.from_bytes(data[1:9], "little")
    payload = data[HEADER_SIZE:]
    mtype = raw_type & _MEASUREMENT_TYPE_MASK

    def unknown(reason: str) -> UnknownFrame:
        return UnknownFrame(measurement_type=raw_type, frame_type=frame_type, timestamp_ns=timestamp,
                            data=data, reason=reason)

    if mtype == MeasurementType.ECG:
        if frame_type != 0x00:
            return unknown(f"ECG frame type 0x{frame_type:02x} is not decoded (only 0x00, int24 µV)")
        samples = _signed_le(payload, 3, "ecg_samples", data)
        if not samples.size:
            raise DecodeError("ECG frame without samples", field="ecg_samples", offset=HEADER_SIZE, data=data)
        return EcgFrame(timestamp_ns=timestamp, samples_uv=samples)
    if mtype == MeasurementType.ACC:
        if frame_type in (0x00, 0x01, 0x02):
            width = frame_type + 1
            values = _signed_le(payload, width, "acc_samples", data, group=3).reshape(-1, 3)
        elif frame_type == _COMPRESSED | 0x01:
            values = _delta_decode(payload, 3, 2, data)
            factor = 1.0 if acc_factor is None else acc_factor
            values = _to_int32(values, "acc_samples", data) if factor == 1.0 else _scale(values, factor, data)
        elif frame_type == _COMPRESSED | 0x00:
            if acc_factor is None:
                return unknown("compressed ACC frame type 0 needs the FACTOR setting from the start response")
            values = _scale(_delta_decode(payload, 3, 2, data),
                            float(np.float32(acc_factor) * np.float32(1000)), data)
        else:
            return unknown(f"ACC frame type 0x{frame_type:02x} is not decoded")
        if not len(values):
            raise DecodeError("ACC frame without samples", field="acc_samples", offset=HEADER_SIZE, data=data)
        return AccFrame(timestamp_ns=timestamp, samples_mg=values)
    return unknown(f"measurement type {_type_name(mtype)} is not decoded")


def _check_timestamp(timestamp_ns: int) -> None:
    if not 0 <= timestamp_ns <= _UINT64_MAX:
        raise ValueError(f"timestamp_ns must fit uint64, got {timestamp_ns}")


def _header(measurement_type: MeasurementType, timestamp_ns: int, frame_type: int) -> bytes:
    _check_timestamp(timestamp_ns)
    return bytes([measurement_type]) + timestamp_ns.to_bytes(8, "little") + bytes([frame_type])


def encode_ecg_frame(timestamp_ns: int, samples_uv: Sequence[int]) -> bytes:
    """An ECG data frame (type 0x00, int24 µV), the inverse of `decode_pmd_frame` (for the simulator)."""
    values = np.asarray(samples_uv, dtype=np.int64).reshape(-1)
    if not values.size:
        raise ValueError("an ECG frame needs at least one sample")
    if values.min() < -(1 << 23) or values.max() >= 1 << 23:
        raise ValueError("ECG samples must fit a signed 24-bit integer")
    body = values.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return _header(MeasurementType.ECG, timestamp_ns, 0x00) + body


def _signed_width(values: np.ndarray) -> int:
    """Smallest two's-complement bit width (at least 1) holding every value."""
    lo, hi = int(values.min()), int(values.max())
    # v >= 0 needs bit_length(v) + 1 bits; v < 0 needs bit_length(~v) + 1, i.e. bit_length(-v - 1) + 1
    return max(max(hi, 0).bit_length(), (~min(lo, -1)).bit_length()) + 1


def encode_acc_frame(timestamp_ns: int, samples_mg: Sequence[Sequence[int]] | np.ndarray, *,
                     compressed: bool = False) -> bytes:
    """An ACC data frame of int16 x,y,z mG: raw frame type 0x01, or delta-compressed type 0x81 (factor 1)."""
    values = np.asarray(samples_mg, dtype=np.int64)
    if values.ndim != 2 or values.shape[1] != 3 or not len(values):
        raise ValueError(f"samples_mg must have shape (n >= 1, 3), got {values.shape}")
    if values.min() < -(1 << 15) or values.max() >= 1 << 15:
        raise ValueError("ACC samples must fit int16")
    if not compressed:
        return _header(MeasurementType.ACC, timestamp_ns, 0x01) + values.astype("<i2").tobytes()
    body = bytearray(values[0].astype("<i2").tobytes())
    deltas = np.diff(values, axis=0)
    for start in range(0, len(deltas), 255):
        block = deltas[start:start + 255]
        width = _signed_width(block)
        flat = block.reshape(-1) & ((1 << width) - 1)
        bits = ((flat[:, None] >> np.arange(width)) & 1).astype(np.uint8).reshape(-1)
        body += bytes([width, len(block)]) + np.packbits(bits, bitorder="little").tobytes()
    return _header(MeasurementType.ACC, timestamp_ns, _COMPRESSED | 0x01) + bytes(body)
