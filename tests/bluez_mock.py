"""A fake BlueZ with heart-rate straps, for testing `devices.ble` through bleak's real BlueZ backend.

Two halves live in this one file:

* the *strap template* (`load` and the `_m_*` functions) is loaded by python-dbusmock into its own process
  on top of dbusmock's `bluez5` template (`AddTemplate(<this file>)`). It exports straps as BlueZ does, with
  BlueZ's real property types: `org.bluez.Device1` objects, `GattService1`/`GattCharacteristic1` objects that
  appear on connect and vanish on disconnect, `InterfacesAdded`/`InterfacesRemoved` on the object manager,
  notifications as `PropertiesChanged` of `Value`, advertisements (RSSI updates) while the adapter is
  discovering, a scriptable `Connect` (BlueZ errors, delays, no reply) and a Polar PMD control point that
  answers requests with indications. Its control methods are on `/`, interface `org.cmt.StrapMock`.
* the *test side* (`BluezMock`) starts a private system bus (`DBUS_SYSTEM_BUS_ADDRESS`), spawns the mock and
  drives it with blocking dbus-python calls.

The template half runs with GLib's main loop but without PyGObject, so timers go through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

try:
    import dbus
except ImportError:  # dbus-python comes with the `bluez-test` extra (it builds against libdbus-1-dev)
    dbus = None

BLUEZ_MOCK_SKIP_REASON = (
    "needs dbus-daemon and dbus-python: apt-get install dbus libdbus-1-dev libglib2.0-dev pkg-config, then "
    "pip install -e '.[test,bluez-test]' (.ci/run does both)"
)
BLUEZ = "org.bluez"
STRAP_MOCK_IFACE = "org.cmt.StrapMock"
DEVICE_IFACE = "org.bluez.Device1"
ADAPTER_IFACE = "org.bluez.Adapter1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

HR_SERVICE = "0000180d-0000-1000-8000-00805f9b34fb"
HR_MEASUREMENT = "00002a37-0000-1000-8000-00805f9b34fb"
BODY_SENSOR_LOCATION = "00002a38-0000-1000-8000-00805f9b34fb"
BATTERY_SERVICE = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"
PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"
POLAR_COMPANY_ID = 0x006B

# Features read from the PMD control point: 0x0F, then a bitmask (bit 0 ECG, bit 2 accelerometer).
PMD_FEATURES = bytes([0x0F, 0x05, 0x00])
# ECG settings as a Polar H10 answers them: sample rate 130 Hz, resolution 14 bits.
ECG_SETTINGS_PARAMS = bytes([0x00, 0x01, 0x82, 0x00, 0x01, 0x01, 0x0E, 0x00])
# What a successful ACC start answers: the FACTOR setting (type 5, one float32 value) for compressed frames.
ACC_START_FACTOR = 1.0
ACC_START_PARAMS = bytes([0x05, 0x01]) + struct.pack("<f", ACC_START_FACTOR)

# Connect behaviours the test can queue (consumed one per Connect call; an empty plan connects).
CONNECT_MODES = ("ok", "abort-by-local", "software-abort", "in-progress", "hang", "delay:<seconds>")


# ----------------------------------------------------------------------------------------------------
# Template half: runs inside the dbusmock process.
# ----------------------------------------------------------------------------------------------------

_timers: list = []  # keeps ctypes callbacks alive
_straps: dict[str, dict] = {}  # device path -> state


def _glib():
    return ctypes.cdll.LoadLibrary("libglib-2.0.so.0")


def _after(seconds: float, func) -> None:
    """Run `func()` once after `seconds` on the mock's GLib main loop."""
    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

    def tick(_data):
        try:
            func()
        finally:
            _timers.remove(cb)
        return 0

    cb = proto(tick)
    _timers.append(cb)
    _glib().g_timeout_add(ctypes.c_uint(max(0, int(seconds * 1000))), cb, None)


def _every(seconds: float, func) -> None:
    """Run `func()` every `seconds` for the mock's lifetime."""
    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

    def tick(_data):
        try:
            func()
        except Exception as exc:  # keep the timer alive, but say what went wrong
            print(f"strap mock timer error: {exc!r}", flush=True)
        return 1

    cb = proto(tick)
    _timers.append(cb)
    _glib().g_timeout_add(ctypes.c_uint(int(seconds * 1000)), cb, None)


def _objects():
    from dbusmock import mockobject

    return mockobject.objects


def _bytes(data) -> dbus.Array:
    return dbus.Array([dbus.Byte(b) for b in bytes(data)], signature="y")


def _changed(obj, iface: str, props: dict) -> None:
    """Update properties and emit PropertiesChanged, as bluetoothd does."""
    obj.props[iface].update(props)
    obj.EmitSignal(
        PROPERTIES_IFACE,
        "PropertiesChanged",
        "sa{sv}as",
        [iface, dbus.Dictionary(props, signature="sv"), dbus.Array([], signature="s")],
    )


def _interfaces_added(path: str, iface: str, props: dict) -> None:
    _objects()["/"].EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesAdded",
        "oa{sa{sv}}",
        [
            dbus.ObjectPath(path),
            dbus.Dictionary({iface: dbus.Dictionary(props, signature="sv")}, signature="sa{sv}"),
        ],
    )


def _interfaces_removed(path: str, ifaces: Sequence[str]) -> None:
    _objects()["/"].EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesRemoved",
        "oas",
        [dbus.ObjectPath(path), dbus.Array(ifaces, signature="s")],
    )


def _strap_of(obj_path: str) -> dict:
    for dev_path, state in _straps.items():
        if obj_path == dev_path or obj_path.startswith(dev_path + "/"):
            return state
    raise dbus.exceptions.DBusException(
        f"no strap at {obj_path}", name="org.freedesktop.DBus.Error.UnknownObject"
    )


def _gatt_layout(state: dict) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    layout = [
        (HR_SERVICE, [(HR_MEASUREMENT, ["notify"]), (BODY_SENSOR_LOCATION, ["read"])]),
    ]
    if state["battery"] is not None:  # a strap without the Battery Service has none (SetBattery adds it)
        layout.append((BATTERY_SERVICE, [(BATTERY_LEVEL, list(state["battery_flags"]))]))
    if state["pmd"]:
        layout.append((PMD_SERVICE, [(PMD_CONTROL, ["read", "write", "indicate"]), (PMD_DATA, ["notify"])]))
    return layout


def _export_gatt(state: dict) -> None:
    """Export the strap's GATT database (what bluetoothd does after connecting and discovering services)."""
    dev_path = state["path"]
    root = _objects()["/"]
    handle = 0x000C
    for service_uuid, chars in _gatt_layout(state):
        service_path = f"{dev_path}/service{handle:04x}"
        service_props = {
            "UUID": dbus.String(service_uuid),
            "Device": dbus.ObjectPath(dev_path),
            "Primary": dbus.Boolean(True),
            "Includes": dbus.Array([], signature="o"),
        }
        root.AddObject(service_path, SERVICE_IFACE, service_props, [])
        state["gatt"].append((service_path, SERVICE_IFACE))
        _interfaces_added(service_path, SERVICE_IFACE, service_props)
        handle += 1
        for char_uuid, flags in chars:
            char_path = f"{service_path}/char{handle:04x}"
            value = _bytes(b"\x01" if char_uuid == BODY_SENSOR_LOCATION else b"")
            char_props = {
                "UUID": dbus.String(char_uuid),
                "Service": dbus.ObjectPath(service_path),
                "Value": value,
                "Notifying": dbus.Boolean(False),
                "Flags": dbus.Array(flags, signature="s"),
                "MTU": dbus.UInt16(state["mtu"]),
            }
            root.AddObject(
                char_path,
                CHAR_IFACE,
                char_props,
                [
                    ("ReadValue", "a{sv}", "ay", _m_read_value),
                    ("WriteValue", "aya{sv}", "", _m_write_value),
                    ("StartNotify", "", "", _m_start_notify),
                    ("StopNotify", "", "", _m_stop_notify),
                ],
            )
            state["chars"][char_uuid] = char_path
            state["gatt"].append((char_path, CHAR_IFACE))
            _interfaces_added(char_path, CHAR_IFACE, char_props)
            handle += 2


def _remove_gatt(state: dict) -> None:
    root = _objects()["/"]
    for path, iface in reversed(state["gatt"]):
        if path in _objects():
            root.RemoveObject(path)
            _interfaces_removed(path, [iface])
    state["gatt"].clear()
    state["chars"].clear()


def _link_up(state: dict) -> None:
    device = _objects()[state["path"]]
    _changed(device, DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
    _export_gatt(state)
    _changed(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(True)})
    state["connects"] += 1


def _link_down(state: dict) -> None:
    device = _objects()[state["path"]]
    if not device.props[DEVICE_IFACE]["Connected"]:
        return
    _changed(device, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False)})
    _remove_gatt(state)
    _changed(device, DEVICE_IFACE, {"Connected": dbus.Boolean(False)})


def _complete_pending(state: dict, error: dbus.exceptions.DBusException | None) -> None:
    pending = state.pop("pending", None)
    if pending is None:
        return
    ok, err = pending
    if error is None:
        _link_up(state)
        ok()
    else:
        err(error)


def _m_connect(device, ok, err):
    """org.bluez.Device1.Connect with a scripted outcome."""
    state = _strap_of(device.path)
    state["connect_calls"] += 1
    mode = state["plan"].pop(0) if state["plan"] else "ok"
    state["modes_used"].append(mode)
    failed = "org.bluez.Error.Failed"
    if device.props[DEVICE_IFACE]["Connected"]:
        err(dbus.exceptions.DBusException("Already Connected", name="org.bluez.Error.AlreadyConnected"))
    elif "pending" in state:
        err(dbus.exceptions.DBusException("In Progress", name="org.bluez.Error.InProgress"))
    elif mode == "ok":
        _link_up(state)
        ok()
    elif mode == "abort-by-local":
        # bluetoothd really connects, the controller drops it, and the reply says why.
        _changed(device, DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
        _changed(device, DEVICE_IFACE, {"Connected": dbus.Boolean(False)})
        err(dbus.exceptions.DBusException("le-connection-abort-by-local", name=failed))
    elif mode == "software-abort":
        err(dbus.exceptions.DBusException("Software caused connection abort", name=failed))
    elif mode == "in-progress":
        err(dbus.exceptions.DBusException("In Progress", name="org.bluez.Error.InProgress"))
    elif mode == "hang":
        state["pending"] = (ok, err)  # never answered unless Disconnect cancels it
    elif mode.startswith("delay:"):
        state["pending"] = (ok, err)
        _after(float(mode.split(":", 1)[1]), lambda: _complete_pending(state, None))
    else:
        err(dbus.exceptions.DBusException(f"unknown connect mode {mode!r}", name=failed))


def _m_disconnect(device):
    state = _strap_of(device.path)
    state["disconnect_calls"] += 1
    if "pending" in state:
        cancelled = dbus.exceptions.DBusException("Operation canceled", name="org.bluez.Error.Failed")
        _complete_pending(state, cancelled)
        return
    if not device.props[DEVICE_IFACE]["Connected"]:
        raise dbus.exceptions.DBusException("Not Connected", name="org.bluez.Error.NotConnected")
    _link_down(state)


def _char_uuid(char) -> str:
    return str(char.props[CHAR_IFACE]["UUID"])


def _m_read_value(char, _options):
    state = _strap_of(char.path)
    state["ops"].append(("read", _char_uuid(char), b""))
    if _char_uuid(char) == PMD_CONTROL:
        return _bytes(PMD_FEATURES)
    if _char_uuid(char) == BATTERY_LEVEL:
        if state["battery_read_error"]:
            raise dbus.exceptions.DBusException("Read not permitted", name=state["battery_read_error"])
        return _bytes([state["battery"]])
    return char.props[CHAR_IFACE]["Value"]


def _m_write_value(char, value, _options):
    state = _strap_of(char.path)
    data = bytes(value)
    state["ops"].append(("write", _char_uuid(char), data))
    if _char_uuid(char) != PMD_CONTROL or not data:
        return
    opcode = data[0]
    measurement = data[1] if len(data) > 1 else 0
    error = state["pmd_type_errors"].get((opcode, measurement), state["pmd_errors"].get(opcode, 0))
    params = b""
    if opcode == 0x01 and error == 0:
        params = ECG_SETTINGS_PARAMS
    elif opcode == 0x02 and measurement == 0x02 and error == 0:
        params = ACC_START_PARAMS
    response = bytes([0xF0, opcode, measurement, error, 0x00]) + params
    path = char.path
    # The indication follows the write response, as on the air.
    _after(0.001, lambda: _indicate(state, path, response))


def _indicate(state: dict, char_path: str, data: bytes) -> None:
    char = _objects().get(char_path)
    if char is not None and char.props[CHAR_IFACE]["Notifying"]:
        _changed(char, CHAR_IFACE, {"Value": _bytes(data)})


def _m_start_notify(char):
    state = _strap_of(char.path)
    state["ops"].append(("start_notify", _char_uuid(char), b""))
    if not char.props[CHAR_IFACE]["Notifying"]:
        _changed(char, CHAR_IFACE, {"Notifying": dbus.Boolean(True)})


def _m_stop_notify(char):
    if char.props[CHAR_IFACE]["Notifying"]:
        _changed(char, CHAR_IFACE, {"Notifying": dbus.Boolean(False)})


def _device_props(adapter_path: str, address: str, name: str, pmd: bool, rssi: int) -> dict:
    uuids = [HR_SERVICE] + ([PMD_SERVICE] if pmd else [])
    return {
        "Address": dbus.String(address),
        "AddressType": dbus.String("public"),
        "Name": dbus.String(name),
        "Alias": dbus.String(name),
        "Appearance": dbus.UInt16(0x0341),  # heart rate belt
        "Paired": dbus.Boolean(False),
        "Bonded": dbus.Boolean(False),
        "Trusted": dbus.Boolean(False),
        "Blocked": dbus.Boolean(False),
        "LegacyPairing": dbus.Boolean(False),
        "RSSI": dbus.Int16(rssi),
        "Connected": dbus.Boolean(False),
        "UUIDs": dbus.Array(uuids, signature="s"),
        "Adapter": dbus.ObjectPath(adapter_path),
        "ManufacturerData": dbus.Dictionary(
            {dbus.UInt16(POLAR_COMPANY_ID): _bytes(b"\x3f\x00\x00\x00")}, signature="qv"
        ),
        "ServicesResolved": dbus.Boolean(False),
        "AdvertisingFlags": _bytes(b"\x06"),
    }


def _m_add_strap(_root, adapter_name, address, name, pmd, rssi):
    """Export a strap as a discovered org.bluez.Device1 (and announce it with InterfacesAdded)."""
    adapter_path = f"/org/bluez/{adapter_name}"
    path = f"{adapter_path}/dev_{address.upper().replace(':', '_')}"
    props = _device_props(adapter_path, str(address), str(name), bool(pmd), int(rssi))
    _objects()["/"].AddObject(
        path,
        DEVICE_IFACE,
        props,
        [
            ("Connect", "", "", ""),
            ("Disconnect", "", "", _m_disconnect),
            ("Pair", "", "", ""),
            ("CancelPairing", "", "", ""),
        ],
    )
    device = _objects()[path]
    sig = device.methods[DEVICE_IFACE]["Connect"]
    # Connect answers asynchronously (it may be delayed or never answered), so it bypasses dbusmock's wrapper.
    decorate = dbus.service.method(
        DEVICE_IFACE, in_signature="", out_signature="", async_callbacks=("ok", "err")
    )
    connect = decorate(_m_connect)
    device.methods[DEVICE_IFACE]["Connect"] = (sig[0], sig[1], "", connect)
    _straps[path] = {
        "path": path,
        "pmd": bool(pmd),
        "mtu": 232,
        "battery": None,
        "battery_flags": ["read", "notify"],
        "battery_read_error": "",
        "advertising": True,
        "plan": [],
        "modes_used": [],
        "connect_calls": 0,
        "disconnect_calls": 0,
        "connects": 0,
        "gatt": [],
        "chars": {},
        "ops": [],
        "pmd_errors": {},
        "pmd_type_errors": {},
        "rssi": int(rssi),
        "rssi_flip": False,
    }
    _interfaces_added(path, DEVICE_IFACE, props)
    return path


def _m_remove_strap(_root, path):
    state = _straps.pop(str(path))
    _remove_gatt(state)
    _objects()["/"].RemoveObject(path)
    _interfaces_removed(path, [DEVICE_IFACE])


def _m_set_connect_plan(_root, path, modes):
    _strap_of(path)["plan"] = [str(m) for m in modes]


def _m_set_battery(_root, path, level, flags, read_error):
    """Give the strap a Battery Service (from its next connection): `level` %, characteristic `flags`; a level
    below 0 removes it; a non-empty `read_error` makes reading it fail with that BlueZ error."""
    state = _strap_of(path)
    state["battery"] = None if int(level) < 0 else int(level)
    state["battery_flags"] = [str(f) for f in flags]
    state["battery_read_error"] = str(read_error)


def _m_set_advertising(_root, path, on):
    _strap_of(path)["advertising"] = bool(on)


def _m_set_uuids(_root, path, uuids):
    """Change what the strap advertises (the UUIDs property), as a new advertisement would."""
    _changed(
        _objects()[str(path)], DEVICE_IFACE, {"UUIDs": dbus.Array([str(u) for u in uuids], signature="s")}
    )


def _m_set_pmd_error(_root, path, opcode, error_code):
    _strap_of(path)["pmd_errors"][int(opcode)] = int(error_code)


def _m_set_pmd_type_error(_root, path, opcode, measurement, error_code):
    _strap_of(path)["pmd_type_errors"][(int(opcode), int(measurement))] = int(error_code)


def _m_notify(_root, path, char_uuid, value):
    """Send one notification; fails loudly if the link is down or nobody subscribed."""
    state = _strap_of(path)
    char_path = state["chars"].get(str(char_uuid).lower())
    char = _objects().get(char_path) if char_path else None
    if char is None or not char.props[CHAR_IFACE]["Notifying"]:
        raise dbus.exceptions.DBusException(f"{char_uuid} not notifying", name="org.cmt.Error.NotNotifying")
    _changed(char, CHAR_IFACE, {"Value": _bytes(value)})


def _m_drop_link(_root, path):
    """The strap goes out of range mid-stream: services vanish, Connected and ServicesResolved turn false."""
    _link_down(_strap_of(path))


def _m_is_notifying(_root, path, char_uuid):
    char_path = _strap_of(path)["chars"].get(str(char_uuid).lower())
    char = _objects().get(char_path) if char_path else None
    return dbus.Boolean(bool(char is not None and char.props[CHAR_IFACE]["Notifying"]))


def _m_stats(_root, path):
    state = _strap_of(path)
    return dbus.Dictionary(
        {
            "connect_calls": dbus.Int32(state["connect_calls"]),
            "connects": dbus.Int32(state["connects"]),
            "disconnect_calls": dbus.Int32(state["disconnect_calls"]),
            "modes_used": dbus.Array(state["modes_used"], signature="s"),
            "connected": dbus.Boolean(bool(_objects()[path].props[DEVICE_IFACE]["Connected"])),
            "discovering": dbus.Boolean(
                any(bool(o.props.get(ADAPTER_IFACE, {}).get("Discovering")) for o in _objects().values())
            ),
        },
        signature="sv",
    )


def _m_ops(_root, path):
    """What a client did on the strap's GATT database, in order: (start_notify|read|write, uuid, data)."""
    return dbus.Array(
        [
            dbus.Struct((dbus.String(op), dbus.String(u), _bytes(d)), signature="ssay")
            for op, u, d in _strap_of(path)["ops"]
        ],
        signature="(ssay)",
    )


def _advertise() -> None:
    """While an adapter discovers, every advertising, unconnected strap on it reports a fresh RSSI."""
    for path, state in list(_straps.items()):
        device = _objects().get(path)
        if device is None or not state["advertising"]:
            continue
        props = device.props[DEVICE_IFACE]
        adapter = _objects().get(str(props["Adapter"]))
        if adapter is None or not adapter.props[ADAPTER_IFACE]["Discovering"] or props["Connected"]:
            continue
        state["rssi_flip"] = not state["rssi_flip"]
        _changed(device, DEVICE_IFACE, {"RSSI": dbus.Int16(state["rssi"] - int(state["rssi_flip"]))})


def load(mock, parameters):
    """dbusmock template entry point: add the strap control interface on `/` and start advertising."""
    mock.AddMethods(
        STRAP_MOCK_IFACE,
        [
            ("AddStrap", "sssbn", "s", _m_add_strap),
            ("RemoveStrap", "s", "", _m_remove_strap),
            ("SetConnectPlan", "sas", "", _m_set_connect_plan),
            ("SetAdvertising", "sb", "", _m_set_advertising),
            ("SetBattery", "snass", "", _m_set_battery),
            ("SetPmdError", "syy", "", _m_set_pmd_error),
            ("SetPmdTypeError", "syyy", "", _m_set_pmd_type_error),
            ("SetUuids", "sas", "", _m_set_uuids),
            ("Notify", "ssay", "", _m_notify),
            ("DropLink", "s", "", _m_drop_link),
            ("IsNotifying", "ss", "b", _m_is_notifying),
            ("Stats", "s", "a{sv}", _m_stats),
            ("Ops", "s", "a(ssay)", _m_ops),
        ],
    )
    _every(float(parameters.get("advertising_interval_s", 0.03)), _advertise)


# ----------------------------------------------------------------------------------------------------
# Test half: runs in the pytest process.
# ----------------------------------------------------------------------------------------------------


def dbus_daemon_available() -> bool:
    """Whether the fake BlueZ can run here: a dbus-daemon to host it and dbus-python to drive it."""
    return dbus is not None and shutil.which("dbus-daemon") is not None


class BluezMock:
    """A private system bus with dbusmock's bluez5 template, one adapter (hci0) and the strap template.

    Use as a context manager; it sets DBUS_SYSTEM_BUS_ADDRESS while active and restores it afterwards.
    """

    adapter = "hci0"

    def __init__(self, log_path: Path | None = None) -> None:
        self._log_path = log_path
        self._bus = None
        self._server = None
        self._saved_env: str | None = None
        self._log = None

    def __enter__(self) -> BluezMock:
        from dbusmock.testcase import BusType, PrivateDBus, SpawnedMock

        self._saved_env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        self._bus = PrivateDBus(BusType.SYSTEM)
        self._bus.start()  # sets DBUS_SYSTEM_BUS_ADDRESS
        try:
            self._log = open(self._log_path, "wb") if self._log_path else None
            out = self._log if self._log is not None else subprocess.DEVNULL
            self._server = SpawnedMock.spawn_with_template("bluez5", stdout=out, stderr=subprocess.STDOUT)
            self.conn = dbus.bus.BusConnection(self._bus.address)
            root = self.conn.get_object(BLUEZ, "/")
            self.mock = dbus.Interface(root, "org.freedesktop.DBus.Mock")
            self.bluez_mock = dbus.Interface(root, "org.bluez.Mock")
            self.bluez_mock.AddAdapter(self.adapter, "cmt-lab-pc")
            self.mock.AddTemplate(str(Path(__file__).resolve()), dbus.Dictionary({}, signature="sv"))
            self.ctl = dbus.Interface(root, STRAP_MOCK_IFACE)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.terminate()
            self._server = None
        if self._bus is not None:
            self._bus.stop()
            self._bus = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._saved_env is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self._saved_env

    # -- straps --------------------------------------------------------------------------------

    def add_strap(self, address: str, name: str, *, pmd: bool = False, rssi: int = -60) -> str:
        """Export an advertising strap (0x180D, plus the PMD service if `pmd`); returns its D-Bus path."""
        return str(self.ctl.AddStrap(self.adapter, address, name, pmd, dbus.Int16(rssi)))

    def remove_strap(self, path: str) -> None:
        self.ctl.RemoveStrap(path)

    def set_connect_plan(self, path: str, modes: Sequence[str]) -> None:
        """Queue outcomes for the next Connect calls (see CONNECT_MODES); afterwards Connect succeeds."""
        self.ctl.SetConnectPlan(path, dbus.Array(list(modes), signature="s"))

    def set_battery(self, path: str, level: int | None, flags: Sequence[str] = ("read", "notify"),
                    read_error: str = "") -> None:
        """Give the strap a Battery Service with `level` % (None: none) from its next connection."""
        self.ctl.SetBattery(path, dbus.Int16(-1 if level is None else level), dbus.Array(list(flags), signature="s"),
                            read_error)

    def set_powered(self, on: bool) -> None:
        """Switch the adapter on or off (as `bluetoothctl power off` would)."""
        adapter = self.conn.get_object(BLUEZ, f"/org/bluez/{self.adapter}")
        mock = dbus.Interface(adapter, "org.freedesktop.DBus.Mock")
        mock.UpdateProperties(ADAPTER_IFACE, {"Powered": dbus.Boolean(on)})

    def remove_adapter(self) -> None:
        """Take the adapter away (a USB adapter unplugged)."""
        self.bluez_mock.RemoveAdapter(self.adapter)

    def set_advertising(self, path: str, on: bool) -> None:
        self.ctl.SetAdvertising(path, on)

    def set_uuids(self, path: str, uuids: Sequence[str]) -> None:
        """Make the strap advertise exactly these service UUIDs."""
        self.ctl.SetUuids(path, dbus.Array(list(uuids), signature="s"))

    def set_pmd_error(self, path: str, opcode: int, error_code: int) -> None:
        """Make the PMD control point answer `opcode` with `error_code`."""
        self.ctl.SetPmdError(path, dbus.Byte(opcode), dbus.Byte(error_code))

    def set_pmd_type_error(self, path: str, opcode: int, measurement: int, error_code: int) -> None:
        """Make the PMD control point answer `opcode` for one measurement type (0 ECG, 2 ACC) with `error_code`."""
        self.ctl.SetPmdTypeError(path, dbus.Byte(opcode), dbus.Byte(measurement), dbus.Byte(error_code))

    def notify(self, path: str, char_uuid: str, value: bytes) -> None:
        self.ctl.Notify(path, char_uuid, _bytes(value))

    def drop_link(self, path: str) -> None:
        self.ctl.DropLink(path)

    def is_notifying(self, path: str, char_uuid: str) -> bool:
        return bool(self.ctl.IsNotifying(path, char_uuid))

    def stats(self, path: str) -> dict:
        raw = self.ctl.Stats(path)
        return {
            str(k): (
                list(map(str, v))
                if isinstance(v, dbus.Array)
                else (bool(v) if isinstance(v, dbus.Boolean) else int(v))
            )
            for k, v in raw.items()
        }

    def ops(self, path: str) -> list[tuple[str, str, bytes]]:
        """GATT operations clients made on the strap, in order: (start_notify|read|write, uuid, data)."""
        return [(str(op), str(u), bytes(d)) for op, u, d in self.ctl.Ops(path)]
