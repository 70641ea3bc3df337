"""main.bicep refuses to deploy what cannot work, before creating anything: a cloud without Flex Consumption
(Azure Government; Azure operated by 21Vianet is unconfirmed), a region without it, and the secretless mode with the
managed identity and the app registration in different tenants.

The guard's expressions are evaluated here with tests.infra.bicep_expressions for each case (cloud, region, tenant,
credential source), so the tests exercise what ARM will evaluate, not a copy of it. The wiring that makes the refusal
stop the deployment (the guard module allows only 'none'; the resource group waits for it; everything else lives in
the resource group) is checked as text, each check with a broken copy that it rejects.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.infra import bicep_source
from tests.infra.bicep_expressions import Scope, evaluate
from tests.infra.bicep_source import MAIN, MODULES, literal

GUARD = MODULES / "deployment-guard.bicep"
HOME = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OTHER = "99999999-8888-7777-6666-555555555555"
REQUIRED = {
    "environmentName": "dev",
    "entraClientId": "11111111-2222-3333-4444-555555555555",
    "entraHomeTenantId": HOME,
}
FLEX_CLI = "az functionapp list-flexconsumption-locations"


def reason(
    text: str | None = None,
    *,
    cloud: str = "AzureCloud",
    tenant: str = HOME,
    **parameters: Any,
) -> str:
    """main.bicep's reasonNotToDeploy for the given parameters, cloud (environment().name) and tenant()."""
    values = {**REQUIRED, "location": "westeurope", **parameters}
    scope = Scope(MAIN.read_text() if text is None else text, values, cloud=cloud, tenant_id=tenant)
    return str(evaluate("reasonNotToDeploy", scope))


def test_the_supported_combination_deploys() -> None:
    assert reason() == "none"
    assert reason(credentialSource="managed_identity_federation") == "none"


@pytest.mark.parametrize("cloud", ["AzureUSGovernment", "AzureChinaCloud"])
def test_sovereign_clouds_are_refused_with_the_reason(cloud: str) -> None:
    # Flex Consumption: "If you're using Azure Government, Flex Consumption isn't available there yet."
    # (azure-functions/migration/migrate-plan-consumption-to-flex); 21Vianet unconfirmed, so refused as well.
    text = reason(cloud=cloud, location="usgovvirginia" if cloud == "AzureUSGovernment" else "chinanorth3")
    assert text.startswith(f"Cloud {cloud} is not supported")
    assert "Azure Government" in text
    assert "Azure public cloud (AzureCloud)" in text


def test_a_region_without_flex_consumption_is_refused_naming_the_cli_command() -> None:
    text = reason(location="usgovvirginia")
    assert text.startswith("Region usgovvirginia is not on this template's list")
    assert FLEX_CLI in text
    assert "additionalFlexConsumptionRegions" in text


def test_a_region_is_matched_whatever_its_case_and_spaces() -> None:
    # azd passes the region's name (westeurope); a display name typed by hand still matches.
    assert reason(location="West Europe") == "none"
    assert reason(location="WESTEUROPE") == "none"


def test_a_newer_region_is_accepted_once_added() -> None:
    assert reason(location="newregion").startswith("Region newregion")
    assert reason(location="newregion", additionalFlexConsumptionRegions=["newregion"]) == "none"


def test_the_region_list_is_clean_and_public_only() -> None:
    regions = [literal(item) for item in bicep_source.array_items(MAIN, "var flexConsumptionRegions = [")]
    assert len(regions) >= 20
    assert len(set(regions)) == len(regions)
    for region in regions:
        assert re.fullmatch(r"[a-z0-9]+", region), region
        assert not region.startswith(("usgov", "usdod", "china")), region


def test_secretless_mode_across_two_tenants_is_refused_naming_both() -> None:
    text = reason(credentialSource="managed_identity_federation", tenant=OTHER)
    assert text.startswith("CREDENTIAL_SOURCE=managed_identity_federation needs the managed identity and the app")
    assert f"belongs to tenant {OTHER}" in text
    assert f"ENTRA_HOME_TENANT_ID is {HOME}" in text
    assert "CREDENTIAL_SOURCE=key_vault" in text


def test_tenant_ids_compare_without_regard_to_case() -> None:
    assert reason(credentialSource="managed_identity_federation", tenant=HOME.upper()) == "none"


def test_certificate_mode_does_not_care_about_the_tenant() -> None:
    # With key_vault the identity only reads the vault; the app registration may live anywhere.
    assert reason(credentialSource="key_vault", tenant=OTHER) == "none"


def test_every_reason_is_reported_at_once() -> None:
    text = reason(
        cloud="AzureUSGovernment", location="usgovtexas", credentialSource="managed_identity_federation", tenant=OTHER
    )
    assert text.index("Cloud AzureUSGovernment") < text.index("Region usgovtexas") < text.index("CREDENTIAL_SOURCE")
    assert "  " not in text


def test_reasons_join_with_one_space_when_one_in_the_middle_is_missing() -> None:
    text = reason(cloud="AzureChinaCloud", credentialSource="managed_identity_federation", tenant=OTHER)
    assert "Region" not in text
    assert "Supported clouds and regions. CREDENTIAL_SOURCE=" in text


def test_evaluation_follows_the_file_not_a_copy_of_it() -> None:
    # A broken copy that forgets the tenant check lets the cross-tenant case through: the evaluation reads the file.
    broken = MAIN.read_text().replace(
        "var federationTenantMismatch = useFederation && toLower(tenant().tenantId) != toLower(entraHomeTenantId)",
        "var federationTenantMismatch = false",
    )
    assert broken != MAIN.read_text()
    assert reason(broken, credentialSource="managed_identity_federation", tenant=OTHER) == "none"


# --- wiring: the refusal must stop the deployment before anything exists ------------------------------------------


def wiring_problems(main: str, guard: str) -> list[str]:
    """Why ``main``'s guard would not stop a refused deployment before any resource exists (empty if it would)."""
    problems = []
    guard_params = bicep_source.params_in(guard, "deployment-guard.bicep")
    allowed = guard_params.get("reasonNotToDeploy")
    if allowed is None or allowed.decorators.get("allowed", "").splitlines() != ["'none'"]:
        problems.append("the guard's reasonNotToDeploy must allow exactly 'none'")
    if re.search(r"^resource ", guard, re.M):
        problems.append("the guard must declare no resource")
    module = re.search(r"^module (\w+) 'modules/deployment-guard\.bicep' = \{\n((?:  .*\n)+)\}", main, re.M)
    if not module:
        problems.append("main.bicep does not use modules/deployment-guard.bicep")
        return problems
    if not re.search(r"^    reasonNotToDeploy: reasonNotToDeploy$", module.group(2), re.M):
        problems.append("main.bicep does not pass reasonNotToDeploy to the guard")
    if re.search(r"^  scope: ", module.group(2), re.M):
        problems.append("the guard must run at subscription scope, before the resource group exists")
    rg = next((body for symbol, type_, _, body in bicep_source.resources_in(main) if symbol == "rg"), None)
    if rg is None or not re.search(rf"dependsOn: \[\n\s+{module.group(1)}\n", "\n".join(rg) + "\n"):
        problems.append("the resource group does not wait for the guard (dependsOn)")
    for symbol, type_, _, _body in bicep_source.resources_in(main):
        if symbol != "rg":
            problems.append(f"resource {symbol} ({type_}) is created outside the resource group, guard or not")
    for name, body in re.findall(r"^module (\w+) '[^']+' = \{\n((?:  .*\n)+)\}", main, re.M):
        if name != module.group(1) and not re.search(r"^  scope: rg$", body, re.M):
            problems.append(f"module {name} is not scoped to the resource group, so it need not wait for the guard")
    return problems


def test_the_guard_stops_the_deployment_before_anything_exists() -> None:
    assert wiring_problems(MAIN.read_text(), GUARD.read_text()) == []


def test_wiring_check_fails_when_the_resource_group_does_not_wait() -> None:
    broken = MAIN.read_text().replace("  dependsOn: [\n    deploymentGuard\n  ]\n", "", 1)
    assert broken != MAIN.read_text()
    assert wiring_problems(broken, GUARD.read_text()) == ["the resource group does not wait for the guard (dependsOn)"]


def test_wiring_check_fails_when_the_guard_allows_anything() -> None:
    broken = GUARD.read_text().replace("@allowed([\n  'none'\n])\n", "", 1)
    assert broken != GUARD.read_text()
    assert wiring_problems(MAIN.read_text(), broken) == ["the guard's reasonNotToDeploy must allow exactly 'none'"]


def test_wiring_check_fails_on_a_module_outside_the_resource_group() -> None:
    broken = MAIN.read_text().replace("  name: 'monitoring'\n  scope: rg\n", "  name: 'monitoring'\n", 1)
    assert broken != MAIN.read_text()
    assert wiring_problems(broken, GUARD.read_text()) == [
        "module monitoring is not scoped to the resource group, so it need not wait for the guard"
    ]


def test_wiring_check_fails_when_the_reason_is_not_passed() -> None:
    broken = MAIN.read_text().replace("    reasonNotToDeploy: reasonNotToDeploy\n", "    reasonNotToDeploy: 'none'\n")
    assert wiring_problems(broken, GUARD.read_text()) == ["main.bicep does not pass reasonNotToDeploy to the guard"]
