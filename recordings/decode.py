"""From raw notifications to the decoded layer: beat reconstruction, heart rate, ECG frames.

Heart-rate straps send RR intervals without beat times: `recordings.beat_timeline` reconstructs them (one design,
written down there): live with `LiveBeatTimeline`, and when a session ends or is recovered `rebuild_beats` rebuilds
the decoded beats from the raw layer with the whole-session fit. A disconnect, contact loss or a malformed
heart-rate packet starts a new stretch with `gap_before=True`: no interval is ever invented across a gap.

`SessionDecoder` applies this to every packet of a session (live, on import, or when re-decoding the raw layer) and
writes the decoded rows to the store; a malformed packet is kept, counted and explained, never fatal: every exception
raised while decoding device bytes becomes a recorded packet error and the strap keeps streaming.

Accelerometer (PMD ACC) frames go to `acc_chunks` at the nominal `ACC_FS_HZ` (the rate `BleStrapLink` and the
simulator start). Delta-compressed frames need the FACTOR setting of the ACC start response: the decoder reads it
from the control-point responses stored in the raw layer (they precede the data). A compressed type-0 frame with no
factor known is kept raw only, with the reason recorded as a packet error; compressed type 1 is in mG and decodes
without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from devices.battery import decode_battery_level
from devices.errors import DecodeError
from devices.heart_rate import HeartRateMeasurement, SensorContact, decode_heart_rate
from devices.link import BATTERY_LEVEL_UUID, HEART_RATE_MEASUREMENT_UUID, PMD_CONTROL_POINT_UUID, PMD_DATA_UUID
from devices.polar_pmd import (
    CONTROL_RESPONSE_CODE,
    AccFrame,
    ControlOpCode,
    EcgFrame,
    MeasurementType,
    UnknownFrame,
    decode_control_response,
    decode_pmd_frame,
    decode_settings,
)

from .beat_timeline import BeatRow, LiveBeatTimeline, Notification, StretchInfo, fit_beat_times
from .ecg_time import ECG_FS_HZ
from .limits import RR_RANGE_ENV, rr_range_ms
from .store import Store

__all__ = ["BeatRow", "DecodeCounts", "SessionDecoder", "decode_packets", "rebuild_beats", "redecode_session"]

ACC_FS_HZ = 50.0
"""Polar H10 accelerometer: nominal samples per second as started by `BleStrapLink` and the simulator."""


def implausible_rr(rr_1024: Sequence[int]) -> str | None:
    """Why a notification's RR values cannot be used (one outside `rr_range_ms`), else None."""
    lo, hi = rr_range_ms()
    bad = [v * 1000.0 / 1024.0 for v in rr_1024 if not lo <= v * 1000.0 / 1024.0 <= hi]
    if not bad:
        return None
    return (f"RR {bad[0]:.0f} ms outside the plausible {lo:g}-{hi:g} ms (${RR_RANGE_ENV} overrides): the "
            "notification's RR kept raw, not used; the next beat starts a new stretch")


def heart_rate_break(m: HeartRateMeasurement) -> tuple[str | None, str | None]:
    """The break rules the live decoder and the rebuild share: (why a new stretch starts before this notification's
    RR, why its RR cannot be used). No skin contact: its RR cannot be trusted to join the previous beats."""
    before = "contact" if m.contact is SensorContact.SUPPORTED_NOT_DETECTED else None
    return before, implausible_rr(m.rr_1024)


DEVICE_BYTE_ERRORS = (DecodeError, ValueError, ArithmeticError, IndexError, KeyError, TypeError)
"""What decoding device bytes may raise; live and in the rebuild each becomes a recorded packet error, never fatal."""

MAX_ACC_FACTOR = 1e3
"""Largest |FACTOR| accepted from an ACC start response (real straps send 1.0; larger values overflow samples)."""


@dataclass
class DecodeCounts:
    packets: int = 0
    malformed: int = 0
    beats: int = 0
    ecg_samples: int = 0
    acc_samples: int = 0
    unknown: int = 0


@dataclass
class SessionDecoder:
    """Decodes the packets of one strap of one session into the store (shared by live, import and re-decode)."""

    store: Store
    session_id: int
    timeline: LiveBeatTimeline = field(default_factory=LiveBeatTimeline)
    counts: DecodeCounts = field(default_factory=DecodeCounts)
    last_measurement: HeartRateMeasurement | None = None
    acc_factor: float | None = None
    """FACTOR of the latest successful ACC start response (None until one is seen)."""
    battery_pct: int | None = None
    """The latest Battery Level (0x2A19) the strap sent, in percent (None: none yet, or no Battery Service)."""
    _ecg_frame: EcgFrame | None = None

    def take_ecg_frame(self) -> EcgFrame | None:
        """The ECG frame decoded from the last packet, if any (handed out once, for live displays)."""
        frame, self._ecg_frame = self._ecg_frame, None
        return frame

    def link_gap(self) -> None:
        self.timeline.mark_gap("disconnect")

    def packet(self, packet_id: int, t: float, uuid: str, data: bytes) -> list[BeatRow]:
        """Decode one stored packet; returns the new beats (empty for other characteristics)."""
        self.counts.packets += 1
        uuid = uuid.lower()
        try:
            if uuid == HEART_RATE_MEASUREMENT_UUID:
                return self._heart_rate(packet_id, t, data)
            if uuid == PMD_DATA_UUID:
                self._pmd(packet_id, t, data)
            elif uuid == PMD_CONTROL_POINT_UUID:
                self._control(packet_id, data)
            elif uuid == BATTERY_LEVEL_UUID:
                self.battery_pct = decode_battery_level(data)
            else:
                self.counts.unknown += 1
        except DEVICE_BYTE_ERRORS as exc:
            # device bytes must never stop a strap: whatever the decoders raise is recorded against the packet
            self.counts.malformed += 1
            reason = str(exc) if isinstance(exc, DecodeError) else f"undecodable ({type(exc).__name__}: {exc})"
            self.store.add_packet_error(self.session_id, packet_id, reason)
            if uuid == HEART_RATE_MEASUREMENT_UUID:
                self.timeline.mark_gap("malformed")  # its RR intervals are lost: the next beat starts a new stretch
        return []

    def _heart_rate(self, packet_id: int, t: float, data: bytes) -> list[BeatRow]:
        m = decode_heart_rate(data)
        self.last_measurement = m
        before, unusable = heart_rate_break(m)
        if before:
            self.timeline.mark_gap(before)
        self.store.add_heart_rate(self.session_id, t, m.heart_rate_bpm, m.contact.name.lower())
        if unusable:
            self.store.add_packet_error(self.session_id, packet_id, unusable)
            self.timeline.mark_gap("implausible RR")
            return []
        rows = self.timeline.add(t, m.rr_1024, packet_id)
        if rows:
            self.store.add_beats(
                self.session_id, [(r.t, r.rr_ms, r.gap_before, r.arrival_lag_s, r.packet_id) for r in rows]
            )
            self.counts.beats += len(rows)
        return rows

    def _control(self, packet_id: int, data: bytes) -> None:
        """Note the FACTOR of a successful ACC start response (feature reads and other responses need nothing)."""
        if not data or data[0] != CONTROL_RESPONSE_CODE:
            return
        response = decode_control_response(data)
        if not (response.ok and response.opcode == ControlOpCode.REQUEST_MEASUREMENT_START
                and response.measurement_type == MeasurementType.ACC):
            return
        factors = decode_settings(response.parameters).get("factor", ())
        if not factors:
            return
        factor = float(factors[0])
        if not (np.isfinite(factor) and 0.0 < abs(factor) <= MAX_ACC_FACTOR):
            self.store.add_packet_error(self.session_id, packet_id, f"ACC start response FACTOR {factor} is unusable")
            return
        self.acc_factor = factor

    def _pmd(self, packet_id: int, t: float, data: bytes) -> None:
        frame = decode_pmd_frame(data, acc_factor=self.acc_factor)
        if isinstance(frame, EcgFrame):
            self.store.add_ecg_chunk(self.session_id, t, frame.timestamp_ns, ECG_FS_HZ, frame.samples_uv, packet_id)
            self.counts.ecg_samples += len(frame.samples_uv)
            self._ecg_frame = frame
        elif isinstance(frame, AccFrame):
            self.store.add_acc_chunk(self.session_id, t, frame.timestamp_ns, ACC_FS_HZ, frame.samples_mg, packet_id)
            self.counts.acc_samples += len(frame.samples_mg)
        else:
            self.counts.unknown += 1
            reason = frame.reason if isinstance(frame, UnknownFrame) else type(frame).__name__
            self.store.add_packet_error(self.session_id, packet_id, f"kept raw, not decoded: {reason}")


def decode_packets(
    store: Store,
    session_id: int,
    packets: Iterable[tuple[int, float, str, bytes]],
    gap_times: Sequence[float] = (),
) -> DecodeCounts:
    """Decode stored packets (id, t, uuid, data) in order; `gap_times` are disconnects on the session clock.

    The packets must already be in the store's raw layer: the beats are then rebuilt from it (`rebuild_beats`).
    """
    decoder = SessionDecoder(store, session_id)
    gaps = sorted(gap_times)
    gi = 0
    for pid, t, uuid, data in packets:
        while gi < len(gaps) and gaps[gi] <= t:
            decoder.link_gap()
            gi += 1
        decoder.packet(pid, t, uuid, data)
    rebuild_beats(store, session_id)  # the stored packets again, with the whole-session fit
    return decoder.counts


def heart_rate_notifications(store: Store, session_id: int) -> list[Notification]:
    """The session's stored heart-rate notifications, decoded, with the reason for every break (raw layer only)."""
    gaps = sorted(t for t, _dev, state, _r in store.link_events(session_id) if state == "disconnected")
    notes: list[Notification] = []
    pending: str | None = None
    gi = 0
    for p in store.packets(session_id, HEART_RATE_MEASUREMENT_UUID):
        while gi < len(gaps) and gaps[gi] <= p.t:
            pending = pending or "disconnect"
            gi += 1
        try:
            m = decode_heart_rate(p.data)
        except DEVICE_BYTE_ERRORS:
            pending = pending or "malformed"
            continue
        before, unusable = heart_rate_break(m)
        pending = pending or before
        if unusable:
            pending = pending or "implausible RR"
            continue
        notes.append(Notification(p.id, p.t, tuple(m.rr_1024), pending))
        if m.rr_1024:
            pending = None
    return notes


def rebuild_beats(store: Store, session_id: int) -> list[StretchInfo]:
    """Rebuild the session's decoded beats from its raw heart-rate packets with the whole-session fit.

    The raw layer never changes; the stretches (drift, anchoring delay) are stored beside the beats.
    """
    rows, stretches = fit_beat_times(heart_rate_notifications(store, session_id))
    values = [(r.t, r.rr_ms, r.gap_before, r.arrival_lag_s, r.packet_id) for r in rows]
    if store.atomic:
        store.replace_beats(session_id, values, stretches)
    else:
        with store.transaction():
            store.replace_beats(session_id, values, stretches)
    return stretches


def redecode_session(store: Store, session_id: int) -> DecodeCounts:
    """Drop and rebuild the decoded layer of a session from its raw packets and recorded link events."""
    gaps = [t for t, _dev, state, _r in store.link_events(session_id) if state == "disconnected"]
    packets = [(p.id, p.t, p.uuid, p.data) for p in store.packets(session_id)]
    with store.transaction():
        store.clear_decoded(session_id)
        counts = decode_packets(store, session_id, packets, gaps)
    return counts
