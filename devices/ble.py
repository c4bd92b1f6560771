"""Real Bluetooth LE heart-rate straps through bleak: scanning, and a `StrapLink` that survives lost links.

`BleStrapLink.run` finds the strap, connects, subscribes to Heart Rate Measurement (0x2A37) and passes
every notification on as a raw `Packet` (no decoding here). When the link drops it reports DISCONNECTED with
the reason, then reconnects with capped exponential backoff, reporting RECONNECTING for each try and
CONNECTED once streaming again. BlueZ's usual connect failures (`org.bluez.Error.InProgress`,
`le-connection-abort-by-local`, "Software caused connection abort", timeouts, strap not advertising) are
retried the same way; `stop()` ends it promptly and disconnects.

With `ecg=True` the link also starts the Polar Measurement Data (PMD) ECG stream at 130 Hz, and with `acc=True`
(after ECG) the accelerometer at 50 Hz / 16 bit / ±8 g, for breathing from chest movement; PMD control-point
responses and data frames are passed on as raw packets too, so the raw layer keeps them (including the FACTOR of
the ACC start response, which delta-compressed ACC frames need). A refused stream is recorded (`ecg_error`,
`acc_error`) and everything else keeps streaming.

Battery: where the strap has the standard Battery Service (0x180F), its Battery Level (0x2A19) is read once on each
connection and followed by notifications when the characteristic offers them; both go on as raw packets (so the raw
layer keeps them) and `battery_pct` holds the latest. A strap without the service, or one whose read fails, just has
no level (None): the battery never stops a strap from recording.

MTU: Polar ECG frames need a large ATT MTU (Polar asks for 232). BlueZ, WinRT and CoreBluetooth negotiate
the largest MTU themselves when connecting. bleak's `mtu_size` on BlueZ needs the private `_acquire_mtu()`
(AcquireWrite/AcquireNotify file descriptors), so the MTU is read instead from a characteristic's
`max_write_without_response_size` (+3 for the ATT header), which every backend fills from its negotiated
MTU (BlueZ >= 5.62 exports it as the characteristic's `MTU` property; older BlueZ reports the minimum, 23).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakDeviceNotFoundError, BleakError

from devices.battery import decode_battery_level
from devices.clock import Clock
from devices.errors import DecodeError
from devices.link import (
    BATTERY_LEVEL_UUID,
    HEART_RATE_MEASUREMENT_UUID,
    HEART_RATE_SERVICE_UUID,
    PMD_CONTROL_POINT_UUID,
    PMD_DATA_UUID,
    PMD_SERVICE_UUID,
    EventSink,
    LinkEvent,
    LinkState,
    Packet,
    PacketSink,
)
from devices.polar_pmd import (
    ControlOpCode,
    ControlResponse,
    MeasurementType,
    PmdControlError,
    ResponseCode,
    decode_control_response,
    decode_features,
    decode_settings,
    ecg_settings_request,
    raise_for_response,
    start_acc_request,
    start_ecg_request,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Models known to offer Polar Measurement Data (the PMD service is often not in the advertisement itself).
POLAR_PMD_NAME_PREFIXES = ("Polar H10", "Polar OH1", "Polar Sense", "Polar Verity")

ECG_SAMPLE_RATE_HZ = 130
ECG_RESOLUTION_BITS = 14
ACC_SAMPLE_RATE_HZ = 50
ACC_RESOLUTION_BITS = 16
ACC_RANGE_G = 8
PMD_RESPONSE_TIMEOUT_S = 5.0

_ADDRESS_RE = re.compile(
    r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$"
)


@dataclass(frozen=True, slots=True)
class StrapInfo:
    """One heart-rate strap seen advertising the Heart Rate Service."""

    name: str
    address: str
    rssi: int
    has_pmd: bool


def is_address(text: str) -> bool:
    """True for a Bluetooth address (AA:BB:CC:DD:EE:FF) or a macOS CoreBluetooth device UUID."""
    return bool(_ADDRESS_RE.match(text.strip()))


def advertises_pmd(name: str, service_uuids: list[str]) -> bool:
    """Whether a strap offers Polar PMD (ECG): the service is advertised, or the model is known to have it."""
    return PMD_SERVICE_UUID in {u.lower() for u in service_uuids} or name.startswith(POLAR_PMD_NAME_PREFIXES)


def matches(target: str, device: BLEDevice, adv: AdvertisementData) -> bool:
    """Does an advertising device match `target` (an address, exactly, or a name prefix)?"""
    if is_address(target):
        return device.address.upper() == target.strip().upper()
    name = adv.local_name or device.name or ""
    return bool(target) and name.startswith(target)


def _info(device: BLEDevice, adv: AdvertisementData) -> StrapInfo:
    name = adv.local_name or device.name or ""
    return StrapInfo(name, device.address, adv.rssi, advertises_pmd(name, adv.service_uuids))


class BluetoothUnavailableError(RuntimeError):
    """Scanning is not possible here (no Bluetooth service, no adapter, adapter off, no permission): says why."""


def unavailable_reason(exc: BaseException) -> str:
    """Why Bluetooth cannot be used, in words, with the underlying error kept in brackets."""
    if isinstance(exc, BleakBluetoothNotAvailableError):
        why = "Bluetooth is off or there is no adapter (switch it on: `bluetoothctl power on`, or the system settings)"
    elif isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        why = ("no Bluetooth service to talk to (Linux: is the bluetooth service running? `systemctl status "
               "bluetooth`)")  # fmt: skip
    elif isinstance(exc, PermissionError):
        why = "not allowed to use Bluetooth (Linux: the `bluetooth` group; macOS: Privacy & Security → Bluetooth)"
    else:
        why = "Bluetooth is not available"
    return f"{why} ({describe_error(exc)})"


async def scan(timeout_s: float = 5.0) -> list[StrapInfo]:
    """Straps advertising the Heart Rate Service (0x180D) within `timeout_s`, strongest signal first.

    Raises `BluetoothUnavailableError` with the reason in words when there is no Bluetooth to scan with."""
    try:
        found = await BleakScanner.discover(
            timeout=timeout_s, service_uuids=[HEART_RATE_SERVICE_UUID], return_adv=True
        )
    except (OSError, BleakError) as exc:
        raise BluetoothUnavailableError(f"cannot scan for straps: {unavailable_reason(exc)}") from exc
    return sorted((_info(d, a) for d, a in found.values()), key=lambda s: (-s.rssi, s.address))


async def find_device(address_or_name_prefix: str, timeout_s: float = 10.0) -> BLEDevice | None:
    """The first heart-rate strap matching an address or name prefix, or None if none advertised in time."""
    if not address_or_name_prefix.strip():
        raise ValueError("strap address or name prefix must not be empty")
    return await BleakScanner.find_device_by_filter(
        lambda d, a: matches(address_or_name_prefix, d, a),
        timeout=timeout_s,
        service_uuids=[HEART_RATE_SERVICE_UUID],
    )


@dataclass
class Backoff:
    """Capped exponential backoff: initial_s, initial_s*factor, ... up to max_s.

    Each delay is shortened by a random fraction up to `jitter` (in [0, 1)) so that several straps do not
    reconnect in lockstep; pass a seeded `rng` for repeatable delays.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.initial_s <= 0:
            raise ValueError(f"initial_s must be > 0, got {self.initial_s}")
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def next_delay(self) -> float:
        """The delay before the next attempt (grows with each call until reset)."""
        # past the attempt where the cap is reached the exponent stops growing (no float overflow)
        cap_exponent = math.ceil(math.log(self.max_s / self.initial_s, self.factor)) if self.factor > 1 else 0
        exponent = min(self.attempts, cap_exponent)
        self.attempts += 1
        delay = min(self.max_s, self.initial_s * self.factor**exponent)
        if self.jitter:
            delay *= 1.0 - self.jitter * self.rng.random()
        return delay

    def reset(self) -> None:
        """Start again from `initial_s` (after a successful connection)."""
        self.attempts = 0


def describe_error(exc: BaseException) -> str:
    """A short, specific reason for a failed connection attempt (BlueZ error names kept verbatim)."""
    if isinstance(exc, BleakDBusError):
        details = exc.dbus_error_details
        return f"{exc.dbus_error}: {details}" if details else exc.dbus_error
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, _AttemptFailed):
        return str(exc)
    if isinstance(exc, BleakDeviceNotFoundError):
        return f"strap {exc.identifier} not found"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class EcgUnavailable(Exception):
    """ECG could not be started on this strap (no PMD service, no ECG, or no usable answer)."""


class AccUnavailable(Exception):
    """The accelerometer could not be started on this strap (no PMD service, no ACC, or no usable answer)."""


class _Stopped(Exception):
    """stop() was called while waiting."""


class _AttemptFailed(Exception):
    """One connection attempt failed; the reason is the message."""


# Errors a connection attempt may end with that are worth another try.
RETRYABLE = (BleakError, TimeoutError, EOFError, OSError, _AttemptFailed)


class BleStrapLink:
    """A `StrapLink` to one real strap over Bluetooth LE (bleak), reconnecting until `stop()`.

    `device` is an address or a name prefix ("Polar H10", "Polar H10 1A2B3C4D"; the first strap seen that
    matches is used); it is also the `device_id` stamped on packets and events. Times are on `clock`, and
    backoff waits use `clock.sleep`; connect and scan timeouts are real (radio) time. `stop()` must be called
    from the event loop's thread (from another thread use `loop.call_soon_threadsafe(link.stop)`).
    After each connection `address`, `mtu` (PMD only), `ecg_error` and `acc_error` (None, or why that stream did
    not start), `acc_factor` (the ACC start response's FACTOR, if it sent one) and `battery_pct` (None: the strap
    reports no battery level) describe the strap.
    """

    def __init__(
        self,
        device: str,
        clock: Clock,
        ecg: bool = False,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        *,
        scan_timeout_s: float = 10.0,
        jitter: float = 0.1,
        seed: int | None = None,
        acc: bool = False,
    ) -> None:
        if not device.strip():
            raise ValueError("strap address or name prefix must not be empty")
        if connect_timeout_s <= 0 or scan_timeout_s <= 0:
            raise ValueError("connect_timeout_s and scan_timeout_s must be > 0")
        self.device_id = device.strip().upper() if is_address(device) else device.strip()
        self.clock = clock
        self.ecg = ecg
        self.acc = acc
        self.connect_timeout_s = connect_timeout_s
        self.scan_timeout_s = scan_timeout_s
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, jitter=jitter, rng=random.Random(seed))
        self.address: str | None = None
        self.mtu: int | None = None
        self.ecg_error: Exception | None = None
        self.acc_error: Exception | None = None
        self.acc_factor: float | None = None
        self.battery_pct: int | None = None
        self._features_hex = ""
        self._stop = asyncio.Event()
        self._running = False

    # -- public ------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to disconnect and return (safe at any time and more than once; stopping is final)."""
        self._stop.set()

    async def run(self, on_packet: PacketSink, on_event: EventSink) -> None:
        """Stream packets until `stop()`; connection changes go to `on_event`."""
        if self._running:
            raise RuntimeError(f"link to {self.device_id} is already running")
        self._running = True
        self._on_packet, self._on_event = on_packet, on_event
        self._emit(LinkState.CONNECTING, f"looking for {self.device_id}")
        closed_reason = "stopped"
        try:
            while not self._stop.is_set():
                try:
                    lost_reason = await self._session()
                except _Stopped:
                    break
                except RETRYABLE as exc:
                    reason = describe_error(exc)
                else:
                    if lost_reason is None:  # stopped while connected
                        break
                    self._emit(LinkState.DISCONNECTED, lost_reason)
                    reason = lost_reason
                delay = self.backoff.next_delay()
                self._emit(LinkState.RECONNECTING, f"{reason}; retrying in {delay:.2f} s")
                try:
                    await self._until_stopped(self.clock.sleep(delay))
                except _Stopped:
                    break
        except asyncio.CancelledError:
            closed_reason = "cancelled"
            raise
        except Exception as exc:
            closed_reason = f"failed: {describe_error(exc)}"
            raise
        finally:
            self._running = False
            self._emit(LinkState.CLOSED, closed_reason)

    # -- one connection ------------------------------------------------------------

    def _emit(self, state: LinkState, reason: str = "") -> None:
        self._on_event(LinkEvent(self.clock.now(), self.device_id, state, reason))

    def _packet(self, uuid: str, data: bytes | bytearray) -> None:
        self._on_packet(Packet(self.clock.now(), uuid, bytes(data), self.device_id))

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, cancelling it (and raising _Stopped) as soon as stop() is called."""
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.cancelled():
            raise _Stopped
        return task.result()

    async def _session(self) -> str | None:
        """Find, connect, subscribe and stream until the link drops (returns why) or stop() (returns None)."""
        device = await self._until_stopped(find_device(self.device_id, self.scan_timeout_s))
        if device is None:
            raise _AttemptFailed(
                f"no strap matching {self.device_id!r} advertising within {self.scan_timeout_s:g} s"
            )
        self.address = device.address
        lost = asyncio.Event()
        client = BleakClient(
            device, disconnected_callback=lambda _c: lost.set(), timeout=self.connect_timeout_s
        )
        try:
            try:
                await self._until_stopped(asyncio.wait_for(client.connect(), self.connect_timeout_s + 1.0))
            except TimeoutError:
                raise _AttemptFailed(f"connect timed out after {self.connect_timeout_s:g} s") from None
            # BlueZ may report a transient disconnect inside bleak's own retry (le-connection-abort-by-local).
            lost.clear()
            await self._until_stopped(self._subscribe(client))
            if lost.is_set() or not client.is_connected:
                raise _AttemptFailed("link lost while subscribing")
            self.backoff.reset()
            self._emit(LinkState.CONNECTED, self._connected_reason(device))
            await self._until_stopped(lost.wait())
            return "link lost (strap out of range, switched off or taken off)"
        except _Stopped:
            return None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5.0)

    async def _subscribe(self, client: BleakClient) -> None:
        await client.start_notify(
            HEART_RATE_MEASUREMENT_UUID, lambda _c, data: self._packet(HEART_RATE_MEASUREMENT_UUID, data)
        )
        await self._read_battery(client)
        if self.ecg or self.acc:
            await self._start_pmd(client)

    async def _read_battery(self, client: BleakClient) -> None:
        """Battery Level read once (and notifications if offered), as raw packets; without the service: None."""
        self.battery_pct = None
        char = client.services.get_characteristic(BATTERY_LEVEL_UUID)
        if char is None:
            return

        def on_level(data: bytes | bytearray) -> None:
            self._packet(BATTERY_LEVEL_UUID, data)
            with contextlib.suppress(DecodeError):
                self.battery_pct = decode_battery_level(bytes(data))

        try:
            on_level(await client.read_gatt_char(char))
            if "notify" in char.properties:
                await client.start_notify(char, lambda _c, data: on_level(data))
        except (BleakError, TimeoutError, EOFError) as exc:  # the heart rate matters; the battery is a nicety
            logger.warning("battery level not read on %s: %s", self.device_id, describe_error(exc))

    async def _start_pmd(self, client: BleakClient) -> None:
        """Polar PMD start-up; a refusal is recorded in `ecg_error` / `acc_error` and the rest keeps streaming.

        Order: indications on the control point, notifications on PMD data, read the features, then (ECG) ask
        for the ECG settings and start ECG at 130 Hz / 14 bit, then (ACC) start the accelerometer at 50 Hz /
        16 bit / ±8 g. Every control-point response (and the feature read) is also passed on as a raw packet.
        """
        self.ecg_error = self.acc_error = None
        self.acc_factor = None
        failures = (PmdControlError, EcgUnavailable, AccUnavailable, DecodeError)
        try:
            control, responses, features = await self._pmd_open(client)
        except failures as exc:
            if self.ecg:
                self.ecg_error = exc
            if self.acc:
                self.acc_error = AccUnavailable(str(exc)) if isinstance(exc, EcgUnavailable) else exc
            logger.warning("PMD not started on %s: %s", self.device_id, exc)
            return
        if self.ecg:
            try:
                await self._pmd_start_ecg(client, control, responses, features)
            except failures as exc:
                self.ecg_error = exc
                logger.warning("ECG not started on %s: %s", self.device_id, exc)
        if self.acc:
            try:
                await self._pmd_start_acc(client, control, responses, features)
            except failures as exc:
                self.acc_error = exc
                logger.warning("ACC not started on %s: %s", self.device_id, exc)

    async def _pmd_open(
        self, client: BleakClient
    ) -> tuple[BleakGATTCharacteristic, asyncio.Queue[bytes], frozenset[MeasurementType]]:
        """Subscribe to the PMD control point and data, read the features; returns what the starts need."""
        control = client.services.get_characteristic(PMD_CONTROL_POINT_UUID)
        data = client.services.get_characteristic(PMD_DATA_UUID)
        if control is None or data is None:
            raise EcgUnavailable("strap has no Polar Measurement Data (PMD) service")
        self.mtu = control.max_write_without_response_size + 3
        responses: asyncio.Queue[bytes] = asyncio.Queue()

        def on_control(_char: object, value: bytearray) -> None:
            self._packet(PMD_CONTROL_POINT_UUID, value)
            responses.put_nowait(bytes(value))

        await client.start_notify(control, on_control)
        await client.start_notify(data, lambda _c, value: self._packet(PMD_DATA_UUID, value))
        features_raw = bytes(await client.read_gatt_char(control))
        self._packet(PMD_CONTROL_POINT_UUID, features_raw)
        self._features_hex = features_raw.hex()
        return control, responses, decode_features(features_raw)

    async def _pmd_start_ecg(
        self, client: BleakClient, control: BleakGATTCharacteristic, responses: asyncio.Queue,
        features: frozenset[MeasurementType],
    ) -> None:
        if MeasurementType.ECG not in features:
            raise EcgUnavailable(f"strap does not offer ECG (features {self._features_hex})")
        answer = await self._pmd_request(client, control, ecg_settings_request(), responses)
        rates = decode_settings(answer.parameters).get("sample_rate", ())
        if rates and ECG_SAMPLE_RATE_HZ not in rates:
            raise EcgUnavailable(f"strap offers ECG at {rates} Hz, not {ECG_SAMPLE_RATE_HZ} Hz")
        start = start_ecg_request(sample_rate=ECG_SAMPLE_RATE_HZ, resolution=ECG_RESOLUTION_BITS)
        try:
            await self._pmd_request(client, control, start, responses)
        except PmdControlError as exc:
            if exc.response.error_code != ResponseCode.ALREADY_IN_STATE:  # still streaming from before: fine
                raise

    async def _pmd_start_acc(
        self, client: BleakClient, control: BleakGATTCharacteristic, responses: asyncio.Queue,
        features: frozenset[MeasurementType],
    ) -> None:
        if MeasurementType.ACC not in features:
            raise AccUnavailable(f"strap does not offer the accelerometer (features {self._features_hex})")
        start = start_acc_request(ACC_SAMPLE_RATE_HZ, ACC_RESOLUTION_BITS, ACC_RANGE_G)
        try:
            answer = await self._pmd_request(client, control, start, responses)
        except PmdControlError as exc:
            if exc.response.error_code != ResponseCode.ALREADY_IN_STATE:
                raise
            return  # streaming from before; the FACTOR of that start is in the raw layer
        factors = decode_settings(answer.parameters).get("factor", ())
        self.acc_factor = float(factors[0]) if factors else None

    async def _pmd_request(
        self, client: BleakClient, control: BleakGATTCharacteristic, request: bytes, responses: asyncio.Queue
    ) -> ControlResponse:
        """Write a control-point request and wait for its response (matched by opcode)."""
        await client.write_gatt_char(control, request, response=True)
        try:
            async with asyncio.timeout(PMD_RESPONSE_TIMEOUT_S):
                while True:
                    response = decode_control_response(await responses.get())
                    if response.opcode == request[0]:
                        return raise_for_response(response)
        except TimeoutError:
            op = ControlOpCode(request[0]).name
            unavailable = AccUnavailable if len(request) > 1 and request[1] == MeasurementType.ACC else EcgUnavailable
            raise unavailable(f"no PMD response to {op} within {PMD_RESPONSE_TIMEOUT_S:g} s") from None

    def _connected_reason(self, device: BLEDevice) -> str:
        parts = [f"address {device.address}"]
        if device.name:
            parts.append(f"name {device.name}")
        if self.mtu:
            parts.append(f"MTU {self.mtu}")
        parts.append("no battery level" if self.battery_pct is None else f"battery {self.battery_pct} %")
        if self.ecg:
            parts.append(f"ECG not started: {self.ecg_error}" if self.ecg_error else "ECG streaming")
        if self.acc:
            parts.append(f"ACC not started: {self.acc_error}" if self.acc_error else "ACC streaming")
        return ", ".join(parts)
