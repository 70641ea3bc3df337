"""Month nine against the cloud-in-a-box: Key Vault renews the certificate on its own (a new version whose public
part nobody registered); tokens keep working with the version in use, the job and the CLI say why the new one
waits, and once it is registered workers switch to it without a restart. Real MSAL, SecretClient and Entra stand-in.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace

import pytest

from cli.main import main
from sandbox.net.pki import make_certificate
from shared.bootstrap import build_services
from shared.errors import CertificateError
from shared.settings import Settings
from tests.integration.conftest import key_vault_app, key_vault_settings

pytestmark = pytest.mark.integration

ORG = "https://contoso.crm.dynamics.com"


@dataclass
class App:
    client_id: str
    home: str
    tenant: str
    cert_name: str
    v1: str
    v1_bundle: object
    settings: Settings


@pytest.fixture
def app(sandbox, sandbox_env):
    """An app whose certificate (version v1, registered) lives in Key Vault, and one consenting tenant."""
    st = sandbox.state
    kv = key_vault_app(st, "Rotation test app", "rot")
    tenant = st.add_tenant(display_name="Customer")
    st.grant_consent(tenant, kv.client_id)
    settings = key_vault_settings(sandbox, kv, certificate_refresh_seconds=1)
    client_id, home, cert_name, v1, bundle = kv.client_id, kv.home, kv.cert_name, kv.version, kv.bundle
    return App(client_id, home, tenant, cert_name, v1, bundle, settings)


@pytest.fixture
def restore_environ():
    """--env-file writes into this process's environment; put it back after the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def env_file(app: App, path) -> str:
    lines = [
        f"ENTRA_CLIENT_ID={app.client_id}",
        f"ENTRA_HOME_TENANT_ID={app.home}",
        f"ENTRA_AUTHORITY_HOST={app.settings.entra_authority_host}",
        f"KEY_VAULT_URL={app.settings.key_vault_url}",
        f"KEY_VAULT_CERTIFICATE_NAME={app.cert_name}",
        f"KEY_VAULT_VERIFY_CHALLENGE_RESOURCE={str(app.settings.key_vault_verify_challenge_resource).lower()}",
        f"MANAGED_IDENTITY_CLIENT_ID={app.settings.managed_identity_client_id}",
    ]
    path.write_text("\n".join(lines))
    return str(path)


@pytest.mark.usefixtures("restore_environ")
def test_auto_renewed_version_waits_until_registered_then_is_used_without_restart(
    app, sandbox, tmp_path, caplog, capsys
):
    st = sandbox.state
    services = build_services(app.settings)
    services.tokens.get_token(app.tenant, ORG)
    assert services.tokens.assertion_source.describe()["version"] == app.v1

    # Key Vault's AutoRenew: a new version with a new certificate; nobody uploads its public part.
    renewed = make_certificate("rotation-v1")
    v2 = st.create_certificate(app.cert_name, renewed)
    time.sleep(1.2)
    with caplog.at_level(logging.INFO):
        token = services.tokens.get_token(app.tenant, "https://other.crm4.dynamics.com")
    assert token.source == "identity_provider"  # tokens keep working, signed with v1
    described = services.tokens.assertion_source.describe()
    assert described["version"] == app.v1
    waiting = described["waiting_version"]
    assert waiting["version"] == v2 and waiting["status"] == "not_registered"
    assert waiting["code"] == "AADSTS700027"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(app.v1_bundle.sha1_thumbprint_hex in m and renewed.sha1_thumbprint_hex in m for m in errors)
    assert any(f"az ad app credential reset --id {app.client_id}" in m and "--append" in m for m in errors)

    # The job says so, and so does the CLI in a fresh process (whose first read finds v2 refused and v1 accepted).
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = services.jobs.run_certificate_expiry()
    assert report["version"] == app.v1
    assert report["problem"] == "new version not registered on the app"
    assert report["waiting_version"]["version"] == v2
    assert any(r.levelno == logging.ERROR and "certificate_expiry" in r.getMessage() for r in caplog.records)
    assert main(["--env-file", env_file(app, tmp_path / "app.env"), "--json", "certificate"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == app.v1
    assert shown["waiting_version"]["version"] == v2
    assert "not registered" in shown["waiting_version"]["why"]
    assert f"--version {v2}" in shown["waiting_version"]["fix"]

    # The operator registers v2: the running worker switches at its next check, no restart.
    st.add_application_certificate(app.client_id, renewed.cert_pem)
    time.sleep(1.2)
    services.tokens.get_token(app.tenant, "https://third.crm4.dynamics.com")
    described = services.tokens.assertion_source.describe()
    assert described["version"] == v2
    assert described["sha1_thumbprint"] == renewed.sha1_thumbprint_hex
    assert described["waiting_version"] is None
    assert services.jobs.run_certificate_expiry()["problem"] is None


def test_a_fresh_worker_after_the_renewal_signs_with_the_registered_version(app, sandbox):
    st = sandbox.state
    st.create_certificate(app.cert_name, make_certificate("rotation-v2"))  # not registered
    services = build_services(app.settings)
    st.reset_counters()
    token = services.tokens.get_token(app.tenant, ORG)
    assert token.source == "identity_provider"
    assert services.tokens.assertion_source.describe()["version"] == app.v1
    assert st.count("token", tenant=app.tenant) == 1  # no refused request for the customer: proven in the home tenant
    assert st.count("token_error", tenant=app.home) == 1  # the one canary for the renewed version


def test_an_unreachable_entra_during_the_check_switches_nothing_and_the_check_is_retried(app, sandbox):
    st = sandbox.state
    services = build_services(replace(app.settings, certificate_refresh_seconds=3600))
    services.tokens.get_token(app.tenant, ORG)
    renewed = make_certificate("rotation-v2")
    st.add_application_certificate(app.client_id, renewed.cert_pem)
    v2 = st.create_certificate(app.cert_name, renewed)
    st.inject_fault("entra", status=503, count=1, tenant=app.home, endpoint="token")
    provider = services.tokens.assertion_source.provider
    provider._next_refresh = 0  # the hour has passed
    assert provider.current().version == app.v1
    waiting = services.tokens.assertion_source.describe()["waiting_version"]
    assert waiting["status"] == "unproven" and waiting["code"] == "AADSTS90033"
    assert 0 < waiting["next_check_in_seconds"] <= 60  # retried after a minute, not after the hour
    provider._next_refresh = 0
    provider._waiting = replace(provider.waiting, next_check=0)  # that minute has passed
    assert provider.current().version == v2


def test_vault_whose_challenge_names_another_resource_is_explained_and_not_retried_per_call(app, sandbox):
    st = sandbox.state
    services = build_services(replace(app.settings, key_vault_verify_challenge_resource=True))
    st.reset_counters()
    messages = []
    for _ in range(3):
        with pytest.raises(CertificateError, match="KEY_VAULT_VERIFY_CHALLENGE_RESOURCE") as info:
            services.tokens.get_token(app.tenant, ORG)
        messages.append(info.value.message)
        assert info.value.is_transient is False
    # At most the one anonymous request that drew the challenge (none when an earlier client in this process
    # cached the vault's challenge); no token was sent and the secret never read.
    assert st.count("vault_request", status=401) <= 1
    assert st.count("vault_get", name=app.cert_name) == 0
    # The later calls got the remembered failure instead of asking the vault again.
    assert all("failed" in m and "read again after" in m for m in messages[1:])


@pytest.mark.usefixtures("restore_environ")
def test_cli_explains_the_challenge_setting_instead_of_invalid_argument(app, tmp_path, capsys):
    path = env_file(
        replace(app, settings=replace(app.settings, key_vault_verify_challenge_resource=True)), tmp_path / "a.env"
    )
    assert main(["--env-file", path, "--json", "certificate"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["error"] == "certificate_error"
    assert "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE" in shown["message"]


def test_vault_403_names_key_vaults_code_and_the_access_policy_fix(app, sandbox):
    outsider = sandbox.state.add_managed_identity(tenant_id=app.home)
    services = build_services(replace(app.settings, managed_identity_client_id=outsider.client_id))
    with pytest.raises(CertificateError) as info:
        services.tokens.get_token(app.tenant, ORG)
    assert "Forbidden/ForbiddenByRbac" in info.value.message
    assert "Key Vault Secrets User" in info.value.message
    assert "--secret-permissions get" in info.value.message
