"""Where synced changes go: a small interface, and the default that writes NDJSON blobs a user can read.

To add another sink (a database, Event Hubs, a partner API), implement ``ChangeSink.write_page``; it must be
idempotent for the same (tenant, org, table, run, page), because a run killed between writing a page and
checkpointing it writes that page again on resume.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Protocol
from urllib.parse import urlsplit


class ChangeSink(Protocol):
    def write_page(
        self,
        *,
        tenant_id: str,
        org_url: str,
        table: str,
        run_id: str,
        page: int,
        upserts: list[dict[str, Any]],
        deletions: list[str],
    ) -> None: ...


class BlobNdjsonSink:
    """One blob per page: ``{tenant}/{org host}/{table}/{run id}/{page:06d}.ndjson``, one JSON object per line,
    ``{"op": "upsert", "row": {...}}`` or ``{"op": "delete", "id": "..."}``. A page written twice overwrites itself,
    so a resumed run never duplicates rows in the output."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def create_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()

    @staticmethod
    def blob_name(tenant_id: str, org_url: str, table: str, run_id: str, page: int) -> str:
        host = urlsplit(org_url).hostname or "org"
        return f"{tenant_id}/{host}/{table}/{run_id}/{page:06d}.ndjson"

    def write_page(
        self,
        *,
        tenant_id: str,
        org_url: str,
        table: str,
        run_id: str,
        page: int,
        upserts: list[dict[str, Any]],
        deletions: list[str],
    ) -> None:
        lines = [json.dumps({"op": "upsert", "row": row}, separators=(",", ":")) for row in upserts]
        lines += [json.dumps({"op": "delete", "id": row_id}) for row_id in deletions]
        data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        self._container.upload_blob(self.blob_name(tenant_id, org_url, table, run_id, page), data, overwrite=True)
