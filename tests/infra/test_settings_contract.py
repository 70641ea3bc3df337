"""The app-settings contract: the code, local.settings.example.json and the Bicep name the same settings.

``shared.settings.Settings`` is the one list of what the app reads: each field, upper-cased, is an environment
variable (AZURE_CLOUD included). local.settings.example.json and the ``appSettings`` object in
infra/modules/function-app.bicep must name exactly that set, apart from:

- host settings, which belong to the Functions host rather than the app: FUNCTIONS_WORKER_RUNTIME and
  AzureWebJobsStorage locally; ``AzureWebJobsStorage__*``, ``AzureFunctionsJobHost__*`` and
  ``APPLICATIONINSIGHTS_*`` in Azure;
- the local-only settings (LOCAL_ONLY), which Azure must never carry: STORAGE_CONNECTION_STRING (Azure reaches
  storage with the managed identity; a connection string would need shared keys, which are disabled) and
  CERTIFICATE_PATH / CERTIFICATE_PASSWORD (CREDENTIAL_SOURCE=certificate_file is for local work; Azure uses
  key_vault or managed_identity_federation).

A setting's value in Azure comes from the main.bicep parameter named after it (camelCase of the field), whose
default is what the code does without the setting, or from the deployment itself (FROM_DEPLOYMENT).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from shared.settings import CLOUD_PRESETS, AppMode, CredentialSource, Settings
from tests.infra import bicep_source
from tests.infra.bicep_source import FUNCTION_APP, MAIN, ROOT, literal

LOCAL_ONLY = frozenset({"STORAGE_CONNECTION_STRING", "CERTIFICATE_PATH", "CERTIFICATE_PASSWORD"})
LOCAL_HOST_SETTINGS = frozenset({"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"})
AZURE_HOST_PREFIXES = ("AzureWebJobsStorage__", "AzureFunctionsJobHost__", "APPLICATIONINSIGHTS_")
# Python worker settings the app reads but does not own (shared.settings.MonitorSettings).
WORKER_SETTINGS_READ = frozenset({"PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"})
# Settings whose Azure value is a fact of the deployment (a resource, the cloud), not a tunable parameter.
FROM_DEPLOYMENT = frozenset(
    {
        "AZURE_CLOUD",
        "KEY_VAULT_URL",
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE",
        "MANAGED_IDENTITY_CLIENT_ID",
        "ONBOARDING_REDIRECT_URI",
        "STORAGE_ACCOUNT_NAME",
        "STORAGE_SUFFIX",
        "WEBHOOK_RECEIVER_URL",
        "WEBHOOK_FUNCTION_KEY",
    }
)
# Required by Settings whatever the mode, and for the default CREDENTIAL_SOURCE (key_vault).
REQUIRED = frozenset({"ENTRA_CLIENT_ID", "ENTRA_HOME_TENANT_ID"})
REQUIRED_FOR_KEY_VAULT = frozenset({"KEY_VAULT_URL", "KEY_VAULT_CERTIFICATE_NAME"})

# Stand-ins for what only a deployment knows, to validate the whole set of Azure settings.
SAMPLES = {
    "ENTRA_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
    "ENTRA_HOME_TENANT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    "AZURE_CLOUD": "public",
    "KEY_VAULT_URL": "https://kv-abc.vault.azure.net/",
    "MANAGED_IDENTITY_CLIENT_ID": "33333333-4444-5555-6666-777777777777",
    "ONBOARDING_REDIRECT_URI": "https://func-abc.azurewebsites.net/api/consent/callback",
    "STORAGE_ACCOUNT_NAME": "stabc",
    "STORAGE_SUFFIX": "core.windows.net",
}
BASE_ENV = {
    "ENTRA_CLIENT_ID": SAMPLES["ENTRA_CLIENT_ID"],
    "ENTRA_HOME_TENANT_ID": SAMPLES["ENTRA_HOME_TENANT_ID"],
    "KEY_VAULT_URL": SAMPLES["KEY_VAULT_URL"],
    "KEY_VAULT_CERTIFICATE_NAME": "s2s-client",
}


def camel(setting: str) -> str:
    first, *rest = setting.lower().split("_")
    return first + "".join(part.capitalize() for part in rest)


def settings_names() -> set[str]:
    return {f.name.upper() for f in dataclasses.fields(Settings)}


def local_names() -> set[str]:
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    return set(values) - LOCAL_HOST_SETTINGS


def bicep_settings() -> dict[str, str]:
    return bicep_source.object_entries(FUNCTION_APP, "var appSettings = {")


def bicep_app_names() -> set[str]:
    return {name for name in bicep_settings() if not name.startswith(AZURE_HOST_PREFIXES)}


def main_params() -> dict[str, bicep_source.Param]:
    return bicep_source.params(MAIN)


def rendered(param: bicep_source.Param) -> str:
    """The app-setting string a parameter's default becomes (string(x), or 'true'/'false' for a bool)."""
    assert param.default is not None, f"{param.name} has no default"
    if param.type == "string":
        return literal(param.default)
    if param.type == "int":
        return str(int(param.default))
    if param.type == "bool":
        assert param.default in ("true", "false")
        return param.default
    raise AssertionError(f"{param.name}: a setting parameter must be string, int or bool, not {param.type}")


def azure_environment(**overrides: str) -> dict[str, str]:
    """The app settings the Bicep produces with every parameter at its default (deployment facts sampled)."""
    params = main_params()
    env = {}
    for name, expression in bicep_settings().items():
        if name.startswith(AZURE_HOST_PREFIXES):
            continue
        symbol = camel(name)
        if expression.startswith("'"):
            env[name] = literal(expression)
        elif name in SAMPLES:
            env[name] = SAMPLES[name]
        else:
            env[name] = rendered(params[symbol])
    env.update(overrides)
    return env


def test_settings_read_exactly_the_fields_from_the_environment() -> None:
    source = (ROOT / "shared" / "settings.py").read_text()
    read = set(re.findall(r"\b(?:get|required|parsed)\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    # MonitorSettings reads the host's Application Insights settings and the worker's telemetry switch (not the
    # app's to set: the host owns them), for the app's own exporter.
    assert read - WORKER_SETTINGS_READ - {n for n in read if n.startswith(AZURE_HOST_PREFIXES)} == settings_names()


def test_local_example_names_every_setting() -> None:
    assert local_names() == settings_names()


def test_bicep_sets_every_setting_except_the_local_only_ones() -> None:
    missing = settings_names() - LOCAL_ONLY - bicep_app_names()
    assert not missing, f"settings the app reads but Azure does not set: {sorted(missing)}"


def test_bicep_sets_nothing_unknown() -> None:
    unknown = bicep_app_names() - settings_names()
    assert not unknown, f"app settings no Settings field reads (typo, or a host setting not allowlisted): {unknown}"


def test_local_only_settings_are_never_set_in_azure() -> None:
    assert not LOCAL_ONLY & set(bicep_settings())
    # Nor their host equivalents: a storage connection string, or runtime settings Flex Consumption rejects.
    assert not {"AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION"} & set(
        bicep_settings()
    )


def test_local_only_settings_are_documented_where_they_are_decided() -> None:
    comment = FUNCTION_APP.read_text().split("var appSettings = {")[0].rsplit("// App settings.", 1)[1]
    readme = (ROOT / "infra" / "README.md").read_text()
    for name in LOCAL_ONLY:
        assert name in comment, f"{name} is not named in the comment above appSettings"
        assert name in readme, f"{name} is not named in infra/README.md"


def test_required_settings_are_present_everywhere() -> None:
    required_fields = {f.name.upper() for f in dataclasses.fields(Settings) if f.default is dataclasses.MISSING}
    assert required_fields == REQUIRED
    for names, where in (
        (settings_names(), "Settings"),
        (local_names(), "local.settings.example.json"),
        (bicep_app_names(), "function-app.bicep"),
    ):
        assert names >= REQUIRED | REQUIRED_FOR_KEY_VAULT, f"{where} lacks a required setting"


def test_required_settings_come_from_azd_parameters() -> None:
    parameters = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]
    for name in REQUIRED:
        assert parameters[camel(name)]["value"] == "${" + name + "}"
        assert main_params()[camel(name)].default is None


def test_each_setting_takes_the_parameter_named_after_it() -> None:
    params = main_params()
    main_text = MAIN.read_text()
    for name, expression in bicep_settings().items():
        if name.startswith(AZURE_HOST_PREFIXES) or name in FROM_DEPLOYMENT:
            continue
        symbol = camel(name)
        assert re.search(rf"\b{symbol}\b", expression), f"{name} should be set from `{symbol}`, not {expression}"
        assert symbol in params, f"main.bicep has no parameter {symbol} for {name}"
        assert re.search(rf"^    {symbol}: {symbol}$", main_text, re.M), f"main.bicep does not pass {symbol} on"


def test_every_tunable_setting_has_a_parameter() -> None:
    tunable = settings_names() - LOCAL_ONLY - FROM_DEPLOYMENT
    assert {camel(name) for name in tunable} <= set(main_params())


@pytest.mark.parametrize("name", sorted(settings_names() - LOCAL_ONLY - FROM_DEPLOYMENT - REQUIRED))
def test_parameter_default_matches_the_code_default(name: str) -> None:
    assert camel(name) in main_params(), f"main.bicep has no parameter {camel(name)} for {name}"
    param = main_params()[camel(name)]
    field_name = name.lower()
    if name in BASE_ENV:
        # No code default (required for key_vault): the template's default is the documented example's.
        local = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
        assert rendered(param) == local[name]
        return
    without = getattr(Settings.from_env(BASE_ENV), field_name)
    with_default = getattr(Settings.from_env({**BASE_ENV, name: rendered(param)}), field_name)
    assert with_default == without, f"{param.name} = {param.default} differs from the code's default {without!r}"


def test_enumerated_parameters_allow_only_values_the_code_accepts() -> None:
    params = main_params()
    app_modes = {literal(v) for v in params["appMode"].decorators["allowed"].splitlines()}
    assert app_modes == {mode.value for mode in AppMode}
    sources = {literal(v) for v in params["credentialSource"].decorators["allowed"].splitlines()}
    assert sources == {s.value for s in CredentialSource} - {CredentialSource.CERTIFICATE_FILE.value}


def test_azure_settings_at_their_defaults_are_valid() -> None:
    for source in ("key_vault", "managed_identity_federation"):
        settings = Settings.from_env(azure_environment(CREDENTIAL_SOURCE=source))
        assert settings.storage_connection_string is None
        assert settings.certificate_path is None
        assert settings.managed_identity_client_id == SAMPLES["MANAGED_IDENTITY_CLIENT_ID"]


def test_settings_from_the_deployment() -> None:
    entries = bicep_settings()
    assert literal(entries["KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"]) == "true"
    assert entries["KEY_VAULT_URL"] == "keyVaultUrl"
    assert re.search(r"^    keyVaultUrl: keyVault\.outputs\.uri$", MAIN.read_text(), re.M)
    assert entries["STORAGE_ACCOUNT_NAME"] == "storageAccountName"
    assert re.search(r"^    storageSuffix: environment\(\)\.suffixes\.storage$", MAIN.read_text(), re.M)
    # One identity for everything: the app's own clients, host storage and telemetry.
    assert entries["MANAGED_IDENTITY_CLIENT_ID"] == "identityClientId"
    assert entries["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert literal(entries["AzureWebJobsStorage__credential"]) == "managedidentity"
    assert "ClientId=${identityClientId};Authorization=AAD" in entries["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]


def test_redirect_uri_is_the_consent_callback_route() -> None:
    expression = bicep_settings()["ONBOARDING_REDIRECT_URI"]
    assert expression == "'https://${functionApp.properties.defaultHostName}/api/consent/callback'"
    onboarding = (ROOT / "functions" / "onboarding.py").read_text()
    assert 'route="consent/callback"' in onboarding


def test_cloud_mapping_matches_the_code_presets() -> None:
    text = MAIN.read_text()
    line = next(line for line in text.splitlines() if line.startswith("var azureCloud = "))
    assert set(re.findall(r"[?:] '(\w+)'", line)) == set(CLOUD_PRESETS)
    audiences = {k: literal(v) for k, v in bicep_source.object_entries(MAIN, "var federationAudiences = {").items()}
    assert audiences == {name: preset.federation_audience for name, preset in CLOUD_PRESETS.items()}


def test_dequeue_count_agrees_with_the_host() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    host_count = host["extensions"]["queues"]["maxDequeueCount"]
    assert int(main_params()["webhookMaxDequeueCount"].default or 0) == host_count
    entries = bicep_settings()
    assert entries["AzureFunctionsJobHost__extensions__queues__maxDequeueCount"] == "string(webhookMaxDequeueCount)"
    assert entries["WEBHOOK_MAX_DEQUEUE_COUNT"] == "string(webhookMaxDequeueCount)"


def test_trigger_connections_are_identity_based() -> None:
    connections = set()
    for path in Path(ROOT / "functions").glob("*.py"):
        connections |= set(re.findall(r'connection="(\w+)"', path.read_text()))
    assert connections, "no storage trigger connections found"
    for connection in connections:
        for suffix in ("credential", "clientId", "queueServiceUri", "blobServiceUri"):
            assert f"{connection}__{suffix}" in bicep_settings(), f"{connection}__{suffix} is not set"


def test_the_webhook_function_key_reaches_the_app_through_the_vault_secret_the_deployment_writes() -> None:
    """WEBHOOK_FUNCTION_KEY is a Key Vault reference to `webhook-function-key`; the key-vault module writes that
    secret from a @secure() parameter the azd environment fills; the app identity reads the vault in every mode
    (the secretless mode too: the reference resolves with it)."""
    import json

    from tests.infra.bicep_source import MODULES, params

    app = FUNCTION_APP.read_text()
    reference = re.search(
        r"WEBHOOK_FUNCTION_KEY: '@Microsoft.KeyVault\(SecretUri=\$\{keyVaultUrl\}secrets/([\w-]+)/\)'", app
    )
    assert reference is not None
    vault = (MODULES / "key-vault.bicep").read_text()
    written = re.search(r"name: '([\w-]+)'\n  properties: \{\n    value: webhookFunctionKey", vault)
    assert written is not None and written.group(1) == reference.group(1)
    for path in (MAIN, MODULES / "key-vault.bicep"):
        assert "secure" in params(path)["webhookFunctionKey"].decorators, path
    main = MAIN.read_text()
    assert "secretsUserPrincipalId: identity.outputs.principalId\n" in main  # not only in key_vault mode
    assert "webhookFunctionKey: webhookFunctionKey" in main
    mapping = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]["webhookFunctionKey"]
    assert mapping == {"value": "${WEBHOOK_FUNCTION_KEY=}"}
