"""Which tenant and organisation id an org host name belongs to, as verified by WhoAmI.

The webhook receiver gets an org host name (``x-ms-dynamics-organization``) and an ``OrganizationId`` and must
answer fast: one point read in ``orgindex`` instead of a scan of the tenant registry.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ORG_INDEX_TABLE = "orgindex"
_PARTITION = "org"


@dataclass(frozen=True)
class OrgEntry:
    host: str
    org_url: str
    tenant_id: str
    organization_id: str


class OrgIndex:
    def __init__(self, table: Any) -> None:
        self._table = table

    def create_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def record(self, org_url: str, tenant_id: str, organization_id: str) -> None:
        host = (urlsplit(org_url).hostname or "").lower()
        self._table.upsert_entity(
            {
                "PartitionKey": _PARTITION,
                "RowKey": host,
                "OrgUrl": org_url,
                "TenantId": tenant_id.lower(),
                "OrganizationId": organization_id.lower(),
            }
        )

    def find(self, host: str) -> OrgEntry | None:
        from azure.core.exceptions import ResourceNotFoundError

        key = host.strip().lower().rstrip(".")
        if not key or len(key) > 255 or "/" in key or "'" in key:
            return None
        try:
            entity = self._table.get_entity(_PARTITION, key)
        except ResourceNotFoundError:
            return None
        return OrgEntry(key, entity["OrgUrl"], entity["TenantId"], entity["OrganizationId"])
