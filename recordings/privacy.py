"""Which marker text may leave the store: manual-marker labels are free text unless they are one of the fixed labels.

The experimenter monitor offers FIXED_MARKER_LABELS (and a protocol may list its own as `marker_labels` in its stored
JSON); those are a closed vocabulary chosen in advance and are exported. Any other label of a `manual` marker was
typed during the session and leaves the store only with `include_text` (`--include-text`); without it the marker is
exported as a bare `manual` event. Labels of the other marker kinds come from the protocol or the recorder itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FIXED_MARKER_LABELS = ("note", "distress", "technical", "participant moved", "protocol deviation")
DEFAULT_LABEL = "marker"  # what the recorder stores for a manual marker without a label


def fixed_labels(protocol: Mapping[str, Any] | None) -> frozenset[str]:
    """The fixed manual-marker labels of a session: the monitor's, plus the protocol's `marker_labels`."""
    extra = (protocol or {}).get("marker_labels") or []
    return frozenset(FIXED_MARKER_LABELS) | {DEFAULT_LABEL} | {str(x) for x in extra if isinstance(x, str)}


def exportable_label(kind: str, label: str, fixed: frozenset[str], include_text: bool) -> str:
    """`label` if it may leave the store, else "" (a free-text manual label without include_text)."""
    if kind != "manual" or include_text or label in fixed:
        return label
    return ""
