"""The development sandbox driven from outside: its JSON snapshot brings the same world back (ids, consent, org
identity, users and rows), the admin endpoint refuses anyone without its token, and `python -m sandbox <command>`
adds orgs and users, writes rows that fire the org's webhooks, mints user tokens, disables the app and injects
faults, each with --json."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from sandbox import Sandbox
from sandbox.admin import snapshot
from sandbox.admin.dev_server import serve
from sandbox.admin.endpoint import AdminEndpoint
from sandbox.admin.operations import Context
from sandbox.admin.world import DevWorld, seed_world
from sandbox.cli.commands import main as cli

pytestmark = pytest.mark.integration

FABRIKAM = "https://fabrikam.crm4.dynamics.com"
NORTHWIND = "https://northwind.crm.dynamics.com"
VOLATILE_ROW_FIELDS = ("createdon", "modifiedon", "versionnumber")


def strip(row: dict[str, Any]) -> dict[str, Any]:
    """A row without what a restore renews: its timestamps, version and who-did-it lookups."""
    return {k: v for k, v in row.items() if k not in VOLATILE_ROW_FIELDS and "by_value" not in k}


@pytest.fixture(scope="module")
def world_sandbox() -> Iterator[tuple[Sandbox, DevWorld]]:
    with Sandbox() as running:
        yield running, seed_world(running.state)


@pytest.fixture
def admin(world_sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, DevWorld, Path]]:
    running, world = world_sandbox
    with AdminEndpoint(Context(running.state, world, lambda: None)) as endpoint:
        endpoint.write_access_file(tmp_path / "admin.json")
        yield running, world, tmp_path


def run_cli(state_dir: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = cli(["--state-dir", str(state_dir), *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


# -- the snapshot ------------------------------------------------------------------------------------------------


def test_a_snapshot_brings_the_same_world_back(world_sandbox) -> None:
    first, world = world_sandbox
    st = first.state
    fabrikam = st.find_tenant("fabrikam.onmicrosoft.com")
    assert fabrikam is not None
    st.grant_consent(fabrikam.tenant_id, world.client_id)
    ada = st.add_user(fabrikam.tenant_id, display_name="Ada Snapshot")
    st.add_org_user(FABRIKAM, ada.object_id, "Ada Snapshot", roles=("Salesperson",), read_depth="user")
    (owned,) = st.seed_rows(FABRIKAM, "contacts", 1, prefix="Owned", owner_object_id=ada.object_id)
    saved = json.loads(json.dumps(snapshot.capture(st, world), default=str))

    with Sandbox() as second:
        restored_world = snapshot.restore(second.state, saved)
        again = json.loads(json.dumps(snapshot.capture(second.state, restored_world), default=str))
        store = second.state.find_org_store("fabrikam.crm4.dynamics.com")
        assert store is not None
        owner = next(r for r in store.rows("contacts") if r["contactid"] == owned)["_ownerid_value"]
        ada_user = store.find_user_by_object_id(ada.object_id)
        vault_pem = second.state.find_secret_version(world.certificate_name)

    assert restored_world.client_id == world.client_id and restored_world.orgs == world.orgs
    assert again["home_tenant_id"] == saved["home_tenant_id"] == st.home_tenant_id
    assert again["tenants"] == saved["tenants"]
    assert again["service_principals"] == saved["service_principals"]  # object ids kept: app users name them
    assert again["application"] == saved["application"] and again["secrets"] == saved["secrets"]
    for before, after in zip(saved["orgs"], again["orgs"], strict=True):
        assert {k: before[k] for k in ("url", "org_id", "tenant_id", "root_business_unit_id")} == {
            k: after[k] for k in ("url", "org_id", "tenant_id", "root_business_unit_id")
        }
        assert before["users"] == after["users"]
        for table, rows in before["rows"].items():
            system_before, system_after = before["system_user_id"], after["system_user_id"]
            expected = [
                {
                    **strip(r),
                    "_ownerid_value": system_after if r["_ownerid_value"] == system_before else r["_ownerid_value"],
                }
                for r in rows
            ]
            assert sorted(map(strip, after["rows"][table]), key=str) == sorted(expected, key=str)
    assert ada_user is not None and owner == ada_user.systemuserid  # a user's row is still that user's
    assert vault_pem is not None and vault_pem.certificate is not None


def test_a_damaged_snapshot_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "sandbox-state.json"
    path.write_text("{not json")
    with pytest.raises(snapshot.SnapshotError, match="make start-clean"):
        snapshot.read(path)
    with Sandbox() as fresh, pytest.raises(snapshot.SnapshotError, match="schema"):
        snapshot.restore(fresh.state, {"schema": 99})


# -- the admin endpoint --------------------------------------------------------------------------------------------


def test_the_admin_endpoint_needs_its_token_and_changes_nothing_without_it(admin) -> None:
    running, _, state_dir = admin
    url = json.loads((state_dir / "admin.json").read_text())["url"]
    before = len(running.state.list_tenants())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        answer = requests.post(f"{url}/admin/add-tenant", json={"name": "Intruder"}, headers=headers, timeout=5)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
    assert len(running.state.list_tenants()) == before
    assert oct((state_dir / "admin.json").stat().st_mode & 0o777) == "0o600"
    assert url.startswith("http://127.0.0.1:")


def test_status_lists_the_seeded_world(admin, capsys) -> None:
    _, world, state_dir = admin
    code, status = run_cli(state_dir, "status", capsys=capsys)
    assert code == 0 and status["app"]["client_id"] == world.client_id
    orgs = {org["url"]: org for org in status["orgs"]}
    assert orgs[FABRIKAM]["application_user"] is True and orgs[NORTHWIND]["application_user"] is False
    assert orgs[FABRIKAM]["rows"]["accounts"] >= 25
    names = {t["name"] for t in status["tenants"]}
    assert {"Fabrikam", "Northwind"} <= names


def test_add_org_with_and_without_the_application_user(admin, capsys) -> None:
    running, world, state_dir = admin
    code, made = run_cli(
        state_dir, "add-org", "https://cli1.crm.dynamics.com", "--tenant", "Northwind", "--rows", "3", capsys=capsys
    )
    assert code == 0 and made["application_user_id"]
    code, bare = run_cli(
        state_dir, "add-org", "https://cli2.crm.dynamics.com", "--tenant", "Northwind", "--no-app-user", capsys=capsys
    )
    assert code == 0 and bare["application_user_id"] is None
    store = running.state.find_org_store("cli1.crm.dynamics.com")
    bare_store = running.state.find_org_store("cli2.crm.dynamics.com")
    assert store is not None and bare_store is not None
    assert store.find_application_user(world.client_id) is not None and len(store.rows("accounts")) == 3
    assert bare_store.find_application_user(world.client_id) is None
    assert "https://cli1.crm.dynamics.com" in world.orgs  # saved with the world from now on
    code, refused = run_cli(
        state_dir, "add-org", "https://cli1.crm.dynamics.com", "--tenant", "Northwind", capsys=capsys
    )
    assert code == 1 and refused["error"]["code"] == "invalid_org" and "already exists" in refused["error"]["message"]
    code, unknown = run_cli(state_dir, "add-org", "https://cli3.crm.dynamics.com", "--tenant", "Nobody", capsys=capsys)
    assert code == 1 and unknown["error"]["code"] == "unknown_tenant"


def test_add_user_with_directory_and_security_roles(admin, capsys) -> None:
    running, _, state_dir = admin
    code, user = run_cli(
        state_dir,
        "add-user",
        "Ola Operator",
        "--tenant",
        "Fabrikam",
        "--global-admin",
        "--org",
        FABRIKAM,
        "--role",
        "System Administrator",
        capsys=capsys,
    )
    assert code == 0 and user["upn"].startswith("ola.operator@")
    store = running.state.find_org_store("fabrikam.crm4.dynamics.com")
    assert store is not None
    org_user = store.find_user_by_object_id(user["object_id"])
    assert org_user is not None and org_user.roles == ("System Administrator",)
    directory_user = running.state.get_user(user["tenant"], user["object_id"])
    assert directory_user.directory_roles == ("62e90394-69f5-4237-9190-012177145e10",)


def test_row_writes_fire_the_orgs_webhooks(admin, capsys) -> None:
    running, _, state_dir = admin
    running.state.register_webhook(
        FABRIKAM, "http://127.0.0.1:9/receiver", auth_type="WebhookKey", auth_value="k", entity="account"
    )
    before = running.state.count("webhook_event", org=FABRIKAM)
    code, created = run_cli(
        state_dir,
        "create-row",
        "--org",
        FABRIKAM,
        "--table",
        "accounts",
        "--set",
        "name=Dev Loop",
        "--set",
        "revenue=12.5",
        capsys=capsys,
    )
    assert code == 0 and created["webhooks_fired"] == 1
    code, updated = run_cli(
        state_dir,
        "update-row",
        created["id"],
        "--org",
        FABRIKAM,
        "--table",
        "accounts",
        "--set",
        "name=Renamed",
        capsys=capsys,
    )
    assert code == 0 and updated["webhooks_fired"] == 1
    row = next(r for r in running.state.rows(FABRIKAM, "accounts") if r["accountid"] == created["id"])
    assert row["name"] == "Renamed" and row["revenue"] == 12.5
    assert running.state.count("webhook_event", org=FABRIKAM) == before + 2
    code, deleted = run_cli(
        state_dir, "delete-row", created["id"], "--org", FABRIKAM, "--table", "accounts", capsys=capsys
    )
    assert code == 0 and deleted["webhooks_fired"] == 1
    assert all(r["accountid"] != created["id"] for r in running.state.rows(FABRIKAM, "accounts"))
    code, refused = run_cli(
        state_dir, "create-row", "--org", FABRIKAM, "--table", "accounts", "--set", "nosuch=1", capsys=capsys
    )
    assert code == 1 and refused["error"]["code"] == "unknown_column" and "nosuch" in refused["error"]["message"]


@pytest.mark.parametrize(("version", "issuer_end"), [("1.0", "/"), ("2.0", "/v2.0")])
def test_user_tokens_for_the_apps_api(admin, capsys, version: str, issuer_end: str) -> None:
    world_running, world, state_dir = admin
    code, minted = run_cli(
        state_dir,
        "token",
        "--tenant",
        "Fabrikam",
        "--user",
        "grace.admin@fabrikam.onmicrosoft.com",
        "--version",
        version,
        capsys=capsys,
    )
    assert code == 0
    claims = jwt.decode(minted["access_token"], options={"verify_signature": False})
    assert claims["ver"] == version and claims["aud"] == f"api://{world.client_id}"
    assert claims["iss"].endswith(issuer_end) and claims["scp"] == "access_as_user"
    assert claims["exp"] > time.time() + 3000
    # The app `make start` runs expects exactly this issuer for the token's version (the user API's check).
    from sandbox.admin.world import app_settings
    from shared.settings import Settings

    app = Settings.from_env(app_settings(world_running, world))
    template = app.oidc_v1_issuer_template if version == "1.0" else f"{app.entra_authority_host}/{{tenantid}}/v2.0"
    assert claims["iss"] == template.replace("{tenantid}", claims["tid"])


def test_disable_app_inject_faults_and_counters(admin, capsys) -> None:
    running, world, state_dir = admin
    assert run_cli(state_dir, "disable-app", capsys=capsys)[0] == 0
    assert running.state.get_application(world.client_id).enabled is False
    assert run_cli(state_dir, "enable-app", capsys=capsys)[0] == 0
    assert running.state.get_application(world.client_id).enabled is True
    code, fault = run_cli(state_dir, "fault", "entra", "--status", "503", "--count", "2", capsys=capsys)
    assert code == 0 and [f.fault_id for f in running.state.faults.armed()] == [fault["fault_id"]]
    code, slow = run_cli(state_dir, "fault", "dataverse", "--org", FABRIKAM, "--delay", "0.2", capsys=capsys)
    assert code == 0 and slow["latency_seconds"] == 0.2
    code, cleared = run_cli(state_dir, "clear-faults", capsys=capsys)
    assert code == 0 and cleared["cleared"] == 1 and running.state.faults.armed() == []
    code, counts = run_cli(state_dir, "counters", capsys=capsys)
    assert code == 0 and isinstance(counts["counters"], dict)


def test_no_running_sandbox_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert cli(["--state-dir", str(tmp_path), "status"]) == 2
    assert "make start" in capsys.readouterr().err


# -- the development server: saved on change, restored on start ------------------------------------------------------


def test_the_dev_server_saves_a_change_and_comes_back_with_it(tmp_path: Path, capsys) -> None:
    def run_once(action) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(tmp_path, "http://localhost:7999", "key", stop))
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "sandbox.json").is_file():
                assert thread.is_alive() and time.monotonic() < deadline
                time.sleep(0.05)
            action()
        finally:
            stop.set()
            thread.join(timeout=30)

    created: dict[str, Any] = {}

    def write_row() -> None:
        code, answer = run_cli(
            tmp_path,
            "create-row",
            "--org",
            FABRIKAM,
            "--table",
            "contacts",
            "--set",
            "lastname=Persisted",
            capsys=capsys,
        )
        assert code == 0
        created.update(answer)

    def find_row() -> None:
        code, status = run_cli(tmp_path, "status", capsys=capsys)
        assert code == 0
        info = json.loads((tmp_path / "sandbox.json").read_text())
        assert info["settings"]["ONBOARDING_REDIRECT_URI"] == "http://localhost:7999/api/consent/callback"
        created["status"] = status

    run_once(write_row)
    saved = json.loads((tmp_path / "sandbox-state.json").read_text())
    fabrikam = next(org for org in saved["orgs"] if org["url"] == FABRIKAM)
    assert any(row["contactid"] == created["id"] for row in fabrikam["rows"]["contacts"])
    run_once(find_row)
    org = next(o for o in created["status"]["orgs"] if o["url"] == FABRIKAM)
    assert org["rows"]["contacts"] == 26 and created["status"]["app"]["client_id"] == saved["world"]["client_id"]
    assert not (tmp_path / "sandbox.json").exists()  # removed on exit: nothing left pointing at a dead endpoint
