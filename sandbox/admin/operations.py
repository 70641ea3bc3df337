"""What a developer does to the running sandbox from outside (the admin endpoint's commands): look at it, add
tenants, orgs and users, write rows (each write fires the org's registered webhooks, as Dataverse runs its
steps), mint a user token for the app's API, disable the app, inject faults or latency, read the counters.

Each operation takes the request's JSON object and returns a JSON-ready dict. Bad input raises OperationError
(status, code, message naming the problem); sandbox lookups and validation errors are translated here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from sandbox.admin.world import DevWorld, register_app_webhooks
from sandbox.dataverse.org import Actor, OrgStore
from sandbox.dataverse.schema import TABLES, TABLES_BY_LOGICAL_NAME, Table
from sandbox.entra.directory import GLOBAL_ADMINISTRATOR
from sandbox.entra.user_tokens import SandboxUser
from sandbox.identifiers import SandboxLookupError, is_guid
from sandbox.state import SandboxState

_MAX_SEED_ROWS = 50_000
_MAX_WEBHOOK_ROWS = 1_000  # seeding more rows than this inserts them without firing a webhook per row


class OperationError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Context:
    state: SandboxState
    world: DevWorld
    changed: Callable[[], None]  # tells the snapshot writer something changed


Operation = Callable[[Context, dict[str, Any]], dict[str, Any]]


def _text(args: dict[str, Any], name: str, default: str | None = None) -> str:
    value = args.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise OperationError(400, "missing_argument", f"{name} is required (a non-empty string)")
    return value.strip()


def _int(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OperationError(400, "invalid_argument", f"{name} must be a whole number between {low} and {high}")
    return value


def _tenant(ctx: Context, args: dict[str, Any]) -> str:
    """A tenant by id, display name or domain."""
    name = _text(args, "tenant")
    found = ctx.state.find_tenant(name) if is_guid(name) or "." in name else None
    if found is None:
        found = next((t for t in ctx.state.list_tenants() if t.display_name.lower() == name.lower()), None)
    if found is None:
        raise OperationError(404, "unknown_tenant", f"no tenant {name!r} (see `python -m sandbox status`)")
    return found.tenant_id


def _org(ctx: Context, args: dict[str, Any]) -> OrgStore:
    url = _text(args, "org")
    try:
        org = ctx.state.get_org(url)
    except (SandboxLookupError, ValueError):
        raise OperationError(404, "unknown_org", f"no org {url!r} (see `python -m sandbox status`)") from None
    store = ctx.state.find_org_store(org.host)
    assert store is not None
    return store


def _table(args: dict[str, Any]) -> Table:
    name = _text(args, "table")
    table = TABLES.get(name) or TABLES_BY_LOGICAL_NAME.get(name)
    if table is None:
        raise OperationError(400, "unknown_table", f"table must be one of {', '.join(TABLES)}, not {name!r}")
    return table


def _values(table: Table, args: dict[str, Any]) -> dict[str, Any]:
    values = args.get("values") or {}
    if not isinstance(values, dict):
        raise OperationError(400, "invalid_argument", "values must be an object of column: value")
    for name in values:
        column = table.column(name)
        if column is None or not column.writable or column.kind == "lookup":
            raise OperationError(400, "unknown_column", f"{name!r} is not a writable column of {table.entity_set}")
    return dict(values)


def _user(ctx: Context, tenant: str, who: str | None) -> SandboxUser:
    users = ctx.state.list_users(tenant)
    if not users:
        raise OperationError(404, "unknown_user", f"tenant {tenant} has no users")
    if who is None:
        return users[0]
    found = next((u for u in users if who.lower() in (u.object_id, u.upn.lower(), u.display_name.lower())), None)
    if found is None:
        raise OperationError(404, "unknown_user", f"tenant {tenant} has no user {who!r}")
    return found


# -- looking ----------------------------------------------------------------------------------------------------


def status(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    state, world = ctx.state, ctx.world
    tenants = []
    for tenant in state.list_tenants():
        principal = state.find_service_principal(tenant.tenant_id, world.client_id)
        users = [
            {"object_id": u.object_id, "upn": u.upn, "name": u.display_name, "global_admin": _is_admin(u)}
            for u in state.list_users(tenant.tenant_id)
        ]
        tenants.append(
            {
                "id": tenant.tenant_id,
                "name": tenant.display_name,
                "home": tenant.tenant_id == state.home_tenant_id,
                "consented": bool(principal and principal.consented),
                "users": users,
            }
        )
    orgs = []
    for url in world.orgs:
        org = state.get_org(url)
        store = state.find_org_store(org.host)
        assert store is not None
        orgs.append(
            {
                "url": org.url,
                "tenant": org.tenant_id,
                "organization_id": org.org_id,
                "application_user": store.find_application_user(world.client_id) is not None,
                "rows": {name: len(store.rows(name)) for name in TABLES},
            }
        )
    app = state.get_application(world.client_id)
    return {
        "app": {"client_id": app.client_id, "name": app.display_name, "enabled": app.enabled, "url": world.app_url},
        "tenants": tenants,
        "orgs": orgs,
    }


def _is_admin(user: SandboxUser) -> bool:
    return GLOBAL_ADMINISTRATOR in user.directory_roles


def counters(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Totals per event; with `name` (and `labels`), that one count."""
    if "name" in args:
        labels = args.get("labels") or {}
        if not isinstance(labels, dict):
            raise OperationError(400, "invalid_argument", "labels must be an object")
        return {"name": args["name"], "labels": labels, "count": ctx.state.count(str(args["name"]), **labels)}
    return {"counters": dict(sorted(ctx.state.counters.snapshot().items()))}


def deliveries(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = _org(ctx, args)
    last = _int(args, "last", 20, 1, 1000)
    found = ctx.state.webhook_deliveries(store.org.url)[-last:]
    return {
        "deliveries": [
            {"message": d.message, "entity": d.entity, "row_id": d.row_id, "attempt": d.attempt, "status": d.status}
            for d in found
        ]
    }


# -- directory and orgs -------------------------------------------------------------------------------------------


def add_tenant(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    name = _text(args, "name")
    tenant = ctx.state.add_tenant(display_name=name)
    ctx.changed()
    return {"tenant": tenant, "name": name}


def add_org(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    tenant = _tenant(ctx, args)
    url = _text(args, "url")
    rows = _int(args, "rows", 0, 0, _MAX_SEED_ROWS)
    try:
        org = ctx.state.add_org(tenant, url)
    except ValueError as exc:
        raise OperationError(400, "invalid_org", str(exc)) from None
    app_user = None
    if args.get("application_user", True):
        app_user = ctx.state.add_application_user(org.url, ctx.world.client_id)
    ctx.world.orgs.append(org.url)
    register_app_webhooks(ctx.state, ctx.world, org.url)
    if rows:
        ctx.state.seed_rows(org.url, "accounts", rows)
    ctx.changed()
    return {"org": org.url, "tenant": tenant, "organization_id": org.org_id, "application_user_id": app_user}


def application_user(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Create (`present: true`) or delete (`present: false`) our application user in an org."""
    store = _org(ctx, args)
    present = bool(args.get("present", True))
    existing = store.find_application_user(ctx.world.client_id)
    if present and existing is None:
        ctx.state.add_application_user(store.org.url, ctx.world.client_id)
    elif not present and existing is not None:
        ctx.state.remove_application_user(store.org.url, ctx.world.client_id)
    ctx.changed()
    return {"org": store.org.url, "application_user": present}


def add_user(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A directory user; `global_admin` gives the Global Administrator role; each org in `orgs` gets it as a
    licensed user with the security roles in `roles` (e.g. "System Administrator")."""
    tenant = _tenant(ctx, args)
    name = _text(args, "name")
    roles = args.get("roles") or []
    orgs = args.get("orgs") or []
    if not isinstance(roles, list) or not isinstance(orgs, list):
        raise OperationError(400, "invalid_argument", "roles and orgs are lists")
    stores = [_org(ctx, {"org": url}) for url in orgs]
    for store in stores:
        if store.org.tenant_id != tenant:
            raise OperationError(400, "org_in_another_tenant", f"{store.org.url} belongs to another tenant")
    upn = args.get("upn")
    try:
        user = ctx.state.add_user(
            tenant,
            display_name=name,
            upn=upn if isinstance(upn, str) and upn else None,
            directory_roles=(GLOBAL_ADMINISTRATOR,) if args.get("global_admin") else (),
        )
        for store in stores:
            ctx.state.add_org_user(store.org.url, user.object_id, name, roles=tuple(str(r) for r in roles))
    except ValueError as exc:
        raise OperationError(400, "invalid_user", str(exc)) from None
    ctx.changed()
    return {"object_id": user.object_id, "upn": user.upn, "tenant": tenant, "orgs": [s.org.url for s in stores]}


def set_app(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Disable (`enabled: false`) or enable the app registration: token requests then fail as in Entra."""
    enabled = args.get("enabled")
    if not isinstance(enabled, bool):
        raise OperationError(400, "invalid_argument", "enabled must be true or false")
    ctx.state.set_application_enabled(ctx.world.client_id, enabled)
    ctx.changed()
    return {"client_id": ctx.world.client_id, "enabled": enabled}


def user_token(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A delegated access token for the app's own API (`/api/me`), v1 or v2, for a user of the tenant."""
    tenant = _tenant(ctx, args)
    version = str(args.get("version", "2.0"))
    if version not in ("1.0", "2.0", "1", "2"):
        raise OperationError(400, "invalid_argument", "version must be 1.0 or 2.0")
    version = "1.0" if version.startswith("1") else "2.0"
    who = args.get("user")
    user = _user(ctx, tenant, str(who) if who else None)
    audience = str(args.get("audience") or f"api://{ctx.world.client_id}")
    scopes = tuple(str(s) for s in (args.get("scopes") or ["access_as_user"]))
    lifetime = _int(args, "lifetime_seconds", 3600, 60, 86400)
    token = ctx.state.issue_user_token(
        user, audience=audience, scopes=scopes, version=version, lifetime_seconds=lifetime
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    return {"access_token": token, "version": version, "upn": user.upn, "aud": claims["aud"], "exp": claims["exp"]}


# -- rows ------------------------------------------------------------------------------------------------------------


def seed_rows(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = _org(ctx, args)
    table = _table(args)
    count = _int(args, "count", 10, 1, _MAX_SEED_ROWS)
    prefix = str(args.get("prefix") or "Row")
    ids = ctx.state.seed_rows(store.org.url, table.entity_set, count, prefix=prefix)
    fired = 0
    if args.get("webhooks", True) and count <= _MAX_WEBHOOK_ROWS:
        for row_id in ids:
            fired += len(ctx.state.emit_webhook_event(store.org.url, table.logical_name, "Create", row_id))
    ctx.changed()
    return {"org": store.org.url, "table": table.entity_set, "ids": ids, "webhooks_fired": fired}


def create_row(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = _org(ctx, args)
    table = _table(args)
    values = _values(table, args)
    row = _write(lambda: store.insert(table, values, Actor(store.system_user_id)))
    row_id = str(row[table.primary_id])
    fired = ctx.state.emit_webhook_event(store.org.url, table.logical_name, "Create", row_id)
    ctx.changed()
    return {"org": store.org.url, "table": table.entity_set, "id": row_id, "webhooks_fired": len(fired)}


def update_row(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = _org(ctx, args)
    table = _table(args)
    row_id = _row_id(args)
    values = _values(table, args)
    if not values:
        raise OperationError(400, "missing_argument", "values are required (column=value)")
    _write(lambda: store.update(table, row_id, values, Actor(store.system_user_id)))
    fired = ctx.state.emit_webhook_event(store.org.url, table.logical_name, "Update", row_id)
    ctx.changed()
    return {"org": store.org.url, "table": table.entity_set, "id": row_id, "webhooks_fired": len(fired)}


def delete_row(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    store = _org(ctx, args)
    table = _table(args)
    row_id = _row_id(args)
    if store.get(table.entity_set, row_id) is None:
        raise OperationError(404, "unknown_row", f"no {table.logical_name} {row_id} in {store.org.url}")
    # Delete's steps see the row as it was (PreImage), so they are raised while it still exists.
    fired = ctx.state.emit_webhook_event(store.org.url, table.logical_name, "Delete", row_id)
    _write(lambda: store.delete(table, row_id))
    ctx.changed()
    return {"org": store.org.url, "table": table.entity_set, "id": row_id, "webhooks_fired": len(fired)}


def _row_id(args: dict[str, Any]) -> str:
    row_id = _text(args, "id").lower()
    if not is_guid(row_id):
        raise OperationError(400, "invalid_argument", f"id must be a GUID, not {row_id!r}")
    return row_id


def _write(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except Exception as exc:  # the store's DataverseError: 404 for a missing row, 412 for a taken key
        status = int(getattr(exc, "status", 400))
        raise OperationError(status, "dataverse_error", str(exc) or type(exc).__name__) from None


# -- faults ------------------------------------------------------------------------------------------------------


def inject_fault(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Entra or Key Vault: a status and/or a delay (sandbox.faults). Dataverse: latency per request on one org,
    or a lower request-count limit (protocol §4's service protection)."""
    service = _text(args, "service")
    if service == "dataverse":
        store = _org(ctx, args)
        latency = float(args.get("delay") or 0.0)
        max_requests = _int(args, "max_requests", 6000, 1, 6000)
        if not 0 <= latency <= 60:
            raise OperationError(400, "invalid_argument", "delay must be between 0 and 60 seconds")
        ctx.state.set_dataverse_limits(store.org.url, latency_seconds=latency, max_requests=max_requests)
        return {"service": service, "org": store.org.url, "latency_seconds": latency, "max_requests": max_requests}
    status_value = args.get("status", 503)
    try:
        fault_id = ctx.state.inject_fault(
            service,
            status=None if status_value is None else int(status_value),
            delay=float(args["delay"]) if args.get("delay") is not None else None,
            count=int(args["count"]) if args.get("count") is not None else None,
            tenant=_tenant(ctx, args) if args.get("tenant") else None,
            endpoint=args.get("endpoint"),
            retry_after=int(args["retry_after"]) if args.get("retry_after") is not None else None,
        )
    except (TypeError, ValueError) as exc:
        raise OperationError(400, "invalid_fault", str(exc)) from None
    return {"service": service, "fault_id": fault_id}


def clear_faults(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    removed = ctx.state.clear_faults()
    for url in ctx.world.orgs:
        ctx.state.set_dataverse_limits(url)
    return {"cleared": removed}


OPERATIONS: dict[str, Operation] = {
    "status": status,
    "counters": counters,
    "deliveries": deliveries,
    "add-tenant": add_tenant,
    "add-org": add_org,
    "application-user": application_user,
    "add-user": add_user,
    "set-app": set_app,
    "user-token": user_token,
    "seed-rows": seed_rows,
    "create-row": create_row,
    "update-row": update_row,
    "delete-row": delete_row,
    "fault": inject_fault,
    "clear-faults": clear_faults,
}


def run(ctx: Context, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run operation `name`. Raises OperationError (404 for an unknown operation)."""
    operation = OPERATIONS.get(name)
    if operation is None:
        raise OperationError(404, "unknown_operation", f"no operation {name!r}; known: {', '.join(OPERATIONS)}")
    try:
        return operation(ctx, args)
    except SandboxLookupError as exc:
        raise OperationError(404, "not_found", str(exc)) from None
    except ValueError as exc:
        raise OperationError(400, "invalid_argument", str(exc)) from None
