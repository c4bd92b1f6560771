"""What participants will see: the participant display at the middle of every phase, before anyone is wired up.

`preview_views` builds, for each phase, the `ParticipantView` the live session would produce halfway through it
(the prompt showing then, including timed prompts; the pacer's size and label from the pacer waveform; the phase's
feedback mode) with the soothing visual neutral, since there is no physiology yet. `render_preview` paints them to
PNG files with the participant display's own painter (for an ethics committee, or to proof-read a protocol).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from biofeedback.live.view_model import ParticipantView
from protocols.model import Phase, Protocol
from protocols.pacer import pacer_phase, pacer_size
from recordings.files import OutputExistsError


@dataclass(frozen=True, slots=True)
class PhasePreview:
    index: int
    phase: Phase
    view: ParticipantView

    @property
    def file_name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.phase.name.lower()).strip("-") or "phase"
        return f"{self.index + 1:02d}-{slug}.png"


def phase_view(protocol: Protocol, index: int, elapsed_s: float) -> ParticipantView:
    """The participant's view `elapsed_s` into phase `index` of an unpaused run, with neutral feedback."""
    phase = protocol.phases[index]
    if not 0.0 <= elapsed_s <= phase.duration_s:
        raise ValueError(f"phase {phase.name!r} lasts {phase.duration_s:g} s; {elapsed_s:g} s is outside it")
    prompt = phase.prompt
    for timed in phase.prompts:  # sorted by time: the latest one due replaces the phase prompt, as in a session
        if timed.at_s <= elapsed_s:
            prompt = timed.text
    size = label = None
    if phase.pacer is not None:
        size = pacer_size(elapsed_s, phase.pacer)
        label = "breathe in" if pacer_phase(elapsed_s, phase.pacer)[1] == "inhale" else "breathe out"
    return ParticipantView(
        t=protocol.phase_starts_s[index] + elapsed_s,
        phase_name=phase.name,
        phase_kind=phase.kind.value,
        prompt=prompt,
        phase_time_left_s=phase.duration_s - elapsed_s,
        pacer_size=size,
        pacer_label=label,
        feedback=phase.feedback.value,
        soothing_level=None,
    )


def preview_views(protocol: Protocol) -> list[PhasePreview]:
    """One view per phase, at the middle of the phase."""
    return [PhasePreview(i, ph, phase_view(protocol, i, ph.duration_s / 2)) for i, ph in enumerate(protocol.phases)]


def render_preview(
    protocol: Protocol, out_dir: Path, *, size: tuple[int, int] = (1280, 720), overwrite: bool = False
) -> list[Path]:
    """Write one PNG per phase into `out_dir` (numbered by phase); refuses to replace files unless `overwrite`."""
    from biofeedback.display.participant import render_participant_png  # Qt only when rendering

    out_dir = Path(out_dir)
    previews = preview_views(protocol)
    existing = [out_dir / p.file_name for p in previews if (out_dir / p.file_name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; not overwriting it (use --force to replace it)")
    return [render_participant_png(p.view, out_dir / p.file_name, size=size) for p in previews]
