"""The Entra ID stand-in's directory: tenants, their users (and the user tokens issued for them), app
registrations, service principals (consent), user-assigned managed identities (Entra service principals too)
and the client assertions already redeemed. Every method takes the directory's one lock.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from sandbox.counters import Counters
from sandbox.entra.issuers import TENANT_TEMPLATE, TOKEN_VERSIONS, issuer
from sandbox.entra.signing import SigningKeyRing
from sandbox.entra.user_tokens import (
    SandboxUser,
    default_upn,
    id_token_claims,
    pairwise_subject,
    user_token_claims,
)
from sandbox.identifiers import SandboxLookupError, is_guid, normalize_guid
from sandbox.net.pki import certificate_thumbprints

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"

# Directory role template ids (the `wids` claim), the same in every tenant (entra/permissions-reference.md).
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"
CLOUD_APPLICATION_ADMINISTRATOR = "158c047a-c907-4556-b7ef-446551a6b5f7"
APPLICATION_ADMINISTRATOR = "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3"
POWER_PLATFORM_ADMINISTRATOR = "11648597-926c-4cf3-9c36-bcebb0ba8dcc"
DYNAMICS_365_ADMINISTRATOR = "44367163-eba1-44c3-98af-f5787879f96a"
# Who may grant tenant-wide consent to a delegated permission of an API other than Microsoft Graph
# (entra/grant-admin-consent.md, "Prerequisites").
CONSENT_ADMIN_ROLES = frozenset(
    {GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR, CLOUD_APPLICATION_ADMINISTRATOR, APPLICATION_ADMINISTRATOR}
)


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    display_name: str
    domains: tuple[str, ...]


@dataclass(frozen=True)
class RegisteredCertificate:
    """A public certificate in an app's keyCredentials."""

    certificate: x509.Certificate
    sha1_thumbprint_hex: str
    sha1_x5t: str
    sha256_x5t: str

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True)
class FederatedCredential:
    issuer: str
    subject: str
    audiences: tuple[str, ...]


@dataclass(frozen=True)
class Application:
    client_id: str
    home_tenant: str
    display_name: str
    enabled: bool = True
    certificates: tuple[RegisteredCertificate, ...] = ()
    federated_credentials: tuple[FederatedCredential, ...] = ()
    redirect_uris: tuple[str, ...] = ()  # the app registration's Web redirect URIs, matched exactly
    optional_claims: tuple[str, ...] = ()  # ID token optional claims the registration asks for, e.g. "wids"


@dataclass(frozen=True)
class ServicePrincipal:
    tenant_id: str
    client_id: str
    object_id: str
    consented: bool


@dataclass(frozen=True)
class ManagedIdentity:
    client_id: str
    principal_id: str
    tenant_id: str
    resource_id: str = ""


_REDIRECT_URI_MAX = 256
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_redirect_uri(uri: str) -> None:
    """Entra's rules for a Web redirect URI (ValueError when broken); the admin-consent stand-in relies on them
    to build the Location header safely.
    """
    if len(uri) > _REDIRECT_URI_MAX:
        raise ValueError(f"redirect URI longer than {_REDIRECT_URI_MAX} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
        raise ValueError("redirect URI contains whitespace or control characters")
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"redirect URI must be an absolute http(s) URI: {uri!r}")
    if parts.fragment or "#" in uri:
        raise ValueError("redirect URI must not contain a fragment")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise ValueError("http:// redirect URIs are allowed only for localhost and 127.0.0.1")


class Directory:
    """Tenants, users, apps, service principals and managed identities. Ids are lower-case GUID strings;
    creators return the new id. Admin methods raise SandboxLookupError for an unknown tenant, app or service
    principal and ValueError for an id that is not a GUID.
    """

    def __init__(self, counters: Counters, signing_keys: SigningKeyRing, home_tenant_name: str = "Contoso") -> None:
        self._lock = threading.RLock()
        self._counters = counters
        self.signing_keys = signing_keys
        self.subscription_id = str(uuid.uuid4())
        self.authority_host: str | None = None  # set by Sandbox.start(); token issuers are built from it
        # MSAL reuses one signed assertion for up to 9 minutes (protocol §2), so a jti is only refused
        # once it has already bought a token for the same tenant and resource. Tests may switch it off.
        self.reject_assertion_replay = True
        self._tenants: dict[str, Tenant] = {}
        self._users: dict[tuple[str, str], SandboxUser] = {}  # by (tenant id, object id)
        self._pairwise_secret = secrets.token_bytes(32)  # keys the pairwise `sub` of user tokens
        # The client a user token names (azp / appid) when the caller names none: one per sandbox, like a
        # single-page app that signs users in to our API.
        self.default_user_client_id = str(uuid.uuid4())
        self._apps: dict[str, Application] = {}
        self._service_principals: dict[tuple[str, str], ServicePrincipal] = {}
        self._managed_identities: list[ManagedIdentity] = []
        self._redeemed: dict[tuple[str, str, str], float] = {}
        self.home_tenant_id = self.add_tenant(display_name=home_tenant_name)

    def rotate_signing_key(self) -> str:
        """Publish a new current signing key; returns its kid. Previous keys stay in the JWKS."""
        return self.signing_keys.rotate().kid

    def add_tenant_signing_key(self, tenant_id: str) -> str:
        """Publish a key that belongs to one tenant; returns its kid. The JWKS (at common and at that tenant's
        endpoint only) lists it with `"issuer": "{authority_host}/<tenant id>/v2.0"`, so a validator must accept
        it for that tenant's tokens alone (protocol §6). It never becomes current: `issue_user_token(...,
        signing_kid=kid)` signs with it. Raises SandboxLookupError for an unknown tenant.
        """
        tid = normalize_guid(tenant_id)
        with self._lock:
            self._require_tenant(tid)
        return self.signing_keys.add_tenant_key(tid).kid

    def token_issuer_template(self, version: str = "2.0") -> str:
        """`{authority_host}/{tenantid}/v2.0` ("2.0") or `{authority_host}/{tenantid}/` ("1.0"): substitute a
        token's `tid` to get the `iss` it must carry. Raises RuntimeError before Sandbox.start(), ValueError for
        another version.
        """
        return issuer(self._require_authority_host(), TENANT_TEMPLATE, version)

    def signing_keys_issuer_template(self) -> str:
        """The `issuer` of every shared key in the common JWKS: `{authority_host}/{tenantid}/v2.0`. Keys from
        `add_tenant_signing_key` carry their tenant's GUID in its place. Raises RuntimeError before start().
        """
        return self.token_issuer_template("2.0")

    def _require_authority_host(self) -> str:
        if not self.authority_host:
            raise RuntimeError("the sandbox is not started: token issuers need its authority host")
        return self.authority_host

    # -- tenants --------------------------------------------------------------------------------

    def add_tenant(self, tenant_id: str | None = None, display_name: str = "") -> str:
        tid = normalize_guid(tenant_id) if tenant_id else str(uuid.uuid4())
        slug = re.sub(r"[^a-z0-9]", "", display_name.lower()) or f"tenant{tid[:8]}"
        with self._lock:
            self._tenants[tid] = Tenant(tid, display_name or tid, (f"{slug}.onmicrosoft.com",))
        return tid

    def remove_tenant(self, tenant_id: str) -> None:
        """Delete the tenant and its service principals; token requests to it then fail with AADSTS90002."""
        tid = normalize_guid(tenant_id)
        with self._lock:
            self._require_tenant(tid)
            del self._tenants[tid]
            for key in [key for key in self._service_principals if key[0] == tid]:
                del self._service_principals[key]
            for key in [key for key in self._users if key[0] == tid]:
                del self._users[key]

    def find_tenant(self, name: str) -> Tenant | None:
        """The tenant addressed by a GUID or one of its domains, as in an authority URL path."""
        with self._lock:
            if is_guid(name):
                return self._tenants.get(normalize_guid(name))
            lowered = name.lower()
            return next((t for t in self._tenants.values() if lowered in t.domains), None)

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, by display name (the admin-consent page offers them at /common and /organizations)."""
        with self._lock:
            return sorted(self._tenants.values(), key=lambda t: (t.display_name.lower(), t.tenant_id))

    def get_tenant(self, tenant_id: str) -> Tenant:
        with self._lock:
            return self._require_tenant(normalize_guid(tenant_id))

    def _require_tenant(self, tid: str) -> Tenant:
        tenant = self._tenants.get(tid)
        if tenant is None:
            raise SandboxLookupError(f"no tenant {tid}")
        return tenant

    # -- users and their tokens (protocol §6) ---------------------------------------------------

    def add_user(
        self,
        tenant_id: str,
        *,
        display_name: str,
        upn: str | None = None,
        object_id: str | None = None,
        directory_roles: tuple[str, ...] = (),
    ) -> SandboxUser:
        """A user of the tenant's directory who can sign in to our app. `upn` defaults to
        `<display.name>@<the tenant's first domain>`, `object_id` to a new GUID; `directory_roles` holds role
        template ids (e.g. GLOBAL_ADMINISTRATOR) — who may consent for the organisation, and the `wids` claim.

        Raises SandboxLookupError for an unknown tenant and ValueError for an object id that is not a GUID or
        already names a user of the tenant.
        """
        tid = normalize_guid(tenant_id)
        oid = normalize_guid(object_id) if object_id else str(uuid.uuid4())
        with self._lock:
            tenant = self._require_tenant(tid)
            if (tid, oid) in self._users:
                raise ValueError(f"tenant {tid} already has a user {oid}")
            if isinstance(directory_roles, str):
                raise ValueError("directory_roles is a tuple of role template ids, not a string")
            user = SandboxUser(
                oid,
                tid,
                display_name,
                upn or default_upn(display_name, oid, tenant.domains[0]),
                tuple(normalize_guid(role) for role in directory_roles),
            )
            self._users[(tid, oid)] = user
        return user

    def list_users(self, tenant_id: str) -> list[SandboxUser]:
        """The tenant's users by display name (the sign-in page offers them); [] for an unknown tenant."""
        tid = normalize_guid(tenant_id)
        with self._lock:
            users = [user for (owner, _), user in self._users.items() if owner == tid]
        return sorted(users, key=lambda u: (u.display_name.lower(), u.object_id))

    def get_user(self, tenant_id: str, object_id: str) -> SandboxUser:
        """Raises SandboxLookupError when the tenant has no such user."""
        key = (normalize_guid(tenant_id), normalize_guid(object_id))
        with self._lock:
            user = self._users.get(key)
        if user is None:
            raise SandboxLookupError(f"no user {key[1]} in tenant {key[0]}")
        return user

    def issue_user_token(
        self,
        user: SandboxUser,
        *,
        audience: str,
        scopes: tuple[str, ...] = ("access_as_user",),
        roles: tuple[str, ...] = (),
        version: str = "2.0",
        lifetime_seconds: int = 3600,
        not_before_offset: int = 0,
        client_id: str | None = None,
        signing_kid: str | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """A delegated access token for `user`, as Entra issues it for our API (claims: sandbox.entra.user_tokens).

        RS256, headers `typ`/`kid`/`x5t`, signed by the current key or by the published key `signing_kid`
        (e.g. one from `add_tenant_signing_key`). `iat` is now, `nbf` now + `not_before_offset`, `exp` now +
        `lifetime_seconds` (zero or less gives an expired token). The client (`azp` / `appid`) is `client_id` or
        `default_user_client_id`. `extra_claims` is applied last: a value replaces the claim, None removes it.

        Raises RuntimeError before Sandbox.start(); SandboxLookupError when the user (or its tenant) is gone or
        no published key has `signing_kid`; ValueError for another version, an empty audience, a string
        instead of a tuple of scopes or roles, or a client id that is not a GUID.
        """
        if version not in TOKEN_VERSIONS:
            raise ValueError(f"version must be one of {TOKEN_VERSIONS}, not {version!r}")
        if not audience:
            raise ValueError("audience must name our API (its client id or App ID URI)")
        if isinstance(scopes, str) or isinstance(roles, str):
            raise ValueError("scopes and roles are tuples of names, not a string")
        host = self._require_authority_host()
        client = normalize_guid(client_id) if client_id else self.default_user_client_id
        with self._lock:
            registered = self._users.get((user.tenant_id, user.object_id))
            if registered is None or user.tenant_id not in self._tenants:
                raise SandboxLookupError(f"no user {user.object_id} in tenant {user.tenant_id}")
        key = self.signing_keys.current if signing_kid is None else self.signing_keys.find(signing_kid)
        if key is None:
            raise SandboxLookupError(f"no published signing key has kid {signing_kid!r}")
        now = int(time.time())
        claims = user_token_claims(
            registered,
            issuer=issuer(host, registered.tenant_id, version),
            version=version,
            audience=audience,
            subject=pairwise_subject(self._pairwise_secret, registered, audience),
            client_id=client,
            scopes=tuple(scopes),
            roles=tuple(roles),
            issued_at=now,
            not_before=now + not_before_offset,
            expires=now + lifetime_seconds,
        )
        for name, value in (extra_claims or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        self._counters.bump("user_token", tenant=registered.tenant_id, version=version)
        return self.signing_keys.sign(claims, key=key)

    def issue_sign_in_tokens(
        self, user: SandboxUser, *, client_id: str, resource: str, scope: str, nonce: str | None
    ) -> tuple[str, str]:
        """What the token endpoint answers to a redeemed authorization code: a v1 delegated access token for
        `resource` (as Dataverse receives one, `scp` = `scope`) and a v2 ID token for `client_id`. Raises
        SandboxLookupError when the user (or its tenant) is gone, RuntimeError before Sandbox.start().
        """
        host = self._require_authority_host()
        access = self.issue_user_token(
            user,
            audience=resource,
            scopes=(scope,),
            version="1.0",
            client_id=client_id,
            extra_claims={"appidacr": "2", "idtyp": "user"},  # a confidential client with a certificate
        )
        app = self.find_application(client_id)
        now = int(time.time())
        claims = id_token_claims(
            user,
            issuer=issuer(host, user.tenant_id, "2.0"),
            client_id=client_id,
            subject=pairwise_subject(self._pairwise_secret, user, client_id),
            nonce=nonce,
            issued_at=now,
            expires=now + 3600,
            include_wids=app is not None and "wids" in app.optional_claims,
        )
        self._counters.bump("id_token", tenant=user.tenant_id, client_id=client_id)
        return access, self.signing_keys.sign(claims)

    # -- applications ---------------------------------------------------------------------------

    def register_application(
        self, client_id: str | None = None, home_tenant: str | None = None, display_name: str = ""
    ) -> str:
        """Register a multi-tenant app. Like the portal, this also creates its service principal (with
        consent) in the home tenant.
        """
        cid = normalize_guid(client_id) if client_id else str(uuid.uuid4())
        home = normalize_guid(home_tenant) if home_tenant else self.home_tenant_id
        with self._lock:
            self._require_tenant(home)
            self._apps[cid] = Application(cid, home, display_name or f"app-{cid[:8]}")
            self.grant_consent(home, cid)
        return cid

    def get_application(self, client_id: str) -> Application:
        with self._lock:
            return self._require_app(client_id)

    def find_application(self, client_id: str) -> Application | None:
        with self._lock:
            return self._apps.get(client_id.lower())

    def _require_app(self, client_id: str) -> Application:
        app = self._apps.get(client_id.lower())
        if app is None:
            raise SandboxLookupError(f"no application {client_id}")
        return app

    def _update_app(self, client_id: str, **changes: object) -> None:
        with self._lock:
            app = self._require_app(client_id)
            self._apps[app.client_id] = replace(app, **changes)  # type: ignore[arg-type]

    def add_application_certificate(self, client_id: str, cert_pem: str) -> None:
        """Add a public certificate to the app's keyCredentials (the first certificate in `cert_pem`)."""
        certificate = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        prints = certificate_thumbprints(certificate)
        registered = RegisteredCertificate(certificate, prints.sha1_hex, prints.sha1_x5t, prints.sha256_x5t)
        with self._lock:
            app = self._require_app(client_id)
            kept = tuple(c for c in app.certificates if c.sha256_x5t != registered.sha256_x5t)
            self._update_app(client_id, certificates=(*kept, registered))

    def remove_application_certificate(self, client_id: str, cert_pem: str) -> None:
        certificate = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        sha256_x5t = certificate_thumbprints(certificate).sha256_x5t
        with self._lock:
            app = self._require_app(client_id)
            kept = tuple(c for c in app.certificates if c.sha256_x5t != sha256_x5t)
            self._update_app(client_id, certificates=kept)

    def add_federated_credential(
        self,
        client_id: str,
        issuer: str,
        subject: str,
        audiences: Iterable[str] = (TOKEN_EXCHANGE_AUDIENCE,),
    ) -> None:
        credential = FederatedCredential(issuer, subject, tuple(audiences))
        with self._lock:
            app = self._require_app(client_id)
            self._update_app(client_id, federated_credentials=(*app.federated_credentials, credential))

    def add_redirect_uri(self, client_id: str, uri: str) -> None:
        """Register a Web redirect URI on the app (admin consent redirects only to these, matched exactly).

        Raises ValueError for what Entra's portal refuses: not absolute, a fragment, more than 256 characters,
        whitespace or control characters, or http:// anywhere but localhost/127.0.0.1. Adding one twice is a no-op.
        """
        _check_redirect_uri(uri)
        with self._lock:
            app = self._require_app(client_id)
            if uri not in app.redirect_uris:
                self._update_app(client_id, redirect_uris=(*app.redirect_uris, uri))

    def set_application_enabled(self, client_id: str, enabled: bool) -> None:
        self._update_app(client_id, enabled=enabled)

    def set_optional_claims(self, client_id: str, claims: tuple[str, ...]) -> None:
        """The ID token optional claims the app registration asks for; the sandbox knows "wids"."""
        unknown = set(claims) - {"wids"}
        if isinstance(claims, str) or unknown:
            raise ValueError(f"optional claims are a tuple drawn from ('wids',), not {claims!r}")
        self._update_app(client_id, optional_claims=tuple(claims))

    # -- service principals (consent) ------------------------------------------------------------

    def grant_consent(self, tenant_id: str, client_id: str) -> None:
        """Admin consent: create the app's service principal in the tenant, or re-consent an existing one
        (keeping its object id).
        """
        tid = normalize_guid(tenant_id)
        with self._lock:
            self._require_tenant(tid)
            app = self._require_app(client_id)
            existing = self._service_principals.get((tid, app.client_id))
            object_id = existing.object_id if existing else str(uuid.uuid4())
            self._service_principals[(tid, app.client_id)] = ServicePrincipal(
                tid, app.client_id, object_id, consented=True
            )

    def revoke_consent(self, tenant_id: str, client_id: str) -> None:
        """Withdraw consent; the service principal stays, token requests get AADSTS65001."""
        with self._lock:
            sp = self._require_service_principal(tenant_id, client_id)
            self._service_principals[(sp.tenant_id, sp.client_id)] = replace(sp, consented=False)

    def remove_service_principal(self, tenant_id: str, client_id: str) -> None:
        """Delete the service principal; token requests get AADSTS700016. A later consent creates a new
        service principal with a new object id, as in Entra.
        """
        with self._lock:
            sp = self._require_service_principal(tenant_id, client_id)
            del self._service_principals[(sp.tenant_id, sp.client_id)]

    def restore_service_principal(self, principal: ServicePrincipal) -> None:
        """Put back a service principal saved earlier, object id included (sandbox.admin.snapshot: the app's
        application users name that object id). Raises SandboxLookupError for an unknown tenant or app."""
        with self._lock:
            self._require_tenant(normalize_guid(principal.tenant_id))
            self._require_app(principal.client_id)
            self._service_principals[(principal.tenant_id, principal.client_id)] = principal

    def find_service_principal(self, tenant_id: str, client_id: str) -> ServicePrincipal | None:
        with self._lock:
            return self._service_principals.get((normalize_guid(tenant_id), client_id.lower()))

    def service_principal_object_id(self, tenant_id: str, client_id: str) -> str:
        return self._require_service_principal(tenant_id, client_id).object_id

    def _require_service_principal(self, tenant_id: str, client_id: str) -> ServicePrincipal:
        sp = self.find_service_principal(tenant_id, client_id)
        if sp is None:
            raise SandboxLookupError(f"no service principal for app {client_id} in tenant {tenant_id}")
        return sp

    # -- managed identities ---------------------------------------------------------------------

    def add_managed_identity(
        self,
        client_id: str | None = None,
        principal_id: str | None = None,
        tenant_id: str | None = None,
        name: str | None = None,
    ) -> ManagedIdentity:
        """A user-assigned managed identity attached to the sandbox's App Service endpoint."""
        cid = normalize_guid(client_id) if client_id else str(uuid.uuid4())
        pid = normalize_guid(principal_id) if principal_id else str(uuid.uuid4())
        tid = normalize_guid(tenant_id) if tenant_id else self.home_tenant_id
        resource_name = name or f"id-sandbox-{cid[:8]}"
        resource_id = (
            f"/subscriptions/{self.subscription_id}/resourcegroups/rg-sandbox/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/{resource_name}"
        )
        identity = ManagedIdentity(cid, pid, tid, resource_id)
        with self._lock:
            self._require_tenant(tid)
            self._managed_identities.append(identity)
        return identity

    def managed_identity_issuer(self, identity: ManagedIdentity) -> str:
        """The `iss` of the identity's token-exchange tokens: what a federated credential must name.

        Raises RuntimeError while no sandbox serves this state (the issuer contains its host).
        """
        if self.authority_host is None:
            raise RuntimeError("start the Sandbox first: the issuer names its authority host")
        return f"{self.authority_host}/{identity.tenant_id}/v2.0"

    def managed_identities(self) -> list[ManagedIdentity]:
        with self._lock:
            return list(self._managed_identities)

    # -- assertion replay -----------------------------------------------------------------------

    def redeem_assertion(self, jti: str, tenant_id: str, resource: str, expires_at: float) -> bool:
        """Record that assertion `jti` bought a token; False when it already did for this tenant and
        resource and has not expired yet.
        """
        now = time.time()
        key = (jti, tenant_id, resource)
        with self._lock:
            for stale in [k for k, exp in self._redeemed.items() if exp < now]:
                del self._redeemed[stale]
            if key in self._redeemed and self.reject_assertion_replay:
                return False
            self._redeemed[key] = expires_at
            return True
