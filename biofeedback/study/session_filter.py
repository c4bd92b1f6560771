"""Which stored sessions a browser shows: `sessions list` and the console's Sessions page filter alike."""

from __future__ import annotations

from recordings.store import SessionInfo, Store, source_matches


def select_sessions(
    store: Store,
    *,
    participant: str | None = None,
    protocol: str | None = None,
    week: int | None = None,
    state: str | None = None,
    source: str | None = None,
) -> list[SessionInfo]:
    """Sessions in id order matching every filter given (None: any); `source` `imported` matches every import."""
    return [s for s in store.sessions(participant)
            if (protocol is None or s.protocol_name == protocol)
            and (week is None or s.week == week)
            and (state is None or s.state == state)
            and (source is None or source_matches(s.source, source))]  # fmt: skip
