import json
import re
from pathlib import Path

import pytest

from shared.errors import ConfigurationError
from shared.settings import CLOUD_PRESETS, AppMode, CredentialSource, Settings

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "11111111-2222-3333-4444-555555555555"
HOME = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def env(**overrides: str) -> dict[str, str]:
    base = {
        "ENTRA_CLIENT_ID": CLIENT,
        "ENTRA_HOME_TENANT_ID": HOME,
        "KEY_VAULT_URL": "https://kv.vault.azure.net/",
        "KEY_VAULT_CERTIFICATE_NAME": "s2s-client",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_defaults_are_public_cloud_key_vault_multi_tenant():
    s = Settings.from_env(env())
    assert s.app_mode is AppMode.MULTI_TENANT
    assert s.credential_source is CredentialSource.KEY_VAULT
    assert s.entra_authority_host == "https://login.microsoftonline.com"
    assert "crm4.dynamics.com" in s.dataverse_domain_suffixes
    assert s.key_vault_verify_challenge_resource is True


@pytest.mark.parametrize(
    "missing", ["ENTRA_CLIENT_ID", "ENTRA_HOME_TENANT_ID", "KEY_VAULT_URL", "KEY_VAULT_CERTIFICATE_NAME"]
)
def test_missing_required_setting_is_named(missing):
    values = env()
    del values[missing]
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(values)
    assert info.value.setting == missing
    assert missing in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENTRA_CLIENT_ID", "not-a-guid"),
        ("APP_MODE", "both"),
        ("CREDENTIAL_SOURCE", "password"),
        ("AZURE_CLOUD", "mars"),
        ("CERTIFICATE_REFRESH_SECONDS", "soon"),
        ("CERTIFICATE_REFRESH_SECONDS", "0"),
        ("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "maybe"),
        ("KEY_VAULT_URL", "http://kv.vault.azure.net/"),
        ("ENTRA_AUTHORITY_HOST", "https://user:pw@login.microsoftonline.com"),
        ("TOKEN_CLIENT_CACHE_SIZE", "-5"),
        ("HTTP_TIMEOUT_SECONDS", "0"),
    ],
)
def test_malformed_setting_is_named(name, value):
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env(**{name: value}))
    assert info.value.setting == name


def test_sovereign_cloud_presets_set_authority_and_dataverse_suffixes():
    gov = Settings.from_env(env(AZURE_CLOUD="usgov"))
    assert gov.entra_authority_host == "https://login.microsoftonline.us"
    assert gov.dataverse_domain_suffixes == ("crm.microsoftdynamics.us", "crm.appsplatform.us")
    assert gov.federation_audience == "api://AzureADTokenExchangeUSGov"
    china = Settings.from_env(env(AZURE_CLOUD="China"))
    assert china.entra_authority_host == "https://login.chinacloudapi.cn"
    assert china.dataverse_domain_suffixes == ("crm.dynamics.cn",)


def test_explicit_authority_host_and_suffixes_override_the_preset():
    s = Settings.from_env(
        env(
            ENTRA_AUTHORITY_HOST="https://127.0.0.1:8443/",
            DATAVERSE_DOMAIN_SUFFIXES=" .Example.test, other.test ",
        )
    )
    assert s.entra_authority_host == "https://127.0.0.1:8443"
    assert s.dataverse_domain_suffixes == ("example.test", "other.test")


def test_secretless_requires_a_user_assigned_identity():
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env(CREDENTIAL_SOURCE="managed_identity_federation", KEY_VAULT_URL=None))
    assert info.value.setting == "MANAGED_IDENTITY_CLIENT_ID"
    s = Settings.from_env(
        env(
            CREDENTIAL_SOURCE="managed_identity_federation",
            MANAGED_IDENTITY_CLIENT_ID=CLIENT,
            KEY_VAULT_URL=None,
        )
    )
    assert s.key_vault_url is None


def test_certificate_file_requires_a_path():
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env(CREDENTIAL_SOURCE="certificate_file"))
    assert info.value.setting == "CERTIFICATE_PATH"


def test_password_is_not_in_repr():
    s = Settings.from_env(
        env(CREDENTIAL_SOURCE="certificate_file", CERTIFICATE_PATH="/x.pfx", CERTIFICATE_PASSWORD="hunter2")
    )
    assert "hunter2" not in repr(s)


def test_every_setting_is_in_the_example_file_and_the_readme_table():
    fields = {f.upper() for f in Settings.__dataclass_fields__}
    fields |= {"AZURE_CLOUD"}
    example = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert fields <= set(example), fields - set(example)
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, re.MULTILINE))
    assert fields <= documented, fields - documented


def test_presets_cover_three_clouds():
    assert set(CLOUD_PRESETS) == {"public", "usgov", "china"}


def test_key_vault_reads_use_the_configured_http_timeout():
    from shared.bootstrap import build_certificate_source

    source = build_certificate_source(Settings.from_env(env(HTTP_TIMEOUT_SECONDS="7")), credential_factory=object)
    assert source._timeout == 7.0


def test_a_guid_followed_by_a_newline_is_not_a_guid():
    from shared.settings import is_guid

    assert is_guid(CLIENT)
    assert not is_guid(CLIENT + "\n") and not is_guid(" " + CLIENT)


def test_storage_clients_bound_connect_and_read_waits():
    from shared.storage import StorageClients

    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;"
        "TableEndpoint=http://127.0.0.1:1/devstoreaccount1;"
    )
    clients = StorageClients(Settings.from_env(env(STORAGE_CONNECTION_STRING=conn)))
    for client in (clients.table("t"), clients.queue("q"), clients.container("c")):
        transport = client._client._client._pipeline._transport
        transport = getattr(transport, "_transport", transport)  # a table client wraps its service's transport
        assert transport.connection_config.timeout == 5
        assert transport.connection_config.read_timeout == 20


_FILTERING_BASE = {
    "ENTRA_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
    "ENTRA_HOME_TENANT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    "CREDENTIAL_SOURCE": "certificate_file",
    "CERTIFICATE_PATH": "/tmp/none.pem",
    "WEBHOOK_SUBSCRIPTIONS": "account:Create,Update;contact:Delete",
}


def test_webhook_filtering_attributes_are_parsed_per_table() -> None:
    from shared.settings import Settings

    parsed = Settings.from_env({**_FILTERING_BASE, "WEBHOOK_FILTERING_ATTRIBUTES": "account: name, telephone1,name"})
    assert parsed.webhook_filtering_attributes == (("account", ("name", "telephone1")),)
    assert Settings.from_env(_FILTERING_BASE).webhook_filtering_attributes == ()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("contact:emailaddress1", "does not subscribe to Update"),  # contact is subscribed to Delete only
        ("lead:subject", "does not subscribe to Update"),  # not subscribed at all
        ("account:", "lower-case"),
        ("account:Name", "lower-case"),
        ("account:name;account:telephone1", "named twice"),
    ],
)
def test_bad_webhook_filtering_attributes_name_the_setting_and_the_problem(raw: str, problem: str) -> None:
    from shared.errors import ConfigurationError
    from shared.settings import Settings

    with pytest.raises(ConfigurationError, match="WEBHOOK_FILTERING_ATTRIBUTES") as caught:
        Settings.from_env({**_FILTERING_BASE, "WEBHOOK_FILTERING_ATTRIBUTES": raw})
    assert problem in str(caught.value)
