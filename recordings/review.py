"""A researcher's review of a session's beats, stored as an append-only list of edits (table `review_edits`).

An edit names what it changes by time on the session clock: a beat (`mark`, `unmark`, `delete`), a time to put a
beat at (`add`), an automatic correction by the time of its first replaced beat (`accept`, `reject`), or a bad
segment from `t` to `t_end` with its kind (`bad-segment`: noise, movement or other). Each row keeps when (UTC), the
reviewer's code and the reason. Nothing is ever updated or deleted: `undo_last` appends an `undo` row naming the
edit it cancels, so the audit (`edits`) lists every edit, undone ones included. Raw packets and decoded beats are
never touched; what the edits mean for the beats is worked out by `biofeedback.analysis.review`.

Reviewer codes follow the participant rule (`P01`-style pseudonymous codes, or the lab's pattern) or are initials
(2-4 capital letters, `AB`), so no name is stored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .store import StoreError, check_participant_code, utc_now

EDIT_ACTIONS = ("accept", "reject", "mark", "unmark", "add", "delete", "bad-segment")
"""What a reviewer can do; `undo` rows are written by `undo_last` only."""
SEGMENT_KINDS = ("noise", "movement", "other")
REVIEWER_RULE = "a reviewer code is 2-4 capital initials (AB) or a pseudonymous code like a participant's (R01)"
_INITIALS = re.compile(r"[A-Z]{2,4}")


class ReviewError(StoreError):
    """An edit that cannot be stored or does not apply (named with its time and why)."""


@dataclass(frozen=True, slots=True)
class ReviewEdit:
    """One stored review row; `undone_by` is the id of the `undo` row that cancelled it (None: in force)."""

    id: int
    session_id: int
    utc: str
    reviewer: str
    action: str
    t: float | None
    t_end: float | None
    kind: str | None
    reason: str
    undoes: int | None = None
    undone_by: int | None = None

    @property
    def in_force(self) -> bool:
        return self.action != "undo" and self.undone_by is None

    def describe(self) -> str:
        """One line for lists and the audit: `#3 mark beat at 12.345 s`."""
        if self.action == "undo":
            what = f"undo #{self.undoes}"
        elif self.action == "bad-segment":
            what = f"bad segment ({self.kind}) {self.t:.3f}-{self.t_end:.3f} s"
        elif self.action in ("accept", "reject"):
            what = f"{self.action} correction at {self.t:.3f} s"
        elif self.action == "add":
            what = f"add beat at {self.t:.3f} s"
        else:
            what = f"{self.action} beat at {self.t:.3f} s"
        return f"#{self.id} {what}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id, "utc": self.utc, "reviewer": self.reviewer,
                "action": self.action, "t": self.t, "t_end": self.t_end, "kind": self.kind, "reason": self.reason,
                "undoes": self.undoes, "undone_by": self.undone_by}  # fmt: skip


def check_reviewer(code: str) -> str:
    """The code, stripped, when it is initials or a pseudonymous code (`REVIEWER_RULE`); else ReviewError."""
    text = (code or "").strip()
    if _INITIALS.fullmatch(text):
        return text
    try:
        return check_participant_code(text)
    except StoreError:
        raise ReviewError(f"reviewer {code!r} is not accepted: {REVIEWER_RULE}") from None


def _has_table(store) -> bool:
    row = store.connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='review_edits'")
    return row.fetchone() is not None


def edits(store, session_id: int) -> list[ReviewEdit]:
    """Every review row of the session in the order written (the audit), with `undone_by` filled in."""
    if not _has_table(store):  # an older store opened read-only: no review yet
        return []
    rows = store.connection.execute(
        "SELECT id, session_id, utc, reviewer, action, t, t_end, kind, reason, undoes FROM review_edits"
        " WHERE session_id=? ORDER BY id",
        (session_id,),
    ).fetchall()
    undone = {r[9]: r[0] for r in rows if r[4] == "undo"}
    return [ReviewEdit(*r, undone_by=undone.get(r[0])) for r in rows]


def edits_in_force(store, session_id: int) -> list[ReviewEdit]:
    """The edits that count, in the order written (undo rows and undone edits left out)."""
    return [e for e in edits(store, session_id) if e.in_force]


def has_review(store, session_id: int) -> bool:
    """Whether the session has at least one edit in force."""
    return bool(edits_in_force(store, session_id))


def check_edit(action: str, t: float | None, t_end: float | None = None, kind: str | None = None) -> None:
    """The form of an edit (its action, times and kind); whether it applies to the beats is checked above."""
    if action not in EDIT_ACTIONS:
        raise ReviewError(f"unknown review action {action!r}; one of {', '.join(EDIT_ACTIONS)}")
    if t is None or not math.isfinite(t) or t < 0:
        raise ReviewError(f"{action} needs a time ≥ 0 s on the session clock, got {t!r}")
    if action == "bad-segment":
        if t_end is None or not math.isfinite(t_end) or not t_end > t:
            raise ReviewError(f"a bad segment must end after it starts ({t:.3f} s), got end {t_end!r}")
        if kind not in SEGMENT_KINDS:
            raise ReviewError(f"a bad segment's kind is one of {', '.join(SEGMENT_KINDS)}, got {kind!r}")
    elif t_end is not None or kind is not None:
        raise ReviewError(f"only a bad segment has an end and a kind ({action} at {t:.3f} s)")


def add_edit(
    store, session_id: int, action: str, *, reviewer: str, t: float, t_end: float | None = None,
    kind: str | None = None, reason: str = "",
) -> ReviewEdit:  # fmt: skip
    """Append one edit (committed at once) and return it. Raises ReviewError for a malformed edit."""
    who = check_reviewer(reviewer)
    check_edit(action, t, t_end, kind)
    store.session(session_id)  # a clear error for a session that is not there
    with store.transaction():
        cur = store.connection.execute(
            "INSERT INTO review_edits(session_id, utc, reviewer, action, t, t_end, kind, reason)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (session_id, utc_now(), who, action, float(t), None if t_end is None else float(t_end), kind,
             (reason or "").strip()),
        )  # fmt: skip
    return next(e for e in edits(store, session_id) if e.id == cur.lastrowid)


def undo_last(store, session_id: int, *, reviewer: str, reason: str = "") -> ReviewEdit:
    """Cancel the latest edit in force by appending an `undo` row; returns the edit that was undone."""
    who = check_reviewer(reviewer)
    live = edits_in_force(store, session_id)
    if not live:
        raise ReviewError(f"session {session_id} has no review edit to undo")
    last = live[-1]
    with store.transaction():
        store.connection.execute(
            "INSERT INTO review_edits(session_id, utc, reviewer, action, reason, undoes) VALUES (?,?,?,?,?,?)",
            (session_id, utc_now(), who, "undo", (reason or "").strip(), last.id),
        )
    return next(e for e in edits(store, session_id) if e.id == last.id)
