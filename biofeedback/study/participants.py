"""Participants of a store: adding a code (the one participant-code rule) and what is recorded for each.

`participants add` / `participants list` and the console's Participants page call these."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.instruments import InstrumentKind
from recordings.answers import AnswerSet, AnswerStore
from recordings.store import SessionInfo, Store


def add_participant(store: Store, code: str) -> tuple[str, bool]:
    """Add a pseudonymous code (refused with the rule when it is not one); returns (code, whether it was new)."""
    pid = store.check_participant(code)
    new = pid not in store.participants()
    store.ensure_participant(pid)
    store.flush()
    return pid, new


@dataclass
class ParticipantRecord:
    """One participant's sessions, diaries and other answer sets (free text is never read here)."""

    participant_id: str
    sessions: list[SessionInfo] = field(default_factory=list)
    diaries: list[AnswerSet] = field(default_factory=list)
    answers: list[AnswerSet] = field(default_factory=list)
    excluded_answers: dict[int, str] = field(default_factory=dict)


def participant_record(store: Store, participant_id: str) -> ParticipantRecord:
    answers = AnswerStore(store)
    rec = ParticipantRecord(participant_id, store.sessions(participant_id))
    rec.excluded_answers = store.exclusions("answer_set")
    for aset in answers.find(participant_id):
        kind = answers.instrument(aset.instrument, aset.instrument_version).kind
        (rec.diaries if kind is InstrumentKind.DIARY else rec.answers).append(aset)
    return rec


def participant_records(store: Store) -> list[ParticipantRecord]:
    """Every participant of the store, in code order."""
    return [participant_record(store, pid) for pid in store.participants()]
