"""House conventions of the Bicep under infra/ (AVM style, identity-first), checked as text.

tools/infra_check.py runs checkov for security checks; these cover what checkov does not: AVM description
prefixes and outputs, azd output names, role assignments (deterministic names, named roles, least privilege),
no shared keys and no literal secrets, and that main.bicep, its modules, parameters file and azure.yaml agree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.infra import bicep_source
from tests.infra.bicep_source import FUNCTION_APP, INFRA, MAIN, ROOT, literal

ALL_FILES = bicep_source.bicep_files()
MODULE_FILES = bicep_source.module_files()

# The only roles this template may grant, by id. Anything broader (Owner, Contributor, *Data Owner on vaults…)
# needs a reason here first.
ALLOWED_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "a4417e6f-fecd-4de8-b567-7b0420556985": "Key Vault Certificates Officer",
}

SECRET_PATTERNS = [
    re.compile(p, re.I)
    for p in (
        r"AccountKey=",
        r"SharedAccessSignature=",
        r"DefaultEndpointsProtocol=",
        r"InstrumentationKey=",
        r"\blistKeys\(",
        r"\blistSecrets\(",
        r"\blistConnectionStrings\(",
        r"-----BEGIN",
        r"\b\w*(password|secret|pwd)\s*[:=]\s*'[^']+'",  # a key named like a secret holding a literal
    )
]


def names(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(INFRA)) for p in paths]


def test_there_is_bicep_to_check() -> None:
    assert MAIN in ALL_FILES
    assert len(MODULE_FILES) >= 5


@pytest.mark.parametrize("path", ALL_FILES, ids=names(ALL_FILES))
def test_every_description_starts_required_or_optional(path: Path) -> None:
    for match in re.finditer(r"@(?:sys\.)?description\(\s*'([^']*)", path.read_text()):
        assert match.group(1).startswith(("Required. ", "Optional. ")), match.group(0)


@pytest.mark.parametrize("path", ALL_FILES, ids=names(ALL_FILES))
def test_every_parameter_is_described_and_required_means_no_default(path: Path) -> None:
    for param in bicep_source.params(path).values():
        assert param.description, f"{path.name}: param {param.name} has no @description"
        if param.description.startswith("Required."):
            assert param.default is None, f"{path.name}: {param.name} is Required. but has a default"
        else:
            assert param.default is not None, f"{path.name}: {param.name} is Optional. but has no default"


@pytest.mark.parametrize("path", ALL_FILES, ids=names(ALL_FILES))
def test_parameters_are_lower_camel_case(path: Path) -> None:
    for name in bicep_source.params(path):
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", name), f"{path.name}: {name}"


@pytest.mark.parametrize("path", ALL_FILES, ids=names(ALL_FILES))
def test_secret_looking_parameters_are_secure(path: Path) -> None:
    for param in bicep_source.params(path).values():
        if re.search(r"(password|secret|key|token|connectionstring)$", param.name, re.I):
            assert "secure" in param.decorators, f"{path.name}: {param.name} needs @secure()"


# AVM's rule is for resource modules; modules/deployment-guard.bicep creates nothing, so it has no name or id to give.
RESOURCE_MODULES = [p for p in MODULE_FILES if bicep_source.resources(p)]


def test_only_the_deployment_guard_declares_no_resource() -> None:
    assert [p.name for p in MODULE_FILES if p not in RESOURCE_MODULES] == ["deployment-guard.bicep"]


@pytest.mark.parametrize("path", RESOURCE_MODULES, ids=names(RESOURCE_MODULES))
def test_every_module_outputs_name_and_resource_id(path: Path) -> None:
    outputs = bicep_source.outputs(path)
    assert {"name", "resourceId"} <= set(outputs)
    assert outputs["resourceId"].endswith(".id")


def test_main_outputs_are_upper_snake_case_for_azd() -> None:
    outputs = bicep_source.outputs(MAIN)
    assert outputs
    for name in outputs:
        assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", name), name
    assert {"AZURE_FUNCTION_APP_NAME", "AZURE_RESOURCE_GROUP", "AZURE_ONBOARDING_REDIRECT_URI"} <= set(outputs)


@pytest.mark.parametrize("path", ALL_FILES, ids=names(ALL_FILES))
def test_outputs_and_code_carry_no_secrets(path: Path) -> None:
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name}: {pattern.pattern}"
    for name, value in bicep_source.outputs(path).items():
        assert "ConnectionString" not in value, f"{path.name}: output {name} exposes a connection string"


def test_storage_accepts_identities_only() -> None:
    texts = "\n".join(p.read_text() for p in ALL_FILES)
    assert not re.search(r"allowSharedKeyAccess:\s*true", texts)
    storage = (INFRA / "modules" / "storage.bicep").read_text()
    for setting in (
        "allowSharedKeyAccess: false",
        "allowBlobPublicAccess: false",
        "minimumTlsVersion: 'TLS1_2'",
        "supportsHttpsTrafficOnly: true",
        "defaultToOAuthAuthentication: true",
    ):
        assert setting in storage


def test_key_vault_uses_rbac_with_soft_delete_and_purge_protection() -> None:
    vault = (INFRA / "modules" / "key-vault.bicep").read_text()
    for setting in ("enableRbacAuthorization: true", "enableSoftDelete: true", "enablePurgeProtection: true"):
        assert setting in vault


def test_monitoring_refuses_local_authentication() -> None:
    monitoring = (INFRA / "modules" / "monitoring.bicep").read_text()
    assert "disableLocalAuth: true" in monitoring  # Log Analytics
    assert "DisableLocalAuth: true" in monitoring  # Application Insights


def role_assignments() -> list[tuple[Path, str, list[str], list[str]]]:
    found = []
    for path in ALL_FILES:
        for symbol, type_, comments, body in bicep_source.resources(path):
            if type_.startswith("Microsoft.Authorization/roleAssignments@"):
                found.append((path, symbol, comments, body))
    return found


def role_ids(path: Path) -> dict[str, str]:
    text = path.read_text()
    ids = {}
    if "var roleIds = {" in text:
        ids = {k: literal(v) for k, v in bicep_source.object_entries(path, "var roleIds = {").items()}
    for name, value in re.findall(r"^var (\w+RoleId) = '([0-9a-f-]{36})'$", text, re.M):
        ids[name] = value
    return ids


def test_role_assignments_exist() -> None:
    assert len(role_assignments()) >= 5


@pytest.mark.parametrize(
    ("path", "symbol", "comments", "body"),
    role_assignments(),
    ids=[f"{p.name}:{s}" for p, s, _, _ in role_assignments()],
)
def test_role_assignment_is_deterministic_least_privilege_and_named(
    path: Path, symbol: str, comments: list[str], body: list[str]
) -> None:
    text = "\n".join(body)
    name = re.search(r"^  name: (.+)$", text, re.M)
    assert name, f"{symbol} has no name"
    assert name.group(1).startswith("guid("), f"{symbol}: role assignment names must be guid(scope, principal, role)"
    reference = re.search(r"roleDefinitions', (\w+(?:\.\w+)?)\)", text)
    assert reference, f"{symbol}: roleDefinitionId must be subscriptionResourceId(..., <role id>)"
    role_id = role_ids(path)[reference.group(1).split(".")[-1]]
    assert role_id in ALLOWED_ROLES, f"{symbol}: role {role_id} is not on the least-privilege list"
    assert ALLOWED_ROLES[role_id] in "\n".join(comments), f"{symbol}: name the role ({ALLOWED_ROLES[role_id]})"
    assert reference.group(1) in name.group(1), f"{symbol}: the guid() must include the role id"
    assert "scope: " in text, f"{symbol}: scope the assignment to the resource, not the resource group"


def test_python_version_is_the_one_tested_on() -> None:
    param = bicep_source.params(FUNCTION_APP)["pythonVersion"]
    assert literal(param.default or "''") == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert 'requires-python = ">=3.11,<3.12"' in (ROOT / "pyproject.toml").read_text()
    text = FUNCTION_APP.read_text()
    assert "tier: 'FlexConsumption'" in (INFRA / "modules" / "hosting-plan.bicep").read_text()
    assert re.search(r"runtime: \{\n\s+name: 'python'\n\s+version: pythonVersion", text)
    assert re.search(r"type: 'UserAssignedIdentity'", text)


def test_main_uses_every_module_and_only_existing_ones() -> None:
    used = set(re.findall(r"^module \w+ '([^']+)'", MAIN.read_text(), re.M))
    assert used == {f"modules/{p.name}" for p in MODULE_FILES}


def test_abbreviations_cover_every_use() -> None:
    abbreviations = json.loads((INFRA / "abbreviations.json").read_text())
    used = set(re.findall(r"\babbrs\.(\w+)", MAIN.read_text()))
    assert used <= set(abbreviations)


def test_parameters_file_sets_only_declared_parameters() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = bicep_source.params(MAIN)
    assert set(parameters) <= set(declared)
    required = {name for name, p in declared.items() if p.default is None}
    assert required <= set(parameters), "azd must be able to fill every required parameter"
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"


def test_azure_yaml_deploys_this_folder_as_a_python_function() -> None:
    text = (ROOT / "azure.yaml").read_text()
    service = text.split("services:\n", 1)[1]
    assert re.search(r"^  api:\n(    .+\n)+", service, re.M)
    for line in ("    project: .", "    language: python", "    host: function"):
        assert line in service.splitlines()
    tags = MAIN.read_text()
    assert "'azd-service-name': 'api'" in tags
    hook = re.search(r"run: (\S+)", text)
    assert hook
    assert (ROOT / hook.group(1)).is_file()
