"""The Web API operations an app provisions itself with, for one caller in one org (Dataverse Web API reference):

- `roles`: create (name, `businessunitid@odata.bind`), read, delete; the bound actions
  `roles(<id>)/Microsoft.Dynamics.CRM.AddPrivilegesRole` and `…/ReplacePrivilegesRole` with
  `{"Privileges": [RolePrivilege…]}` (RolePrivilege: `Depth`, `PrivilegeId`, `BusinessUnitId`); the N:N
  `roles(<id>)/roleprivileges_association` lists a role's privileges;
- `privileges`, `sdkmessages`, `sdkmessagefilters`: read-only reference rows (sandbox.dataverse.provisioning.catalogue);
- `systemusers`: create an application user (`applicationid`, `businessunitid@odata.bind`), enable or disable one
  (`isdisabled`), associate and disassociate roles through `systemusers(<id>)/systemuserroles_association/$ref`
  (Web API "Associate and disassociate table rows": POST `{"@odata.id": …}`, DELETE `…(<role id>)/$ref`);
- `serviceendpoints` (contract 8, webhooks) and `sdkmessageprocessingsteps`: create, read, update, delete; a step
  is delivered by the org's webhook hub (sandbox.dataverse.provisioning.webhook_steps).

Refusals: 403 0x80040220 naming the missing privilege (sandbox.dataverse.provisioning.access), 400 for a bad
payload, 404 for a missing row, 412 0x80040237 for a duplicate. Which privilege each operation needs is the
table's `prv<Access><Entity>`; reading privileges, sdkmessages and sdkmessagefilters needs none (the sandbox's
choice: every user's basic role reads them). Not verified against the service: the status and message of a
duplicate role name, a duplicate application user or association, and deleting an endpoint that has steps (the
sandbox refuses it with 400).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sandbox.dataverse import errors
from sandbox.dataverse.odata.query import parse_select
from sandbox.dataverse.odata.reads import CollectionReader
from sandbox.dataverse.org import OrgStore, Row, SystemUser
from sandbox.dataverse.payload import PayloadReader, json_payload
from sandbox.dataverse.provisioning import catalogue
from sandbox.dataverse.provisioning.access import (
    OrgProvisioning,
    apply_roles,
    held_privileges,
    is_administrator,
    missing_privilege,
    org_state,
    require,
)
from sandbox.dataverse.provisioning.webhook_steps import (
    WEBHOOK_CONTRACT,
    parse_auth_value,
    step_registration,
    steps_of,
    unregister_step,
)
from sandbox.dataverse.schema import TABLES, Table
from sandbox.dataverse.security import SYSTEM_ADMINISTRATOR, ReadAccess, role_id
from sandbox.dataverse.webhooks.hub import WebhookHub
from sandbox.dataverse.wire import ApiRequest, ApiResponse, Caller, etag, json_body, render, selection
from sandbox.identifiers import is_guid

logger = logging.getLogger(__name__)

ENTITY_SETS = frozenset(
    {"roles", "privileges", "serviceendpoints", "sdkmessages", "sdkmessagefilters", "sdkmessageprocessingsteps"}
)
_REFERENCE_SETS = frozenset({"privileges", "sdkmessages", "sdkmessagefilters"})
_ASSOCIATION = "systemuserroles_association"
# (tenant id, application id) -> (display name, service principal object id), or None when the app has no
# service principal in the tenant.
AppLookup = Callable[[str, str], tuple[str, str | None] | None]


def _entity(entity_set: str) -> str:
    return catalogue.privilege_entity(TABLES[entity_set])


class Provisioning:
    """Runs the provisioning operations of one request; `handle` answers None for what it does not serve."""

    def __init__(self, store: OrgStore, service_root: str, caller: Caller, hub: WebhookHub, apps: AppLookup) -> None:
        self._store = store
        self._root = service_root
        self._caller = caller
        self._hub = hub
        self._apps = apps
        self._payload = PayloadReader(store, service_root)

    def handle(self, request: ApiRequest, name: str, key: str | None, rest: str | None) -> ApiResponse | None:
        """Raises DataverseError for every refusal."""
        method = request.method
        if name == "systemusers":
            return self._system_users(request, key, rest)
        if name not in ENTITY_SETS:
            return None
        state = org_state(self._store)
        table = TABLES[name]
        if method == "GET" and rest is None:
            if name not in _REFERENCE_SETS:
                self._require("Read", name)
            return self._read(table, key, request)
        if name == "roles" and key is not None and rest is not None:
            return self._role_operation(state, self._row(table, key), rest, request)
        if name in _REFERENCE_SETS or rest is not None:
            raise errors.bad_query(f"{method} {name}{'/' + rest if rest else ''} is not supported.")
        if method == "POST" and key is None:
            return self._create(state, table, request)
        if method == "PATCH" and key is not None and name != "roles":
            return self._update(state, table, self._row(table, key), request)
        if method == "DELETE" and key is not None:
            return self._delete(state, table, self._row(table, key))
        raise errors.bad_query(f"{method} on {name} is not supported by the sandbox.")

    # -- common ---------------------------------------------------------------------------------

    def _require(self, access: str, entity_set: str) -> None:
        table = TABLES[entity_set]
        require(
            self._store, self._caller, f"prv{access}{_entity(entity_set)}", table.logical_name, table.object_type_code
        )

    def _row(self, table: Table, key: str) -> Row:
        record_id = key.removeprefix(f"{table.primary_id}=")
        row = self._store.get(table.entity_set, record_id.lower()) if is_guid(record_id) else None
        if row is None:
            raise errors.not_found(table.logical_name, record_id.lower())
        return row

    def _read(self, table: Table, key: str | None, request: ApiRequest) -> ApiResponse:
        everything = ReadAccess(self._caller.user, "organization")
        if key is None:
            return CollectionReader(self._store, self._root, everything).query(table, request)
        row = self._row(table, key)
        select = parse_select(request.query.get("$select"), table)
        body = {
            "@odata.context": f"{self._root}/$metadata#{table.entity_set}{selection(select)}/$entity",
            **render(table, row, select),
        }
        return json_body(200, body, {"ETag": etag(row)})

    def _done(self, table: Table, record_id: str) -> ApiResponse:
        return ApiResponse(204, {"OData-EntityId": f"{self._root}/{table.entity_set}({record_id})"})

    # -- roles ----------------------------------------------------------------------------------

    def _create(self, state: OrgProvisioning, table: Table, request: ApiRequest) -> ApiResponse:
        self._require("Create", table.entity_set)
        payload = json_payload(request.body)
        auth_value = payload.pop("authvalue", None)
        values = self._payload.values(table, payload, None)
        registration = None
        with self._store.exclusive():
            if table.entity_set == "roles":
                values = self._new_role(values)
            elif table.entity_set == "serviceendpoints":
                state.auth_values[self._new_endpoint(values, auth_value)] = str(auth_value)
            else:
                values[table.primary_id] = str(uuid.uuid4())
                registration = step_registration(self._store, values, state.auth_values)
            row = self._store.insert(table, values, self._caller.actor)
            if table.entity_set == "roles":
                state.role_privileges[row["roleid"]] = {}
            if registration is not None:
                self._hub.register(registration)
        logger.debug("created %s %s in %s", table.logical_name, row[table.primary_id], self._store.org.url)
        return self._done(table, row[table.primary_id])

    def _new_role(self, values: dict[str, Any]) -> dict[str, Any]:
        name = values.get("name")
        unit = values.get("_businessunitid_value")
        if not isinstance(name, str) or not name.strip():
            raise errors.bad_payload("A role needs a name.")
        if unit is None:
            raise errors.bad_payload("A role needs its business unit (businessunitid@odata.bind).")
        same = [r for r in self._store.rows("roles") if r["name"] == name and r["_businessunitid_value"] == unit]
        if same:
            raise errors.duplicate_key()
        record_id = role_id(self._store.org.org_id, name)
        if values.get("roleid", record_id) != record_id:
            raise errors.bad_payload("The sandbox chooses a role's id; leave roleid out.")
        return {**values, "roleid": record_id}

    def _role_operation(self, state: OrgProvisioning, role: Row, rest: str, request: ApiRequest) -> ApiResponse:
        action = rest.removeprefix("Microsoft.Dynamics.CRM.")
        if rest == "roleprivileges_association" and request.method == "GET":
            self._require("Read", "roles")
            held = state.role_privileges.get(role["roleid"], {})
            rows = [
                {"privilegeid": catalogue.PRIVILEGE_IDS[name], "name": name}
                for name in sorted(held)
                if name in catalogue.PRIVILEGE_IDS
            ]
            return json_body(200, {"@odata.context": f"{self._root}/$metadata#privileges", "value": rows})
        if action not in ("AddPrivilegesRole", "ReplacePrivilegesRole") or request.method != "POST":
            raise errors.unknown_segment(rest)
        self._require("Write", "roles")
        if role["name"] == SYSTEM_ADMINISTRATOR:
            raise errors.bad_payload("The System Administrator role's privileges cannot be changed.")
        wanted = self._privileges(json_payload(request.body), empty_ok=action == "ReplacePrivilegesRole")
        with self._store.exclusive():
            current = state.role_privileges.setdefault(role["roleid"], {})
            if action == "ReplacePrivilegesRole":
                current.clear()
            current.update(wanted)
            for user in self._holders(role["name"]):
                self._store.replace_user(apply_roles(self._store, user))
        return ApiResponse(204)

    def _privileges(self, payload: dict[str, Any], *, empty_ok: bool) -> dict[str, str]:
        """The privilege names and depths of a `Privileges` parameter. Raises DataverseError 400 / 403 / 404."""
        items = payload.get("Privileges")
        if not isinstance(items, list) or (not items and not empty_ok) or not all(isinstance(i, dict) for i in items):
            raise errors.bad_payload("The Privileges parameter must be an array of RolePrivilege objects.")
        caller = self._caller.user
        held = {} if is_administrator(caller) else held_privileges(self._store, caller)
        wanted: dict[str, str] = {}
        for item in items:
            privilege_id, depth = str(item.get("PrivilegeId", "")).lower(), item.get("Depth")
            if isinstance(depth, int) and 0 <= depth < len(catalogue.DEPTHS):
                depth = catalogue.DEPTHS[depth]
            if not is_guid(privilege_id) or depth not in catalogue.DEPTHS:
                raise errors.bad_payload(
                    "Each RolePrivilege needs a PrivilegeId (GUID) and a Depth (Basic, Local, Deep or Global)."
                )
            privilege = catalogue.PRIVILEGES.get(privilege_id)
            if privilege is None:
                raise errors.not_found("privilege", privilege_id)
            name = str(privilege["name"])
            if depth not in catalogue.allowed_depths(privilege):
                raise errors.bad_payload(f"The privilege {name} cannot be granted at {depth} depth.")
            # Nobody grants more than they hold: a caller other than a System Administrator needs each privilege
            # at that depth or deeper itself.
            mine = held.get(name)
            if not is_administrator(caller) and (
                mine is None or catalogue.DEPTHS.index(mine) < catalogue.DEPTHS.index(str(depth))
            ):
                raise missing_privilege(caller, name, "role", TABLES["roles"].object_type_code)
            wanted[name] = str(depth)
        return wanted

    def _holders(self, role_name: str) -> list[SystemUser]:
        users = (self._store.find_user(str(row["systemuserid"])) for row in self._store.rows("systemusers"))
        return [user for user in users if user is not None and role_name in user.roles]

    # -- service endpoints and steps ------------------------------------------------------------

    def _new_endpoint(self, values: dict[str, Any], auth_value: Any) -> str:
        if values.get("contract") != WEBHOOK_CONTRACT:
            raise errors.bad_payload(
                f"The sandbox serves webhook service endpoints only (contract {WEBHOOK_CONTRACT})."
            )
        self._check_url(values.get("url"))
        parse_auth_value(int(values.get("authtype") or 0), auth_value)
        values["serviceendpointid"] = str(uuid.uuid4())
        return str(values["serviceendpointid"])

    @staticmethod
    def _check_url(url: Any) -> None:
        if not isinstance(url, str) or not re.match(r"https?://[^/?#\s]+", url):
            raise errors.bad_payload("A webhook service endpoint needs an absolute http(s) url.")

    def _update(self, state: OrgProvisioning, table: Table, row: Row, request: ApiRequest) -> ApiResponse:
        self._require("Write", table.entity_set)
        payload = json_payload(request.body)
        auth_value = payload.pop("authvalue", None)
        values = self._payload.values(table, payload, None)
        record_id = str(row[table.primary_id])
        with self._store.exclusive():
            merged = {**row, **values}
            if table.entity_set == "serviceendpoints":
                if merged.get("contract") != WEBHOOK_CONTRACT:
                    raise errors.bad_payload("A webhook service endpoint stays a webhook (contract 8).")
                self._check_url(merged.get("url"))
                value = auth_value if auth_value is not None else state.auth_values.get(record_id)
                parse_auth_value(int(merged.get("authtype") or 0), value)
                registrations = [
                    step_registration(self._store, step, {**state.auth_values, record_id: str(value)}, merged)
                    for step in steps_of(self._store, record_id)
                ]
                state.auth_values[record_id] = str(value)
            else:
                registrations = [step_registration(self._store, merged, state.auth_values)]
            self._store.update(table, record_id, values, self._caller.actor)
            for registration in registrations:  # re-pointed: every step of the endpoint delivers the new way
                self._hub.register(registration)
        return self._done(table, record_id)

    def _delete(self, state: OrgProvisioning, table: Table, row: Row) -> ApiResponse:
        self._require("Delete", table.entity_set)
        record_id = str(row[table.primary_id])
        with self._store.exclusive():
            if table.entity_set == "roles":
                if row["name"] == SYSTEM_ADMINISTRATOR:
                    raise errors.bad_payload("The System Administrator role cannot be deleted.")
                state.role_privileges.pop(record_id, None)
                for user in self._holders(str(row["name"])):
                    stripped = tuple(name for name in user.roles if name != row["name"])
                    self._store.replace_user(apply_roles(self._store, _with_roles(user, stripped)))
            elif table.entity_set == "serviceendpoints":
                if steps_of(self._store, record_id):
                    raise errors.bad_payload(
                        "The service endpoint still has processing steps; delete its sdkmessageprocessingsteps first."
                    )
                state.auth_values.pop(record_id, None)
            else:
                unregister_step(self._hub, self._store, record_id)
            self._store.delete(table, record_id)
        return ApiResponse(204)

    # -- application users and their roles ------------------------------------------------------

    def _system_users(self, request: ApiRequest, key: str | None, rest: str | None) -> ApiResponse | None:
        method = request.method
        if key is None and rest is None and method == "POST":
            return self._create_application_user(request)
        if key is None or not is_guid(key):
            return None
        if rest is None and method == "PATCH":
            payload = json_payload(request.body)
            if set(payload) != {"isdisabled"}:
                return None
            return self._enable(key, payload["isdisabled"])
        if rest == f"{_ASSOCIATION}/$ref" and method == "POST":
            return self._associate(key, request)
        disassociate = re.fullmatch(rf"{_ASSOCIATION}\(([0-9A-Fa-f-]{{36}})\)/\$ref", rest or "")
        if disassociate and method == "DELETE":
            return self._disassociate(key, disassociate.group(1).lower())
        return None

    def _user(self, key: str) -> SystemUser:
        user = self._store.find_user(key)
        if user is None:
            raise errors.not_found("systemuser", key.lower())
        return user

    def _create_application_user(self, request: ApiRequest) -> ApiResponse:
        state = org_state(self._store)
        self._require("Create", "systemusers")
        values = self._payload.values(TABLES["systemusers"], json_payload(request.body), None)
        application_id = values.get("applicationid")
        if application_id is None:
            raise errors.bad_payload("The sandbox creates application users only: applicationid is required.")
        if values.get("_businessunitid_value") is None:
            raise errors.bad_payload("An application user needs its business unit (businessunitid@odata.bind).")
        found = self._apps(self._store.org.tenant_id, application_id)
        if found is None:
            raise errors.bad_payload(
                f"The application {application_id} has no service principal in the organization's tenant "
                f"{self._store.org.tenant_id}; it must be consented there first."
            )
        display_name, object_id = found
        if self._store.find_application_user(application_id) is not None:
            raise errors.duplicate_key()
        user = SystemUser(
            str(uuid.uuid4()),
            f"# {display_name}",
            application_id=application_id,
            object_id=object_id,
            read_depth="none",
        )
        with self._store.exclusive():
            state.provisioned_users.add(user.systemuserid)
            try:
                self._store.add_user(user)
            except ValueError:
                state.provisioned_users.discard(user.systemuserid)
                raise errors.duplicate_key() from None
        return self._done(TABLES["systemusers"], user.systemuserid)

    def _enable(self, key: str, disabled: Any) -> ApiResponse:
        self._require("Write", "systemusers")
        if not isinstance(disabled, bool):
            raise errors.bad_payload("isdisabled is true or false.")
        user = self._user(key)
        self._store.replace_user(_with_enabled(user, not disabled))
        return ApiResponse(204)

    def _role_reference(self, request: ApiRequest) -> Row:
        target = json_payload(request.body).get("@odata.id")
        text = target.removeprefix(self._root).removeprefix("/") if isinstance(target, str) else ""
        text = re.sub(r"^(?:https://[^/]+)?/?(?:api/data/v9\.\d/)?", "", text)
        match = re.fullmatch(r"roles\(([0-9A-Fa-f-]{36})\)", text)
        if match is None:
            raise errors.bad_payload('The body must be {"@odata.id": "<service root>/roles(<role id>)"}.')
        return self._row(TABLES["roles"], match.group(1))

    def _associate(self, key: str, request: ApiRequest) -> ApiResponse:
        org_state(self._store)
        require(self._store, self._caller, "prvAssignRole", "role", TABLES["roles"].object_type_code)
        role = self._role_reference(request)
        with self._store.exclusive():
            user = self._user(key)
            if role["_businessunitid_value"] != self._store.org.root_business_unit_id:
                raise errors.bad_payload("The role belongs to another business unit than the user.")
            if role["name"] in user.roles:
                raise errors.duplicate_key()
            self._store.replace_user(apply_roles(self._store, _with_roles(user, (*user.roles, str(role["name"])))))
        return ApiResponse(204)

    def _disassociate(self, key: str, role_key: str) -> ApiResponse:
        org_state(self._store)
        require(self._store, self._caller, "prvAssignRole", "role", TABLES["roles"].object_type_code)
        role = self._row(TABLES["roles"], role_key)
        with self._store.exclusive():
            user = self._user(key)
            remaining = tuple(name for name in user.roles if name != role["name"])
            self._store.replace_user(apply_roles(self._store, _with_roles(user, remaining)))
        return ApiResponse(204)


def _with_roles(user: SystemUser, roles: tuple[str, ...]) -> SystemUser:
    return replace(user, roles=roles)


def _with_enabled(user: SystemUser, enabled: bool) -> SystemUser:
    return replace(user, enabled=enabled)
