"""Every setting the app reads, built from the environment in one place.

Nothing else in the app reads ``os.environ``: entry points call ``Settings.from_env()`` and tests build
``Settings`` directly. A missing or malformed setting raises ``ConfigurationError`` naming it.
"""

from __future__ import annotations

import enum
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from shared.errors import ConfigurationError

T = TypeVar("T")

# Levels LIBRARY_LOG_LEVEL accepts: Python's logging level names.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# How long the webhook store keeps an event's identity to acknowledge a duplicate delivery without new work
# (shared.webhooks.store.DEDUPE_TTL_SECONDS, in days; a unit test keeps the two equal).
WEBHOOK_DEDUPE_DAYS = 7


class AppMode(enum.StrEnum):
    MULTI_TENANT = "multi_tenant"
    SINGLE_TENANT = "single_tenant"


class CredentialSource(enum.StrEnum):
    KEY_VAULT = "key_vault"
    CERTIFICATE_FILE = "certificate_file"
    MANAGED_IDENTITY_FEDERATION = "managed_identity_federation"


@dataclass(frozen=True)
class CloudPreset:
    """Endpoints that differ between the public and sovereign clouds."""

    name: str
    authority_host: str
    dataverse_domain_suffixes: tuple[str, ...]
    # The audience a managed identity token must carry to be exchanged through a federated identity
    # credential differs per cloud (entra: workload-identity-federation-config-app-trust-managed-identity).
    federation_audience: str
    storage_suffix: str = "core.windows.net"
    v1_issuer_template: str = "https://sts.windows.net/{tenantid}/"


# Dataverse regional hosts: crm.dynamics.com (NAM), crm2 (SAM), crm3 (CAN), crm4 (EUR), crm5 (APJ), crm6 (OCE),
# crm7 (JPN), crm8 (IND), crm9 (GCC, which lives in the public cloud), crm11 (GBR), crm12 (FRA), crm14 (ZAF),
# crm15 (UAE), crm16 (GER), crm17 (CHE), crm19 (NOR), crm20 (KOR), crm21 (SWE).
_PUBLIC_DATAVERSE_SUFFIXES = (
    "crm.dynamics.com",
    *(f"crm{n}.dynamics.com" for n in (2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 21)),
)

CLOUD_PRESETS: dict[str, CloudPreset] = {
    "public": CloudPreset(
        "public",
        "https://login.microsoftonline.com",
        _PUBLIC_DATAVERSE_SUFFIXES,
        "api://AzureADTokenExchange",
    ),
    # GCC High uses microsoftdynamics.us, DoD uses appsplatform.us; both sign in at login.microsoftonline.us.
    "usgov": CloudPreset(
        "usgov",
        "https://login.microsoftonline.us",
        ("crm.microsoftdynamics.us", "crm.appsplatform.us"),
        "api://AzureADTokenExchangeUSGov",
        "core.usgovcloudapi.net",
    ),
    "china": CloudPreset(
        "china",
        "https://login.chinacloudapi.cn",
        ("crm.dynamics.cn",),
        "api://AzureADTokenExchangeChina",
        "core.chinacloudapi.cn",
        "https://sts.chinacloudapi.cn/{tenantid}/",
    ),
}

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Field names match the environment variable names in lower case."""

    entra_client_id: str
    entra_home_tenant_id: str
    app_mode: AppMode = AppMode.MULTI_TENANT
    azure_cloud: str = "public"
    entra_authority_host: str = CLOUD_PRESETS["public"].authority_host
    dataverse_domain_suffixes: tuple[str, ...] = _PUBLIC_DATAVERSE_SUFFIXES
    federation_audience: str = CLOUD_PRESETS["public"].federation_audience
    credential_source: CredentialSource = CredentialSource.KEY_VAULT
    key_vault_url: str | None = None
    key_vault_certificate_name: str | None = None
    key_vault_verify_challenge_resource: bool = True
    certificate_path: str | None = None
    certificate_password: str | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    certificate_refresh_seconds: int = 1800
    send_certificate_chain: bool = True
    token_client_cache_size: int = 2000
    http_timeout_seconds: float = 30.0
    dataverse_timeout_seconds: float = 60.0
    dataverse_max_attempts: int = 6
    dataverse_retry_budget_seconds: float = 300.0
    dataverse_shared_throttle: bool = True
    dataverse_throttle_refresh_ms: int = 1000
    storage_connection_string: str | None = field(default=None, repr=False)
    storage_account_name: str | None = None
    storage_suffix: str = "core.windows.net"
    onboarding_redirect_uri: str | None = None
    consent_state_ttl_seconds: int = 600
    app_display_name: str = "Dataverse S2S integration"
    verification_retry_delays: tuple[int, ...] = (30, 60, 120, 300)
    webhook_max_body_bytes: int = 512 * 1024
    webhook_secret_header: str = "x-s2s-webhook-secret"  # noqa: S105 - a header name, not a secret
    webhook_impersonate_initiating_user: bool = False
    webhook_secret_required: bool = True
    webhook_max_dequeue_count: int = 5
    webhook_secret_overlap_seconds: int = 3600  # how long a rotated-out webhook secret is still accepted
    webhook_subscriptions: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("account", ("Create", "Update", "Delete")),
        ("contact", ("Create", "Update", "Delete")),
    )
    # Update steps of these tables fire only when one of these columns changed (sdkmessageprocessingstep
    # filteringattributes); a table not named here fires on every update.
    webhook_filtering_attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    security_role_name: str = "Dataverse S2S integration"
    user_api_enabled: bool = True
    onboarding_provisioning: bool = True
    webhook_receiver_url: str | None = None  # where provisioned service endpoints send (…/api/webhooks/dataverse)
    webhook_function_key: str | None = field(default=None, repr=False)  # sent in x-functions-key
    sync_schedule: str = "0 */15 * * * *"
    health_schedule: str = "0 5 * * * *"
    certificate_expiry_schedule: str = "0 0 6 * * *"
    housekeeping_schedule: str = "0 20 * * * *"
    webhook_event_retention_days: int = 14
    tenant_history_retention_days: int = 365
    tenant_history_keep: int = 50
    sweep_concurrency: int = 8
    sweep_time_budget_seconds: float = 480.0
    sweep_lease_seconds: float = 600.0
    sync_tables: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("accounts", ("accountid", "name", "accountnumber", "telephone1", "revenue", "modifiedon")),
        ("contacts", ("contactid", "firstname", "lastname", "emailaddress1", "modifiedon")),
    )
    sync_page_size: int = 5000
    sync_container: str = "sync"
    certificate_expiry_warning_days: tuple[int, ...] = (30, 14, 7)
    oidc_audiences: tuple[str, ...] = ()  # empty: the client id and api://<client id>
    oidc_required_scope: str | None = "access_as_user"
    oidc_required_role: str | None = None
    oidc_v1_issuer_template: str = "https://sts.windows.net/{tenantid}/"
    oidc_clock_skew_seconds: int = 120
    library_log_level: str = "WARNING"

    def __post_init__(self) -> None:
        if self.library_log_level not in LOG_LEVELS:
            raise ConfigurationError("LIBRARY_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")
        _require_guid("ENTRA_CLIENT_ID", self.entra_client_id)
        _require_guid("ENTRA_HOME_TENANT_ID", self.entra_home_tenant_id)
        _require_https_base("ENTRA_AUTHORITY_HOST", self.entra_authority_host)
        if self.credential_source is CredentialSource.KEY_VAULT:
            if not self.key_vault_url:
                raise ConfigurationError("KEY_VAULT_URL", "is required when CREDENTIAL_SOURCE=key_vault")
            _require_https_base("KEY_VAULT_URL", self.key_vault_url)
            if not self.key_vault_certificate_name:
                raise ConfigurationError("KEY_VAULT_CERTIFICATE_NAME", "is required when CREDENTIAL_SOURCE=key_vault")
        if self.credential_source is CredentialSource.CERTIFICATE_FILE and not self.certificate_path:
            raise ConfigurationError("CERTIFICATE_PATH", "is required when CREDENTIAL_SOURCE=certificate_file")
        if (
            self.credential_source is CredentialSource.MANAGED_IDENTITY_FEDERATION
            and not self.managed_identity_client_id
        ):
            raise ConfigurationError(
                "MANAGED_IDENTITY_CLIENT_ID",
                "is required when CREDENTIAL_SOURCE=managed_identity_federation "
                "(only a user-assigned identity can be a federated credential)",
            )
        if self.managed_identity_client_id:
            _require_guid("MANAGED_IDENTITY_CLIENT_ID", self.managed_identity_client_id)
        if self.certificate_refresh_seconds < 1:
            raise ConfigurationError("CERTIFICATE_REFRESH_SECONDS", "must be at least 1")
        if self.token_client_cache_size < 1:
            raise ConfigurationError("TOKEN_CLIENT_CACHE_SIZE", "must be at least 1")
        if self.http_timeout_seconds <= 0:
            raise ConfigurationError("HTTP_TIMEOUT_SECONDS", "must be greater than 0")
        if self.dataverse_timeout_seconds <= 0:
            raise ConfigurationError("DATAVERSE_TIMEOUT_SECONDS", "must be greater than 0")
        if self.dataverse_max_attempts < 1:
            raise ConfigurationError("DATAVERSE_MAX_ATTEMPTS", "must be at least 1")
        if self.dataverse_retry_budget_seconds <= 0:
            raise ConfigurationError("DATAVERSE_RETRY_BUDGET_SECONDS", "must be greater than 0")
        if self.dataverse_throttle_refresh_ms < 0:
            raise ConfigurationError("DATAVERSE_THROTTLE_REFRESH_MS", "must not be negative")
        if not 60 <= self.consent_state_ttl_seconds <= 600:
            raise ConfigurationError("CONSENT_STATE_TTL_SECONDS", "must be between 60 and 600 (at most 10 minutes)")
        if self.onboarding_redirect_uri is not None:
            _require_redirect_uri("ONBOARDING_REDIRECT_URI", self.onboarding_redirect_uri)
        if self.storage_account_name is not None and not re.fullmatch(r"[a-z0-9]{3,24}", self.storage_account_name):
            raise ConfigurationError("STORAGE_ACCOUNT_NAME", "must be 3-24 lower-case letters and digits")
        if not 1024 <= self.webhook_max_body_bytes <= 16 * 1024 * 1024:
            raise ConfigurationError("WEBHOOK_MAX_BODY_BYTES", "must be between 1024 and 16777216")
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", self.webhook_secret_header):
            raise ConfigurationError("WEBHOOK_SECRET_HEADER", "must be a header name (letters, digits, dashes)")
        if not 1 <= self.webhook_max_dequeue_count <= 100:
            raise ConfigurationError("WEBHOOK_MAX_DEQUEUE_COUNT", "must be between 1 and 100")
        updated_tables = {table for table, messages in self.webhook_subscriptions if "Update" in messages}
        for table, _ in self.webhook_filtering_attributes:
            if table not in updated_tables:
                raise ConfigurationError(
                    "WEBHOOK_FILTERING_ATTRIBUTES",
                    f"names {table}, which WEBHOOK_SUBSCRIPTIONS does not subscribe to Update (filtering attributes "
                    "apply to Update steps only)",
                )
        if not 0 <= self.webhook_secret_overlap_seconds <= 7 * 24 * 3600:
            raise ConfigurationError("WEBHOOK_SECRET_OVERLAP_SECONDS", "must be between 0 and 604800 (7 days)")
        if self.webhook_receiver_url is not None:
            _require_redirect_uri("WEBHOOK_RECEIVER_URL", self.webhook_receiver_url)
        # role.name is a string of at most 100 characters (Dataverse table reference, role table, Name column).
        if not 1 <= len(self.security_role_name.strip()) <= 100 or not self.security_role_name.isprintable():
            raise ConfigurationError("SECURITY_ROLE_NAME", "must be 1-100 printable characters")
        for name, value in (
            ("SYNC_SCHEDULE", self.sync_schedule),
            ("HEALTH_SCHEDULE", self.health_schedule),
            ("CERTIFICATE_EXPIRY_SCHEDULE", self.certificate_expiry_schedule),
            ("HOUSEKEEPING_SCHEDULE", self.housekeeping_schedule),
        ):
            if len(value.split()) not in (5, 6):
                raise ConfigurationError(name, "must be an NCRONTAB expression such as '0 */15 * * * *'")
        # A webhook event's record is what makes a duplicate delivery a no-op for the store's dedupe window
        # (shared/webhooks/store.py DEDUPE_TTL_SECONDS, 7 days): it may not be deleted sooner.
        if not WEBHOOK_DEDUPE_DAYS <= self.webhook_event_retention_days <= 365:
            raise ConfigurationError(
                "WEBHOOK_EVENT_RETENTION_DAYS", f"must be between {WEBHOOK_DEDUPE_DAYS} (the dedupe window) and 365"
            )
        if not 1 <= self.tenant_history_retention_days <= 3650:
            raise ConfigurationError("TENANT_HISTORY_RETENTION_DAYS", "must be between 1 and 3650")
        if not 1 <= self.tenant_history_keep <= 10000:
            raise ConfigurationError("TENANT_HISTORY_KEEP", "must be between 1 and 10000")
        if not 1 <= self.sweep_concurrency <= 64:
            raise ConfigurationError("SWEEP_CONCURRENCY", "must be between 1 and 64")
        if not 10 <= self.sweep_time_budget_seconds <= 3600:
            raise ConfigurationError("SWEEP_TIME_BUDGET_SECONDS", "must be between 10 and 3600")
        if not 5 <= self.sweep_lease_seconds <= 3600:
            raise ConfigurationError("SWEEP_LEASE_SECONDS", "must be between 5 and 3600")
        if not 1 <= self.sync_page_size <= 5000:
            raise ConfigurationError("SYNC_PAGE_SIZE", "must be between 1 and 5000")
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])", self.sync_container):
            raise ConfigurationError("SYNC_CONTAINER", "must be a valid blob container name")
        if "{tenantid}" not in self.oidc_v1_issuer_template:
            raise ConfigurationError("OIDC_V1_ISSUER_TEMPLATE", "must contain {tenantid}")
        if not 0 <= self.oidc_clock_skew_seconds <= 600:
            raise ConfigurationError("OIDC_CLOCK_SKEW_SECONDS", "must be between 0 and 600")
        if not self.oidc_required_scope and not self.oidc_required_role:
            raise ConfigurationError("OIDC_REQUIRED_SCOPE", "or OIDC_REQUIRED_ROLE must be set")
        if not self.dataverse_domain_suffixes:
            raise ConfigurationError("DATAVERSE_DOMAIN_SUFFIXES", "must name at least one domain suffix")

    @property
    def effective_oidc_audiences(self) -> tuple[str, ...]:
        return self.oidc_audiences or (self.entra_client_id, f"api://{self.entra_client_id}")

    @property
    def is_single_tenant(self) -> bool:
        return self.app_mode is AppMode.SINGLE_TENANT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (``os.environ`` unless a mapping is given).

        Raises ConfigurationError naming the first missing or malformed setting.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        def required(name: str) -> str:
            value = get(name)
            if value is None:
                raise ConfigurationError(name, "is required but not set")
            return value

        def parsed(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = get(name)
            if raw is None:
                return default
            try:
                return parse(raw)
            except (ValueError, KeyError) as exc:
                raise ConfigurationError(name, f"has an invalid value {raw!r}: {exc}") from None

        cloud_name = parsed("AZURE_CLOUD", _parse_cloud, "public")
        preset = CLOUD_PRESETS[cloud_name]
        return cls(
            entra_client_id=required("ENTRA_CLIENT_ID"),
            entra_home_tenant_id=required("ENTRA_HOME_TENANT_ID"),
            app_mode=parsed("APP_MODE", AppMode, AppMode.MULTI_TENANT),
            azure_cloud=cloud_name,
            entra_authority_host=(get("ENTRA_AUTHORITY_HOST") or preset.authority_host).rstrip("/"),
            dataverse_domain_suffixes=parsed(
                "DATAVERSE_DOMAIN_SUFFIXES", _parse_suffixes, preset.dataverse_domain_suffixes
            ),
            federation_audience=get("FEDERATION_AUDIENCE") or preset.federation_audience,
            credential_source=parsed("CREDENTIAL_SOURCE", CredentialSource, CredentialSource.KEY_VAULT),
            key_vault_url=get("KEY_VAULT_URL"),
            key_vault_certificate_name=get("KEY_VAULT_CERTIFICATE_NAME"),
            key_vault_verify_challenge_resource=parsed("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", _parse_bool, True),
            certificate_path=get("CERTIFICATE_PATH"),
            certificate_password=get("CERTIFICATE_PASSWORD"),
            managed_identity_client_id=get("MANAGED_IDENTITY_CLIENT_ID"),
            certificate_refresh_seconds=parsed("CERTIFICATE_REFRESH_SECONDS", int, 1800),
            send_certificate_chain=parsed("SEND_CERTIFICATE_CHAIN", _parse_bool, True),
            token_client_cache_size=parsed("TOKEN_CLIENT_CACHE_SIZE", int, 2000),
            http_timeout_seconds=parsed("HTTP_TIMEOUT_SECONDS", float, 30.0),
            dataverse_timeout_seconds=parsed("DATAVERSE_TIMEOUT_SECONDS", float, 60.0),
            dataverse_max_attempts=parsed("DATAVERSE_MAX_ATTEMPTS", int, 6),
            dataverse_retry_budget_seconds=parsed("DATAVERSE_RETRY_BUDGET_SECONDS", float, 300.0),
            dataverse_shared_throttle=parsed("DATAVERSE_SHARED_THROTTLE", _parse_bool, True),
            dataverse_throttle_refresh_ms=parsed("DATAVERSE_THROTTLE_REFRESH_MS", int, 1000),
            storage_connection_string=get("STORAGE_CONNECTION_STRING"),
            storage_account_name=get("STORAGE_ACCOUNT_NAME"),
            storage_suffix=get("STORAGE_SUFFIX") or preset.storage_suffix,
            onboarding_redirect_uri=get("ONBOARDING_REDIRECT_URI"),
            consent_state_ttl_seconds=parsed("CONSENT_STATE_TTL_SECONDS", int, 600),
            app_display_name=get("APP_DISPLAY_NAME") or "Dataverse S2S integration",
            verification_retry_delays=parsed("VERIFICATION_RETRY_DELAYS", _parse_delays, (30, 60, 120, 300)),
            webhook_max_body_bytes=parsed("WEBHOOK_MAX_BODY_BYTES", int, 512 * 1024),
            webhook_secret_header=get("WEBHOOK_SECRET_HEADER") or "x-s2s-webhook-secret",
            webhook_impersonate_initiating_user=parsed("WEBHOOK_IMPERSONATE_INITIATING_USER", _parse_bool, False),
            webhook_secret_required=parsed("WEBHOOK_SECRET_REQUIRED", _parse_bool, True),
            webhook_max_dequeue_count=parsed("WEBHOOK_MAX_DEQUEUE_COUNT", int, 5),
            webhook_secret_overlap_seconds=parsed("WEBHOOK_SECRET_OVERLAP_SECONDS", int, 3600),
            webhook_subscriptions=parsed(
                "WEBHOOK_SUBSCRIPTIONS", _parse_webhook_subscriptions, cls.webhook_subscriptions
            ),
            webhook_filtering_attributes=parsed("WEBHOOK_FILTERING_ATTRIBUTES", _parse_filtering_attributes, ()),
            security_role_name=get("SECURITY_ROLE_NAME") or "Dataverse S2S integration",
            user_api_enabled=parsed("USER_API_ENABLED", _parse_bool, True),
            onboarding_provisioning=parsed("ONBOARDING_PROVISIONING", _parse_bool, True),
            webhook_receiver_url=get("WEBHOOK_RECEIVER_URL"),
            webhook_function_key=get("WEBHOOK_FUNCTION_KEY"),
            sync_schedule=get("SYNC_SCHEDULE") or "0 */15 * * * *",
            health_schedule=get("HEALTH_SCHEDULE") or "0 5 * * * *",
            certificate_expiry_schedule=get("CERTIFICATE_EXPIRY_SCHEDULE") or "0 0 6 * * *",
            housekeeping_schedule=get("HOUSEKEEPING_SCHEDULE") or "0 20 * * * *",
            webhook_event_retention_days=parsed("WEBHOOK_EVENT_RETENTION_DAYS", int, 14),
            tenant_history_retention_days=parsed("TENANT_HISTORY_RETENTION_DAYS", int, 365),
            tenant_history_keep=parsed("TENANT_HISTORY_KEEP", int, 50),
            sweep_concurrency=parsed("SWEEP_CONCURRENCY", int, 8),
            sweep_time_budget_seconds=parsed("SWEEP_TIME_BUDGET_SECONDS", float, 480.0),
            sweep_lease_seconds=parsed("SWEEP_LEASE_SECONDS", float, 600.0),
            sync_tables=parsed("SYNC_TABLES", _parse_sync_tables, cls.sync_tables),
            sync_page_size=parsed("SYNC_PAGE_SIZE", int, 5000),
            sync_container=get("SYNC_CONTAINER") or "sync",
            certificate_expiry_warning_days=parsed("CERTIFICATE_EXPIRY_WARNING_DAYS", _parse_days, (30, 14, 7)),
            oidc_audiences=parsed("OIDC_AUDIENCES", _parse_list, ()),
            oidc_required_scope=get("OIDC_REQUIRED_SCOPE")
            or ("access_as_user" if not get("OIDC_REQUIRED_ROLE") else None),
            oidc_required_role=get("OIDC_REQUIRED_ROLE"),
            oidc_v1_issuer_template=get("OIDC_V1_ISSUER_TEMPLATE") or preset.v1_issuer_template,
            oidc_clock_skew_seconds=parsed("OIDC_CLOCK_SKEW_SECONDS", int, 120),
            library_log_level=parsed("LIBRARY_LOG_LEVEL", _parse_log_level, "WARNING"),
        )


@dataclass(frozen=True)
class MonitorSettings:
    """The host's Application Insights settings, as the app's own exporter needs them (shared.telemetry)."""

    connection_string: str | None
    aad_authentication: bool
    aad_client_id: str | None
    worker_exports: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MonitorSettings:
        """``APPLICATIONINSIGHTS_CONNECTION_STRING``; ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``
        (``ClientId=<id>;Authorization=AAD``, azure-functions: functions-app-settings); and
        ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` (the worker exports by itself). Host settings: never
        refused here, only read."""
        env = os.environ if environ is None else environ
        parts = dict(
            part.split("=", 1)
            for part in env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "").split(";")
            if "=" in part
        )
        fields = {k.strip().lower(): v.strip() for k, v in parts.items()}
        return cls(
            connection_string=env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip() or None,
            aad_authentication=fields.get("authorization", "").lower() == "aad",
            aad_client_id=fields.get("clientid") or None,
            worker_exports=env.get("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "").strip().lower() == "true",
        )


def library_log_level(environ: Mapping[str, str] | None = None) -> str:
    """``LIBRARY_LOG_LEVEL`` for ``function_app`` to apply while the host indexes functions, where nothing may
    raise (an exception there hides every function): a malformed value gives the default here, and
    ``Settings.from_env`` refuses it with a ConfigurationError at the first invocation."""
    raw = (os.environ if environ is None else environ).get("LIBRARY_LOG_LEVEL", "")
    try:
        return _parse_log_level(raw.strip()) if raw.strip() else "WARNING"
    except ValueError:
        return "WARNING"


def is_guid(value: str) -> bool:
    return bool(_GUID.fullmatch(value))


def _require_guid(name: str, value: str) -> None:
    if not is_guid(value):
        raise ConfigurationError(name, "must be a GUID such as 00000000-0000-0000-0000-000000000000")
    uuid.UUID(value)


def _require_https_base(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise ConfigurationError(name, "must be an https URL with no query, fragment or credentials")


def _require_redirect_uri(name: str, value: str) -> None:
    parts = urlsplit(value)
    local = parts.hostname in {"localhost", "127.0.0.1"}
    if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not local) or not parts.hostname:
        raise ConfigurationError(name, "must be an https URL (http only for localhost)")
    if parts.query or parts.fragment or parts.username:
        raise ConfigurationError(name, "must have no query, fragment or credentials")


def _parse_delays(raw: str) -> tuple[int, ...]:
    delays = tuple(int(part) for part in raw.split(",") if part.strip())
    if not delays or any(d < 1 or d > 3600 for d in delays):
        raise ValueError("expected comma-separated seconds between 1 and 3600")
    return delays


def _parse_sync_tables(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``accounts:accountid,name;contacts:contactid,fullname`` → ((entity set, columns), …)."""
    tables = []
    for part in raw.split(";"):
        if not part.strip():
            continue
        name, _, columns = part.partition(":")
        cols = tuple(c.strip() for c in columns.split(",") if c.strip())
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name.strip()) or not cols:
            raise ValueError("expected entityset:column,column;entityset:column")
        if any(not re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in cols):
            raise ValueError("column names are lower-case logical names")
        tables.append((name.strip(), cols))
    if not tables:
        raise ValueError("expected at least one table")
    return tuple(tables)


WEBHOOK_MESSAGES = ("Create", "Update", "Delete")


def _parse_webhook_subscriptions(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``account:Create,Update;contact:Delete`` → ((table logical name, messages), …)."""
    subscriptions: list[tuple[str, tuple[str, ...]]] = []
    for part in raw.split(";"):
        if not part.strip():
            continue
        name, _, messages = part.partition(":")
        table = name.strip()
        chosen = tuple(m.strip() for m in messages.split(",") if m.strip())
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", table) or not chosen:
            raise ValueError("expected table:Message,Message;table:Message with lower-case logical names")
        unknown = [m for m in chosen if m not in WEBHOOK_MESSAGES]
        if unknown:
            raise ValueError(f"messages must be among {', '.join(WEBHOOK_MESSAGES)}, not {', '.join(unknown)}")
        if any(table == seen for seen, _ in subscriptions):
            raise ValueError(f"table {table} is named twice")
        subscriptions.append((table, tuple(dict.fromkeys(chosen))))
    if not subscriptions:
        raise ValueError("expected at least one table")
    return tuple(subscriptions)


def _parse_filtering_attributes(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``account:name,telephone1;contact:emailaddress1`` → ((table, column logical names), …)."""
    tables: list[tuple[str, tuple[str, ...]]] = []
    for part in raw.split(";"):
        if not part.strip():
            continue
        name, _, columns = part.partition(":")
        table = name.strip()
        chosen = tuple(c.strip() for c in columns.split(",") if c.strip())
        names = (table, *chosen)
        if not chosen or not all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names):
            raise ValueError("expected table:column,column;table:column with lower-case logical names")
        if any(table == seen for seen, _ in tables):
            raise ValueError(f"table {table} is named twice")
        tables.append((table, tuple(dict.fromkeys(chosen))))
    return tuple(tables)


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_days(raw: str) -> tuple[int, ...]:
    days = tuple(sorted((int(p) for p in raw.split(",") if p.strip()), reverse=True))
    if not days or any(d < 1 or d > 365 for d in days):
        raise ValueError("expected comma-separated days between 1 and 365")
    return days


def _parse_log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _parse_cloud(raw: str) -> str:
    name = raw.lower()
    if name not in CLOUD_PRESETS:
        raise ValueError(f"expected one of {', '.join(CLOUD_PRESETS)}")
    return name


def _parse_suffixes(raw: str) -> tuple[str, ...]:
    suffixes = tuple(s.strip().lower().lstrip(".") for s in raw.split(",") if s.strip())
    if not suffixes:
        raise ValueError("expected a comma-separated list of domain suffixes")
    return suffixes
