"""A simulated heart-rate strap: a `StrapLink` streaming what a Polar H10 would send, on the injected clock.

Beats come from `devices.physiology.BeatModel`. About once a second a Heart Rate Measurement notification
carries the RR intervals of the beats completed since the previous one (quantised to 1/1024 s with the
rounding remainder carried, so their sum does not drift) and the strap's smoothed heart rate. With
`ecg=True`, Polar PMD ECG frames (73 samples at 130 Hz of device time) are sent too, stamped by a device
clock that starts at a wrong date and drifts against the session clock. `SimFaults` adds disconnects,
contact loss and bursts of malformed packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devices.clock import Clock
from devices.ecg_synth import POLAR_H10_ECG_HZ, EcgStream
from devices.heart_rate import SensorContact, encode_heart_rate
from devices.link import (
    HEART_RATE_MEASUREMENT_UUID,
    PMD_DATA_UUID,
    EventSink,
    LinkEvent,
    LinkState,
    Packet,
    PacketSink,
)
from devices.physiology import REST_GUIDE, BeatModel, BreathingGuide, SimBeat, SimParticipant
from devices.polar_pmd import encode_ecg_frame

RR_UNITS_PER_S = 1024
NOTIFY_INTERVAL_S = 1.0
ECG_FRAME_SAMPLES = 73
CONNECT_DELAY_S = 0.4
"""Time from CONNECTING to CONNECTED (and from RECONNECTING to the end of a disconnect)."""
PACKET_LATENCY_S = 0.02
BEAT_LOOKAHEAD_S = 2.0
HR_SMOOTHING = 0.3
"""Weight of the newest beat in the strap's exponentially smoothed heart rate."""
PMD_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
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

    def __post_init__(self) -> None:
        for kind in ("disconnect", "contact_loss", "malformed"):
            rate = getattr(self, f"{kind}_rate_per_hour")
            if rate < 0:
                raise ValueError(f"{kind}_rate_per_hour must be >= 0, got {rate}")
        for name in ("disconnect_duration_s", "contact_loss_duration_s", "malformed_burst_s"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
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
    ) -> None:
        self.device_id = device_id
        self.clock = clock
        self.participant = participant
        self.guide: BreathingGuide = guide or REST_GUIDE
        self.ecg = ecg
        self.faults = faults or SimFaults()
        base = [participant.seed, zlib.crc32(device_id.encode())]
        self._rng = np.random.default_rng([*base, 1])
        self.model = BeatModel(participant)
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
        self.device_clock_drift_ppm = float(self._rng.choice([-1, 1]) * self._rng.uniform(15, 25))
        """How much faster (ppm) the device clock runs than the session clock."""
        self.beats: list[SimBeat] = []
        """Every beat the model produced so far (reported or not): the ground truth for tests."""
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

    async def _sleep(self, seconds: float) -> None:
        if self._stopped:
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, seconds)))
        stopper = asyncio.ensure_future(self._stop_event.wait())
        _, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _extend_beats(self, until: float, start: float) -> list[float]:
        """Generate beats until the last is after `until`; return the new true beat times (for the ECG)."""
        new: list[float] = []
        while not self.beats or self.beats[-1].t_beat <= until:
            prev = self.beats[-1].t_beat if self.beats else start
            beat = self.model.next_beat(prev, self.guide)
            self.beats.append(beat)
            if beat.undetected_t is not None:
                new.append(beat.undetected_t)
            new.append(beat.t_beat)
        return new

    def _notify_gap(self) -> float:
        return NOTIFY_INTERVAL_S + float(np.clip(self._rng.normal(0, 0.02), -0.06, 0.06))

    def _truncate(self, data: bytes, min_valid: int) -> bytes:
        """A malformed copy no decoder can accept: shorter than `min_valid`, or with an odd tail."""
        if len(data) <= min_valid or self._rng.uniform() < 0.5:
            return data[: int(self._rng.integers(0, min(min_valid, len(data))))]
        return data[:-1] if (len(data) - min_valid) % 2 == 0 else data[:-2]

    async def _run(self, on_packet: PacketSink, on_event: EventSink) -> None:
        self._event(on_event, LinkState.CONNECTING)
        await self._sleep(CONNECT_DELAY_S)
        if self._stopped:
            return
        t_connect = self.clock.now()
        self._event(on_event, LinkState.CONNECTED)
        connected = True
        next_beat_index = 0
        self._extend_beats(t_connect + BEAT_LOOKAHEAD_S, t_connect)
        # beats already complete at connection time are not reported
        while next_beat_index < len(self.beats) and self.beats[next_beat_index].t_beat <= t_connect:
            next_beat_index += 1
        carry = 0.0
        pending_rr: list[int] = []
        hr_smooth: float | None = None
        skip_next_rr = False
        next_notify = t_connect + self._notify_gap()

        stream: EcgStream | None = None
        ecg_fs = POLAR_H10_ECG_HZ * (1.0 + self.device_clock_drift_ppm * 1e-6)
        frames_sent = 0
        if self.ecg:
            stream = EcgStream(t_start=t_connect, fs=ecg_fs, seed=self.participant.seed,
                               breathing=lambda t: self.model.breathing_signal(t, self.guide))
            stream.extend([b for b in self._true_times() if b > t_connect - 1.0], self.beats[-1].t_beat)
        lost_rng = np.random.default_rng([self.participant.seed, 99])

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
            elif not connected and not in_gap:
                self._event(on_event, LinkState.CONNECTED)
                connected = True
                next_notify = now + self._notify_gap()

            # beats completed up to now: quantise (always, the strap counts on), report only when possible
            while next_beat_index < len(self.beats) and self.beats[next_beat_index].t_beat <= now + 1e-9:
                beat = self.beats[next_beat_index]
                next_beat_index += 1
                exact = beat.rr_ms * RR_UNITS_PER_S / 1000.0 + carry
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
                if connected:
                    pending_rr.append(units)

            if connected and now >= next_notify - 1e-9:
                next_notify += self._notify_gap()
                contact_ok = not self._contact_loss.active(now)
                if hr_smooth is not None or not contact_ok:
                    if contact_ok:
                        data = encode_heart_rate(round(hr_smooth or 0), pending_rr)
                    else:
                        data = encode_heart_rate(0, (), contact=SensorContact.SUPPORTED_NOT_DETECTED)
                    if self._malformed.active(now):
                        data = self._truncate(data, 2)
                    on_packet(Packet(now, HEART_RATE_MEASUREMENT_UUID, data, self.device_id))
                pending_rr.clear()

            next_frame = math.inf
            if stream is not None:
                while True:
                    frame_end_index = (frames_sent + 1) * ECG_FRAME_SAMPLES
                    last_sample_t = t_connect + (frame_end_index - 1) / ecg_fs
                    due = last_sample_t + PACKET_LATENCY_S
                    if due > now + 1e-9:
                        next_frame = due
                        break
                    times, values = stream.samples_until(last_sample_t + 0.5 / ecg_fs)
                    frames_sent += 1
                    if not connected:
                        continue
                    lost = np.array([self._contact_loss.active(float(t)) for t in times])
                    if lost.any():
                        values = values.copy()
                        values[lost] = np.rint(lost_rng.normal(0, 25, int(lost.sum()))).astype(values.dtype)
                    device_ns = self.device_clock_start_ns + round(
                        (frame_end_index - 1) * 1e9 / POLAR_H10_ECG_HZ
                    )
                    data = encode_ecg_frame(device_ns, values.tolist())
                    if self._malformed.active(now):
                        data = self._truncate(data, 10)
                    on_packet(Packet(now, PMD_DATA_UUID, data, self.device_id))

            wake = min(next_notify if connected else math.inf, next_frame,
                       self._disconnects.next_boundary(now), self._contact_loss.next_boundary(now),
                       self._malformed.next_boundary(now))
            await self._sleep(wake - now)

    def _true_times(self) -> list[float]:
        times: list[float] = []
        for b in self.beats:
            if b.undetected_t is not None:
                times.append(b.undetected_t)
            times.append(b.t_beat)
        return times

