"""The unit of a fanned-out sweep and its queue message.

A sync unit is one (tenant, organisation): the token is per tenant, the Dataverse limits and the governor per org,
and the org's tables share one client, so a unit keeps one org's request chain on one worker at a time. A health
unit is one tenant (its verification covers every org). One message carries one unit, or — from the timer — a slice
of up to ``SLICE_SIZE`` units that a worker expands into one message each, so the timer sends a hundred messages
for 10,000 units instead of 10,000 (a queue takes about 2,000 messages a second: azure-docs
``storage/queues/scalability-targets.md``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from shared.errors import S2SError

SWEEP_QUEUE = "sweep-units"
# The name the Functions host gives the queue's poison queue (``<queue>-poison``); the worker also writes there
# itself, with the reason, on a unit's last attempt.
SWEEP_POISON_QUEUE = "sweep-units-poison"
SLICE_SIZE = 100  # ~100 bytes a unit: a slice stays far below the 64 KiB message limit once base64-encoded
JOBS = ("sync", "health")
_TENANT = re.compile(r"[0-9a-fA-F-]{1,64}")
RUN_ID = re.compile(r"[a-z]{1,12}-[0-9TZ]{16}-[0-9a-f]{6}")


class InvalidUnitMessageError(S2SError):
    code = "invalid_unit_message"


@dataclass(frozen=True)
class SweepUnit:
    job: str
    run_id: str
    tenant_id: str
    org_url: str = ""  # sync: the org; health: empty (the tenant's every org)
    segment: int = 1  # 1, then 2, 3, … for each continuation after the time budget
    rows: int = 0  # rows synced by the earlier segments
    throttle_waits: int = 0  # Retry-After waits of the earlier segments
    deferrals: int = 0  # times this unit was put back because another worker held its lease

    @property
    def key(self) -> str:
        """``<tenant>|<org host>`` (``*`` for a tenant-wide unit): unique per job, usable as a table RowKey."""
        host = urlsplit(self.org_url).hostname if self.org_url else None
        return f"{self.tenant_id}|{host or '*'}"

    def continued(self, rows: int, throttle_waits: int) -> SweepUnit:
        return replace(
            self,
            segment=self.segment + 1,
            rows=self.rows + rows,
            throttle_waits=self.throttle_waits + throttle_waits,
            deferrals=0,
        )

    def deferred(self) -> SweepUnit:
        return replace(self, deferrals=self.deferrals + 1)


@dataclass(frozen=True)
class UnitResult:
    """What one segment of a unit did: ``finished`` False when the time budget paused it (a continuation follows)."""

    ok: bool = True
    rows: int = 0
    throttle_waits: int = 0
    finished: bool = True
    detail: str = ""


def encode_units(units: list[SweepUnit], *, is_slice: bool = False) -> str:
    """One message for units of one job and run: ``{"v":1,"job":…,"run":…,"units":[[tenant, org, segment, rows,
    waits, deferrals], …]}``, with ``"slice":1`` when it is the timer's slice to expand."""
    if not units:
        raise ValueError("no units to encode")
    job, run_id = units[0].job, units[0].run_id
    if any(u.job != job or u.run_id != run_id for u in units):
        raise ValueError("a message carries units of one job and run")
    rows = [[u.tenant_id, u.org_url, u.segment, u.rows, u.throttle_waits, u.deferrals] for u in units]
    document: dict[str, object] = {"v": 1, "job": job, "run": run_id, "units": rows}
    if is_slice:
        document["slice"] = 1
    return json.dumps(document, separators=(",", ":"))


def decode_units(text: str) -> tuple[list[SweepUnit], bool]:
    """The units of a message, and whether it is a slice to expand. Raises InvalidUnitMessageError naming what is
    wrong (such a message can never succeed: it goes to the poison queue at once)."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidUnitMessageError("The message is not JSON.") from exc
    if not isinstance(document, dict) or document.get("v") != 1:
        raise InvalidUnitMessageError("The message is not a version-1 sweep message.")
    job, run_id, rows = document.get("job"), document.get("run"), document.get("units")
    if job not in JOBS:
        raise InvalidUnitMessageError(f"Unknown job {str(job)[:20]!r}.")
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise InvalidUnitMessageError("The run id is missing or malformed.")
    is_slice = document.get("slice") == 1
    if not isinstance(rows, list) or not 1 <= len(rows) <= (SLICE_SIZE if is_slice else 1):
        raise InvalidUnitMessageError(f"A slice carries 1 to {SLICE_SIZE} units, a unit message one.")
    units = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 6):
            raise InvalidUnitMessageError("A unit is not [tenant, org, segment, rows, waits, deferrals].")
        tenant_id, org_url, *numbers = row
        if not isinstance(tenant_id, str) or not _TENANT.fullmatch(tenant_id):
            raise InvalidUnitMessageError("A unit's tenant id is malformed.")
        if not isinstance(org_url, str) or (org_url and not org_url.startswith("https://")) or len(org_url) > 300:
            raise InvalidUnitMessageError("A unit's org URL is malformed.")
        if job == "sync" and not org_url:
            raise InvalidUnitMessageError("A sync unit names its org.")
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 10**12 for n in numbers):
            raise InvalidUnitMessageError("A unit's counters are not non-negative integers.")
        segment, synced, waits, deferrals = numbers
        units.append(SweepUnit(job, run_id, tenant_id, org_url, max(1, segment), synced, waits, deferrals))
    return units, is_slice
