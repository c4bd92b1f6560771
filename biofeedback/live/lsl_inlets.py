"""Lab Streaming Layer inlets: record other apps' streams (PsychoPy markers, skin conductance, a respiration belt)
into the session, on the session clock.

Streams are resolved by name when `LslInlets` is built (before the session clock starts); a name that resolves to
nothing within the timeout is refused with one line. Raw first, as with notifications: every pulled chunk is stored
as received (the sender's LSL stamps, the samples, and the inlet's `time_correction()` offset from the sender's clock
to this machine's), and its session time is derived from them: ``t = (stamp + offset − lsl_zero) · rate``, where
`lsl_zero` is the local LSL time when the session clock read 0 and `rate` the session clock's speed (1 in real time).
Chunks are pulled without blocking in a task on the session's loop every `poll_s` and once more at the end. The
samples of the protocol's `marker_stream` are passed on (after they are stored) to `LiveSession.lsl_marker`, so a
PsychoPy marker can start or end a phase at its session time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pylsl
from pylsl.util import TimeoutError as LslTimeoutError

from biofeedback.live.session import LiveSession, SessionListener
from recordings.store import StoreWriteError, lsl_session_time

log = logging.getLogger(__name__)

CORRECTION_REFRESH_S = 5.0
"""How often (host seconds) the sender → local clock offset is re-estimated."""


class LslInError(ValueError):
    """An LSL stream asked for with --lsl-in that cannot be recorded."""


@dataclass
class _Recorded:
    name: str
    info: pylsl.StreamInfo
    inlet: pylsl.StreamInlet
    offset: float
    stream_ids: list[int]


class LslInlets(SessionListener):
    """Records the named LSL streams into every stored session of `session` (register with `add_listener`)."""

    def __init__(
        self, session: LiveSession, names: Sequence[str], *, resolve_timeout_s: float = 5.0, poll_s: float = 0.05
    ) -> None:
        self._session = session
        self.poll_s = poll_s
        self.streams: list[_Recorded] = []
        self._task: asyncio.Task | None = None
        self._zero_rate: tuple[float, float] | None = None  # (lsl_zero, rate) once the session clock started
        for name in dict.fromkeys(names):
            found = pylsl.resolve_byprop("name", name, minimum=1, timeout=resolve_timeout_s)
            if not found:
                raise LslInError(f"no LSL stream named {name!r} found within {resolve_timeout_s:g} s: "
                                 "is its outlet running on this network?")  # fmt: skip
            if len({i.source_id() or i.uid() for i in found}) > 1:
                ids = ", ".join(sorted(i.source_id() for i in found))
                raise LslInError(f"{len(found)} LSL streams are named {name!r} (source ids {ids}): "
                                 "give each a unique name")  # fmt: skip
            inlet = pylsl.StreamInlet(found[0], max_buflen=360, recover=True)
            try:
                inlet.open_stream(timeout=resolve_timeout_s)
                info = inlet.info(timeout=resolve_timeout_s)
                offset = inlet.time_correction(timeout=resolve_timeout_s)
            except LslTimeoutError as exc:
                raise LslInError(f"LSL stream {name!r} was found but did not answer within "
                                 f"{resolve_timeout_s:g} s") from exc  # fmt: skip
            self.streams.append(_Recorded(name, info, inlet, offset, []))

    # -- SessionListener ---------------------------------------------------------------------------------------
    def session_started(self, session: LiveSession) -> None:
        rate = float(getattr(session.clock, "speed", 1.0))
        lsl_zero = pylsl.local_clock() - session.clock.now() / rate
        self._zero_rate = (lsl_zero, rate)
        for rec in self.streams:
            i = rec.info
            for sid in session.session_ids:
                args = (i.name(), i.type(), i.source_id(), i.channel_count(), i.nominal_srate(), i.as_xml())
                rec.stream_ids.append(session.store.add_lsl_stream(sid, *args, lsl_zero, rate))
        self._task = asyncio.get_running_loop().create_task(self._pump(), name="lsl-inlets")

    def session_ended(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pull_all()  # what arrived since the last poll
        self._session.store.flush()
        for rec in self.streams:
            with contextlib.suppress(Exception):
                rec.inlet.close_stream()

    # -- pulling -----------------------------------------------------------------------------------------------
    def _pull_all(self) -> int:
        n = 0
        now = self._session.clock.now()
        for rec in self.streams:
            while True:
                chunk, stamps = rec.inlet.pull_chunk(timeout=0.0, max_samples=1024)
                if not stamps:
                    break
                for stream_id in rec.stream_ids:
                    self._session.store.add_lsl_chunk(stream_id, now, rec.offset, stamps, chunk)
                n += len(stamps)
                if rec.name == self._session.protocol.marker_stream and self._zero_rate is not None:
                    zero, rate = self._zero_rate
                    for stamp, sample in zip(stamps, chunk, strict=True):
                        t = float(lsl_session_time(np.asarray([stamp]), np.asarray([rec.offset]), zero, rate)[0])
                        self._session.lsl_marker(rec.name, str(sample[0]) if len(sample) else "", t)
        return n

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        next_correction = loop.time() + CORRECTION_REFRESH_S
        warned = False
        while True:
            try:
                self._pull_all()
            except StoreWriteError as exc:  # the store is gone: the whole recording stops, loudly
                self._session._store_failed(exc)
                return
            except Exception as exc:  # a broken inlet must not end the recording; the next poll tries again
                log.warning("LSL inlets: pull failed (%s: %s)", type(exc).__name__, exc)
                if not warned:  # the experimenter sees it at once (terminal line, monitor), not only a log
                    warned = True
                    self._session._alert(f"LSL input: pull failed ({type(exc).__name__}: {exc}); retrying")
            if loop.time() >= next_correction:
                next_correction = loop.time() + CORRECTION_REFRESH_S
                for rec in self.streams:
                    try:
                        rec.offset = await loop.run_in_executor(None, rec.inlet.time_correction, 1.0)
                    except Exception as exc:  # the sender may be gone for a while: keep the last offset
                        log.warning("LSL stream %s: no clock offset update (%s)", rec.name, exc)
            await asyncio.sleep(self.poll_s)
