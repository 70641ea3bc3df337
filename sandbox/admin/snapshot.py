"""The development sandbox's state as one JSON document under .sandbox/, so `make start` comes back with the same
world after a restart (`make start-clean` deletes it).

What is saved, and nothing else: the home tenant and every tenant with its users; the world's app (certificates,
redirect URIs, enabled, optional claims) and its service principal in each tenant (object id and consent kept);
the managed identity and Key Vault's latest version of each secret (certificates with their keys — development
material, written with mode 0600); every org of the world with its identity, application and licensed users
(systemuser ids kept) and rows, and what the Web API provisioned there (roles' privileges, webhook endpoints'
authentication; their steps deliver again). Rows come back with their ids, values and owners; `createdon`,
`modifiedon` and version numbers are those of the restore, and delta tokens from before are unknown (a sync then
starts over, as after Dataverse's own token expiry). Signing keys, the CA, counters, faults, limits and webhook
deliveries are new each run; webhooks the world registers by hand are registered again by
sandbox.admin.world.connect_app.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from sandbox.admin.world import DevWorld, managed_identity
from sandbox.dataverse.org import Actor, SystemUser
from sandbox.dataverse.provisioning.access import OrgProvisioning, existing_state, restore_state
from sandbox.dataverse.provisioning.webhook_steps import step_registration
from sandbox.dataverse.schema import TABLES
from sandbox.entra.directory import ServicePrincipal
from sandbox.net.pki import CertificateBundle
from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

_MANAGED_BY_THE_ORG = frozenset({"businessunits", "systemusers"})

SCHEMA = 1


class SnapshotError(ValueError):
    """The snapshot file cannot be read back (another schema, or damaged)."""


def capture(state: SandboxState, world: DevWorld) -> dict[str, Any]:
    """Everything listed in the module docstring, as JSON-ready data."""
    tenants = []
    for tenant in state.list_tenants():
        users = [
            {"object_id": u.object_id, "display_name": u.display_name, "upn": u.upn, "roles": list(u.directory_roles)}
            for u in state.list_users(tenant.tenant_id)
        ]
        tenants.append({"id": tenant.tenant_id, "name": tenant.display_name, "users": users})
    app = state.get_application(world.client_id)
    principals = [
        asdict(principal)
        for tenant in state.list_tenants()
        if (principal := state.find_service_principal(tenant.tenant_id, world.client_id)) is not None
    ]
    secrets = []
    for secret in state.list_latest_secrets():
        entry: dict[str, Any] = {"name": secret.name, "content_type": secret.content_type}
        if secret.certificate is not None:
            entry["certificate"] = secret.certificate.combined_pem
        else:
            entry["value"] = secret.value
        secrets.append(entry)
    return {
        "schema": SCHEMA,
        "home_tenant_id": state.home_tenant_id,
        "world": world.to_dict(),
        "tenants": tenants,
        "application": {
            "client_id": app.client_id,
            "home_tenant": app.home_tenant,
            "display_name": app.display_name,
            "enabled": app.enabled,
            "certificates": [c.certificate.public_bytes(Encoding.PEM).decode("ascii") for c in app.certificates],
            "redirect_uris": list(app.redirect_uris),
            "optional_claims": list(app.optional_claims),
        },
        "service_principals": principals,
        "secrets": secrets,
        "orgs": [_capture_org(state, world, url) for url in world.orgs],
    }


def _capture_org(state: SandboxState, world: DevWorld, url: str) -> dict[str, Any]:
    org = state.get_org(url)
    store = state.find_org_store(org.host)
    assert store is not None
    users = []
    candidates = [store.find_application_user(world.client_id)]
    candidates += [store.find_user_by_object_id(u.object_id) for u in state.list_users(org.tenant_id)]
    for user in candidates:
        if user is not None:
            users.append({**asdict(user), "roles": list(user.roles)})
    # The root business unit and the users' systemusers rows are written by the org itself (sandbox.dataverse.org):
    # restoring the org and its users brings them back, so they are not saved as rows.
    rows = {name: [dict(row) for row in store.rows(name)] for name in TABLES if name not in _MANAGED_BY_THE_ORG}
    saved = {**asdict(org), "system_user_id": store.system_user_id, "users": users, "rows": rows}
    provisioning = existing_state(store)
    if provisioning is not None and provisioning.seeded:
        # What the Web API made (onboarding's role, application user and webhook): the roles' privileges and the
        # endpoints' authentication (the app's function key and the org's secret: development material).
        saved["provisioning"] = {
            "role_privileges": provisioning.role_privileges,
            "auth_values": provisioning.auth_values,
            "provisioned_users": sorted(provisioning.provisioned_users),
        }
    return saved


def restore(state: SandboxState, saved: dict[str, Any]) -> DevWorld:
    """Rebuild a fresh, running sandbox's state from `saved`; returns its world. Raises SnapshotError."""
    if saved.get("schema") != SCHEMA:
        raise SnapshotError(f"snapshot schema {saved.get('schema')!r} is not {SCHEMA}: run `make start-clean`")
    try:
        return _restore(state, saved)
    except (KeyError, TypeError) as exc:
        raise SnapshotError(f"the snapshot is damaged ({type(exc).__name__}: {exc}): run `make start-clean`") from exc


def _restore(state: SandboxState, saved: dict[str, Any]) -> DevWorld:
    world = DevWorld.from_dict(saved["world"])
    fresh_home = state.home_tenant_id
    for tenant in saved["tenants"]:
        if tenant["id"] != fresh_home:
            state.add_tenant(tenant_id=tenant["id"], display_name=tenant["name"])
    state.directory.home_tenant_id = saved["home_tenant_id"]
    if fresh_home != saved["home_tenant_id"]:
        state.remove_tenant(fresh_home)
    for tenant in saved["tenants"]:
        for user in tenant["users"]:
            state.add_user(
                tenant["id"],
                display_name=user["display_name"],
                upn=user["upn"],
                object_id=user["object_id"],
                directory_roles=tuple(user["roles"]),
            )
    app = saved["application"]
    client_id = state.register_application(app["client_id"], app["home_tenant"], app["display_name"])
    for pem in app["certificates"]:
        state.add_application_certificate(client_id, pem)
    for uri in app["redirect_uris"]:
        state.add_redirect_uri(client_id, uri)
    if app["optional_claims"]:
        state.set_optional_claims(client_id, tuple(app["optional_claims"]))
    state.set_application_enabled(client_id, app["enabled"])
    for principal in saved["service_principals"]:
        state.directory.restore_service_principal(ServicePrincipal(**principal))
    identity = managed_identity(world)
    state.add_managed_identity(
        identity.client_id, identity.principal_id, identity.tenant_id, world.managed_identity.get("name")
    )
    state.grant_vault_secret_access(identity.principal_id)
    for secret in saved["secrets"]:
        if "certificate" in secret:
            state.create_certificate(secret["name"], CertificateBundle.from_pem(secret["certificate"]))
        else:
            state.set_secret(secret["name"], secret["value"], secret["content_type"])
    for org in saved["orgs"]:
        _restore_org(state, org)
    return world


def _restore_org(state: SandboxState, saved: dict[str, Any]) -> None:
    created = state.add_org(saved["tenant_id"], saved["url"], name=saved["name"])
    store = state.find_org_store(created.host)
    assert store is not None
    # The org's identity is what the app recorded (OrganizationId in its org index): keep it.
    store.org = replace(created, org_id=saved["org_id"], root_business_unit_id=saved["root_business_unit_id"])
    for user in saved["users"]:
        store.add_user(SystemUser(**{**user, "roles": tuple(user["roles"])}))
    old_system = saved["system_user_id"]
    for name, rows in saved["rows"].items():
        table = TABLES.get(name)
        if table is None:
            logger.warning("snapshot rows of %s skipped: the emulator no longer has that table", name)
            continue
        if name in _MANAGED_BY_THE_ORG:  # a snapshot from before the org wrote them itself
            continue
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            owner = row.get("_ownerid_value") or old_system
            by_owner.setdefault(store.system_user_id if owner == old_system else owner, []).append(row)
        for owner, owned in by_owner.items():
            store.bulk_insert(table, owned, Actor(owner))
    provisioning = saved.get("provisioning")
    if provisioning is not None:
        restored = OrgProvisioning(
            seeded=True,  # its reference rows are among the rows just restored
            role_privileges={role: dict(p) for role, p in provisioning["role_privileges"].items()},
            auth_values=dict(provisioning["auth_values"]),
            provisioned_users=set(provisioning["provisioned_users"]),
        )
        restore_state(store, restored)
        # Webhooks registered through the Web API deliver again, as Dataverse keeps its steps.
        for step in store.rows("sdkmessageprocessingsteps"):
            if step.get("_eventhandler_value") in restored.auth_values:
                state.webhooks.register(step_registration(store, step, restored.auth_values))


def write(path: Path, document: dict[str, Any]) -> str:
    """Write `document` atomically (temporary file, then rename), readable by the owner only; returns the text."""
    text = _dump(document)
    _write_text(path, text)
    return text


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=True, default=str)


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.touch(mode=0o600)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_if_changed(path: Path, document: dict[str, Any], previous: str) -> str:
    """Write `document` unless its text equals `previous`; returns its text."""
    text = _dump(document)
    if text != previous:
        _write_text(path, text)
    return text


def read(path: Path) -> dict[str, Any] | None:
    """The saved document, or None when there is none. Raises SnapshotError when it is not JSON."""
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SnapshotError(f"{path} is not JSON ({exc}): run `make start-clean`") from exc
    if not isinstance(document, dict):
        raise SnapshotError(f"{path} is not a snapshot: run `make start-clean`")
    return document
