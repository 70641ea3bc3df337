"""The app's custom security role as data: exactly the Dataverse privileges its application user needs, computed
from settings, each with the reasons the app needs it (shown to the administrator before they confirm).

What the app calls with its S2S token, and so what the role grants (nothing else):
- the incremental sync reads every table of SYNC_TABLES with change tracking, which needs organization-level read
  (protocol §4) → `prvRead<Table>` at Global depth;
- the shipped webhook handlers (shared/webhooks/processing.py) re-read the changed row of a truncated event, for
  every table of WEBHOOK_SUBSCRIPTIONS → `prvRead<Table>` at Global depth; they write nothing to Dataverse;
- the signed-in users' API (functions/user_api.py, when USER_API_ENABLED) reads `accounts` impersonating the user;
- impersonation (`CallerObjectId`: the user API, or the handlers with WEBHOOK_IMPERSONATE_INITIATING_USER) needs
  `prvActOnBehalfOfAnotherUser` (protocol §4; Microsoft's "Impersonate another user using the Web API").
WhoAmI needs no privilege of its own.

When onboarding registers our webhook (ONBOARDING_PROVISIONING with WEBHOOK_RECEIVER_URL), the administrator's
delegated token creates the service endpoint and its steps: creating them (prvCreateServiceEndpoint,
prvCreateSdkMessageProcessingStep) stays with a person who signed in. The application user keeps what it needs to
look after that one endpoint without an administrator, and nothing to create another:
- `tenants webhook-secret --org` rotates the org's secret and puts it on the endpoint → `prvReadServiceEndpoint`,
  `prvWriteServiceEndpoint`;
- offboarding removes the steps and the endpoint → `prvReadSdkMessageProcessingStep`,
  `prvDeleteSdkMessageProcessingStep`, `prvDeleteServiceEndpoint`.
Both tables are organization-owned, so these are Global (privilege tables of SdkMessageProcessingStep and
ServiceEndpoint: Global depth only). The app's code touches only the endpoint named for its own client id
(shared.tenants.webhook_endpoint), but the privileges cover every service endpoint of the org: the README says so.

Privilege names are `prv<Access><SchemaName>` (Dataverse privilege table, `name` column: e.g. prvReadAccount);
depths are the PrivilegeDepth enum the AddPrivilegesRole / ReplacePrivilegesRole actions take in each
RolePrivilege (`Depth`, `PrivilegeId`, `BusinessUnitId`; Web API reference, RolePrivilege complex type).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import S2SError
from shared.settings import Settings

# PrivilegeDepth (Web API EnumType reference): Basic, Local, Deep, Global. Global = the whole organization.
GLOBAL = "Global"
ACT_ON_BEHALF = "prvActOnBehalfOfAnotherUser"

# The standard tables the app knows by name: entity set -> (logical name, schema name). A custom table's schema
# name carries its publisher prefix and capitals (e.g. contoso_Project) and cannot be derived: pass it in
# `schema_names`.
STANDARD_TABLES: dict[str, tuple[str, str]] = {
    "accounts": ("account", "Account"),
    "contacts": ("contact", "Contact"),
    "leads": ("lead", "Lead"),
    "opportunities": ("opportunity", "Opportunity"),
    "tasks": ("task", "Task"),
}
USER_API_TABLES = ("accounts",)  # what functions/user_api.py reads


class UnknownTableError(S2SError):
    """A table in the settings whose schema name (and so its privilege names) the app cannot tell."""

    code = "unknown_table"


@dataclass(frozen=True)
class RolePrivilege:
    """One privilege of the role, its depth, and why the app needs it."""

    name: str
    depth: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class SecurityRole:
    """The role the app needs in every customer org: its name (SECURITY_ROLE_NAME) and exact privileges."""

    name: str
    privileges: tuple[RolePrivilege, ...]

    @property
    def privilege_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.privileges)

    def depth_of(self, privilege: str) -> str | None:
        """The depth the role holds `privilege` at, or None when it does not hold it."""
        return next((p.depth for p in self.privileges if p.name == privilege), None)


def read_privilege(schema_name: str) -> str:
    """`prvReadAccount` for the table whose schema name is `Account`."""
    return f"prvRead{schema_name}"


def _by_logical_name(schema_names: Mapping[str, str]) -> dict[str, str]:
    known = {logical: schema for logical, schema in STANDARD_TABLES.values()}
    return known | dict(schema_names)


def schema_name_for_entity_set(entity_set: str, schema_names: Mapping[str, str] | None = None) -> str:
    """The schema name of the table served at `entity_set`. Raises UnknownTableError when the app cannot tell."""
    extra = dict(schema_names or {})
    if entity_set in extra:
        return extra[entity_set]
    if entity_set in STANDARD_TABLES:
        return STANDARD_TABLES[entity_set][1]
    raise UnknownTableError(
        f"The schema name of the table '{entity_set}' is not known to the app; its privileges cannot be named."
    )


def schema_name_for_table(logical_name: str, schema_names: Mapping[str, str] | None = None) -> str:
    """The schema name of the table `logical_name`. Raises UnknownTableError when the app cannot tell."""
    known = _by_logical_name(schema_names or {})
    if logical_name in known:
        return known[logical_name]
    raise UnknownTableError(
        f"The schema name of the table '{logical_name}' is not known to the app; its privileges cannot be named."
    )


ENDPOINT_UPKEEP: tuple[tuple[str, str], ...] = (
    ("prvReadServiceEndpoint", "secret rotation and offboarding find the app's webhook endpoint"),
    ("prvWriteServiceEndpoint", "secret rotation puts the org's new secret on the app's webhook endpoint"),
    ("prvReadSdkMessageProcessingStep", "offboarding finds the steps of the app's webhook endpoint"),
    ("prvDeleteSdkMessageProcessingStep", "offboarding removes the steps of the app's webhook endpoint"),
    ("prvDeleteServiceEndpoint", "offboarding removes the app's webhook endpoint"),
)


def registers_webhooks(settings: Settings) -> bool:
    """Whether onboarding registers our webhook in each org (and the app then looks after it)."""
    return settings.onboarding_provisioning and bool(settings.webhook_receiver_url)


def impersonates(settings: Settings) -> bool:
    """Whether any part of the app calls Dataverse with `CallerObjectId`."""
    return settings.user_api_enabled or settings.webhook_impersonate_initiating_user


def required_role(settings: Settings, schema_names: Mapping[str, str] | None = None) -> SecurityRole:
    """The role the app needs, from SYNC_TABLES, WEBHOOK_SUBSCRIPTIONS, USER_API_ENABLED,
    WEBHOOK_IMPERSONATE_INITIATING_USER, and whether onboarding registers webhooks. `schema_names` maps entity
    sets or logical names of custom tables to their schema names. Raises UnknownTableError for a table whose
    schema name is unknown.
    """
    reasons: dict[str, list[str]] = {}

    def need(privilege: str, reason: str) -> None:
        reasons.setdefault(privilege, [])
        if reason not in reasons[privilege]:
            reasons[privilege].append(reason)

    for entity_set, _ in settings.sync_tables:
        need(read_privilege(schema_name_for_entity_set(entity_set, schema_names)), f"sync reads {entity_set}")
    for table, messages in settings.webhook_subscriptions:
        need(
            read_privilege(schema_name_for_table(table, schema_names)),
            f"webhook handlers re-read {table} ({', '.join(messages)})",
        )
    if settings.user_api_enabled:
        for entity_set in USER_API_TABLES:
            need(read_privilege(schema_name_for_entity_set(entity_set, schema_names)), "user API reads as the user")
        need(ACT_ON_BEHALF, "user API reads as the signed-in user (CallerObjectId)")
    if settings.webhook_impersonate_initiating_user:
        need(ACT_ON_BEHALF, "webhook handlers act as the initiating user (WEBHOOK_IMPERSONATE_INITIATING_USER)")
    if registers_webhooks(settings):
        for privilege, reason in ENDPOINT_UPKEEP:
            need(privilege, reason)
    privileges = tuple(RolePrivilege(name, GLOBAL, tuple(why)) for name, why in sorted(reasons.items()))
    return SecurityRole(settings.security_role_name, privileges)
