"""The app's custom security role (shared.tenants.security_role): computed from settings, and covering what the
app calls. The coverage test drives the app's own code paths (the sync's TableSync, the shipped webhook handler
that re-reads a row, the user API's reads as the user, WhoAmI) through a fake Dataverse that grants exactly the
role's privileges and refuses anything else with the missing-privilege 403; the privilege each request needs is
named from the sandbox's table catalogue, not from the module under test.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from sandbox.dataverse.schema import TABLES
from shared.dataverse.errors import DataverseError
from shared.jobs.sync import CheckpointStore, TableSync
from shared.settings import Settings
from shared.tenants.registry import Tenant, TenantStatus
from shared.tenants.security_role import (
    ACT_ON_BEHALF,
    ENDPOINT_UPKEEP,
    GLOBAL,
    UnknownTableError,
    registers_webhooks,
    required_role,
)
from shared.tenants.webhook_upkeep import UpkeepOutcome, WebhookUpkeep
from shared.webhooks.processing import HandlerTools, WebhookEvent, reread_truncated_row
from shared.webhooks.remote_context import ExecutionContext
from tests.unit.fake_table import FakeTable
from tests.unit.test_dataverse_client import ORG, TENANT, Response, client

USER = "33333333-3333-3333-3333-333333333333"
ROW = "22222222-2222-2222-2222-222222222222"
ENTITY_SET_BY_LOGICAL = {table.logical_name: name for name, table in TABLES.items()}


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "entra_client_id": "11111111-2222-3333-4444-555555555555",
        "entra_home_tenant_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "credential_source": "certificate_file",
        "certificate_path": "/tmp/none.pem",
    }
    from shared.settings import CredentialSource

    values["credential_source"] = CredentialSource.CERTIFICATE_FILE
    return Settings(**(values | overrides))


class PrivilegedDataverse:
    """A fake HTTP session that answers like an org where the caller holds exactly `granted`: each request's
    needed privileges (read of the table in the URL, act-on-behalf for CallerObjectId) must all be granted."""

    def __init__(self, granted: frozenset[str]) -> None:
        self.granted = granted
        self.needed: list[str] = []

    def _needs(self, method: str, url: str, headers: dict[str, str]) -> list[str]:
        path = urlsplit(url).path.split("/api/data/v9.2/", 1)[1]
        segment = re.match(r"[A-Za-z_]+", path)
        assert segment is not None
        needs = []
        if segment.group(0) != "WhoAmI":
            table = TABLES[segment.group(0)]
            access = {"GET": "Read", "PATCH": "Write", "POST": "Create", "DELETE": "Delete"}[method]
            needs.append(f"prv{access}{table.schema_name}")
        if headers.get("CallerObjectId"):
            needs.append(ACT_ON_BEHALF)
        return needs

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        needs = self._needs(method, url, kwargs.get("headers") or {})
        self.needed.extend(needs)
        missing = [p for p in needs if p not in self.granted]
        if missing:
            error = {"error": {"code": "0x80040220", "message": f"Principal user is missing {missing[0]} privilege"}}
            return Response(403, {"Content-Type": "application/json"}, error)
        if "WhoAmI" in url:
            return Response(200, {}, {"UserId": USER, "BusinessUnitId": USER, "OrganizationId": USER})
        if method in ("PATCH", "DELETE"):
            return Response(204, {}, None)
        for table, key in (
            ("serviceendpoints", "serviceendpointid"),
            ("sdkmessageprocessingsteps", "sdkmessageprocessingstepid"),
        ):
            if f"/{table}?" in url:  # our endpoint and one of its steps
                return Response(200, {}, {"value": [{key: ROW}]})
        if re.search(r"\([0-9a-f-]{36}\)", url):
            return Response(200, {}, {"name": "row"})
        delta = f"{url.split('?', maxsplit=1)[0]}?$deltatoken=1"
        return Response(200, {}, {"value": [], "@odata.deltaLink": delta})


class CheckpointTable(FakeTable):
    """FakeTable plus the upsert the checkpoint store uses."""

    def upsert_entity(self, entity: dict[str, Any], **_: Any) -> None:
        self.rows[(entity["PartitionKey"], entity["RowKey"])] = dict(entity)
        self.etags[(entity["PartitionKey"], entity["RowKey"])] = "1"


class NullSink:
    def write_page(self, **_: Any) -> None:
        return None


def run_the_app(config: Settings, session: PrivilegedDataverse) -> None:
    """What the app calls with its S2S token for these settings."""
    dataverse = client(session)
    dataverse.whoami()
    sync = TableSync(checkpoints=CheckpointStore(CheckpointTable()), sink=NullSink(), page_size=100)
    for entity_set, columns in config.sync_tables:
        sync.run(dataverse, TENANT, entity_set, columns)
    for table, messages in config.webhook_subscriptions:
        for message in messages:
            context = ExecutionContext(
                message, table, ROW, USER, None, None, None, None, 40, 1, 1, USER, USER, USER, None,
                datetime.now(UTC),
            )  # fmt: skip
            event = WebhookEvent(TENANT, ORG, "k", context, truncated=True)
            caller = USER if config.webhook_impersonate_initiating_user else None
            reread_truncated_row(event, HandlerTools(dataverse, caller, FakeTable()))
    if config.user_api_enabled:
        next(dataverse.query("accounts", select=["accountid", "name"], page_size=10, caller_object_id=USER))
    if registers_webhooks(config):  # looking after the endpoint onboarding registered: rotation, offboarding
        upkeep = WebhookUpkeep(config, OneTenant(), OneOrg(dataverse))
        # Upkeep reports a refusal instead of raising it: raise it here, as the rest of the app does.
        rotated = upkeep.rotate(TENANT, ORG)
        if rotated.endpoint is not UpkeepOutcome.DONE:
            raise DataverseError(rotated.detail, org_url=ORG)
        (removed,) = upkeep.remove(TENANT, (ORG,), frozenset({ORG}))
        if removed.outcome is not UpkeepOutcome.DONE:
            raise DataverseError(removed.detail, org_url=ORG)


class OneTenant:
    """The registry as rotation sees it: one tenant with ORG."""

    def set_webhook_secret(self, tenant_id: str, org_url: str, **_: Any) -> str:
        return "new-secret"

    def get_tenant(self, tenant_id: str) -> Tenant:
        return Tenant(tenant_id, TenantStatus.ACTIVE, (ORG,), "t", "t")

    def webhook_secret_hash(self, tenant_id: str, org_url: str) -> str:
        import hashlib

        return hashlib.sha256(b"new-secret").hexdigest()  # rotation checks its secret is still the current one


class OneOrg:
    def __init__(self, client: Any) -> None:
        self.client = client

    def for_org(self, tenant_id: str, org_url: str) -> Any:
        return self.client


CONFIGURATIONS = [
    {},
    {"user_api_enabled": False},
    {"user_api_enabled": False, "webhook_impersonate_initiating_user": True},
    {
        "sync_tables": (("leads", ("leadid", "subject")), ("opportunities", ("opportunityid", "name"))),
        "webhook_subscriptions": (("task", ("Create",)), ("lead", ("Update", "Delete"))),
        "user_api_enabled": False,
    },
    {
        "onboarding_provisioning": True,
        "webhook_receiver_url": "https://contoso-sync.azurewebsites.net/api/webhooks/dataverse",
        "webhook_function_key": "fk",
    },
]


@pytest.mark.parametrize("overrides", CONFIGURATIONS)
def test_the_role_covers_every_call_the_app_makes(overrides: dict[str, Any]) -> None:
    config = settings(**overrides)
    role = required_role(config)
    session = PrivilegedDataverse(role.privilege_names)
    run_the_app(config, session)  # raises the missing-privilege DataverseError if the role falls short
    assert session.needed, "the app made no call: the test proves nothing"
    # Nothing more than what the app calls: every privilege of the role was needed by some request.
    assert role.privilege_names == set(session.needed)
    assert all(p.depth == GLOBAL and p.reasons for p in role.privileges)


@pytest.mark.parametrize("overrides", CONFIGURATIONS)
def test_a_role_missing_any_privilege_fails_the_app(overrides: dict[str, Any]) -> None:
    config = settings(**overrides)
    role = required_role(config)
    for privilege in role.privilege_names:
        session = PrivilegedDataverse(role.privilege_names - {privilege})
        with pytest.raises(DataverseError):
            run_the_app(config, session)


def test_act_on_behalf_only_when_something_impersonates() -> None:
    assert ACT_ON_BEHALF not in required_role(settings(user_api_enabled=False)).privilege_names
    with_user_api = required_role(settings())
    assert ACT_ON_BEHALF in with_user_api.privilege_names
    webhooks_only = required_role(settings(user_api_enabled=False, webhook_impersonate_initiating_user=True))
    (privilege,) = [p for p in webhooks_only.privileges if p.name == ACT_ON_BEHALF]
    assert privilege.reasons == ("webhook handlers act as the initiating user (WEBHOOK_IMPERSONATE_INITIATING_USER)",)


def test_endpoint_upkeep_privileges_only_when_onboarding_registers_webhooks() -> None:
    upkeep = {name for name, _ in ENDPOINT_UPKEEP}
    receiver = "https://contoso-sync.azurewebsites.net/api/webhooks/dataverse"
    assert not upkeep & required_role(settings(onboarding_provisioning=False)).privilege_names
    assert not upkeep & required_role(settings(onboarding_provisioning=True)).privilege_names  # no receiver URL
    registering = required_role(settings(onboarding_provisioning=True, webhook_receiver_url=receiver))
    assert upkeep <= registering.privilege_names
    assert not any(p.startswith("prvCreate") for p in registering.privilege_names)  # creating stays with a person


def test_the_role_is_named_by_its_setting_and_lists_reasons_for_the_administrator() -> None:
    role = required_role(settings(security_role_name="Contoso Sync"))
    assert role.name == "Contoso Sync"
    (account,) = [p for p in role.privileges if p.name == "prvReadAccount"]
    assert "sync reads accounts" in account.reasons
    assert "webhook handlers re-read account (Create, Update, Delete)" in account.reasons
    assert role.depth_of("prvReadAccount") == GLOBAL and role.depth_of("prvWriteAccount") is None


def test_a_custom_table_needs_its_schema_name() -> None:
    config = settings(sync_tables=(("contoso_projects", ("contoso_projectid",)),), user_api_enabled=False)
    with pytest.raises(UnknownTableError, match="contoso_projects"):
        required_role(config)
    role = required_role(config, {"contoso_projects": "contoso_Project"})
    assert "prvReadcontoso_Project" in role.privilege_names


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("account:Create,Assign", "messages must be among"),
        ("Account:Create", "lower-case"),
        ("account:Create;account:Update", "named twice"),
        ("account:", "lower-case"),
    ],
)
def test_bad_webhook_subscriptions_name_the_setting(raw: str, problem: str) -> None:
    from shared.errors import ConfigurationError

    env = {
        "ENTRA_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "ENTRA_HOME_TENANT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "CREDENTIAL_SOURCE": "certificate_file",
        "CERTIFICATE_PATH": "/tmp/none.pem",
        "WEBHOOK_SUBSCRIPTIONS": raw,
    }
    with pytest.raises(ConfigurationError, match="WEBHOOK_SUBSCRIPTIONS") as caught:
        Settings.from_env(env)
    assert problem in str(caught.value) or problem in json.dumps(caught.value.__dict__, default=str)


def test_the_role_name_setting_is_checked() -> None:
    from shared.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="SECURITY_ROLE_NAME"):
        settings(security_role_name="x" * 101)
    parsed = Settings.from_env(
        {
            "ENTRA_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
            "ENTRA_HOME_TENANT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "CREDENTIAL_SOURCE": "certificate_file",
            "CERTIFICATE_PATH": "/tmp/none.pem",
            "WEBHOOK_SUBSCRIPTIONS": "lead:Update,Update;task:Delete",
            "USER_API_ENABLED": "false",
        }
    )
    assert parsed.webhook_subscriptions == (("lead", ("Update",)), ("task", ("Delete",)))
    assert parsed.user_api_enabled is False
