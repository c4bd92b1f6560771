"""Setting up and running a recorded session from command-line style choices (devices, speed, seed)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from biofeedback.live.session import GuideFromRunner, LiveSession, StrapBinding
from devices.clock import Clock, ScaledClock
from devices.link import StrapLink
from devices.physiology import SimParticipant
from devices.simulator import SimFaults, SimulatedStrap
from protocols.model import Protocol
from recordings.store import Store


class DeviceSpecError(ValueError):
    """A `--device` value that cannot be understood."""


MAX_ECG_SPEED = 200.0
"""Fastest `--speed` at which a simulated strap's ECG keeps up with the clock (measured: the 25-minute cmt-soothing
with --ecg --acc runs clean at ×200 on a loaded 2-core machine; at ×1000 the ECG falls minutes behind its breathing
history and the strap stops). Beats and the accelerometer alone run faster."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """`sim`, `sim=P01`, `AA:BB:CC:DD:EE:FF=P02` or a name prefix such as `Polar H10`.

    `number` is its place among the `--device` values: a simulated strap keeps its name and participant (`sim-6`)
    when others are left out at the ready screen."""

    device: str
    participant_id: str
    number: int | None = None

    @property
    def simulated(self) -> bool:
        return self.device == "sim"


def parse_device_specs(values: Sequence[str], participant: str | None) -> list[DeviceSpec]:
    specs = []
    for value in values:
        device, sep, pid = value.partition("=")
        device, pid = device.strip(), pid.strip()
        if not device:
            raise DeviceSpecError(f"--device {value!r}: name a device (sim, an address or a name prefix)")
        if not sep:
            if participant is None:
                raise DeviceSpecError(f"--device {value!r}: give --participant, or bind it as {value}=P01")
            pid = participant
        elif not pid:
            raise DeviceSpecError(f"--device {value!r}: the participant after '=' is empty")
        specs.append(DeviceSpec(device, pid, len(specs)))
    if not specs:
        raise DeviceSpecError("give at least one --device")
    pids = [s.participant_id for s in specs]
    if len(set(pids)) != len(pids):
        raise DeviceSpecError(f"each strap needs its own participant ID; got {pids}")
    return specs


_FAULT_KEYS = {
    "disconnect": "disconnect_rate_per_hour",
    "contact": "contact_loss_rate_per_hour",
    "malformed": "malformed_rate_per_hour",
}
_TIMING_KEYS = {"latency": "latency_s", "bunch": "bunch_fraction", "drift": "drift_ppm"}
_FAULT_HELP = ("expected disconnect=N, contact=N, malformed=N (per hour), latency=MAX_S, bunch=SHARE (0-1), "
               "drift=PPM or battery=PERCENT|none")


def parse_sim_faults(values: Sequence[str], participants: Sequence[str], seed: int = 0) -> dict[str, SimFaults]:
    """`[PID:]disconnect=N,contact=N,malformed=N,latency=S,bunch=F,drift=PPM` per participant.

    Rates are events per hour of the simulated strap; `latency` the largest BLE delivery delay (uniform from 0, s),
    `bunch` the share of packets held back and delivered with the next, `drift` the strap clock's error (ppm),
    `battery` the level the strap reports (0-100 %, or `none` for a strap without a Battery Service).
    """
    out: dict[str, SimFaults] = {}
    for value in values:
        target, sep, body = value.rpartition(":")
        pids = [target] if sep else list(participants)
        if sep and target not in participants:
            raise DeviceSpecError(f"--sim-faults {value!r}: no simulated strap is bound to {target!r}")
        kwargs: dict[str, object] = {}
        for item in body.split(","):
            key, eq, number = (part.strip() for part in item.partition("="))
            if (key not in _FAULT_KEYS and key not in _TIMING_KEYS and key != "battery") or not eq:
                raise DeviceSpecError(f"--sim-faults {value!r}: {_FAULT_HELP}, got {item!r}")
            if key == "battery" and number.lower() == "none":
                kwargs["battery_pct"] = None
                continue
            try:
                x = float(number)
            except ValueError:
                raise DeviceSpecError(f"--sim-faults {value!r}: {number!r} is not a number") from None
            if not math.isfinite(x):
                raise DeviceSpecError(f"--sim-faults {value!r}: {number!r} is not a finite number")
            if key in _FAULT_KEYS:
                if not x >= 0:
                    raise DeviceSpecError(f"--sim-faults {value!r}: rates cannot be negative")
                kwargs[_FAULT_KEYS[key]] = x
            elif key == "latency":
                if not 0 <= x <= 30:
                    raise DeviceSpecError(f"--sim-faults {value!r}: latency must be 0-30 s, got {x:g}")
                kwargs["latency_s"] = (0.0, x)
            elif key == "battery":
                if not (0 <= x <= 100 and x == int(x)):
                    raise DeviceSpecError(f"--sim-faults {value!r}: battery is a whole percent 0-100 or none, "
                                          f"got {number}")  # fmt: skip
                kwargs["battery_pct"] = int(x)
            elif key == "bunch":
                if not 0 <= x < 1:
                    raise DeviceSpecError(f"--sim-faults {value!r}: bunch is a share in [0, 1), got {x:g}")
                kwargs["bunch_fraction"] = x
            else:
                if not abs(x) <= 1000:
                    raise DeviceSpecError(f"--sim-faults {value!r}: drift must be within ±1000 ppm, got {x:g}")
                kwargs["drift_ppm"] = x
        for i, pid in enumerate(pids):
            out[pid] = SimFaults(seed=seed + 101 * (i + 1), **kwargs)  # type: ignore[arg-type]
    return out


def make_links(
    specs: Sequence[DeviceSpec],
    clock: Clock,
    session_guide: Callable[[], object],
    *,
    seed: int = 0,
    ecg: bool = False,
    faults: dict[str, SimFaults] | None = None,
    participants: dict[str, SimParticipant] | None = None,
    keep_history: bool = False,
    acc: bool = False,
) -> list[StrapLink]:
    """One link per device: a `SimulatedStrap` for `sim`, else a `BleStrapLink` (ECG / accelerometer on request)."""
    links: list[StrapLink] = []
    for i, spec in enumerate(specs):
        n = i if spec.number is None else spec.number
        if spec.simulated:
            sim = (participants or {}).get(spec.participant_id) or SimParticipant(seed=seed + n)
            links.append(
                SimulatedStrap(
                    f"sim-{n + 1}",
                    clock,
                    sim,
                    guide=session_guide(),
                    ecg=ecg,
                    faults=(faults or {}).get(spec.participant_id),
                    keep_history=keep_history,
                    acc=acc,
                )
            )
        else:
            from devices.ble import BleStrapLink  # imported only when a real strap is used

            links.append(BleStrapLink(spec.device, clock, ecg=ecg, acc=acc))
    return links


class _LateGuide:
    """A breathing guide whose session is attached after the links are made (the session needs the links)."""

    def __init__(self) -> None:
        self.target: GuideFromRunner | None = None

    def pacer(self, t: float):
        return None if self.target is None else self.target.pacer(t)

    def phase_kind(self, t: float) -> str:
        return "rest" if self.target is None else self.target.phase_kind(t)


def build_session(
    store: Store,
    protocol: Protocol,
    specs: Sequence[DeviceSpec],
    *,
    speed: float = 1.0,
    seed: int = 0,
    ecg: bool = False,
    clock: Clock | None = None,
    faults: dict[str, SimFaults] | None = None,
    participants: dict[str, SimParticipant] | None = None,
    settings: dict | None = None,
    keep_history: bool = False,
    acc: bool = False,
    on_alert: Callable[[str], None] | None = None,
) -> LiveSession:
    if speed != 1.0 and not all(s.simulated for s in specs):
        raise DeviceSpecError("--speed other than 1 only makes sense with simulated straps")
    if ecg and speed > MAX_ECG_SPEED and any(s.simulated for s in specs):
        raise DeviceSpecError(
            f"--speed {speed:g} is too fast with --ecg: the simulated ECG cannot be generated faster than "
            f"×{MAX_ECG_SPEED:g}; use --speed {MAX_ECG_SPEED:g} or less (or leave out --ecg)"
        )
    clock = clock or ScaledClock(speed)
    guides: list[_LateGuide] = []

    def new_guide() -> _LateGuide:
        guides.append(_LateGuide())
        return guides[-1]

    links = make_links(
        specs, clock, new_guide, seed=seed, ecg=ecg, faults=faults, participants=participants,
        keep_history=keep_history, acc=acc,
    )
    session = LiveSession(
        store,
        protocol,
        [StrapBinding(link, spec.participant_id) for link, spec in zip(links, specs, strict=True)],
        clock,
        settings={"speed": speed, "seed": seed, "ecg": ecg, "acc": acc, **(settings or {})},
        on_alert=on_alert,
    )
    for guide in guides:
        guide.target = GuideFromRunner(session)
    return session


async def run_with_terminal_view(session: LiveSession, *, view: bool = True) -> list[int]:
    """Run a session to its end, with the rich terminal view redrawing beside it when `view` is true."""
    from biofeedback.live.terminal_view import run_terminal_view

    view_task = asyncio.create_task(run_terminal_view(session)) if view else None
    try:
        return await session.run()
    finally:
        if view_task is not None:
            view_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view_task


def run_session_blocking(session: LiveSession, *, view: bool = True) -> list[int]:
    """Run a session in this thread's event loop until it ends; Ctrl-C stops it cleanly (marked `stopped`)."""
    try:
        return asyncio.run(run_with_terminal_view(session, view=view))
    except KeyboardInterrupt:
        return session.session_ids


@dataclass(frozen=True)
class SessionPlan:
    """What `session run` decided before recording: the protocol as it will run (pacer rate applied), the straps,
    the settings (study week) and the simulated straps' faults. `build` makes the session (nothing is stored before)."""

    protocol: Protocol
    specs: tuple[DeviceSpec, ...]
    settings: dict
    faults: dict[str, SimFaults]
    speed: float = 1.0
    seed: int = 0
    ecg: bool = False
    acc: bool = False

    def build(self, store: Store, *, on_alert: Callable[[str], None] | None = None,
              clock: Clock | None = None) -> LiveSession:  # fmt: skip
        return build_session(store, self.protocol, self.specs, speed=self.speed, seed=self.seed, ecg=self.ecg,
                             acc=self.acc, settings=self.settings, faults=self.faults, on_alert=on_alert,
                             clock=clock)  # fmt: skip


def plan_session(
    store: Store,
    protocol: Protocol,
    specs: Sequence[DeviceSpec],
    *,
    pacer_rate: float | None = None,
    week: int | None = None,
    sim_faults: Sequence[str] = (),
    speed: float = 1.0,
    seed: int = 0,
    ecg: bool = False,
    acc: bool = False,
) -> SessionPlan:
    """The choices of `session run` (and the console's Start) turned into a `SessionPlan`.

    A single strap without `pacer_rate` paces at the participant's stored resonance rate; `week` is the study week
    (default: each participant's next week); `sim_faults` are `--sim-faults` values."""
    if speed != 1.0 and not all(s.simulated for s in specs):
        raise DeviceSpecError("--speed other than 1 only makes sense with simulated straps")
    for spec in specs:
        store.check_participant(spec.participant_id)  # refused before anything is connected or recorded
    rate = pacer_rate
    if rate is None and len(specs) == 1:
        rate = store.resonance_rate(specs[0].participant_id)
    if rate is not None:
        protocol = protocol.with_pacer_rate(rate)
    settings = {} if week is None else {"week": week}
    faults = parse_sim_faults(sim_faults, [s.participant_id for s in specs if s.simulated], seed)
    return SessionPlan(protocol, tuple(specs), settings, faults, speed, seed, ecg, acc)


def wait_for_straps(
    specs: Sequence[DeviceSpec],
    timeout_s: float,
    *,
    speed: float = 1.0,
    seed: int = 0,
    faults: dict[str, SimFaults] | None = None,
    on_update: Callable[[list, float], None] | None = None,
) -> list:
    """`--start-when-ready`: run the straps on links of their own (recording nothing) until every one is ready.

    Returns each strap's `StrapReadiness`; raises `NotReadyError` (with each strap's reason) at `timeout_s`."""
    from biofeedback.live.readiness import wait_until_ready

    if timeout_s <= 0:
        raise DeviceSpecError(f"--ready-timeout must be > 0 s, got {timeout_s:g}")
    clock = ScaledClock(speed)
    links = make_links(specs, clock, lambda: None, seed=seed, faults=faults)
    bindings = [StrapBinding(link, spec.participant_id) for link, spec in zip(links, specs, strict=True)]
    return asyncio.run(wait_until_ready(bindings, clock, timeout_s, on_update=on_update))
