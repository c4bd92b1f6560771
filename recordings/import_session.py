"""Writing an imported recording as a new session: in short batches, so a recorder beside it never waits, and all or
nothing, so a failed import leaves nothing behind.

The session is created in state `importing` and committed every `store.IMPORT_BATCH_S` of work; at the end it becomes
`imported`. On any exception what was committed is taken out again; a process killed mid-import leaves an
`importing` session that the next store open marks `interrupted` (`Store.recover_interrupted`), never a session that
looks complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

from .store import IMPORT_BATCH_S, Store, StoreError

BEAT_BATCH = 5000
IMPORT_STEPS = ("reading", "storing")
"""The named steps an RR or Polar import reports to its `on_step` callback (the CLI shows them as progress)."""


def no_step(_name: str) -> None:
    """The default `on_step`: report nothing."""


class ImportBatches:
    """The session being imported (`sid`) and a clock that commits what was written every IMPORT_BATCH_S."""

    def __init__(self, store: Store, sid: int) -> None:
        self.store, self.sid = store, sid
        self._since = time.monotonic()

    def due(self) -> None:
        """Commit if the current batch has held the write lock long enough."""
        if time.monotonic() - self._since >= IMPORT_BATCH_S:
            self.store.flush()
            self._since = time.monotonic()

    def beats(self, rows: Iterable[tuple[float, float, bool, float, int | None]]) -> None:
        it = iter(rows)
        while chunk := list(islice(it, BEAT_BATCH)):
            self.store.add_beats(self.sid, chunk)
            self.due()


@contextmanager
def importing_session(store: Store, participant_id: str, protocol_name: str, protocol: dict[str, Any], device: str,
                      **create: Any) -> Iterator[ImportBatches]:  # fmt: skip
    """Create the session (state `importing`), yield its batches; `imported` at the end, removed on failure."""
    sid = store.create_session(participant_id, protocol_name, protocol, device, state="importing", **create)
    batches = ImportBatches(store, sid)
    try:
        yield batches
        store.end_session(sid, "imported")
    except BaseException:
        remove_partial_import(store, sid)
        raise


def remove_partial_import(store: Store, sid: int) -> None:
    """Take out what a failed import already committed (if the store still takes writes; else recovery marks it)."""
    try:
        with store.transaction():
            store.delete_session_rows(sid)
            store.connection.execute("DELETE FROM sessions WHERE id=?", (sid,))
    except StoreError:
        pass
