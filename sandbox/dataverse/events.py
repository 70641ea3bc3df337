"""Row changes as the event pipeline sees them (message, table, the row before and after), and the journal seam
through which sandbox.dataverse.api reports every change it writes. The webhook sender implements the journal
(sandbox.dataverse.webhooks.hub); the Web API only records, rolls back to savepoints and lets a journal fail a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sandbox.dataverse.org import Row
from sandbox.dataverse.schema import Table

MESSAGES = ("Create", "Update", "Delete")


@dataclass(frozen=True)
class RowChange:
    """One committed write: Create (after only), Update (before and after) or Delete (before only)."""

    message: str
    table: Table
    record_id: str
    before: Row | None
    after: Row | None
    columns: tuple[str, ...] = ()  # the Web API columns the request set (Create, Update), in request order


class ChangeJournal(Protocol):
    """What the Web API tells the event pipeline. Savepoints mirror `OrgStore.snapshot()`: a change set that rolls
    back its rows rolls back its journal entries too, so nothing is delivered for it.
    """

    def has_sync_steps(self) -> bool:
        """True when a synchronous step could fail a write, so each write must be undoable until it has run."""
        ...

    def record(self, change: RowChange) -> None:
        """Note a change the store has made. Raises DataverseError when a synchronous step refuses it (the
        caller then restores its snapshot).
        """
        ...

    def savepoint(self) -> int: ...

    def rollback(self, savepoint: int) -> None: ...


class NoJournal:
    """Records nothing: for callers that have no event pipeline."""

    def has_sync_steps(self) -> bool:
        return False

    def record(self, change: RowChange) -> None:
        return None

    def savepoint(self) -> int:
        return 0

    def rollback(self, savepoint: int) -> None:
        return None
