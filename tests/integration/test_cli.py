"""The operator CLI against the cloud-in-a-box: JSON output, claims only, never the token."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from cli.main import main
from sandbox.net.pki import make_certificate

pytestmark = pytest.mark.integration

ORG = "https://contoso.crm.dynamics.com"


@pytest.fixture(autouse=True)
def restore_environ():
    """--env-file writes into this process's environment; put it back after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def env_file(sandbox, sandbox_env, tmp_path):
    st = sandbox.state
    home = st.add_tenant(display_name="Publisher")
    client_id = st.register_application(home_tenant=home)
    bundle = make_certificate("cli-test")
    st.add_application_certificate(client_id, bundle.cert_pem)
    name = f"cli-{client_id[:8]}"
    version = st.create_certificate(name, bundle)
    mi = st.add_managed_identity(tenant_id=home)
    st.grant_vault_secret_access(mi.principal_id)
    tenant = st.add_tenant(display_name="Customer")
    st.grant_consent(tenant, client_id)
    path = tmp_path / "app.env"
    path.write_text(
        "\n".join(
            [
                f"ENTRA_CLIENT_ID={client_id}",
                f"ENTRA_HOME_TENANT_ID={home}",
                f"ENTRA_AUTHORITY_HOST={sandbox.authority_host}",
                f"KEY_VAULT_URL={sandbox.vault_url}",
                f"KEY_VAULT_CERTIFICATE_NAME={name}",
                "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE=false",
                f"MANAGED_IDENTITY_CLIENT_ID={mi.client_id}",
            ]
        )
    )
    return path, tenant, client_id, bundle, version


def test_token_command_prints_claims_and_source_never_the_token(env_file, capsys):
    path, tenant, client_id, _, _ = env_file
    code = main(["--env-file", str(path), "--json", "token", "--tenant", tenant, "--org", ORG, "--repeat", "2"])
    out = capsys.readouterr().out
    assert code == 0
    reports = json.loads(out)
    assert [r["source"] for r in reports] == ["identity_provider", "cache"]
    assert reports[0]["claims"]["tid"] == tenant
    assert reports[0]["claims"]["appid"] == client_id
    assert reports[0]["claims"]["aud"] == ORG
    assert "eyJ" not in out  # no JWT, in whole or in part


def test_certificate_command_shows_thumbprints_expiry_and_version(env_file, capsys):
    path, _, _, bundle, version = env_file
    assert main(["--env-file", str(path), "--json", "certificate"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sha1_thumbprint"] == bundle.sha1_thumbprint_hex
    assert shown["version"] == version
    assert shown["not_after"].startswith(bundle.not_after.date().isoformat())
    assert "PRIVATE" not in json.dumps(shown)


def test_refusal_prints_the_aadsts_code_and_fix_with_exit_1(env_file, sandbox, capsys):
    path, _, _, _, _ = env_file
    stranger = sandbox.state.add_tenant(display_name="Stranger")
    code = main(["--env-file", str(path), "--json", "token", "--tenant", stranger, "--org", ORG])
    shown = json.loads(capsys.readouterr().out)
    assert code == 1
    assert shown["aadsts_code"] == 700016
    assert shown["fix"]


def test_bad_configuration_names_the_setting_with_exit_2(tmp_path, capsys, monkeypatch):
    for name in ("ENTRA_CLIENT_ID", "ENTRA_HOME_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    assert main(["--env-file", str(empty), "--json", "certificate"]) == 2
    assert "ENTRA_CLIENT_ID" in json.loads(capsys.readouterr().out)["message"]


def test_whoami_shows_the_application_user_or_why_not(env_file, sandbox, capsys):
    path, tenant, client_id, _, _ = env_file
    org = f"https://cli{uuid.uuid4().hex[:8]}.crm.dynamics.com"
    sandbox.state.add_org(tenant, org)
    user_id = sandbox.state.add_application_user(org, client_id)
    assert main(["--env-file", str(path), "--json", "whoami", "--tenant", tenant, "--org", org]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["user_id"] == user_id
    assert shown["organization_id"] == sandbox.state.get_org(org).org_id
    sandbox.state.remove_application_user(org, client_id)
    assert main(["--env-file", str(path), "--json", "whoami", "--tenant", tenant, "--org", org]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["code"] == "application_user_missing"
    assert failed["error_code"] == "0x80072560"
    assert main(["--env-file", str(path), "--json", "whoami", "--tenant", tenant, "--org", "https://evil.example"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "invalid_org_url"


def test_tenants_show_lists_orgs_with_status_and_remove_org_disconnects_one(env_file, azurite, capsys):
    from azure.data.tables import TableServiceClient

    from shared.tenants.orgs import OrgStatus
    from shared.tenants.registry import TenantRegistry, TenantStatus

    path, tenant, _client_id, _bundle, _version = env_file
    path.write_text(path.read_text() + f"\nSTORAGE_CONNECTION_STRING={azurite.connection_string}\n")
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    registry = TenantRegistry(service.get_table_client("tenants"), service.get_table_client("tenanthistory"))
    registry.create_tables()
    second = "https://contoso-test.crm4.dynamics.com"
    for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED):
        registry.record(tenant, status, reason="seed", actor="test", org_url=ORG)
    registry.record(tenant, TenantStatus.CONSENTED, reason="seed", actor="test", org_url=second)
    registry.set_org_status(tenant, ORG, OrgStatus.ACTIVE, reason="seed", actor="test")
    registry.set_org_status(tenant, second, OrgStatus.AWAITING_APPLICATION_USER, reason="seed", actor="test")

    assert main(["--env-file", str(path), "--json", "tenants", "show", tenant]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "active"
    assert {o["url"]: o["status"] for o in shown["orgs"]} == {ORG: "active", second: "awaiting_application_user"}

    assert main(["--env-file", str(path), "--json", "tenants", "remove-org", tenant, ORG, "--reason", "asked"]) == 0
    removed = json.loads(capsys.readouterr().out)
    assert removed["status"] == "awaiting_application_user" and [o["url"] for o in removed["orgs"]] == [second]
    history = registry.history(tenant)
    assert any(h.org == ORG and h.to_status == "removed" and h.actor == "operator CLI" for h in history)

    assert main(["--env-file", str(path), "--json", "tenants", "remove-org", tenant, ORG]) == 1
    refused = json.loads(capsys.readouterr().out)
    assert "org_not_found" in json.dumps(refused)
    assert registry.get_tenant(tenant).org_urls == (second,)
