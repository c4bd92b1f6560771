"""Raw captures (JSON Lines) and plain RR files: import into sessions, export the raw layer back out.

A capture has one notification per line: `{"t": <seconds>, "uuid": "<characteristic UUID>", "hex": "<bytes>"}`, with
an optional `"device"`. Lines of the form `{"t": <seconds>, "event": "disconnected", "reason": "..."}` record link
events, so a gap survives the round trip. An exported capture also keeps what the session ran: a first line
`{"capture": 1, "protocol_name": ..., "protocol": {...}, "started_utc": ..., "device": ..., "week": ...}` and one line
per marker `{"t": ..., "marker": "<kind>", "label": ..., "phase_index": ..., "phase_name": ..., "detail": {...}}`
(typed manual-marker labels only with `include_text`), so an export → import round trip gives the same session:
protocol, start time, markers, raw packets and the beats decoded from them. A capture without them (from another
program) is imported as one `whole` phase. Importing decodes the bytes exactly as live data would be; any problem in
the file is refused with its line number and nothing is stored.

A capture import commits in batches of at most `IMPORT_BATCH_S` (so a recorder beside it is never kept waiting for
the store's lock longer than that); the session is `importing` until the last batch and then `imported`. If the
import fails part-way its rows are removed again; if the process dies, the next opening marks it `incomplete`.
"""

from __future__ import annotations

import json
import math
import re
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from devices.errors import MAX_ATTRIBUTE_BYTES

from .bundle import local_session, session_uuids
from .decode import DecodeCounts, decode_packets
from .files import open_private_for_write
from .import_formats import ImportFormatError
from .import_session import importing_session
from .limits import MAX_RECORDING_S
from .privacy import exportable_label, fixed_labels
from .store import Store

WHOLE_PHASE = {"name": "whole", "description": "imported recording without markers", "phases": []}
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SHORT_UUID_RE = re.compile(r"^(0x)?[0-9a-fA-F]{4}$")


@dataclass(frozen=True, slots=True)
class CaptureLine:
    t: float
    uuid: str | None = None
    data: bytes = b""
    device: str = ""
    event: str | None = None
    reason: str = ""
    marker: dict[str, Any] | None = None
    """A marker line: kind, label, phase_index, phase_name, detail."""


def _full_uuid(value: str) -> str:
    if _UUID_RE.match(value):
        return value.lower()
    if _SHORT_UUID_RE.match(value):
        short = value[-4:].lower()
        return f"0000{short}-0000-1000-8000-00805f9b34fb"
    raise ValueError(f'"uuid" {value!r} is not a characteristic UUID')


CAPTURE_VERSION = 1


def _check_header(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """The header line of an exported capture, checked: what the session ran and when it started."""
    unknown = set(obj) - {"capture", "protocol_name", "protocol", "started_utc", "device", "week", "session_uuid"}
    if unknown or obj.get("capture") != CAPTURE_VERSION:
        raise ImportFormatError(f"{where}: not a capture header of version {CAPTURE_VERSION} (fields {sorted(obj)})")
    if not isinstance(obj.get("protocol_name"), str) or not isinstance(obj.get("protocol"), dict):
        raise ImportFormatError(f'{where}: "protocol_name" must be text and "protocol" an object')
    started = obj.get("started_utc")
    try:
        datetime.fromisoformat(started)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImportFormatError(f'{where}: "started_utc" must be an ISO time, got {str(started)[:40]!r}') from None
    if not isinstance(obj.get("device", ""), str):
        raise ImportFormatError(f'{where}: "device" must be text')
    week = obj.get("week")
    if week is not None and (isinstance(week, bool) or not isinstance(week, int) or not 1 <= week < 10**6):
        raise ImportFormatError(f'{where}: "week" must be a whole number ≥ 1')
    if "session_uuid" in obj:
        try:
            obj["session_uuid"] = str(uuidlib.UUID(str(obj["session_uuid"])[:64]))
        except ValueError:
            raise ImportFormatError(f'{where}: "session_uuid" is not a UUID') from None
    return obj


def _check_marker(obj: dict[str, Any], t: float, where: str) -> CaptureLine:
    unknown = set(obj) - {"t", "marker", "label", "phase_index", "phase_name", "detail"}
    if unknown:
        raise ImportFormatError(f"{where}: unknown marker field(s) {sorted(unknown)}")
    pi, pn = obj.get("phase_index"), obj.get("phase_name")
    if not isinstance(obj["marker"], str) or not isinstance(obj.get("label", ""), str):
        raise ImportFormatError(f'{where}: "marker" and "label" must be text')
    if pi is not None and (isinstance(pi, bool) or not isinstance(pi, int) or not -(1 << 31) <= pi < 1 << 31):
        raise ImportFormatError(f'{where}: "phase_index" must be a whole number')
    if pn is not None and not isinstance(pn, str):
        raise ImportFormatError(f'{where}: "phase_name" must be text')
    if not isinstance(obj.get("detail", {}), dict):
        raise ImportFormatError(f'{where}: "detail" must be an object')
    marker = {"kind": obj["marker"], "label": obj.get("label", ""), "phase_index": pi, "phase_name": pn,
              "detail": obj.get("detail", {})}  # fmt: skip
    return CaptureLine(t, marker=marker)


def parse_capture(text: str, source: str = "<capture>") -> list[CaptureLine]:
    """Parse and validate a whole capture; raises ImportFormatError naming `source` and the line."""
    return parse_capture_with_header(text, source)[1]


def parse_capture_with_header(text: str, source: str = "<capture>") -> tuple[dict[str, Any] | None, list[CaptureLine]]:
    """The header (None in a capture without one) and the lines of a capture; see `parse_capture`."""
    lines = []
    header = None
    last_t = -math.inf
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source}: line {lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise ImportFormatError(f"{where}: JSON nested too deeply to be a capture line") from None
        if not isinstance(obj, dict):
            raise ImportFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "capture" in obj:
            if lines or header is not None:
                raise ImportFormatError(f"{where}: the capture header must be the first line")
            header = _check_header(obj, where)
            continue
        t = obj.get("t")
        finite = (isinstance(t, float) and math.isfinite(t)) or (isinstance(t, int) and abs(t) <= 2**63)
        if isinstance(t, bool) or not finite:
            raise ImportFormatError(f'{where}: "t" must be a number of seconds, got {str(t)[:40]!r}')
        if abs(t) > MAX_RECORDING_S or (lines and t - lines[0].t > MAX_RECORDING_S):
            raise ImportFormatError(f'{where}: "t" {t:.6g} s is beyond the {MAX_RECORDING_S / 86400:g} days a '
                                    "recording may span")  # fmt: skip
        if t < last_t:
            raise ImportFormatError(f'{where}: "t" goes backwards ({t} after {last_t})')
        last_t = t
        device = obj.get("device", "")
        if not isinstance(device, str):
            raise ImportFormatError(f'{where}: "device" must be a string')
        if "marker" in obj:
            lines.append(_check_marker(obj, float(t), where))
            continue
        if "event" in obj:
            lines.append(
                CaptureLine(float(t), device=device, event=str(obj["event"]), reason=str(obj.get("reason", "")))
            )
            continue
        unknown = set(obj) - {"t", "uuid", "hex", "device"}
        if unknown:
            raise ImportFormatError(f"{where}: unknown field(s) {sorted(unknown)}; expected t, uuid, hex, device")
        try:
            uuid = _full_uuid(str(obj.get("uuid", "")))
        except ValueError as exc:
            raise ImportFormatError(f"{where}: {exc}") from None
        hexstr = obj.get("hex")
        if not isinstance(hexstr, str):
            raise ImportFormatError(f'{where}: "hex" must be a string of payload bytes')
        if len(hexstr) > 2 * MAX_ATTRIBUTE_BYTES + 1024:  # (spaces allowed between bytes)
            raise ImportFormatError(f'{where}: "hex" is longer than the {MAX_ATTRIBUTE_BYTES} bytes a Bluetooth '
                                    "notification can carry")  # fmt: skip
        try:
            data = bytes.fromhex(hexstr)
        except ValueError:
            raise ImportFormatError(f'{where}: "hex" is not hexadecimal bytes: {hexstr[:40]!r}') from None
        if len(data) > MAX_ATTRIBUTE_BYTES:
            raise ImportFormatError(f'{where}: "hex" holds {len(data)} bytes; a Bluetooth notification carries at '
                                    f"most {MAX_ATTRIBUTE_BYTES}")  # fmt: skip
        lines.append(CaptureLine(float(t), uuid, data, device))
    if not any(line.uuid for line in lines):
        raise ImportFormatError(f"{source}: no notifications found")
    return header, lines


def import_capture(
    store: Store, path: Path, participant_id: str, device: str | None = None,
    on_packet: Callable[[int, int], None] | None = None,
) -> tuple[int, DecodeCounts]:  # fmt: skip
    """Create a session from a capture file, decoding its bytes as live data would be.

    A capture of several straps (a group) is imported one strap at a time: name it with `device`.
    `on_packet(done, total)` reports progress (every 1000 packets and at the end).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = Path(path).read_bytes()[: exc.start].count(b"\n") + 1
        raise ImportFormatError(f"{path}: line {line}: not UTF-8 text, so not a capture (JSON Lines)") from None
    header, lines = parse_capture_with_header(text, str(path))
    header = header or {}
    markers = [line for line in lines if line.marker is not None]
    lines = [line for line in lines if line.marker is None]
    devices = sorted({line.device for line in lines if line.uuid and line.device}) or [""]
    if device is not None:
        if device not in devices:
            raise ImportFormatError(f"{path}: no strap {device!r} in this capture; it has {devices}")
        lines = [line for line in lines if line.device in (device, "")]
        devices = [device]
    elif len(devices) > 1:
        raise ImportFormatError(f"{path}: holds several straps {devices}; import each with --device NAME")
    same = header.get("session_uuid")
    if same is not None:
        existing = local_session(store, same)
        if existing is not None:
            raise ImportFormatError(f"{path}: this recording is already in the store as session {existing} "
                                    f"(session UUID {same})")  # fmt: skip
    with importing_session(
        store,
        participant_id,
        header.get("protocol_name", "whole"),
        header.get("protocol", WHOLE_PHASE),
        devices[0] or header.get("device") or "capture",
        source="capture",
        settings={"imported_from": Path(path).name},
        started_utc=header.get("started_utc"),
        week=header.get("week"),
    ) as batch:
        sid = batch.sid
        if same is not None:  # the same recording keeps its identity, so a second import is recognised
            store.connection.execute("UPDATE sessions SET uuid=? WHERE id=?", (same, sid))
        gaps = []
        for line in lines:
            if line.event is not None:
                store.add_link_event(sid, line.t, line.device, line.event, line.reason)
                if line.event == "disconnected":
                    gaps.append(line.t)
                batch.due()

        n_packets = sum(1 for line in lines if line.event is None)

        def stored_packets() -> Iterator[tuple[int, float, str, bytes]]:
            done = 0
            for line in lines:
                if line.event is None:
                    if on_packet is not None and done % 1000 == 0:
                        on_packet(done, n_packets)
                    done += 1
                    batch.due()  # between packets: the previous one's decoded rows are written
                    pid = store.add_packet(sid, line.t, line.uuid or "", line.data, line.device)
                    yield pid, line.t, line.uuid or "", line.data

        counts = decode_packets(store, sid, stored_packets(), gaps)
        if on_packet is not None:
            on_packet(n_packets, n_packets)
        for line in markers:
            m = line.marker or {}
            store.add_marker(sid, line.t, m["kind"], m["label"], phase_index=m["phase_index"],
                             phase_name=m["phase_name"], detail=m["detail"])  # fmt: skip
        if not markers:
            _add_whole_markers(store, sid, lines[0].t, lines[-1].t)
    return sid, counts


def _add_whole_markers(store: Store, sid: int, t0: float, t1: float) -> None:
    store.add_marker(sid, t0, "phase_start", "whole", phase_index=0, phase_name="whole", detail={"kind": "rest"})
    store.add_marker(sid, t1, "phase_end", "whole", phase_index=0, phase_name="whole", detail={"kind": "rest"})


def capture_lines(store: Store, session_id: int, *, include_text: bool = False) -> Iterator[str]:
    """A session as capture lines: its header, then notifications, link events and markers in time order."""
    info = store.session(session_id)
    protocol = store.protocol_dict(session_id)
    header = {"capture": CAPTURE_VERSION, "protocol_name": info.protocol_name, "protocol": protocol,
              "started_utc": info.started_utc, "device": info.device, "week": info.week,
              "session_uuid": session_uuids(store.connection)[session_id]}  # fmt: skip
    yield json.dumps(header, separators=(",", ":"))
    fixed = fixed_labels(protocol)
    markers = [
        (m.t, 2, {"t": m.t, "marker": m.kind, "label": exportable_label(m.kind, m.label, fixed, include_text),
                  "phase_index": m.phase_index, "phase_name": m.phase_name, "detail": m.detail})
        for m in store.markers(session_id)
    ]  # fmt: skip
    events = [
        (t, 1, {"t": t, "event": state, "reason": reason, "device": dev})
        for t, dev, state, reason in store.link_events(session_id)
    ]
    packets = [
        (p.t, 0, {"t": p.t, "uuid": p.uuid, "hex": p.data.hex(), "device": p.device}) for p in store.packets(session_id)
    ]
    merged = sorted(events + packets + markers, key=lambda item: (item[0], item[1]))
    for _t, _k, obj in merged:
        yield json.dumps(obj, separators=(",", ":"))


def export_capture(
    store: Store, session_id: int, out_dir: Path, *, overwrite: bool = False, include_text: bool = False
) -> Path:
    info = store.session(session_id)
    path = Path(out_dir) / f"sub-{info.participant_id}_session-{session_id}_capture.jsonl"
    with open_private_for_write(path, overwrite=overwrite) as fh:
        for line in capture_lines(store, session_id, include_text=include_text):
            fh.write(line + "\n")
    return path


