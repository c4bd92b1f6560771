"""A frozen JSON copy of the protocol a session ran, stored with the session (built-ins may change later).

`protocol_to_dict` writes it; `protocol_from_dict` rebuilds the exact `Protocol` (for replay and re-analysis), with a
`ProtocolJsonError` naming the field when a stored copy is damaged.
"""

from __future__ import annotations

from typing import Any

from protocols.model import DEFAULT_MARKER_TIMEOUT_S, Pacer, Phase, Protocol, TimedPrompt


class ProtocolJsonError(ValueError):
    """A stored protocol copy that cannot be turned back into a protocol."""


def _phase_to_dict(ph: Phase) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": ph.name,
        "kind": ph.kind.value,
        "duration_s": ph.duration_s,
        "prompt": ph.prompt,
        "prompts": [{"at_s": p.at_s, "text": p.text} for p in ph.prompts],
        "pacer": None
        if ph.pacer is None
        else {"rate_bpm": ph.pacer.rate_bpm, "inhale_fraction": ph.pacer.inhale_fraction},
        "feedback": ph.feedback.value,
        "show_numbers": ph.show_numbers,
    }
    if ph.instrument is not None:  # only diary phases name one; older stored copies have no such key
        out["instrument"] = ph.instrument
    for key in ("start_on_marker", "end_on_marker"):
        if getattr(ph, key) is not None:
            out[key] = getattr(ph, key)
    return out


def protocol_to_dict(protocol: Protocol) -> dict[str, Any]:
    return {
        "name": protocol.name,
        "description": protocol.description,
        "version": protocol.version,
        "phases": [_phase_to_dict(ph) for ph in protocol.phases],
        **({"marker_stream": protocol.marker_stream, "marker_timeout_s": protocol.marker_timeout_s}
           if protocol.marker_stream is not None else {}),
    }


def _phase_from_dict(i: int, raw: Any) -> Phase:
    where = f"stored protocol, phase {i + 1}"
    if not isinstance(raw, dict):
        raise ProtocolJsonError(f"{where}: expected an object, found {type(raw).__name__}")
    try:
        pacer = raw.get("pacer")
        return Phase(
            name=str(raw["name"]),
            kind=raw["kind"],
            duration_s=float(raw["duration_s"]),
            prompt=str(raw.get("prompt", "")),
            prompts=tuple(TimedPrompt(float(p["at_s"]), str(p["text"])) for p in raw.get("prompts", ())),
            pacer=None if pacer is None else Pacer(float(pacer["rate_bpm"]), float(pacer["inhale_fraction"])),
            feedback=raw.get("feedback", "live"),
            show_numbers=bool(raw.get("show_numbers", False)),
            instrument=None if raw.get("instrument") is None else str(raw["instrument"]),
            start_on_marker=raw.get("start_on_marker"),
            end_on_marker=raw.get("end_on_marker"),
        )
    except KeyError as exc:
        raise ProtocolJsonError(f"{where}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ProtocolJsonError(f"{where}: {exc}") from None


def protocol_from_dict(data: Any) -> Protocol:
    """The `Protocol` stored by `protocol_to_dict` (round trip: `protocol_from_dict(protocol_to_dict(p)) == p`)."""
    if not isinstance(data, dict):
        raise ProtocolJsonError(f"stored protocol: expected an object, found {type(data).__name__}")
    phases = data.get("phases")
    if not isinstance(phases, list) or not phases:
        raise ProtocolJsonError("stored protocol: 'phases' must be a non-empty list")
    try:
        return Protocol(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            phases=tuple(_phase_from_dict(i, ph) for i, ph in enumerate(phases)),
            version=str(data.get("version", "1")),
            marker_stream=data.get("marker_stream"),
            marker_timeout_s=float(data.get("marker_timeout_s", DEFAULT_MARKER_TIMEOUT_S)),
        )
    except KeyError as exc:
        raise ProtocolJsonError(f"stored protocol: missing field {exc.args[0]!r}") from None
    except ValueError as exc:
        if isinstance(exc, ProtocolJsonError):
            raise
        raise ProtocolJsonError(f"stored protocol: {exc}") from None
