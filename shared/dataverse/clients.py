"""Dataverse clients for the worker: one per (tenant, org), sharing one pooled HTTP session and one governor
per org, so every caller of an org in this worker honours the same Retry-After window and concurrency cap; with
``shared_windows``, the windows other instances of the app were given too (shared.dataverse.throttle_board).
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urlsplit

from shared.auth.token_provider import AccessToken
from shared.dataverse.client import DataverseClient, RetryPolicy, SharedWindows, TokenSource
from shared.dataverse.governor import GovernorRegistry, OrgGovernor
from shared.dataverse.org_url import validate_org_url
from shared.errors import InvalidTenantError, S2SError
from shared.settings import Settings, is_guid

_AUTHORIZATION_URI = re.compile(r'authorization_uri="?([^",\s]+)"?', re.IGNORECASE)


class OrgDiscoveryError(S2SError):
    """The org's owning tenant could not be learned; ``message`` is safe to show to the administrator."""

    code = "org_discovery_failed"


def _pooled_session(*, keep_cookies: bool) -> Any:
    import http.cookiejar

    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    # Enough connections for the documented concurrency cap (50) across a few orgs at once.
    session.mount("https://", HTTPAdapter(pool_connections=16, pool_maxsize=64, max_retries=0))
    if not keep_cookies:
        # Dataverse pins a client to one web server with the ARRAffinity cookie; bulk work spreads better
        # without it (pad/api-limits: "remove the affinity cookie").
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


class _OneToken:
    """A token source that holds one token for one org (a signed-in person's, for the length of a flow)."""

    def __init__(self, token: AccessToken) -> None:
        self._token = token

    def get_token(self, tenant_id: str, resource: str) -> AccessToken:
        if resource.rstrip("/") != self._token.resource.rstrip("/") or tenant_id != self._token.tenant_id:
            raise ValueError("a delegated token is used only for the org and tenant it was issued for")
        return self._token


class DataverseClients:
    """Hands out clients. ``for_org`` validates the org URL for the configured cloud before anything else."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenSource,
        *,
        session: Any = None,
        bulk_session: Any = None,
        shared_windows: SharedWindows | None = None,
    ) -> None:
        self._settings = settings
        self.shared_windows = shared_windows
        self._tokens = tokens
        self._session = session
        self._bulk_session = bulk_session
        self.governors = GovernorRegistry()
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, bool], DataverseClient] = {}
        self._retry = RetryPolicy(
            max_attempts=settings.dataverse_max_attempts, budget_seconds=settings.dataverse_retry_budget_seconds
        )

    def for_org(self, tenant_id: str, org_url: str, *, bulk: bool = False) -> DataverseClient:
        """Raises InvalidOrgUrlError / InvalidTenantError before any token is requested."""
        canonical = validate_org_url(org_url, self._settings.dataverse_domain_suffixes)
        if not is_guid(tenant_id):
            raise InvalidTenantError(f"Tenant id {tenant_id[:64]!r} is not a GUID.")
        key = (tenant_id.lower(), canonical, bulk)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = DataverseClient(
                    canonical,
                    tenant_id.lower(),
                    self._tokens,
                    self._session_for(bulk),
                    self.governors.for_org(canonical),
                    timeout_seconds=self._settings.dataverse_timeout_seconds,
                    retry=self._retry,
                    shared_windows=self.shared_windows,
                )
                self._clients[key] = client
            return client

    def delegated(self, org_url: str, token: AccessToken) -> DataverseClient:
        """A client that calls the org as a signed-in person with their delegated token (onboarding checks who
        they are in the org and provisions it). Not cached: it lives as long as the one flow. Its own governor:
        service protection limits are per user (protocol.md §4), so a 429 answered to the administrator says
        nothing about the application user's calls, nor the other way round. Raises InvalidOrgUrlError."""
        canonical = validate_org_url(org_url, self._settings.dataverse_domain_suffixes)
        return DataverseClient(
            canonical,
            token.tenant_id,
            _OneToken(token),
            self._session_for(False),
            OrgGovernor(),
            timeout_seconds=self._settings.dataverse_timeout_seconds,
            retry=self._retry,
        )

    def discover_tenant(self, org_url: str) -> str:
        """The tenant that owns an org, from the bearer challenge of an unauthenticated request
        (pad/authenticate-oauth, "bearer challenge"). Raises InvalidOrgUrlError or OrgDiscoveryError."""
        import requests

        canonical = validate_org_url(org_url, self._settings.dataverse_domain_suffixes)
        try:
            response = self._session_for(False).get(
                f"{canonical}/api/data/v9.2/",
                timeout=min(self._settings.dataverse_timeout_seconds, 15.0),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise OrgDiscoveryError(
                f"{canonical} could not be reached. Check the address of your Dataverse environment."
            ) from exc
        challenge = response.headers.get("WWW-Authenticate", "")
        match = _AUTHORIZATION_URI.search(challenge)
        if response.status_code != 401 or not match:
            raise OrgDiscoveryError(f"{canonical} did not answer like a Dataverse environment.")
        authority = urlsplit(match.group(1))
        expected = urlsplit(self._settings.entra_authority_host)
        tenant = authority.path.strip("/").split("/")[0]
        if authority.netloc.lower() != expected.netloc.lower() or not is_guid(tenant):
            raise OrgDiscoveryError(f"{canonical} belongs to a tenant outside this app's cloud.")
        return tenant.lower()

    def _session_for(self, bulk: bool) -> Any:
        if bulk:
            if self._bulk_session is None:
                self._bulk_session = _pooled_session(keep_cookies=False)
            return self._bulk_session
        if self._session is None:
            self._session = _pooled_session(keep_cookies=True)
        return self._session
