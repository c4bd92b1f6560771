"""A simulated heart-rate strap: a `StrapLink` streaming what a Polar H10 would send, on the injected clock.

Beats come from `devices.physiology.BeatModel`. The strap has its own clock, drifting against the session clock
(`SimFaults.drift_ppm`, drawn per strap within ±50 ppm by default): about once a second *of strap time* (with
jitter; a share of ticks skipped) a Heart Rate Measurement notification carries the RR intervals of the beats
completed since the previous one, measured on the strap's clock (quantised to 1/1024 s with the rounding remainder
carried, so their sum does not drift), and the strap's smoothed heart rate. Every packet reaches the host like over
real BLE: in order, 0–300 ms late by default (`SimFaults.latency_s`), a share held back and delivered together with
the next one (`bunch_fraction`), and the first notification of a connection later still (`first_delay_s`); its
arrival on the session clock is what the recorder sees. With
`ecg=True`, Polar PMD ECG frames (73 samples at 130 Hz of device time) are sent too, stamped by a device
clock that starts at a wrong date and drifts against the session clock. With `acc=True`, Polar PMD accelerometer
frames (raw int16 x,y,z mG, 36 samples at 50 Hz of device time, same device clock) carry gravity (about 1000 mG on
one axis) plus chest movement following the model's breathing signal along a fixed chest direction, plus noise; the
accelerometer needs no skin contact, so contact loss does not affect it. On every connection the strap's Battery Level
(0x2A19) is sent once, as a real strap's is read on connecting (`SimFaults.battery_pct`; None: no Battery Service).
`SimFaults` adds disconnects, contact loss and bursts of malformed packets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devices.battery import encode_battery_level
from devices.clock import Clock, sleep_unless
from devices.ecg_synth import POLAR_H10_ECG_HZ, EcgStream
from devices.heart_rate import SensorContact, encode_heart_rate
from devices.link import (
    BATTERY_LEVEL_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    PMD_DATA_UUID,
    EventSink,
    LinkEvent,
    LinkState,
    Packet,
    PacketSink,
)
from devices.physiology import REST_GUIDE, BeatModel, BreathingGuide, SimBeat, SimParticipant
from devices.polar_pmd import HEADER_SIZE, encode_acc_frame, encode_ecg_frame

RR_UNITS_PER_S = 1024
NOTIFY_INTERVAL_S = 1.0
ECG_FRAME_SAMPLES = 73
ACC_FS_HZ = 50.0
"""Accelerometer samples per second of device time (what `BleStrapLink` asks a Polar H10 for)."""
ACC_FRAME_SAMPLES = 36
"""Raw int16 x,y,z samples per ACC frame: 10 + 36 * 6 = 226 bytes, within Polar's 232-byte MTU."""
ACC_BREATH_AMPLITUDE_MG = (5.0, 20.0)
"""Range (seeded per strap) of the chest movement's amplitude in mG at full lung volume swing."""
ACC_NOISE_MG = 2.0
CONNECT_DELAY_S = 0.4
"""Time from CONNECTING to CONNECTED (and from RECONNECTING to the end of a disconnect)."""
BEAT_LOOKAHEAD_S = 2.0
HR_SMOOTHING = 0.3
"""Weight of the newest beat in the strap's exponentially smoothed heart rate."""
HISTORY_S = 120.0
"""Without `keep_history`, beats and breathing older than this (s before the newest beat) are forgotten."""
PMD_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_FORGET_BLOCK = 64
DISCONNECT_REASON = "simulated: connection supervision timeout (HCI 0x08)"


Window = tuple[float, float]


def _check_windows(name: str, windows: Sequence[Window]) -> None:
    for window in windows:
        if len(window) != 2:
            raise ValueError(f"{name}: each window is (t_start, duration), got {window!r}")
        start, duration = window
        if start < 0 or duration <= 0:
            raise ValueError(f"{name}: window {window!r} needs t_start >= 0 and duration > 0")


@dataclass(frozen=True)
class SimFaults:
    """Faults to inject: explicit (t_start, duration) windows in session seconds and/or random rates per hour.

    Random windows are drawn (seeded) with exponential gaps and durations uniform in the given range.
    """

    seed: int = 0
    disconnects: Sequence[Window] = ()
    disconnect_rate_per_hour: float = 0.0
    disconnect_duration_s: tuple[float, float] = (3.0, 20.0)
    contact_loss: Sequence[Window] = ()
    contact_loss_rate_per_hour: float = 0.0
    contact_loss_duration_s: tuple[float, float] = (2.0, 10.0)
    malformed_bursts: Sequence[Window] = ()
    malformed_rate_per_hour: float = 0.0
    malformed_burst_s: tuple[float, float] = (1.0, 4.0)
    disconnect_reason: str = DISCONNECT_REASON
    latency_s: tuple[float, float] = (0.0, 0.3)
    """Transport latency of every packet, uniform in this range (s)."""
    bunch_fraction: float = 0.05
    """Share of packets held back and delivered together with the next one."""
    first_delay_s: tuple[float, float] = (0.2, 0.8)
    """Extra delay of a connection's first heart-rate notification (s)."""
    drift_ppm: float | None = None
    """Strap clock rate error (ppm, positive = strap clock fast); None draws one per strap within ±50 ppm."""
    skipped_tick_fraction: float = 0.02
    """Share of notification ticks the strap skips (their RR come with the next notification)."""
    battery_pct: int | None = 90
    """The Battery Level the strap reports on each connection (percent); None: a strap without a Battery Service."""

    def __post_init__(self) -> None:
        for kind in ("disconnect", "contact_loss", "malformed"):
            rate = getattr(self, f"{kind}_rate_per_hour")
            if rate < 0:
                raise ValueError(f"{kind}_rate_per_hour must be >= 0, got {rate}")
        for name in ("disconnect_duration_s", "contact_loss_duration_s", "malformed_burst_s"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        lo, hi = self.latency_s
        if not 0 <= lo <= hi <= 30:
            raise ValueError(f"latency_s must be (low, high) with 0 <= low <= high <= 30 s, got {(lo, hi)}")
        lo, hi = self.first_delay_s
        if not 0 <= lo <= hi <= 30:
            raise ValueError(f"first_delay_s must be (low, high) with 0 <= low <= high <= 30 s, got {(lo, hi)}")
        for name in ("bunch_fraction", "skipped_tick_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.battery_pct is not None and not 0 <= self.battery_pct <= 100:
            raise ValueError(f"battery_pct must be 0-100 %, got {self.battery_pct}")
        if self.drift_ppm is not None and not abs(self.drift_ppm) <= 1000:
            raise ValueError(f"drift_ppm must be within ±1000 ppm, got {self.drift_ppm}")
        _check_windows("disconnects", self.disconnects)
        _check_windows("contact_loss", self.contact_loss)
        _check_windows("malformed_bursts", self.malformed_bursts)


class FaultWindows:
    """Union of explicit windows and seeded random ones (drawn lazily as time goes on)."""

    def __init__(
        self,
        explicit: Sequence[Window],
        rate_per_hour: float,
        duration_s: tuple[float, float],
        rng_seed: list[int],
    ) -> None:
        self._explicit = sorted((float(s), float(s) + float(d)) for s, d in explicit)
        self._rate = rate_per_hour
        self._duration = duration_s
        self._rng = np.random.default_rng(rng_seed)
        self._random: list[tuple[float, float]] = []
        self._drawn_until = 0.0

    def _draw_until(self, t: float) -> None:
        if self._rate <= 0:
            return
        while self._drawn_until <= t + 60.0:
            start = self._drawn_until + float(self._rng.exponential(3600.0 / self._rate))
            end = start + float(self._rng.uniform(*self._duration))
            self._random.append((start, end))
            self._drawn_until = end

    def _all(self, t: float) -> list[tuple[float, float]]:
        self._draw_until(t)
        return self._explicit + self._random

    def active(self, t: float) -> bool:
        return any(s <= t < e for s, e in self._all(t))

    def mask(self, times: np.ndarray) -> np.ndarray:
        """Boolean array: which of `times` fall inside a window."""
        out = np.zeros(times.shape, dtype=bool)
        if times.size:
            for s, e in self._all(float(times.max())):
                out |= (times >= s) & (times < e)
        return out

    def next_boundary(self, t: float) -> float:
        """The first window start or end strictly after t (inf if none)."""
        edges = [x for w in self._all(t) for x in w if x > t + 1e-9]
        return min(edges, default=math.inf)


class SimulatedStrap:
    """A simulated chest strap implementing `devices.link.StrapLink`."""

    def __init__(
        self,
        device_id: str,
        clock: Clock,
        participant: SimParticipant,
        guide: BreathingGuide | None = None,
        ecg: bool = False,
        faults: SimFaults | None = None,
        *,
        keep_history: bool = False,
        acc: bool = False,
    ) -> None:
        self.device_id = device_id
        self.keep_history = keep_history
        self.clock = clock
        self.participant = participant
        self.guide: BreathingGuide = guide or REST_GUIDE
        self.ecg = ecg
        self.acc = acc
        self.faults = faults or SimFaults()
        base = [participant.seed, zlib.crc32(device_id.encode())]
        self._rng = np.random.default_rng([*base, 1])
        acc_rng = np.random.default_rng([*base, 3])
        gravity = np.array([0.0, -1.0, 0.0]) + acc_rng.normal(0, 0.1, 3)
        self.acc_gravity_mg = 1000.0 * gravity / np.linalg.norm(gravity)
        """Gravity as the strap's accelerometer sees it (mG): mostly along -y, the strap worn upright."""
        chest = np.cross(gravity, acc_rng.normal(0, 1, 3))
        self.acc_chest_direction = chest / np.linalg.norm(chest)
        """Unit direction (perpendicular to gravity) along which breathing moves the strap."""
        self.acc_breath_amplitude_mg = float(acc_rng.uniform(*ACC_BREATH_AMPLITUDE_MG))
        self._acc_noise = np.random.default_rng([*base, 4])
        self.model = BeatModel(participant, history_s=math.inf if keep_history else HISTORY_S)
        f = self.faults
        self._disconnects = FaultWindows(f.disconnects, f.disconnect_rate_per_hour, f.disconnect_duration_s,
                                         [f.seed, 11])
        self._contact_loss = FaultWindows(f.contact_loss, f.contact_loss_rate_per_hour,
                                          f.contact_loss_duration_s, [f.seed, 12])
        self._malformed = FaultWindows(f.malformed_bursts, f.malformed_rate_per_hour, f.malformed_burst_s,
                                       [f.seed, 13])
        start_2019 = dt.datetime(2019, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
            seconds=float(self._rng.uniform(0, 364 * 86400))
        )
        self.device_clock_start_ns = int((start_2019 - PMD_EPOCH).total_seconds()) * 1_000_000_000
        """Device time (ns since 2000-01-01) at the first ECG sample: deliberately a wrong date in 2019."""
        drawn = float(self._rng.uniform(-50.0, 50.0))
        self.device_clock_drift_ppm = drawn if self.faults.drift_ppm is None else float(self.faults.drift_ppm)
        """How much faster (ppm) the strap's clock runs than the session clock (RR, ECG and ACC all use it)."""
        self._net = np.random.default_rng([*base, 5])
        self._outbox: list[tuple[float, Packet]] = []  # (due on the session clock, packet), in delivery order
        self._held: list[Packet] = []  # packets held back, delivered with the next one
        self._last_due = -math.inf
        self.beats: list[SimBeat] = []
        """The beats the model produced (reported or not): every one with `keep_history=True` (the ground truth
        for tests), otherwise only those of the last `HISTORY_S` seconds, so a long session does not grow."""
        self.beats_produced = 0
        """How many beats the model produced in all."""
        self._next_beat_index = 0  # into self.beats: the first beat not yet counted by the strap
        self.ecg_stream: EcgStream | None = None
        """The ECG generator of the current connection run (None before it starts or without `ecg`)."""
        self._stop_event = asyncio.Event()
        self._stopped = False

    # -- StrapLink -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """End `run()` promptly (call from the event loop's thread). A stopped strap stays stopped."""
        self._stopped = True
        self._stop_event.set()

    async def run(self, on_packet: PacketSink, on_event: EventSink) -> None:
        """Stream packets and link events until `stop()`; emits CLOSED last."""
        try:
            await self._run(on_packet, on_event)
        finally:
            on_event(LinkEvent(self.clock.now(), self.device_id, LinkState.CLOSED))

    # -- internals -------------------------------------------------------------------------------------------
    def _event(self, on_event: EventSink, state: LinkState, reason: str = "") -> None:
        on_event(LinkEvent(self.clock.now(), self.device_id, state, reason))

    def _battery(self, on_packet: PacketSink) -> None:
        """The Battery Level as read on connecting (nothing without a Battery Service)."""
        if self.faults.battery_pct is not None:
            data = encode_battery_level(int(self.faults.battery_pct))
            on_packet(Packet(self.clock.now(), BATTERY_LEVEL_UUID, data, self.device_id))

    async def _sleep(self, seconds: float) -> None:
        if self._stopped:
            return
        await sleep_unless(self.clock, seconds, self._stop_event)

    def _extend_beats(self, until: float, start: float) -> list[float]:
        """Generate beats until the last is after `until`; return the new true beat times (for the ECG)."""
        new: list[float] = []
        while not self.beats or self.beats[-1].t_beat <= until:
            prev = self.beats[-1].t_beat if self.beats else start
            beat = self.model.next_beat(prev, self.guide)
            self.beats.append(beat)
            self.beats_produced += 1
            if beat.undetected_t is not None:
                new.append(beat.undetected_t)
            new.append(beat.t_beat)
        self._forget_old_beats()
        return new

    def _forget_old_beats(self) -> None:
        """Drop counted beats older than `HISTORY_S` (in blocks), unless the whole history is kept."""
        if self.keep_history:
            return
        cutoff = self.beats[-1].t_beat - HISTORY_S
        while self._next_beat_index > _FORGET_BLOCK and self.beats[_FORGET_BLOCK].t_beat < cutoff:
            del self.beats[:_FORGET_BLOCK]
            self._next_beat_index -= _FORGET_BLOCK

    def _notify_gap(self) -> float:
        """Session seconds to the strap's next notification tick (a tick of its own clock, with jitter)."""
        strap_s = NOTIFY_INTERVAL_S + float(np.clip(self._rng.normal(0, 0.02), -0.06, 0.06))
        return strap_s / (1.0 + self.device_clock_drift_ppm * 1e-6)

    def _send(self, now: float, uuid: str, data: bytes, extra_delay: float = 0.0) -> None:
        """Queue a packet as BLE would deliver it: in order, late, sometimes held back for the next one."""
        packet = Packet(now, uuid, data, self.device_id)
        if self.faults.bunch_fraction and self._net.uniform() < self.faults.bunch_fraction:
            self._held.append(packet)
            return
        due = max(now + float(self._net.uniform(*self.faults.latency_s)) + extra_delay, self._last_due)
        self._last_due = due
        for held in self._held:
            self._outbox.append((due, held))
        self._held.clear()
        self._outbox.append((due, packet))

    def _deliver(self, now: float, on_packet: PacketSink) -> float:
        """Hand over every packet that has arrived by `now` (stamped with its arrival); returns the next due time."""
        while self._outbox and self._outbox[0][0] <= now + 1e-9:
            _due, packet = self._outbox.pop(0)
            on_packet(Packet(self.clock.now(), packet.uuid, packet.data, packet.device))
        return self._outbox[0][0] if self._outbox else math.inf

    def _drop_in_flight(self) -> None:
        """The link dropped: packets not yet delivered are lost with it."""
        self._outbox.clear()
        self._held.clear()
        self._last_due = -math.inf

    def _truncate(self, data: bytes, min_valid: int) -> bytes:
        """A malformed copy no decoder can accept: cut inside the fixed header, or one byte off the tail.

        Cutting one byte leaves an odd RR tail (2-byte values) or a partial ECG sample (3-byte values).
        """
        if len(data) > min_valid and self._rng.uniform() < 0.5:
            return data[:-1]
        return data[: int(self._rng.integers(0, min_valid))]

    async def _run(self, on_packet: PacketSink, on_event: EventSink) -> None:
        self._event(on_event, LinkState.CONNECTING)
        await self._sleep(CONNECT_DELAY_S)
        if self._disconnects.active(self.clock.now()):  # out of reach from the start: it never connects until then
            self._event(on_event, LinkState.RECONNECTING, self.faults.disconnect_reason)
            while not self._stopped and self._disconnects.active(self.clock.now()):
                await self._sleep(self._disconnects.next_boundary(self.clock.now()) - self.clock.now())
        if self._stopped:
            return
        t_connect = self.clock.now()
        link_up_since = t_connect  # beats before this moment (while the link was down) are never reported
        self._event(on_event, LinkState.CONNECTED)
        self._battery(on_packet)
        connected = True
        self._extend_beats(t_connect + BEAT_LOOKAHEAD_S, t_connect)
        # beats already complete at connection time are not reported
        while self._next_beat_index < len(self.beats) and self.beats[self._next_beat_index].t_beat <= t_connect:
            self._next_beat_index += 1
        carry = 0.0
        pending_rr: list[int] = []
        hr_smooth: float | None = None
        skip_next_rr = False
        next_notify = t_connect + self._notify_gap()
        first_notification = True
        strap_rate = 1.0 + self.device_clock_drift_ppm * 1e-6  # strap seconds per session second

        stream: EcgStream | None = None
        ecg_fs = POLAR_H10_ECG_HZ * (1.0 + self.device_clock_drift_ppm * 1e-6)
        frames_sent = 0
        if self.ecg:
            stream = EcgStream(t_start=t_connect, fs=ecg_fs, seed=self.participant.seed,
                               breathing=lambda t: self.model.breathing_signal(t, self.guide))
            stream.extend([b for b in self.true_beat_times() if b > t_connect - 1.0], self.beats[-1].t_beat)
            self.ecg_stream = stream
        lost_rng = np.random.default_rng([self.participant.seed, 99])
        acc_fs = ACC_FS_HZ * (1.0 + self.device_clock_drift_ppm * 1e-6)
        acc_frames_sent = 0

        while not self._stopped:
            now = self.clock.now()
            new = self._extend_beats(now + BEAT_LOOKAHEAD_S, t_connect)
            if stream is not None:
                stream.extend(new, self.beats[-1].t_beat)

            in_gap = self._disconnects.active(now)
            if connected and in_gap:
                self._event(on_event, LinkState.DISCONNECTED, self.faults.disconnect_reason)
                self._event(on_event, LinkState.RECONNECTING)
                connected = False
                pending_rr.clear()
                self._drop_in_flight()
            elif not connected and not in_gap:
                self._event(on_event, LinkState.CONNECTED)
                self._battery(on_packet)
                connected = True
                link_up_since = now
                next_notify = now + self._notify_gap()
                first_notification = True

            # beats completed up to now: quantise (always, the strap counts on), report only when possible
            while self._next_beat_index < len(self.beats) and self.beats[self._next_beat_index].t_beat <= now + 1e-9:
                beat = self.beats[self._next_beat_index]
                self._next_beat_index += 1
                exact = beat.rr_ms * strap_rate * RR_UNITS_PER_S / 1000.0 + carry  # measured on the strap's clock
                units = round(exact)
                carry = exact - units
                if self._contact_loss.active(beat.t_beat):
                    skip_next_rr = True  # the beat after contact returns has no valid predecessor
                    continue
                if skip_next_rr:
                    skip_next_rr = False
                    continue
                hr_now = 60000.0 / beat.rr_ms
                hr_smooth = hr_now if hr_smooth is None else hr_smooth + HR_SMOOTHING * (hr_now - hr_smooth)
                if connected and beat.t_beat >= link_up_since and not self._disconnects.active(beat.t_beat):
                    pending_rr.append(units)  # beats while the link is down (fault to CONNECTED) are never reported

            if connected and now >= next_notify - 1e-9:
                next_notify += self._notify_gap()
                contact_ok = not self._contact_loss.active(now)
                skipped = not first_notification and self._rng.uniform() < self.faults.skipped_tick_fraction
                if skipped:
                    pass  # the strap skipped this tick: its RR come with the next notification
                elif hr_smooth is not None or not contact_ok:
                    if contact_ok:
                        data = encode_heart_rate(round(hr_smooth or 0), pending_rr)
                    else:
                        data = encode_heart_rate(0, (), contact=SensorContact.SUPPORTED_NOT_DETECTED)
                    if self._malformed.active(now):
                        data = self._truncate(data, 2)
                    delay = float(self._net.uniform(*self.faults.first_delay_s)) if first_notification else 0.0
                    self._send(now, HEART_RATE_MEASUREMENT_UUID, data, delay)
                    first_notification = False
                if not skipped:
                    pending_rr.clear()

            next_frame = math.inf
            if stream is not None:
                while True:
                    frame_end_index = (frames_sent + 1) * ECG_FRAME_SAMPLES
                    last_sample_t = t_connect + (frame_end_index - 1) / ecg_fs
                    due = last_sample_t
                    if due > now + 1e-9:
                        next_frame = due
                        break
                    times, values = stream.samples_until(last_sample_t + 0.5 / ecg_fs)
                    frames_sent += 1
                    if not connected:
                        continue
                    lost = self._contact_loss.mask(times)
                    if lost.any():
                        values = values.copy()
                        values[lost] = np.rint(lost_rng.normal(0, 25, int(lost.sum()))).astype(values.dtype)
                    device_ns = self.device_clock_start_ns + round(
                        (frame_end_index - 1) * 1e9 / POLAR_H10_ECG_HZ
                    )
                    data = encode_ecg_frame(device_ns, values.tolist())
                    if self._malformed.active(now):
                        data = self._truncate(data, HEADER_SIZE)
                    self._send(now, PMD_DATA_UUID, data)

            next_acc = math.inf
            while self.acc:
                end_index = (acc_frames_sent + 1) * ACC_FRAME_SAMPLES
                due = t_connect + (end_index - 1) / acc_fs
                if due > now + 1e-9:
                    next_acc = due
                    break
                acc_frames_sent += 1
                if connected:
                    data = self._acc_frame(t_connect, acc_fs, end_index)
                    if self._malformed.active(now):
                        data = self._truncate(data, HEADER_SIZE)
                    self._send(now, PMD_DATA_UUID, data)

            next_delivery = self._deliver(now, on_packet) if connected else math.inf
            wake = min(next_notify if connected else math.inf, next_frame, next_acc, next_delivery,
                       self._disconnects.next_boundary(now), self._contact_loss.next_boundary(now),
                       self._malformed.next_boundary(now))
            await self._sleep(wake - now)

    def _acc_frame(self, t_connect: float, acc_fs: float, end_index: int) -> bytes:
        """The ACC frame whose last sample is sample `end_index - 1` since connecting (session time from `acc_fs`)."""
        index = np.arange(end_index - ACC_FRAME_SAMPLES, end_index)
        times = t_connect + index / acc_fs
        lung = np.asarray(self.model.breathing_signal(times, self.guide), dtype=float)
        mg = (self.acc_gravity_mg + self.acc_breath_amplitude_mg * lung[:, None] * self.acc_chest_direction
              + self._acc_noise.normal(0, ACC_NOISE_MG, (len(times), 3)))
        device_ns = self.device_clock_start_ns + round((end_index - 1) * 1e9 / ACC_FS_HZ)
        return encode_acc_frame(device_ns, np.rint(mg).astype(np.int64))

    def true_beat_times(self) -> list[float]:
        """Times of the beats in `beats`, including ones the strap failed to detect (they are in the ECG)."""
        times: list[float] = []
        for b in self.beats:
            if b.undetected_t is not None:
                times.append(b.undetected_t)
            times.append(b.t_beat)
        return times

