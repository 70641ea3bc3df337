"""Fault injection for the Entra ID, Key Vault and Dataverse stand-ins: answer a chosen status, or answer late.

A fault is armed on the state (`SandboxState.inject_fault`) and consulted by the service before it handles a
request normally. It either answers at once with the service's documented error body for `status` — Entra's
OAuth/AADSTS JSON (`error`, `error_description`, `error_codes`, `trace_id`, `correlation_id`, …), Key Vault's
`{"error": {"code": …, "message": …}}` — or, with `delay`, sleeps first and then answers (with `status`, or
normally when `status` is None: a slow but working service, for client timeouts). `count` limits how many
requests it hits; None keeps it armed until `clear_faults`. Entra faults can be limited to one tenant's
authority and to one kind of endpoint ("token", "discovery"). Dataverse faults can be limited to one org (its
host) and to requests starting with "<METHOD> <resource>" (e.g. "POST systemusers": one step of a provisioning run
fails, the rest of the org works). Every hit is counted as `fault_injected`.

"Unreachable" (connection refused) needs no fault: point the client at a closed loopback port.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass

SERVICES = ("entra", "keyvault", "dataverse")
ENTRA_ENDPOINTS = ("token", "discovery")
_DATAVERSE_REQUEST = re.compile(r"(GET|POST|PATCH|PUT|DELETE) [^\s/][^\s]*")

# What Entra answers on its own failures (protocol §2; e.g. AADSTS90033 with HTTP 503 and temporarily_unavailable).
ENTRA_SERVER_ERRORS: dict[int, tuple[str, int, str]] = {
    500: ("server_error", 50000, "There was an error issuing a token or an issue with our sign-in service."),
    503: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
}
_ENTRA_DEFAULT = ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again.")

KEY_VAULT_ERRORS: dict[int, tuple[str, str]] = {
    429: ("Throttled", "Request was not allowed because of throttling. Please retry after some time."),
    500: ("InternalServerError", "The service encountered an internal error. Please try again later."),
    502: ("BadGateway", "The service is temporarily unavailable. Please try again later."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please try again later."),
    504: ("GatewayTimeout", "The service did not answer in time. Please try again later."),
}


def entra_error(status: int) -> tuple[str, int, str]:
    """(OAuth error, AADSTS code, message) Entra pairs with a server-side failure `status`."""
    return ENTRA_SERVER_ERRORS.get(status, _ENTRA_DEFAULT)


def key_vault_error(status: int) -> tuple[str, str]:
    """(error code, message) of Key Vault's error body for `status`."""
    return KEY_VAULT_ERRORS.get(status, ("InternalServerError", f"The service answered {status}."))


@dataclass
class Fault:
    fault_id: str
    service: str
    status: int | None
    delay: float | None
    remaining: int | None  # None: until cleared
    tenant: str | None
    endpoint: str | None
    retry_after: int | None
    org: str | None = None  # Dataverse: the org's host
    skip: int = 0  # matching requests still to let through before it hits
    hits: int = 0


class FaultInjector:
    """Armed faults, shared by the services of one sandbox state. Thread-safe."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._faults: list[Fault] = []

    def inject(
        self,
        service: str,
        *,
        status: int | None = 503,
        delay: float | None = None,
        count: int | None = None,
        tenant: str | None = None,
        endpoint: str | None = None,
        retry_after: int | None = None,
        org: str | None = None,
        after: int = 0,
    ) -> str:
        """Arm a fault; returns its id.

        `status` answers with the service's documented error body (Entra: AADSTS JSON, 503 → AADSTS90033
        temporarily_unavailable, 500 → AADSTS50000 server_error; Key Vault: `{"error": {"code", "message"}}`);
        `delay` sleeps that many seconds first (with `status=None` the request is then served normally: a slow
        service, for client timeouts). `count` requests are hit (None: until cleared). Entra only: `tenant`
        limits the fault to that tenant's authority, `endpoint` to "token" or "discovery" requests. Dataverse only:
        `org` limits it to one org (its host, or its URL), `endpoint` to requests that start with "<METHOD>
        <resource>" ("POST systemusers", "POST $batch"; the resource is the path after /api/data/v9.x/).
        `after` lets that many matching requests through first (the third of a series fails: a run cut half-way).
        `retry_after` adds a Retry-After header (seconds) to the error. Raises ValueError for anything else.
        """
        if tenant is not None:
            tenant = str(uuid.UUID(tenant))  # canonical lower-case GUID text; ValueError for anything else
        if service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}, not {service!r}")
        if status is None and not delay:
            raise ValueError("a fault needs a status, a delay, or both")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), not {status}")
        if delay is not None and not 0 < delay <= 60:
            raise ValueError("delay must be between 0 and 60 seconds")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None: until cleared)")
        if service == "keyvault" and (tenant is not None or endpoint is not None):
            raise ValueError("Key Vault faults take no tenant or endpoint: the vault serves one tenant")
        if service == "dataverse":
            if tenant is not None:
                raise ValueError("Dataverse faults take an org, not a tenant")
            if endpoint is not None and not _DATAVERSE_REQUEST.fullmatch(endpoint):
                raise ValueError(f"a Dataverse endpoint is '<METHOD> <resource>', not {endpoint!r}")
        elif org is not None:
            raise ValueError("only Dataverse faults take an org")
        elif endpoint is not None and endpoint not in ENTRA_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENTRA_ENDPOINTS}, not {endpoint!r}")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after cannot be negative")
        if after < 0:
            raise ValueError("after cannot be negative")
        fault = Fault(
            fault_id=uuid.uuid4().hex[:12],
            service=service,
            status=status,
            delay=delay,
            remaining=count,
            tenant=tenant.lower() if tenant else None,
            endpoint=endpoint,
            retry_after=retry_after,
            org=org.lower().removeprefix("https://").rstrip("/") if org else None,
            skip=after,
        )
        with self._lock:
            self._faults.append(fault)
        return fault.fault_id

    def has(self, service: str) -> bool:
        """Whether any fault is armed for the service (lets the services skip the matching work otherwise)."""
        with self._lock:
            return any(f.service == service for f in self._faults)

    def take(
        self, service: str, *, tenant: str | None = None, endpoint: str | None = None, org: str | None = None
    ) -> Fault | None:
        """The first armed fault matching this request, spending one of its hits; None when none matches. A
        Dataverse fault's endpoint matches a request that starts with it ("POST systemusers" matches "POST
        systemusers" and "POST systemusers(<id>)/…")."""
        with self._lock:
            for fault in self._faults:
                if fault.service != service:
                    continue
                if fault.tenant is not None and fault.tenant != (tenant or "").lower():
                    continue
                if fault.org is not None and fault.org != (org or "").lower():
                    continue
                if fault.endpoint is not None:
                    wanted = endpoint or ""
                    if not (wanted.startswith(fault.endpoint) if service == "dataverse" else wanted == fault.endpoint):
                        continue
                if fault.skip > 0:  # this request goes through (or to the next armed fault)
                    fault.skip -= 1
                    continue
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def clear(self, service: str | None = None, fault_id: str | None = None) -> int:
        """Disarm faults (all, one service's, or one by id); returns how many were armed."""
        with self._lock:
            kept = [
                f
                for f in self._faults
                if not ((service is None or f.service == service) and (fault_id is None or f.fault_id == fault_id))
            ]
            removed = len(self._faults) - len(kept)
            self._faults = kept
            return removed

    def armed(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)
