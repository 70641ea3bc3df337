"""The azd side of a deployment: the postprovision hook on every OS, what its script does, and a README whose steps
come in the order that works.

The POSIX script runs here for real, with a stand-in ``az`` on PATH that records its arguments; the PowerShell
twin cannot run here (no ``pwsh``), so it is held to the same steps as text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.infra.bicep_source import INFRA, ROOT

SCRIPTS = INFRA / "scripts"
SH = SCRIPTS / "add-federated-credential.sh"
PS1 = SCRIPTS / "add-federated-credential.ps1"
HOME = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
APP = "11111111-2222-3333-4444-555555555555"
SUBJECT = "22222222-3333-4444-5555-666666666666"


def hook_variants(text: str, hook: str) -> dict[str, dict[str, str]]:
    """``{os: {key: value}}`` of one hook in azure.yaml text (the file keeps the simple two-space layout)."""
    block = re.search(rf"^  {hook}:\n((?:    .*\n)+)", text, re.M)
    if not block:
        return {}
    variants: dict[str, dict[str, str]] = {}
    current = None
    for line in block.group(1).splitlines():
        heading = re.fullmatch(r"    (\w+):", line)
        entry = re.fullmatch(r"      (\w+): (.+)", line)
        if heading:
            current = variants.setdefault(heading.group(1), {})
        elif entry and current is not None:
            current[entry.group(1)] = entry.group(2)
    return variants


def hook_problems(text: str) -> list[str]:
    """Why azure.yaml's postprovision hook would not run on Windows and on Linux/macOS alike (empty if it would)."""
    variants = hook_variants(text, "postprovision")
    problems = []
    expected = {"windows": ("pwsh", ".ps1"), "posix": ("sh", ".sh")}
    for os_name, (shell, suffix) in expected.items():
        variant = variants.get(os_name)
        if variant is None:
            problems.append(f"no {os_name} variant")
            continue
        if variant.get("shell") != shell:
            problems.append(f"{os_name}: shell must be {shell}")
        script = variant.get("run", "")
        if not script.endswith(suffix) or not (ROOT / script).is_file():
            problems.append(f"{os_name}: run must name an existing {suffix} script, not {script!r}")
        if variant.get("continueOnError") != "false":
            problems.append(f"{os_name}: a failed hook must stop azd (continueOnError: false)")
    return problems


def test_postprovision_hook_runs_on_windows_and_posix() -> None:
    assert hook_problems((ROOT / "azure.yaml").read_text()) == []


def test_hook_check_fails_without_the_windows_variant() -> None:
    text = (ROOT / "azure.yaml").read_text()
    broken = re.sub(r"    windows:\n(      .*\n)+", "", text)
    assert broken != text
    assert hook_problems(broken) == ["no windows variant"]


def test_hook_check_fails_when_windows_would_run_the_sh_script() -> None:
    text = (ROOT / "azure.yaml").read_text()
    broken = text.replace(
        "      shell: pwsh\n      run: ./infra/scripts/add-federated-credential.ps1",
        "      shell: pwsh\n      run: ./infra/scripts/add-federated-credential.sh",
    )
    assert hook_problems(broken) == [
        "windows: run must name an existing .ps1 script, not './infra/scripts/add-federated-credential.sh'"
    ]


# --- the POSIX script, run with a stand-in az ---------------------------------------------------------------------

FAKE_AZ = """#!/bin/sh
printf '%s\\n' "$@" > "$AZ_LOG/$(date +%s%N).call"
if [ "$1" = cloud ]; then echo 'https://graph.microsoft.com/'; fi
"""


def run_sh(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "az").write_text(FAKE_AZ)
    (bin_dir / "az").chmod(0o755)
    log = tmp_path / "az-calls"
    log.mkdir(exist_ok=True)
    # Only the stand-in az and the basic tools: no real az or azd can be reached.
    tools = {Path(shutil.which(t) or "").parent for t in ("sh", "tr", "printf", "date")}
    path = os.pathsep.join([str(bin_dir), *sorted(str(t) for t in tools)])
    proc = subprocess.run(
        ["sh", str(SH)],
        env={"PATH": path, "AZ_LOG": str(log), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    calls = [p.read_text().splitlines() for p in sorted(log.glob("*.call"))]
    return proc, calls


FEDERATION_ENV = {
    "AZURE_FEDERATED_CREDENTIAL_SUBJECT": SUBJECT,
    "AZURE_FEDERATED_CREDENTIAL_ISSUER": f"https://login.microsoftonline.com/{HOME}/v2.0",
    "AZURE_FEDERATED_CREDENTIAL_AUDIENCE": "api://AzureADTokenExchange",
    "ENTRA_CLIENT_ID": APP,
    "ENTRA_HOME_TENANT_ID": HOME,
    "AZURE_TENANT_ID": HOME,
    "AZURE_ENV_NAME": "s2s dev",
}


def test_script_does_nothing_in_key_vault_mode(tmp_path: Path) -> None:
    proc, calls = run_sh(tmp_path, AZURE_FEDERATED_CREDENTIAL_SUBJECT="")
    assert proc.returncode == 0, proc.stderr
    assert "not needed" in proc.stdout
    assert calls == []


def test_script_upserts_the_federated_credential(tmp_path: Path) -> None:
    proc, calls = run_sh(tmp_path, **{**FEDERATION_ENV, "AZURE_TENANT_ID": HOME.upper()})
    assert proc.returncode == 0, proc.stderr
    assert calls[0][:2] == ["cloud", "show"]
    rest = calls[1]
    assert rest[:3] == ["rest", "--method", "PATCH"]
    url = rest[rest.index("--url") + 1]
    assert url == (
        f"https://graph.microsoft.com/v1.0/applications(appId='{APP}')"
        "/federatedIdentityCredentials(name='azd-s2s-dev-managed-identity')"
    )
    assert "Prefer=create-if-missing" in rest
    body = json.loads(rest[rest.index("--body") + 1])
    assert body["subject"] == SUBJECT
    assert body["issuer"] == FEDERATION_ENV["AZURE_FEDERATED_CREDENTIAL_ISSUER"]
    assert body["audiences"] == ["api://AzureADTokenExchange"]


def test_script_refuses_two_tenants_before_calling_graph(tmp_path: Path) -> None:
    other = "99999999-8888-7777-6666-555555555555"
    proc, calls = run_sh(tmp_path, **{**FEDERATION_ENV, "AZURE_TENANT_ID": other})
    assert proc.returncode == 1
    assert f"tenant {other}" in proc.stderr
    assert f"tenant {HOME}" in proc.stderr
    assert "CREDENTIAL_SOURCE=key_vault" in proc.stderr
    assert calls == []


@pytest.mark.parametrize("missing", ["ENTRA_HOME_TENANT_ID", "AZURE_TENANT_ID", "ENTRA_CLIENT_ID"])
def test_script_names_a_missing_variable(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in FEDERATION_ENV.items() if k != missing}
    proc, calls = run_sh(tmp_path, **env)
    assert proc.returncode != 0
    assert missing in proc.stderr
    assert calls == []


# --- the PowerShell twin, held to the same steps -----------------------------------------------------------------

VARIABLES = (
    "AZURE_FEDERATED_CREDENTIAL_SUBJECT",
    "AZURE_FEDERATED_CREDENTIAL_ISSUER",
    "AZURE_FEDERATED_CREDENTIAL_AUDIENCE",
    "ENTRA_CLIENT_ID",
    "ENTRA_HOME_TENANT_ID",
    "AZURE_TENANT_ID",
    "AZURE_ENV_NAME",
)


def parity_problems(sh: str, ps1: str) -> list[str]:
    """Where the PowerShell script would not do what the POSIX one does (empty if it would)."""
    problems = [f"{name} is not read" for name in VARIABLES if name not in ps1]
    for fragment in (
        "az cloud show --query endpoints.microsoftGraphResourceId --output tsv",
        "--method PATCH",
        "/v1.0/applications(appId='",
        "/federatedIdentityCredentials(name='",
        "'Prefer=create-if-missing'",
        "'Content-Type=application/json'",
        "-managed-identity'",
        "federated credential: not needed",
        "CREDENTIAL_SOURCE=key_vault",
    ):
        if fragment not in ps1:
            problems.append(f"missing {fragment!r}")
    if not re.search(r"\.ToLowerInvariant\(\) -ne \$homeTenant\.ToLowerInvariant\(\)", ps1):
        problems.append("no case-insensitive tenant comparison")
    if "$ErrorActionPreference = 'Stop'" not in ps1:
        problems.append("errors must stop the script")
    if "Prefer=create-if-missing" not in sh:
        problems.append("the POSIX script changed: update this check with it")
    return problems


def test_powershell_script_does_the_same_steps() -> None:
    assert parity_problems(SH.read_text(), PS1.read_text()) == []


def test_parity_check_fails_when_the_tenant_check_is_dropped() -> None:
    text = PS1.read_text()
    broken = text.replace("$identityTenant.ToLowerInvariant() -ne $homeTenant.ToLowerInvariant()", "$false")
    assert broken != text
    assert parity_problems(SH.read_text(), broken) == ["no case-insensitive tenant comparison"]


# --- the README's order of steps ----------------------------------------------------------------------------------


def order_problems(readme: str) -> list[str]:
    """Where infra/README.md's Deploy steps are out of the order that works (empty if in order): the app registration
    exists before `azd up` (entraClientId is a required parameter), its redirect URI is added after (it is an
    output of the deployment)."""
    section = re.search(r"^## Deploy\n(.*?)(?=^## )", readme, re.M | re.S)
    if not section:
        return ["no Deploy section"]
    deploy = section.group(1)
    command = re.search(r"^\s*azd up\b", deploy, re.M)  # the command itself, not a mention in prose
    steps = {
        "register": deploy.find("**Register the app**"),
        "set client id": deploy.find("azd env set ENTRA_CLIENT_ID"),
        "azd up": command.start() if command else -1,
        "redirect uri": deploy.find("**Add the redirect URI**"),
    }
    problems = [f"step {name!r} not found" for name, at in steps.items() if at < 0]
    if problems:
        return problems
    order = sorted(steps, key=steps.__getitem__)
    if order != list(steps):
        problems.append(f"steps in the order {order}, expected {list(steps)}")
    return problems


def test_readme_steps_come_in_the_order_that_works() -> None:
    assert order_problems((INFRA / "README.md").read_text()) == []


def test_order_check_fails_when_azd_up_comes_first() -> None:
    readme = (INFRA / "README.md").read_text()
    broken = readme.replace("## Deploy\n", "## Deploy\n\n```sh\nazd up\n```\n", 1)
    assert broken != readme
    assert order_problems(broken) == [
        "steps in the order ['azd up', 'register', 'set client id', 'redirect uri'], "
        "expected ['register', 'set client id', 'azd up', 'redirect uri']"
    ]
