"""What a Flex Consumption function app accepts, checked over the Bicep so that a rejected property cannot come back.

Flex Consumption answers a site whose ``siteConfig`` carries a property it does not take with ARM 400, extended code
51021. Reported verbatim: "The following list of 4 site configuration properties (Site.SiteConfig.FtpsState,
Site.SiteConfig.Use32BitWorkerProcess, Site.SiteConfig.NetFrameworkVersion,
Site.SiteConfig.FunctionsRuntimeScaleMonitoringEnabled) for Flex Consumption sites is invalid"
(microsoft/azure-pipelines-tasks#21032, where West Europe rejected what North Europe still accepted: enforcement
rolls out by region), Site.SiteConfig.LinuxFxVersion (Azure/terraform-azurerm-avm-res-web-site#283) and
FunctionAppScaleLimit (microsoft/azure-pipelines-tasks#22254). ``azd up`` then stops at the function app. So
``siteConfig`` (and any ``sites/config`` named ``web``, which is the same object) may hold only the properties on
SITE_CONFIG_ALLOWED, each with the source that it is accepted; everything else fails here first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.infra import bicep_source
from tests.infra.bicep_source import FUNCTION_APP, MAIN, MODULES

# Why each property may stay. Acceptance on Flex Consumption has no positive list in Microsoft's docs; the evidence
# is (a) the property is a Microsoft.Web/sites siteConfig property (learn.microsoft.com/azure/templates/
# microsoft.web/sites#siteconfig) that the Flex deprecation table does not name (learn.microsoft.com/azure/
# azure-functions/functions-app-settings#flex-consumption-plan-deprecations), and (b) Azure Verified Modules' web
# site module keeps sending it for Flex Consumption apps after dropping every property ARM rejects there
# (Azure/terraform-azurerm-avm-res-web-site, locals.config.tf, commit ea8e0e4 "omit siteConfig properties Flex
# Consumption rejects"). Only a real deployment proves it; infra/README.md says so.
SITE_CONFIG_ALLOWED = {
    # TLS 1.2 minimum for the app's HTTPS endpoint: (a) and (b); App Service "minimum TLS version" setting
    # (learn.microsoft.com/azure/app-service/overview-tls).
    "minTlsVersion": "sites#siteconfig; not on the Flex deprecation table; sent for Flex apps by the AVM module",
    # The same for the scm (deployment) endpoint: (a) and (b).
    "scmMinTlsVersion": "sites#siteconfig; not on the Flex deprecation table; sent for Flex apps by the AVM module",
    # HTTP/2: (a) and (b).
    "http20Enabled": "sites#siteconfig; not on the Flex deprecation table; sent for Flex apps by the AVM module",
    # allowedIpRanges. Inbound access restrictions are supported on Flex Consumption (the plan table in
    # learn.microsoft.com/azure/azure-functions/functions-networking-options), and ipSecurityRestrictions is where
    # access restrictions live (learn.microsoft.com/azure/app-service/app-service-ip-restrictions); (b).
    "ipSecurityRestrictions": "access restrictions: supported on Flex (functions-networking-options); AVM module",
    "ipSecurityRestrictionsDefaultAction": "access restrictions: supported on Flex; sent by the AVM module",
    # Keeps the scm site off the main site's restrictions so azd deploy keeps working: (a) and (b).
    "scmIpSecurityRestrictionsUseMain": "access restrictions: supported on Flex; sent by the AVM module",
}

# siteConfig properties Microsoft or ARM itself names as rejected or deprecated on Flex Consumption: the deprecation
# table (ftpsState "FTPS not supported", use32BitWorkerProcess, alwaysOn, windowsFxVersion, linuxFxVersion,
# netFrameworkVersion, javaVersion, powerShellVersion, preWarmedInstanceCount, functionAppScaleLimit) and verbatim
# ARM 51021 answers quoted in the module docstring.
# None of them may ever join the allow-list.
SITE_CONFIG_REJECTED = frozenset(
    {
        "ftpsState",
        "linuxFxVersion",
        "windowsFxVersion",
        "alwaysOn",
        "use32BitWorkerProcess",
        "netFrameworkVersion",
        "javaVersion",
        "powerShellVersion",
        "preWarmedInstanceCount",
        "functionAppScaleLimit",
        "functionsRuntimeScaleMonitoringEnabled",
    }
)

_SITE_CONFIG = re.compile(r"^\s*siteConfig\s*:(.*)$")
_NESTED_RESOURCE = re.compile(r"^\s*resource \w+ '([^']+)'")


def site_config_violations(text: str) -> list[str]:
    """Every way ``text`` (Bicep) sets a siteConfig property outside SITE_CONFIG_ALLOWED, or sets siteConfig in a
    shape this check cannot read (not an object literal). Empty when the text is fine."""
    lines = text.splitlines()
    problems: list[str] = []
    for index, line in enumerate(lines):
        match = _SITE_CONFIG.match(line)
        if match:
            if match.group(1).strip() != "{":
                problems.append(f"line {index + 1}: siteConfig must be an object literal, one property a line")
                continue
            problems += _unknown(bicep_source.nested_object_keys(lines, index), f"siteConfig (line {index + 1})")
    # A sites/config resource named 'web' is the siteConfig object under another name.
    for index, line in enumerate(lines):
        match = _NESTED_RESOURCE.match(line)
        if not match or not (match.group(1) == "config" or "/sites/config@" in match.group(1)):
            continue
        body_keys = bicep_source.nested_object_keys(lines, index)
        end = _closing_line(lines, index)
        body = lines[index : end + 1]
        name = next((m.group(1) for m in (re.match(r"^\s*name: (.+)$", b) for b in body) if m), "")
        if name.strip() != "'web'":
            continue
        if "properties" not in body_keys:
            continue
        start = next(i for i in range(index, end + 1) if re.match(r"^\s*properties\s*:", lines[i]))
        if lines[start].rstrip().endswith("{"):
            problems += _unknown(bicep_source.nested_object_keys(lines, start), f"config 'web' (line {index + 1})")
        else:
            problems.append(f"line {start + 1}: the web config's properties must be an object literal")
    return problems


def _unknown(keys: list[str], where: str) -> list[str]:
    return [
        f"{where}: {key} is not on the Flex Consumption allow-list" for key in keys if key not in SITE_CONFIG_ALLOWED
    ]


def _closing_line(lines: list[str], start: int) -> int:
    depth = 0
    for index in range(start, len(lines)):
        code = bicep_source._without_strings(lines[index])
        depth += code.count("{") + code.count("[") - code.count("}") - code.count("]")
        if depth <= 0 and index > start:
            return index
    return len(lines) - 1


def test_allow_list_holds_no_property_flex_consumption_rejects() -> None:
    assert set(SITE_CONFIG_ALLOWED).isdisjoint(SITE_CONFIG_REJECTED)
    assert all(SITE_CONFIG_ALLOWED.values())


def test_function_app_sets_site_config_and_only_allowed_properties() -> None:
    text = FUNCTION_APP.read_text()
    start = next(i for i, line in enumerate(text.splitlines()) if _SITE_CONFIG.match(line))
    keys = bicep_source.nested_object_keys(text.splitlines(), start)
    assert "minTlsVersion" in keys
    assert site_config_violations(text) == []


@pytest.mark.parametrize("path", bicep_source.bicep_files(), ids=lambda p: p.name)
def test_no_bicep_file_sets_a_site_config_property_outside_the_allow_list(path: Path) -> None:
    assert site_config_violations(path.read_text()) == []


def _with_site_config_line(extra: str) -> str:
    text = FUNCTION_APP.read_text()
    return text.replace("      minTlsVersion: '1.2'\n", f"      minTlsVersion: '1.2'\n      {extra}\n", 1)


def test_check_fails_on_a_copy_with_ftps_state_added() -> None:
    broken = _with_site_config_line("ftpsState: 'Disabled'")
    assert broken != FUNCTION_APP.read_text()
    problems = site_config_violations(broken)
    assert len(problems) == 1
    assert "ftpsState" in problems[0]


@pytest.mark.parametrize("rejected", sorted(SITE_CONFIG_REJECTED))
def test_check_fails_on_every_property_flex_consumption_rejects(rejected: str) -> None:
    problems = site_config_violations(_with_site_config_line(f"{rejected}: 'x'"))
    assert [p for p in problems if rejected in p]


def test_check_fails_on_an_unknown_property_not_only_the_known_bad_ones() -> None:
    problems = site_config_violations(_with_site_config_line("webSocketsEnabled: false"))
    assert any("webSocketsEnabled" in p for p in problems)


def test_check_reads_past_nested_arrays_and_objects() -> None:
    # A nested object's keys are not siteConfig's; a rejected key after it still is.
    extra = "cors: {\n        allowedOrigins: [\n          'https://a'\n        ]\n      }\n      alwaysOn: false"
    problems = site_config_violations(_with_site_config_line(extra))
    assert any("cors" in p for p in problems)
    assert any("alwaysOn" in p for p in problems)
    assert not any("allowedOrigins" in p for p in problems)


def test_check_fails_on_a_site_config_it_cannot_read() -> None:
    text = FUNCTION_APP.read_text().replace("    siteConfig: {\n", "    siteConfig: union(extraConfig, {\n", 1)
    assert any("object literal" in p for p in site_config_violations(text))


def test_check_fails_on_a_web_config_resource_carrying_a_rejected_property() -> None:
    extra = (
        "\nresource webConfig 'Microsoft.Web/sites/config@2024-04-01' = {\n  parent: functionApp\n  name: 'web'\n"
        "  properties: {\n    minTlsVersion: '1.2'\n    linuxFxVersion: 'PYTHON|3.11'\n  }\n}\n"
    )
    problems = site_config_violations(FUNCTION_APP.read_text() + extra)
    assert len(problems) == 1
    assert "linuxFxVersion" in problems[0]


def test_app_settings_config_is_not_mistaken_for_the_web_config() -> None:
    # The appsettings config resource holds setting names, not siteConfig properties.
    assert "name: 'appsettings'" in FUNCTION_APP.read_text()
    assert site_config_violations(FUNCTION_APP.read_text()) == []


def test_ftp_stays_off_through_the_publishing_credential_policies() -> None:
    resources = {symbol: body for symbol, type_, _, body in bicep_source.resources(FUNCTION_APP)}
    for symbol, name in (("ftpPublishing", "'ftp'"), ("scmPublishing", "'scm'")):
        body = "\n".join(resources[symbol])
        assert "basicPublishingCredentialsPolicies@" in body
        assert f"name: {name}" in body
        assert re.search(r"^\s+allow: false$", body, re.M)
    site = "\n".join(resources["functionApp"])
    skip = re.search(r"// checkov:skip=CKV_AZURE_78: (.+)", site)
    assert skip, "the FTP rule needs an inline skip with its reason"
    assert "ftpsState" in skip.group(1)
    assert "basicPublishingCredentialsPolicies" in skip.group(1)


# --- scale limits -------------------------------------------------------------------------------------------------

FLEX_MIN_MAXIMUM_INSTANCES = 40  # "The lowest maximum scale is currently 40." (flex-consumption-plan#considerations)
FLEX_MAX_MAXIMUM_INSTANCES = 1000  # "The highest currently supported value is 1000." (same page)


def scale_limit_problems(text: str, name: str) -> list[str]:
    """Why the maximumInstanceCount parameter in ``text`` allows a value Flex Consumption refuses (empty if none)."""
    params = bicep_source.params_in(text, name)
    param = params.get("maximumInstanceCount")
    if param is None:
        return [f"{name}: no maximumInstanceCount parameter"]
    problems = []
    low = param.decorators.get("minValue")
    high = param.decorators.get("maxValue")
    if low is None or int(low) < FLEX_MIN_MAXIMUM_INSTANCES:
        problems.append(f"{name}: @minValue must be at least {FLEX_MIN_MAXIMUM_INSTANCES}, not {low}")
    if high is None or int(high) > FLEX_MAX_MAXIMUM_INSTANCES:
        problems.append(f"{name}: @maxValue must be at most {FLEX_MAX_MAXIMUM_INSTANCES}, not {high}")
    if param.default is None or not FLEX_MIN_MAXIMUM_INSTANCES <= int(param.default) <= FLEX_MAX_MAXIMUM_INSTANCES:
        problems.append(f"{name}: the default {param.default} is outside Flex Consumption's range")
    return problems


@pytest.mark.parametrize("path", [MAIN, FUNCTION_APP], ids=lambda p: p.name)
def test_maximum_instance_count_stays_in_flex_consumptions_range(path: Path) -> None:
    assert scale_limit_problems(path.read_text(), path.name) == []


def test_scale_limit_check_fails_on_a_copy_allowing_fewer_than_40() -> None:
    broken = MAIN.read_text().replace(
        "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount",
        "@minValue(1)\n@maxValue(1000)\nparam maximumInstanceCount",
    )
    assert broken != MAIN.read_text()
    assert scale_limit_problems(broken, "main.bicep") == ["main.bicep: @minValue must be at least 40, not 1"]


def test_scale_limit_check_fails_on_a_default_below_40() -> None:
    broken = MAIN.read_text().replace("param maximumInstanceCount int = 100", "param maximumInstanceCount int = 10")
    assert any("default 10" in p for p in scale_limit_problems(broken, "main.bicep"))


def test_instance_memory_is_a_documented_flex_size() -> None:
    # Instance sizes 512, 2048 and 4096 MB (flex-consumption-plan#instance-sizes); this template offers the two
    # with at least one core.
    sizes = {int(v) for v in bicep_source.params(MAIN)["instanceMemoryMB"].decorators["allowed"].splitlines()}
    assert sizes <= {512, 2048, 4096}
    assert "name: 'FC1'" in (MODULES / "hosting-plan.bicep").read_text()
