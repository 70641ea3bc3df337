"""In-memory model behind the stand-ins: directory (tenants, their users, apps, service principals, managed
identities), user tokens (claims: sandbox.user_tokens), vault (secret versions, RBAC grants), redeemed assertions,
Dataverse orgs, their webhooks and counters. Every method takes the one lock; each Dataverse org's rows and users
sit behind that org's own lock (sandbox.dataverse_org), webhooks and their deliveries behind the webhook hub's
(sandbox.dataverse_webhooks).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from sandbox.counters import Counters
from sandbox.dataverse_context import ContextUser
from sandbox.dataverse_events import MESSAGES
from sandbox.dataverse_org import READ_DEPTHS, Actor, Org, OrgStore, SystemUser, canonical_org_url
from sandbox.dataverse_reads import warm_default_order
from sandbox.dataverse_schema import TABLES, TABLES_BY_LOGICAL_NAME, Table
from sandbox.dataverse_throttle import DataverseLimits
from sandbox.dataverse_webhooks import WebhookHub
from sandbox.faults import FaultInjector
from sandbox.issuers import TENANT_TEMPLATE, TOKEN_VERSIONS, issuer
from sandbox.pki import CertificateBundle, certificate_thumbprints, pem_to_pfx
from sandbox.signing import SigningKeyRing
from sandbox.user_tokens import SandboxUser, default_upn, pairwise_subject, user_token_claims
from sandbox.webhook_delivery import DEFAULT_TIMEOUT_SECONDS, WebhookDelivery
from sandbox.webhook_registration import WebhookRegistration, new_registration

logger = logging.getLogger(__name__)

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
PEM_CONTENT_TYPE = "application/x-pem-file"
PFX_CONTENT_TYPE = "application/x-pkcs12"


class SandboxLookupError(LookupError):
    """An admin operation named a tenant, app, service principal or secret the sandbox does not hold."""


def normalize_guid(value: str) -> str:
    """Lower-case canonical GUID text. Raises ValueError for anything that is not a GUID."""
    return str(uuid.UUID(value))


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _check_read_depth(depth: str) -> None:
    if depth not in READ_DEPTHS:
        raise ValueError(f"read depth must be one of {', '.join(READ_DEPTHS)}, not {depth!r}")


def _table(entity_set: str) -> Table:
    schema = TABLES.get(entity_set)
    if schema is None:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, not {entity_set!r}")
    return schema


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


@dataclass(frozen=True)
class SecretVersion:
    """One version of a secret; `certificate` is set when the version backs a Key Vault certificate."""

    name: str
    version: str
    value: str
    content_type: str | None
    created: int
    updated: int
    enabled: bool = True
    not_before: int | None = None
    expires: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    certificate: CertificateBundle | None = None
    previous_version: str | None = None

    @property
    def managed(self) -> bool:
        return self.certificate is not None


_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
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


class SandboxState:
    """Everything the stand-ins know. Ids are lower-case GUID strings; creators return the new id.

    Admin methods raise SandboxLookupError for an unknown tenant, app or service principal and ValueError
    for an id that is not a GUID.
    """

    def __init__(self, home_tenant_name: str = "Contoso") -> None:
        self._lock = threading.RLock()
        self.counters = Counters(self._lock)
        self.faults = FaultInjector(self._lock)
        self.signing_keys = SigningKeyRing(self._lock)
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
        self._vault_readers: set[str] = set()
        self._secrets: dict[str, list[SecretVersion]] = {}
        self._redeemed: dict[tuple[str, str, str], float] = {}
        self._orgs: dict[str, OrgStore] = {}  # by host name
        self.webhooks = WebhookHub(self.counters)
        self.home_tenant_id = self.add_tenant(display_name=home_tenant_name)

    # -- counters -------------------------------------------------------------------------------

    def count(self, name: str, /, **labels: object) -> int:
        """See sandbox.counters: e.g. `count("token", tenant=t)`, `count("vault_get", name="s2s-client")`."""
        return self.counters.count(name, **labels)

    def reset_counters(self) -> None:
        self.counters.reset()

    # -- fault injection (sandbox.faults) -------------------------------------------------------

    def inject_fault(self, service: str, **options: Any) -> str:
        """Make the "entra" or "keyvault" stand-in fail before handling requests normally; returns the fault id.
        The options and what they do: sandbox.faults.FaultInjector.inject."""
        return self.faults.inject(service, **options)

    def clear_faults(self, service: str | None = None, fault_id: str | None = None) -> int:
        """Disarm injected faults (every one, one service's, or one by id); returns how many were armed."""
        return self.faults.clear(service, fault_id)

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
        self, tenant_id: str, *, display_name: str, upn: str | None = None, object_id: str | None = None
    ) -> SandboxUser:
        """A user of the tenant's directory who can sign in to our app. `upn` defaults to
        `<display.name>@<the tenant's first domain>`, `object_id` to a new GUID.

        Raises SandboxLookupError for an unknown tenant and ValueError for an object id that is not a GUID or
        already names a user of the tenant.
        """
        tid = normalize_guid(tenant_id)
        oid = normalize_guid(object_id) if object_id else str(uuid.uuid4())
        with self._lock:
            tenant = self._require_tenant(tid)
            if (tid, oid) in self._users:
                raise ValueError(f"tenant {tid} already has a user {oid}")
            user = SandboxUser(oid, tid, display_name, upn or default_upn(display_name, oid, tenant.domains[0]))
            self._users[(tid, oid)] = user
        return user

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
        """A delegated access token for `user`, as Entra issues it for our API (claims: sandbox.user_tokens).

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
        self.counters.bump("user_token", tenant=registered.tenant_id, version=version)
        return self.signing_keys.sign(claims, key=key)

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

    # -- vault ----------------------------------------------------------------------------------

    def grant_vault_secret_access(self, principal_id: str) -> None:
        """Like assigning "Key Vault Secrets User" on the vault to this object id (protocol §3)."""
        with self._lock:
            self._vault_readers.add(principal_id.lower())

    def revoke_vault_secret_access(self, principal_id: str) -> None:
        with self._lock:
            self._vault_readers.discard(principal_id.lower())

    def has_vault_secret_access(self, principal_id: str) -> bool:
        with self._lock:
            return principal_id.lower() in self._vault_readers

    def set_secret(self, name: str, value: str, content_type: str | None = None) -> str:
        """Add a new version of a plain secret; returns the version."""
        return self._add_secret_version(name, value, content_type, certificate=None)

    def create_certificate(self, name: str, bundle: CertificateBundle, content_type: str = PEM_CONTENT_TYPE) -> str:
        """Add a certificate version and its addressable secret (protocol §3); returns the version.

        The secret value is PEM (key then certificate) or base64 of a password-less PFX.
        """
        if content_type == PEM_CONTENT_TYPE:
            value = bundle.combined_pem
        elif content_type == PFX_CONTENT_TYPE:
            value = base64.b64encode(pem_to_pfx(bundle)).decode("ascii")
        else:
            raise ValueError(f"certificate content type must be {PEM_CONTENT_TYPE} or {PFX_CONTENT_TYPE}")
        return self._add_secret_version(name, value, content_type, certificate=bundle)

    def _add_secret_version(
        self, name: str, value: str, content_type: str | None, certificate: CertificateBundle | None
    ) -> str:
        if not _SECRET_NAME.match(name):
            raise ValueError(f"invalid secret name {name!r}")
        now = int(time.time())
        version = secrets.token_hex(16)
        with self._lock:
            history = self._secrets.setdefault(name.lower(), [])
            previous = history[-1].version if history and certificate is not None else None
            history.append(
                SecretVersion(
                    name=name,
                    version=version,
                    value=value,
                    content_type=content_type,
                    created=now,
                    updated=now,
                    not_before=_epoch(certificate.not_before) if certificate else None,
                    expires=_epoch(certificate.not_after) if certificate else None,
                    certificate=certificate,
                    previous_version=previous,
                )
            )
        return version

    def find_secret_version(self, name: str, version: str | None = None) -> SecretVersion | None:
        """The given version, or the latest when `version` is empty; None when there is no such secret."""
        with self._lock:
            history = self._secrets.get(name.lower(), [])
            if not version:
                return history[-1] if history else None
            return next((v for v in history if v.version == version.lower()), None)

    def list_secret_versions(self, name: str) -> list[SecretVersion]:
        with self._lock:
            return list(self._secrets.get(name.lower(), []))

    def list_latest_secrets(self) -> list[SecretVersion]:
        with self._lock:
            return [history[-1] for _, history in sorted(self._secrets.items()) if history]

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

    # -- Dataverse orgs (protocol §1, §4) -------------------------------------------------------------

    def add_org(self, tenant_id: str, url: str, *, name: str | None = None) -> Org:
        """Create an org at `url` (https://<org>.crm<N>.dynamics.com) belonging to an existing tenant.

        Raises ValueError for a URL the sandbox's certificate cannot cover or an org that exists already.
        """
        canonical = canonical_org_url(url)
        tid = normalize_guid(tenant_id)
        host = canonical.removeprefix("https://")
        org = Org(
            url=canonical,
            org_id=str(uuid.uuid4()),
            tenant_id=tid,
            root_business_unit_id=str(uuid.uuid4()),
            name=name or host.split(".")[0],
        )
        with self._lock:
            self._require_tenant(tid)
            if host in self._orgs:
                raise ValueError(f"org {canonical} already exists")
            self._orgs[host] = OrgStore(org)
        return org

    def get_org(self, url: str) -> Org:
        return self._org_store(url).org

    def find_org_store(self, host: str) -> OrgStore | None:
        """The org served at `host` (no scheme, no port), for the Dataverse stand-in and its proxy."""
        with self._lock:
            return self._orgs.get(host.lower())

    def _org_store(self, url: str) -> OrgStore:
        host = canonical_org_url(url).removeprefix("https://")
        with self._lock:
            store = self._orgs.get(host)
        if store is None:
            raise SandboxLookupError(f"no Dataverse org at {url}")
        return store

    def add_application_user(
        self,
        org_url: str,
        app_client_id: str,
        *,
        enabled: bool = True,
        act_on_behalf: bool = False,
        roles: tuple[str, ...] = ("S2S Integration",),
    ) -> str:
        """Create the app's application user (one per app per org, protocol §1); returns its systemuserid.

        `act_on_behalf` grants prvActOnBehalfOfAnotherUser (impersonation). Raises ValueError when the app
        already has an application user in the org.
        """
        store = self._org_store(org_url)
        client_id = normalize_guid(app_client_id)
        app = self.find_application(client_id)
        principal = self.find_service_principal(store.org.tenant_id, client_id)
        user = SystemUser(
            systemuserid=str(uuid.uuid4()),
            full_name=f"# {app.display_name if app else client_id}",
            enabled=enabled,
            application_id=client_id,
            object_id=principal.object_id if principal else None,
            act_on_behalf=act_on_behalf,
            roles=tuple(roles),
        )
        store.add_user(user)
        return user.systemuserid

    def set_application_user(
        self,
        org_url: str,
        app_client_id: str,
        *,
        enabled: bool | None = None,
        act_on_behalf: bool | None = None,
    ) -> None:
        store = self._org_store(org_url)
        user = self._require_application_user(store, app_client_id)
        store.replace_user(
            replace(
                user,
                enabled=user.enabled if enabled is None else enabled,
                act_on_behalf=user.act_on_behalf if act_on_behalf is None else act_on_behalf,
            )
        )

    def remove_application_user(self, org_url: str, app_client_id: str) -> None:
        store = self._org_store(org_url)
        store.remove_user(self._require_application_user(store, app_client_id).systemuserid)

    @staticmethod
    def _require_application_user(store: OrgStore, app_client_id: str) -> SystemUser:
        user = store.find_application_user(app_client_id)
        if user is None:
            raise SandboxLookupError(f"app {app_client_id} has no application user in {store.org.url}")
        return user

    def add_org_user(
        self, org_url: str, object_id: str, full_name: str, *, enabled: bool = True, read_depth: str = "user"
    ) -> str:
        """A licensed user known by its Entra object id (for CallerObjectId impersonation); returns its
        systemuserid. `read_depth` is its read privilege on accounts and contacts (see set_org_user_read_depth).
        """
        _check_read_depth(read_depth)
        store = self._org_store(org_url)
        user = SystemUser(
            str(uuid.uuid4()), full_name, enabled=enabled, object_id=normalize_guid(object_id), read_depth=read_depth
        )
        store.add_user(user)
        return user.systemuserid

    def set_org_user_read_depth(self, org_url: str, object_id: str, depth: str) -> None:
        """The depth of the user's read privilege (prvReadAccount, prvReadContact), which reads made while
        impersonating it are held to (protocol §4: the intersection with the application user's, which reads
        everything): "user" (Basic: only rows it owns; the default for add_org_user), "organization" (every
        row) or "none" (no read privilege). Raises SandboxLookupError for an unknown org or user, ValueError for
        another depth.
        """
        _check_read_depth(depth)
        store = self._org_store(org_url)
        user = self._require_org_user(store, object_id)
        store.replace_user(replace(user, read_depth=depth))

    @staticmethod
    def _require_org_user(store: OrgStore, object_id: str) -> SystemUser:
        user = store.find_user_by_object_id(normalize_guid(object_id))
        if user is None:
            raise SandboxLookupError(f"no user with object id {object_id} in {store.org.url}")
        return user

    def assign_rows(self, org_url: str, table: str, row_ids: Iterable[str], owner_object_id: str) -> None:
        """Make the org user `owner_object_id` the owner of existing rows, as Assign does (each row's version
        and modifiedon move on; no webhook runs). All or nothing: raises SandboxLookupError for an unknown org,
        user or row id and ValueError for an unknown table or a row id that is not a GUID.
        """
        store = self._org_store(org_url)
        schema = _table(table)
        owner = self._require_org_user(store, owner_object_id)
        ids = [normalize_guid(row_id) for row_id in row_ids]
        with store.exclusive():
            missing = [row_id for row_id in ids if store.get(schema.entity_set, row_id) is None]
            if missing:
                raise SandboxLookupError(f"no {schema.logical_name} {missing[0]} in {store.org.url}")
            for row_id in ids:
                store.update(schema, row_id, {"_ownerid_value": owner.systemuserid}, Actor(store.system_user_id))

    def seed_rows(
        self,
        org_url: str,
        table: str,
        count: int,
        *,
        prefix: str = "Row",
        owner_object_id: str | None = None,
    ) -> list[str]:
        """Insert `count` rows into "accounts" or "contacts", owned (and created) by the org user
        `owner_object_id`, or by the org's SYSTEM user when it is None; returns their ids.

        Raises SandboxLookupError for an unknown org or user and ValueError for an unknown table.
        """
        store = self._org_store(org_url)
        schema = _table(table)
        owner = self._require_org_user(store, owner_object_id).systemuserid if owner_object_id else None
        if table == "accounts":
            values = (
                {"name": f"{prefix} {n}", "revenue": float(n * 100), "telephone1": f"555-{n % 10000:04d}"}
                for n in range(1, count + 1)
            )
        else:
            values = (
                {"firstname": prefix, "lastname": str(n), "emailaddress1": f"{prefix.lower()}.{n}@example.com"}
                for n in range(1, count + 1)
            )
        ids = store.bulk_insert(schema, values, Actor(owner or store.system_user_id))
        warm_default_order(store, schema)
        return ids

    def rows(self, org_url: str, table: str) -> list[dict[str, object]]:
        """A copy of every row of "accounts" or "contacts", for assertions."""
        store = self._org_store(org_url)
        if table not in TABLES:
            raise ValueError(f"table must be one of {', '.join(TABLES)}, not {table!r}")
        return [dict(row) for row in store.rows(table)]

    def set_dataverse_limits(
        self,
        org_url: str,
        *,
        max_concurrent: int = 52,
        max_requests: int = 6000,
        window_seconds: float = 300,
        retry_after_seconds: int | None = None,
        latency_seconds: float = 0.0,
        dop_hint: int | None = None,
    ) -> None:
        """Service protection and latency for the org, applied per user (protocol §4; one web server)."""
        self._org_store(org_url).protection.configure(
            DataverseLimits(
                max_concurrent=max_concurrent,
                max_requests=max_requests,
                window_seconds=window_seconds,
                retry_after_seconds=retry_after_seconds,
                latency_seconds=latency_seconds,
                dop_hint=dop_hint,
            )
        )

    def expire_delta_tokens(self, org_url: str) -> None:
        """Every delta token issued so far for the org becomes expired (the next delta asks for a full sync)."""
        self._org_store(org_url).expire_delta_tokens()

    def dataverse_peak_concurrency(self, org_url: str) -> int:
        """The most requests the org has had in flight at once (all users)."""
        return self._org_store(org_url).protection.peak_concurrency

    # -- Dataverse webhooks (protocol §5) -------------------------------------------------------------

    def register_webhook(
        self,
        org_url: str,
        url: str,
        *,
        auth_type: str = "WebhookKey",
        auth_value: str | dict[str, str],
        entity: str = "account",
        messages: tuple[str, ...] = MESSAGES,
        stage: int = 40,
        mode: int = 1,
        filtering_attributes: tuple[str, ...] | None = None,
        include_pre_image: bool = False,
        include_post_image: bool = True,
    ) -> str:
        """Register a webhook on the org: a serviceendpoint (contract 8) with one step per message. Returns the
        serviceendpoint id, which `WebhookDelivery.webhook_id` carries; `get_webhook(...).step_id(message)` is
        the body's OwningExtension.Id.

        auth_type "WebhookKey" sends `?code=<auth_value>` (the key only); "HttpHeader" and "HttpQueryString"
        take a dict sent as headers or query parameters. mode 1 is asynchronous (after the Web API answers),
        0 synchronous (before it answers; a failure fails and rolls back the write). Filtering attributes apply
        to Update. Raises SandboxLookupError for an unknown org and ValueError for a setting Dataverse refuses
        (asynchronous steps run only at stage 40).
        """
        store = self._org_store(org_url)
        registration = new_registration(
            store.org.url,
            url,
            auth_type=auth_type,
            auth_value=auth_value,
            entity=entity,
            messages=tuple(messages),
            stage=stage,
            mode=mode,
            filtering_attributes=tuple(filtering_attributes) if filtering_attributes is not None else None,
            include_pre_image=include_pre_image,
            include_post_image=include_post_image,
        )
        self.webhooks.register(registration)
        return registration.webhook_id

    def get_webhook(self, org_url: str, webhook_id: str) -> WebhookRegistration:
        """Raises SandboxLookupError when the org has no such webhook."""
        registration = self.webhooks.find(canonical_org_url(org_url), webhook_id)
        if registration is None:
            raise SandboxLookupError(f"no webhook {webhook_id} on {org_url}")
        return registration

    def unregister_webhook(self, org_url: str, webhook_id: str) -> None:
        """Delete the webhook and its steps; succeeds when it is already gone. Queued deliveries still run."""
        self.webhooks.unregister(canonical_org_url(org_url), webhook_id)

    def webhook_deliveries(self, org_url: str | None = None) -> list[WebhookDelivery]:
        """Every delivery attempt so far (the latest 100,000), oldest first; one org's when `org_url` is given."""
        return self.webhooks.deliveries(canonical_org_url(org_url) if org_url is not None else None)

    def set_webhook_timeout(self, seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        """How long a delivery waits for the receiver; Dataverse waits 60 s. Raises ValueError unless positive."""
        self.webhooks.set_timeout(seconds)

    def wait_for_webhooks(self, timeout: float = 10) -> None:
        """Block until every queued asynchronous delivery (retries included) is done. Raises TimeoutError."""
        self.webhooks.wait(timeout)

    def emit_webhook_event(
        self,
        org_url: str,
        entity: str,
        message: str,
        row_id: str,
        *,
        initiating_user_object_id: str | None = None,
        payload_padding_bytes: int = 0,
    ) -> list[str]:
        """Run the org's matching webhooks for an event on `row_id` without changing any row (the row's current
        values fill the Target and images when it exists); an Update matches every filtering attribute.
        `payload_padding_bytes` adds a text attribute that large to the Target (to pass 256 KB). Returns each
        matching webhook's x-request-id. Raises SandboxLookupError for an unknown org and ValueError for an
        unknown entity or message, or a row id that is not a GUID.
        """
        store = self._org_store(org_url)
        table = TABLES_BY_LOGICAL_NAME.get(entity) or TABLES.get(entity)
        if table is None:
            raise ValueError(f"entity must be one of {', '.join(TABLES_BY_LOGICAL_NAME)}, not {entity!r}")
        if message not in MESSAGES:
            raise ValueError(f"message must be one of {MESSAGES}, not {message!r}")
        if payload_padding_bytes < 0:
            raise ValueError("payload_padding_bytes cannot be negative")
        user = ContextUser(store.system_user_id, None)
        if initiating_user_object_id is not None:
            object_id = normalize_guid(initiating_user_object_id)
            known = store.find_user_by_object_id(object_id)
            user = ContextUser(known.systemuserid if known else store.system_user_id, object_id)
        return self.webhooks.emit(
            store, table, message, normalize_guid(row_id), user, padding_bytes=payload_padding_bytes
        )
