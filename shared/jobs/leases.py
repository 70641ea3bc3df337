"""At most one worker per unit: a lease row beside the unit's checkpoints, and checkpoints saved only under it.

The lease is a row in the unit's tenant partition of ``syncstate`` (``lease|<job>|<org host or *>``): whoever
creates it, or replaces an expired one under its ETag, holds it. A sync checkpoint is saved in one entity-group
transaction with a conditional update of that lease (``If-Match`` its ETag, pushing ``ExpiresAt`` out), so a worker
whose lease expired and was taken over can never move the checkpoint again — the transaction fails as a whole (Table
service: operations in a transaction on one partition succeed or fail together; azure-docs
``storage/tables/table-storage-design-guidelines.md`` "Entity group transactions"). Each saved page renews the lease.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from shared.errors import S2SError
from shared.jobs.sync import Checkpoint, CheckpointStore


class LeaseHeldError(S2SError):
    """Another worker holds the unit's lease; ``remaining`` seconds until it expires unless renewed."""

    code = "unit_leased"

    def __init__(self, message: str, remaining: float) -> None:
        super().__init__(message)
        self.remaining = remaining


class LeaseLostError(S2SError):
    """The lease expired and another worker took it: this worker must stop touching the unit."""

    code = "lease_lost"


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


class UnitLease:
    def __init__(
        self,
        table: Any,
        tenant_id: str,
        name: str,
        *,
        owner: str,
        seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._key = {"PartitionKey": tenant_id, "RowKey": f"lease|{name}"}
        self.owner = owner
        self._seconds = seconds
        self._clock = clock
        self._etag: str | None = None

    def _row(self, run_id: str = "") -> dict[str, Any]:
        return {**self._key, "Owner": self.owner, "ExpiresAt": self._clock() + self._seconds, "Run": run_id}

    def acquire(self, run_id: str = "") -> None:
        """Take the lease, or raise LeaseHeldError when another worker's lease has not expired."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            self._etag = self._table.create_entity(self._row(run_id))["etag"]
            return
        except ResourceExistsError:
            pass
        try:
            current = self._table.get_entity(self._key["PartitionKey"], self._key["RowKey"])
        except ResourceNotFoundError:  # released in between: try once more from the start
            self._etag = self._table.create_entity(self._row(run_id))["etag"]
            return
        remaining = float(current.get("ExpiresAt") or 0) - self._clock()
        if remaining > 0 and current.get("Owner") != self.owner:
            raise LeaseHeldError(f"Leased by another worker for {remaining:.0f} s more.", remaining)
        try:
            self._etag = self._table.update_entity(
                self._row(run_id),
                mode=UpdateMode.REPLACE,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )["etag"]
        except HttpResponseError as exc:
            if _status(exc) == 412:  # another worker replaced the expired lease first
                raise LeaseHeldError("Taken over by another worker just now.", self._seconds) from exc
            raise

    def renew_with(self, entity: dict[str, Any] | None = None) -> None:
        """Push the expiry out — together with ``entity`` (same partition), atomically — only while this worker
        still holds the lease. Raises LeaseLostError otherwise."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.data.tables import TableTransactionError, UpdateMode

        if self._etag is None:
            raise LeaseLostError("The lease was never acquired.")
        options = {"mode": UpdateMode.REPLACE, "etag": self._etag, "match_condition": MatchConditions.IfNotModified}
        try:
            if entity is None:
                self._etag = self._table.update_entity(self._row(), **options)["etag"]
                return
            results = self._table.submit_transaction([("update", self._row(), options), ("upsert", entity)])
            self._etag = results[0]["etag"]
        except TableTransactionError as exc:
            if getattr(exc, "error_code", None) in ("UpdateConditionNotSatisfied", "ResourceNotFound"):
                raise LeaseLostError("Another worker took the unit over: the checkpoint was not saved.") from exc
            raise
        except (ResourceNotFoundError, HttpResponseError) as exc:
            if isinstance(exc, ResourceNotFoundError) or _status(exc) == 412:
                raise LeaseLostError("Another worker took the unit over.") from exc
            raise

    def release(self) -> None:
        """Give the lease up (only if still ours); never raises: an unreleased lease just expires."""
        from azure.core import MatchConditions

        if self._etag is None:
            return
        with contextlib.suppress(Exception):
            self._table.delete_entity(
                self._key["PartitionKey"],
                self._key["RowKey"],
                etag=self._etag,
                match_condition=MatchConditions.IfNotModified,
            )
        self._etag = None


class FencedCheckpointStore(CheckpointStore):
    """The checkpoint store a leased sync unit uses: every save also renews the lease, in one transaction."""

    def __init__(self, store: CheckpointStore, lease: UnitLease) -> None:
        super().__init__(store.table)
        self._lease = lease

    def save(self, tenant_id: str, org_url: str, table: str, checkpoint: Checkpoint) -> None:
        self._lease.renew_with(self.entity(tenant_id, org_url, table, checkpoint))
