"""A frozen JSON copy of the protocol a session ran, stored with the session (built-ins may change later)."""

from __future__ import annotations

from typing import Any

from protocols.model import Protocol


def protocol_to_dict(protocol: Protocol) -> dict[str, Any]:
    return {
        "name": protocol.name,
        "description": protocol.description,
        "version": protocol.version,
        "phases": [
            {
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
            for ph in protocol.phases
        ],
    }
