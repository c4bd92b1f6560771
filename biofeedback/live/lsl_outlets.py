"""Lab Streaming Layer outlets: a live session's ECG, RR, heart rate and markers for LabRecorder and friends.

Per strap: `ECG` (µV, 130 Hz, float32), `RR` (ms, irregular, stamped at the beat that ends each interval, with a
second channel flagging the first beat after a gap) and `HeartRate` (the strap's own bpm, irregular). Per session:
one `Markers` stream (strings such as ``phase_start: baseline``; a manual marker is ``manual``, with its label
``manual: door knock`` only when `include_text`). Free-text notes are never streamed. Each stream carries channel
metadata (label, unit, type), the strap's identity as `source_id` (``cmt-biofeedback/<device-id>/ecg``) and the
pseudonymous participant code in its description. The ECG stream's nominal rate is the strap's *measured* rate on
the host clock when an earlier session of the same strap in the store has ECG (e.g. 130.16 Hz for an H10), else the
nominal 130 Hz; its description says which (`measured_srate`, `device_nominal_srate`, `srate_source`).

Timestamps are explicit: LSL time = session time + `offset`, where ``offset = local_clock() - clock.now()`` taken
when the session clock starts. With a real-time clock LSL time and session time then run together; with a
simulated clock running ×N, the LSL stamps keep session seconds (so they run ahead of `local_clock`). ECG samples
are stamped from the strap's own clock (Polar PMD device time), mapped onto the session clock by
`recordings.ecg_time.DeviceClockMap` in the session, so BLE delivery jitter does not enter the ECG timing.

Outlets are created when `LslOutlets` is built, before the session clock starts; `wait_for_consumers(n)` blocks
until `n` of the streams have a consumer (liblsl says whether a stream has consumers, not how many), so LabRecorder
can subscribe before `session_start` is pushed; `ConsumerGate` offers the same wait to the monitor's buttons ("Start
when N connected" / "Start now"). `close()` lets the outlets linger a few seconds so consumers
receive the last samples and `session_end` before the streams disappear. Pushing only copies into liblsl's queues
and never blocks the recording loop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pylsl

from biofeedback.live.session import LiveSession, SessionListener
from devices.polar_pmd import EcgFrame
from protocols.runner import Marker
from recordings.decode import BeatRow
from recordings.ecg_time import ECG_FS_HZ, EcgTimeError, map_ecg_chunks
from recordings.store import Store

SOURCE_PREFIX = "cmt-biofeedback"
LINGER_S = 3.0
"""How long outlets stay after the session ends, so consumers receive what was pushed last."""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    label: str
    unit: str
    type: str


def stream_info(
    name: str,
    stype: str,
    channels: Sequence[ChannelSpec],
    *,
    srate: float,
    fmt: int,
    source_id: str,
    participant_id: str | None,
    extra: dict[str, str],
) -> pylsl.StreamInfo:
    """A StreamInfo with channel metadata (XDF conventions: desc/channels/channel{label,unit,type})."""
    info = pylsl.StreamInfo(name, stype, len(channels), srate, fmt, source_id)
    desc = info.desc()
    chans = desc.append_child("channels")
    for ch in channels:
        c = chans.append_child("channel")
        c.append_child_value("label", ch.label)
        c.append_child_value("unit", ch.unit)
        c.append_child_value("type", ch.type)
    acq = desc.append_child("acquisition")
    acq.append_child_value("software", SOURCE_PREFIX)
    acq.append_child_value("host", socket.gethostname())
    if participant_id is not None:
        desc.append_child_value("participant_id", participant_id)
    for key, value in extra.items():
        desc.append_child_value(key, value)
    return info


def marker_text(marker: Marker, include_text: bool = False) -> str:
    """The string pushed on the Markers stream for one marker, e.g. ``phase_start: baseline``; a manual marker's
    label is the experimenter's free text, so it is ``manual`` unless `include_text`."""
    if marker.kind == "manual" and not include_text:
        return "manual"
    return f"{marker.kind}: {marker.label}"


def measured_ecg_rate(store: Store, device_id: str, exclude: Sequence[int] = ()) -> tuple[float, int] | None:
    """(rate on the host clock, session id) from the latest stored session of this strap with ECG, or None."""
    for info in reversed(store.sessions()):
        if info.device != device_id or info.id in exclude:
            continue
        chunks = store.ecg_chunks(info.id)
        if not chunks:
            continue
        try:
            return map_ecg_chunks(chunks).fs_hz, info.id
        except EcgTimeError:
            continue
    return None


@dataclass
class _StrapOutlets:
    ecg: pylsl.StreamOutlet
    rr: pylsl.StreamOutlet
    hr: pylsl.StreamOutlet


class LslOutlets(SessionListener):
    """Publishes a session's data on LSL; register with `session.add_listener(LslOutlets(session))`."""

    def __init__(self, session: LiveSession, *, include_text: bool = False) -> None:
        self.offset: float | None = None
        """LSL time minus session time, fixed when the session clock starts."""
        self.stream_names: list[str] = []
        self.include_text = include_text
        self._outlets: list[pylsl.StreamOutlet] = []
        protocol = session.protocol.name
        self._straps: list[_StrapOutlets] = []
        for strap, sid in zip(session.straps, session.session_ids, strict=True):
            device = strap.binding.link.device_id
            pid = strap.binding.participant_id
            extra = {"session_id": str(sid), "protocol": protocol, "device_id": device}
            base = f"{SOURCE_PREFIX}/{device}"
            measured = measured_ecg_rate(session.store, device, exclude=session.session_ids)
            ecg_rate = ECG_FS_HZ if measured is None else measured[0]
            ecg_extra = {**extra, "device_nominal_srate": f"{ECG_FS_HZ:g}"}
            if measured is None:
                ecg_extra["srate_source"] = "device nominal (no earlier ECG of this strap in the store)"
            else:
                ecg_extra |= {"measured_srate": f"{measured[0]:.4f}",
                              "srate_source": f"measured on the host clock in session {measured[1]}"}  # fmt: skip
            ecg = self._outlet(
                stream_info(f"CMT-ECG-{pid}", "ECG", [ChannelSpec("ECG", "microvolts", "ECG")], srate=ecg_rate,
                            fmt=pylsl.cf_float32, source_id=f"{base}/ecg", participant_id=pid, extra=ecg_extra),
                chunk_size=73,
            )  # fmt: skip
            rr = self._outlet(
                stream_info(f"CMT-RR-{pid}", "RR",
                            [ChannelSpec("RR", "milliseconds", "RR"), ChannelSpec("gap_before", "bool", "flag")],
                            srate=pylsl.IRREGULAR_RATE, fmt=pylsl.cf_float32, source_id=f"{base}/rr",
                            participant_id=pid, extra=extra),
            )  # fmt: skip
            hr = self._outlet(
                stream_info(f"CMT-HeartRate-{pid}", "HeartRate", [ChannelSpec("HR", "bpm", "HeartRate")],
                            srate=pylsl.IRREGULAR_RATE, fmt=pylsl.cf_float32, source_id=f"{base}/hr",
                            participant_id=pid, extra=extra),
            )  # fmt: skip
            self._straps.append(_StrapOutlets(ecg, rr, hr))
        devices = "+".join(s.binding.link.device_id for s in session.straps)
        self._markers = self._outlet(
            stream_info("CMT-Markers", "Markers", [ChannelSpec("marker", "", "Marker")], srate=pylsl.IRREGULAR_RATE,
                        fmt=pylsl.cf_string, source_id=f"{SOURCE_PREFIX}/{devices}/markers", participant_id=None,
                        extra={"session_ids": ",".join(map(str, session.session_ids)), "protocol": protocol,
                               "participants": ",".join(s.binding.participant_id for s in session.straps)}),
        )  # fmt: skip

    def _outlet(self, info: pylsl.StreamInfo, chunk_size: int = 0) -> pylsl.StreamOutlet:
        self.stream_names.append(info.name())
        outlet = pylsl.StreamOutlet(info, chunk_size=chunk_size)
        self._outlets.append(outlet)
        return outlet

    def consumed_streams(self) -> int:
        """How many of the streams have at least one consumer (an inlet such as LabRecorder's) right now."""
        return sum(1 for o in self._outlets if o.have_consumers())

    def wait_for_consumers(
        self,
        n: int,
        timeout_s: float,
        on_progress: Callable[[int], None] | None = None,
        poll_s: float = 0.05,
        cancel: threading.Event | None = None,
    ) -> bool:
        """Block until `n` streams have a consumer (call before the session runs); False after `timeout_s` or
        once `cancel` is set."""
        n = min(n, len(self._outlets))
        deadline = time.monotonic() + timeout_s
        seen = -1
        while (have := self.consumed_streams()) < n:
            if have != seen and on_progress is not None:
                on_progress(have)
            seen = have
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                return False
            time.sleep(poll_s)
        return True

    def lsl_time(self, t: float | np.ndarray) -> float | np.ndarray:
        """LSL time of session time `t` (valid once the session has started)."""
        if self.offset is None:
            raise RuntimeError("the session has not started: no LSL time offset yet")
        return t + self.offset

    # -- SessionListener ---------------------------------------------------------------------------------------
    def session_started(self, session: LiveSession) -> None:
        self.offset = pylsl.local_clock() - session.clock.now()

    def beats(self, strap: int, rows: Sequence[BeatRow]) -> None:
        outlet = self._straps[strap].rr
        for r in rows:
            outlet.push_sample([r.rr_ms, 1.0 if r.gap_before else 0.0], self.lsl_time(r.t))

    def heart_rate(self, strap: int, t: float, bpm: int, contact: str) -> None:
        if bpm > 0:  # 0 means no contact: not a heart rate
            self._straps[strap].hr.push_sample([float(bpm)], self.lsl_time(t))

    def ecg(self, strap: int, times: np.ndarray, frame: EcgFrame) -> None:
        outs = self._straps[strap]
        n = len(frame.samples_uv)
        samples = np.asarray(frame.samples_uv, dtype=np.float32).reshape(n, 1)
        outs.ecg.push_chunk(samples, list(self.lsl_time(times)))

    def marker(self, marker: Marker) -> None:
        self._markers.push_sample([marker_text(marker, self.include_text)], self.lsl_time(marker.t))

    def close(self, linger_s: float = LINGER_S) -> None:
        """Withdraw the streams (LabRecorder sees them end) after `linger_s` seconds, in which consumers receive
        what was pushed last; without consumers they go at once."""
        if linger_s > 0 and self.consumed_streams():
            time.sleep(linger_s)
        self._straps.clear()
        self._outlets.clear()
        self._markers = None  # type: ignore[assignment]


class ConsumerGate:
    """Holds the session clock until the experimenter starts it from the monitor: at once (`start_now`), or once
    `n` streams have a consumer (`start_when`, the `--lsl-wait` wait, `LslOutlets.wait_for_consumers`, in a thread).

    A wait that times out leaves the gate closed with `message` saying so, for the experimenter to choose again.
    Thread-safe: the monitor calls it from Qt's thread, the session thread blocks in `wait()`.
    """

    def __init__(self, outlets: LslOutlets, timeout_s: float = 300.0) -> None:
        self.outlets = outlets
        self.timeout_s = timeout_s
        self.message = ""
        self.waiting_for: int | None = None
        """The number of consumed streams being waited for, while a `start_when` wait runs."""
        self._open = threading.Event()
        self._abandoned = False
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self.outlets.stream_names)

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def consumed(self) -> int:
        return self.outlets.consumed_streams()

    def start_now(self) -> None:
        """Start the session clock now, whoever is listening."""
        with self._lock:
            self._cancel.set()
            self._open.set()

    def start_when(self, n: int) -> None:
        """Start the session clock once `n` of the streams have a consumer (a running wait is replaced)."""
        n = max(1, min(int(n), self.total))
        with self._lock:
            if self._open.is_set():
                return
            self._cancel.set()
            cancel = self._cancel = threading.Event()
            self.waiting_for, self.message = n, ""

        def wait() -> None:
            if self.outlets.wait_for_consumers(n, self.timeout_s, cancel=cancel):
                with self._lock:
                    if not cancel.is_set():
                        self.waiting_for = None
                        self._open.set()
                return
            with self._lock:
                if not cancel.is_set():  # timed out (not replaced, not started by hand)
                    self.waiting_for = None
                    self.message = (f"only {self.consumed()} of {n} streams had a consumer after "
                                    f"{self.timeout_s:g} s: start recording in LabRecorder, or start now")  # fmt: skip

        self._thread = threading.Thread(target=wait, name="lsl-consumer-wait", daemon=True)
        self._thread.start()

    def abandon(self) -> None:
        """The monitor closed before the start: `wait()` returns False and the session does not run."""
        with self._lock:
            self._abandoned = True
            self._cancel.set()
            self._open.set()

    def wait(self) -> bool:
        """Block until the gate opens; False when it was abandoned (nothing is to be recorded)."""
        self._open.wait()
        return not self._abandoned
