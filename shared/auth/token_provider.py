"""App-only tokens per customer tenant: one long-lived MSAL app per tenant authority, bounded by an LRU.

MSAL keys its access-token cache by tenant (realm), so each tenant gets its own ConfidentialClientApplication
with authority ``{authority_host}/{tenant_id}`` (protocol.md §2). In front of MSAL sits a small per-tenant memo
so a cached token costs a dictionary lookup, and a per-tenant lock so concurrent first requests for a tenant
cause exactly one token request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from shared.auth import aadsts
from shared.auth.client_assertions import ClientAssertionSource
from shared.errors import InvalidTenantError, S2SError, TokenAcquisitionError, entra_description, summarize
from shared.settings import is_guid

logger = logging.getLogger(__name__)

# MSAL treats a cached token with under 5 minutes left as expired (protocol.md §2); the memo does the same so
# it never hands out a token MSAL would already replace.
_EXPIRY_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class AccessToken:
    """A bearer token for one tenant and resource. ``repr`` never shows the token."""

    token: str = field(repr=False)
    expires_on: float
    tenant_id: str
    resource: str
    source: str  # "identity_provider" when Entra issued it for this call, "cache" otherwise


class ConfidentialClient(Protocol):
    """The slice of msal.ConfidentialClientApplication the provider uses (fakes implement it in tests)."""

    def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]: ...


def scope_for_resource(resource: str) -> str:
    """The client-credentials scope for a resource URL: ``{resource}/.default``.

    Why strip the trailing slash: Entra reads everything before the last ``/.default`` as the resource id, so
    ``https://org.crm.dynamics.com/`` + ``/.default`` would ask for ``https://org.crm.dynamics.com/`` — a
    different identifier — through ``…//.default`` (entra: scopes-oidc, "Trailing slash and /.default").
    A Dataverse org is identified without the slash.
    """
    parts = urlsplit(resource)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise ValueError(f"resource must be an https URL without query or credentials, got {resource!r}")
    return f"{resource.rstrip('/')}/.default"


@dataclass(frozen=True)
class ServerError:
    """A 5xx answer from Entra, kept for the error report: MSAL raises on 5xx without reading the body."""

    status: int
    body: str = field(repr=False)


class MsalHttpClient:
    """The HTTP port MSAL needs (``post``/``get`` returning a requests response), with timeouts and a shared
    connection pool so thousands of tenant apps do not each open their own TLS connections.

    MSAL turns a 5xx into ``MsalServiceError("HTTP Error: 503")`` and drops Entra's AADSTS body, so the last 5xx
    answer seen on the calling thread is kept for ``take_server_error``.
    """

    def __init__(self, timeout: float) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self._timeout = timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=1)
        self._session.mount("https://", adapter)
        self._seen = threading.local()

    def post(self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return self._kept(self._session.post(url, params=params, data=data, headers=headers, **kwargs))

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return self._kept(self._session.get(url, params=params, headers=headers, **kwargs))

    def _kept(self, response: Any) -> Any:
        if response.status_code >= 500:
            self._seen.server_error = ServerError(response.status_code, response.text[:4000])
        return response

    def take_server_error(self) -> ServerError | None:
        """The last 5xx answer this thread received since the previous call (then forgotten)."""
        seen: ServerError | None = getattr(self._seen, "server_error", None)
        self._seen.server_error = None
        return seen

    def close(self) -> None:
        self._session.close()


class _TenantEntry:
    __slots__ = ("app", "lock", "tokens")

    def __init__(self) -> None:
        self.app: ConfidentialClient | None = None
        self.lock = threading.Lock()
        # scope -> (refresh_at, token as handed out from the memo)
        self.tokens: dict[str, tuple[float, AccessToken]] = {}


class TenantTokenProvider:
    """Gets app-only access tokens for (tenant, resource).

    ``get_token`` raises InvalidTenantError for a tenant id that is not a GUID, TokenAcquisitionError when Entra
    refuses or cannot be reached, and CredentialError when the app's own credential cannot be read.
    """

    def __init__(
        self,
        *,
        client_id: str,
        authority_host: str,
        assertion_source: ClientAssertionSource,
        max_tenants: int = 2000,
        http_timeout: float = 30.0,
        app_factory: Callable[[str], ConfidentialClient] | None = None,
        http_client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_id = client_id
        self._authority_host = authority_host.rstrip("/")
        self.assertion_source = assertion_source
        self._max_tenants = max_tenants
        self._http_timeout = http_timeout
        self._app_factory = app_factory or self._build_msal_app
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _TenantEntry] = OrderedDict()
        # MSAL's HTTP port (post/get); one shared pool for every tenant's app. Built on first use if not given.
        self._http_client: Any = http_client
        self.evictions = 0
        self.identity_provider_requests = 0

    @property
    def tenant_count(self) -> int:
        return len(self._entries)

    def get_token(self, tenant_id: str, resource: str) -> AccessToken:
        scope = scope_for_resource(resource)
        entry = self._entry(tenant_id)
        memo = entry.tokens.get(scope)
        if memo is not None and self._clock() < memo[0]:
            return memo[1]
        with entry.lock:
            memo = entry.tokens.get(scope)
            if memo is not None and self._clock() < memo[0]:
                return memo[1]
            return self._acquire_locked(entry, tenant_id, scope)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop a tenant's app and tokens (offboarding, or a consent found revoked)."""
        with self._lock:
            self._entries.pop(tenant_id, None)

    def _entry(self, tenant_id: str) -> _TenantEntry:
        with self._lock:
            entry = self._entries.get(tenant_id)
            if entry is not None:
                self._entries.move_to_end(tenant_id)
                return entry
            if not is_guid(tenant_id):
                # The id goes into the authority URL: only a GUID may (no path or host smuggling).
                raise InvalidTenantError(f"Tenant id {tenant_id[:64]!r} is not a GUID.")
            entry = _TenantEntry()
            self._entries[tenant_id] = entry
            if len(self._entries) > self._max_tenants:
                self._entries.popitem(last=False)
                self.evictions += 1
            return entry

    def _acquire_locked(self, entry: _TenantEntry, tenant_id: str, scope: str) -> AccessToken:
        if entry.app is None:
            entry.app = self._create_app(tenant_id)
        result = self._call(entry.app, tenant_id, scope)
        if "access_token" not in result:
            error = self._error_from(result, tenant_id)
            if not error.is_transient and aadsts.describe(error.aadsts_code, error.error).credential_rejected:
                logger.warning(
                    "Token request for tenant %s rejected our credential (AADSTS%s); re-reading it and retrying once",
                    tenant_id,
                    error.aadsts_code,
                )
                self.assertion_source.refresh_after_rejection()
                result = self._call(entry.app, tenant_id, scope)
                if "access_token" not in result:
                    raise self._error_from(result, tenant_id)
            else:
                raise error
        now = self._clock()
        expires_in = float(result.get("expires_in", 0))
        source = str(result.get("token_source", "identity_provider"))
        resource = scope.removesuffix("/.default")
        token = AccessToken(result["access_token"], now + expires_in, tenant_id, resource, source)
        if "refresh_in" in result:
            refresh_at = now + float(result["refresh_in"])
        elif expires_in > 2 * _EXPIRY_MARGIN_SECONDS:
            refresh_at = now + expires_in - _EXPIRY_MARGIN_SECONDS
        else:
            refresh_at = now + expires_in / 2
        entry.tokens[scope] = (
            refresh_at,
            AccessToken(token.token, token.expires_on, tenant_id, resource, "cache"),
        )
        if source == "identity_provider":
            self.identity_provider_requests += 1
            logger.info("Token acquired for tenant %s, resource %s, expires in %d s", tenant_id, resource, expires_in)
        return token

    def _call(self, app: ConfidentialClient, tenant_id: str, scope: str) -> Mapping[str, Any]:
        import requests
        from msal.exceptions import MsalServiceError

        self._take_server_error()  # forget a 5xx this thread saw for an earlier request
        try:
            return app.acquire_token_for_client([scope])
        except S2SError:
            raise
        except requests.RequestException as exc:
            raise self._unreachable(tenant_id, exc) from exc
        except MsalServiceError as exc:
            raise self._server_error(tenant_id, exc) from exc

    def _create_app(self, tenant_id: str) -> ConfidentialClient:
        import requests
        from msal.exceptions import MsalServiceError

        self._take_server_error()
        try:
            return self._app_factory(tenant_id)
        except S2SError:
            raise
        except requests.RequestException as exc:
            raise self._unreachable(tenant_id, exc) from exc
        except MsalServiceError as exc:
            # Discovery (the tenant's OpenID configuration) answered 5xx.
            raise self._server_error(tenant_id, exc) from exc
        except ValueError as exc:
            # MSAL's constructor reads the tenant's OpenID configuration and raises ValueError when Entra
            # answers 400 for it, which is what an unknown tenant (AADSTS90002) gets.
            info = aadsts.CATALOG[90002]
            raise TokenAcquisitionError(
                f"Tenant {tenant_id} was not found by Entra ID (its OpenID configuration could not be read).",
                tenant_id=tenant_id,
                error="invalid_request",
                aadsts_code=90002,
                category=info.category,
                meaning=info.meaning,
                fix=info.fix,
            ) from exc

    def _take_server_error(self) -> ServerError | None:
        take = getattr(self._http_client, "take_server_error", None)
        return take() if callable(take) else None

    @staticmethod
    def _unreachable(tenant_id: str, exc: Exception) -> TokenAcquisitionError:
        import requests

        what = "did not answer in time" if isinstance(exc, requests.Timeout) else "could not be reached"
        return _condition_error(
            tenant_id, aadsts.ENTRA_UNREACHABLE, f"Entra ID {what} for tenant {tenant_id} ({type(exc).__name__})."
        )

    def _server_error(self, tenant_id: str, exc: Exception) -> TokenAcquisitionError:
        """A 5xx from Entra: transient, whatever its body says. Its AADSTS code and correlation id are kept when
        the answer came over the network just now; MSAL replays a recent 5xx from its own cache until the
        answer's Retry-After (5 s without one) has passed, and then only the status is known."""
        seen = self._take_server_error()
        match = re.search(r"\b(5\d\d)\b", str(exc))
        status = seen.status if seen is not None else (int(match.group(1)) if match else None)
        body: Any = None
        if seen is not None:
            with contextlib.suppress(ValueError):
                body = json.loads(seen.body)
        if isinstance(body, dict) and body.get("error"):
            parsed = self._error_from(body, tenant_id)
            return TokenAcquisitionError(
                f"Entra ID could not issue a token for tenant {tenant_id} (HTTP {status}): "
                + parsed.message.partition(f"{tenant_id}: ")[2],
                tenant_id=tenant_id,
                error=parsed.error,
                aadsts_code=parsed.aadsts_code,
                category=aadsts.SERVICE_UNAVAILABLE if parsed.category == aadsts.UNKNOWN else parsed.category,
                meaning=parsed.meaning,
                fix=parsed.fix,
                correlation_id=parsed.correlation_id,
                trace_id=parsed.trace_id,
                is_transient=True,
                description=parsed.description,
            )
        recent = "" if seen is not None else " recently; new requests for this tenant wait until its Retry-After"
        return _condition_error(
            tenant_id,
            aadsts.ENTRA_UNAVAILABLE,
            f"Entra ID answered HTTP {status or '5xx'} for tenant {tenant_id}{recent}.",
        )

    def _error_from(self, result: Mapping[str, Any], tenant_id: str) -> TokenAcquisitionError:
        code = aadsts.code_of(result)
        description = str(result.get("error_description") or "")
        error = result.get("error")
        info = aadsts.describe(code, error)
        whole = entra_description(description)
        return TokenAcquisitionError(
            # Whole sentences only: a description cut mid-sentence can say the opposite of what Entra meant.
            f"Entra ID refused a token for tenant {tenant_id}: {summarize(whole) or error}",
            description=whole,
            tenant_id=tenant_id,
            error=error,
            aadsts_code=code,
            category=info.category,
            meaning=info.meaning,
            fix=info.fix,
            correlation_id=result.get("correlation_id"),
            trace_id=result.get("trace_id"),
            is_transient=info.is_transient,
        )

    def _build_msal_app(self, tenant_id: str) -> ConfidentialClient:
        import msal

        with self._lock:
            if self._http_client is None:
                self._http_client = MsalHttpClient(self._http_timeout)
            http_client = self._http_client
        app: ConfidentialClient = msal.ConfidentialClientApplication(
            self._client_id,
            client_credential={"client_assertion": self.assertion_source},
            authority=f"{self._authority_host}/{tenant_id}",
            # The authority host comes from settings (a known cloud), so instance discovery — a call to the
            # public cloud's discovery endpoint — adds a round trip and nothing else.
            instance_discovery=False,
            http_client=http_client,
        )
        return app


def _condition_error(tenant_id: str, condition: str, message: str) -> TokenAcquisitionError:
    """A transient failure that has no AADSTS code of its own, explained by one of ``aadsts.CONDITIONS``."""
    info = aadsts.CONDITIONS[condition]
    return TokenAcquisitionError(
        message,
        tenant_id=tenant_id,
        error=condition,
        category=info.category,
        meaning=info.meaning,
        fix=info.fix,
        is_transient=True,
    )
