"""Incremental sync of one tenant's org tables through change tracking, checkpointed after every page.

Per (tenant, org, table) a checkpoint row in ``syncstate`` holds either the delta link of the last finished run,
or — mid-run — the run id, the next page's link and the page number. A run is checkpointed before its first page,
and each page is written to the sink first and checkpointed second, so a run killed anywhere resumes under the same
run id without missing a row and redoes at most one page (which overwrites itself in the sink). An
expired or invalid delta token starts a full resync of that table (logged).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from shared.dataverse.client import DataverseClient
from shared.dataverse.errors import DeltaTokenExpiredError
from shared.jobs.sinks import ChangeSink
from shared.telemetry import dims

logger = logging.getLogger(__name__)

SYNC_STATE_TABLE = "syncstate"
T = TypeVar("T")


@dataclass
class Checkpoint:
    delta_link: str | None = None  # where the next run starts (set when a run finished)
    run_id: str | None = None  # set while a run is in progress
    next_link: str | None = None  # the page to read next in the run in progress
    page: int = 0  # pages written in the run in progress
    etag: str | None = None


def _prefetched(pages: Iterator[T]) -> Iterator[T]:
    """Fetch the next page while the current one is written to the sink and checkpointed, so the request chain
    never waits on storage (under a throttle this also brings each window's 429, and so its end, sooner).

    At most one page waits ahead of the consumer, so memory stays flat; the next page's link is only checkpointed
    after the current page is written, so a kill still loses nothing. Errors reach the consumer in order.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in pages:
                while not stop.is_set():
                    try:
                        handoff.put(("page", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(("done", None))
        except BaseException as exc:
            handoff.put(("error", exc))

    worker = threading.Thread(target=pump, name="sync-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


class CheckpointStore:
    def __init__(self, table: Any) -> None:
        self._table = table

    def create_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    @staticmethod
    def _row(org_url: str, table: str) -> str:
        return f"{urlsplit(org_url).hostname}|{table}"

    def load(self, tenant_id: str, org_url: str, table: str) -> Checkpoint:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(tenant_id, self._row(org_url, table))
        except ResourceNotFoundError:
            return Checkpoint()
        return Checkpoint(
            entity.get("DeltaLink") or None,
            entity.get("RunId") or None,
            entity.get("NextLink") or None,
            int(entity.get("Page") or 0),
        )

    def entity(self, tenant_id: str, org_url: str, table: str, checkpoint: Checkpoint) -> dict[str, Any]:
        """The row a checkpoint is stored as (partition: the tenant, so a unit's lease can be updated with it)."""
        return {
            "PartitionKey": tenant_id,
            "RowKey": self._row(org_url, table),
            "DeltaLink": checkpoint.delta_link or "",
            "RunId": checkpoint.run_id or "",
            "NextLink": checkpoint.next_link or "",
            "Page": checkpoint.page,
            "SavedAt": time.time(),
        }

    def save(self, tenant_id: str, org_url: str, table: str, checkpoint: Checkpoint) -> None:
        self._table.upsert_entity(self.entity(tenant_id, org_url, table, checkpoint))

    @property
    def table(self) -> Any:
        """The table client (shared.jobs.leases keeps the units' leases beside the checkpoints they guard)."""
        return self._table


@dataclass
class TableSyncResult:
    table: str
    org_url: str
    rows: int = 0
    deletions: int = 0
    pages: int = 0
    resynced: bool = False
    finished: bool = False


@dataclass
class TenantSyncResult:
    tenant_id: str
    tables: list[TableSyncResult] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(t.rows + t.deletions for t in self.tables)

    @property
    def finished(self) -> bool:
        return all(t.finished for t in self.tables)


class TableSync:
    def __init__(
        self,
        *,
        checkpoints: CheckpointStore,
        sink: ChangeSink,
        page_size: int,
        deadline: Callable[[], bool] = lambda: False,
    ) -> None:
        self._checkpoints = checkpoints
        self._sink = sink
        self._page_size = page_size
        self._past_deadline = deadline

    def run(self, client: DataverseClient, tenant_id: str, table: str, columns: tuple[str, ...]) -> TableSyncResult:
        """Sync one table until done or the deadline; raises what the client raises (except an expired delta
        token, which restarts the table from scratch once)."""
        result = TableSyncResult(table, client.org_url)
        try:
            return self._run(client, tenant_id, table, columns, result)
        except DeltaTokenExpiredError:
            logger.warning(
                "Sync of %s in %s for tenant %s: the delta token expired or is invalid; full resync",
                table,
                client.org_url,
                tenant_id,
                extra=dims("sync.resync", tenant_id=tenant_id, org=client.org_url, table=table),
            )
            self._checkpoints.save(tenant_id, client.org_url, table, Checkpoint())
            result.resynced = True
            return self._run(client, tenant_id, table, columns, result)

    def _run(
        self, client: DataverseClient, tenant_id: str, table: str, columns: tuple[str, ...], result: TableSyncResult
    ) -> TableSyncResult:
        checkpoint = self._checkpoints.load(tenant_id, client.org_url, table)
        new_run = checkpoint.run_id is None
        if new_run:
            checkpoint = Checkpoint(delta_link=checkpoint.delta_link, run_id=uuid.uuid4().hex, page=0)
            resume_from = checkpoint.delta_link
        else:
            resume_from = checkpoint.next_link or checkpoint.delta_link  # resuming a run cut short
        pages = _prefetched(
            client.track_changes(table, select=columns, delta_link=resume_from, page_size=self._page_size)
        )
        for page in pages:
            number = checkpoint.page + 1
            assert checkpoint.run_id is not None
            if new_run:
                # Record the run before its first page (while the next one is fetched): a run killed after writing
                # page 1 but before checkpointing it then resumes under this run id and overwrites that page,
                # instead of writing it again under a new id and leaving an abandoned run behind in the sink.
                self._checkpoints.save(tenant_id, client.org_url, table, checkpoint)
                new_run = False
            self._sink.write_page(
                tenant_id=tenant_id,
                org_url=client.org_url,
                table=table,
                run_id=checkpoint.run_id,
                page=number,
                upserts=page.upserts,
                deletions=page.deletions,
            )
            result.rows += len(page.upserts)
            result.deletions += len(page.deletions)
            result.pages += 1
            if page.delta_link is not None:  # the run is complete: the next one starts from here
                checkpoint = Checkpoint(delta_link=page.delta_link)
                self._checkpoints.save(tenant_id, client.org_url, table, checkpoint)
                result.finished = True
                return result
            checkpoint.page, checkpoint.next_link = number, page.next_link
            self._checkpoints.save(tenant_id, client.org_url, table, checkpoint)
            if self._past_deadline():
                logger.info(
                    "Sync of %s in %s for tenant %s paused at page %d (time budget); the next run resumes",
                    table,
                    client.org_url,
                    tenant_id,
                    number,
                    extra=dims("sync.paused", tenant_id=tenant_id, org=client.org_url, table=table, page=number),
                )
                return result
        return result
