"""Which rows a caller of the Dataverse stand-in may read, and what Dataverse answers when it may not.

The caller's read depth on accounts and contacts is the shallower of the application user's and, while it
impersonates, the impersonated user's (protocol §4: the intersection of both users' privileges). Depths modelled:
none (no prvRead<Table>), Basic ("user": rows whose owner is the user) and Organization; sharing, teams and
business units are not. Writes are not checked here.

Answers, from Microsoft's Dataverse troubleshooting ("client errors"): a missing privilege is -2147220960
(0x80040220, "Principal user … is missing prv… privilege … on OTC=… for entity …"); a privilege held at too shallow
a depth for the record is -2147187962 (0x80048306, "… does not have ReadAccess right(s) for record with id … of
entity …", as the Web API was seen answering). The HTTP status of both is the sandbox's choice: 403.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from sandbox.dataverse import errors
from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.org import READ_DEPTHS, Row, SystemUser
from sandbox.dataverse.schema import Table
from sandbox.dataverse.wire import Caller

# Privilege ids are fixed per org in Dataverse; the sandbox derives stable ones from the privilege name.
_PRIVILEGE_NAMESPACE = uuid.UUID("6f0b2f8e-6b41-4c53-9a56-0f7d2f7f5a10")


def privilege_id(name: str) -> str:
    """The id of the privilege `name` in the sandbox's orgs (stable, derived from the name)."""
    return str(uuid.uuid5(_PRIVILEGE_NAMESPACE, name))


def role_id(org_id: str, name: str) -> str:
    """The roleid of the security role `name` in the org (stable per org and name)."""
    return str(uuid.uuid5(_PRIVILEGE_NAMESPACE, f"role|{org_id}|{name}"))


def read_privilege(table: Table) -> str:
    """`prvReadAccount`, `prvReadContact`."""
    return f"prvRead{table.schema_name}"


def _principal(user: SystemUser) -> str:
    access_mode = 4 if user.application_id else 0  # 4 = non-interactive, as application users are
    return (
        f"Principal user (Id={user.systemuserid}, type=8, roleCount={len(user.roles)}, "
        f"privilegeCount=0, accessMode={access_mode})"
    )


@dataclass(frozen=True)
class ReadAccess:
    """The effective read depth of one request (`user` is the impersonated user, or the application user)."""

    user: SystemUser
    depth: str

    @property
    def owner_scope(self) -> str | None:
        """The owner whose rows are visible, or None when every row is (Organization depth)."""
        return self.user.systemuserid if self.depth == "user" else None

    def can_read(self, row: Row) -> bool:
        return self.depth == "organization" or (
            self.depth == "user" and row.get("_ownerid_value") == self.user.systemuserid
        )

    def require_privilege(self, table: Table) -> None:
        """Raises DataverseError 403 0x80040220 when the caller holds no read privilege on the table."""
        if self.depth == "none":
            raise self._missing_privilege(table, "")

    def require_organization_depth(self, table: Table, operation: str) -> None:
        """Raises DataverseError 403 0x80040220 unless the caller reads the whole table (change tracking needs
        organization-level read, protocol §4; the service's exact answer to a shallower depth is not verified).
        """
        self.require_privilege(table)
        if self.depth != "organization":
            raise self._missing_privilege(
                table, f" at Organization depth ({operation} requires organization-level read on the table)"
            )

    def require_row(self, table: Table, row: Row, org_url: str) -> None:
        """Raises DataverseError 403 0x80048306 when the row exists but lies beyond the caller's depth."""
        self.require_privilege(table)
        if self.can_read(row):
            return
        record_id = row[table.primary_id]
        details = {
            "CallerPrincipal": {"PrincipalId": self.user.systemuserid, "Type": 8, "IsUserPrincipal": True},
            "OwnerPrincipal": {"PrincipalId": row.get("_ownerid_value"), "Type": 8, "IsUserPrincipal": True},
            "ObjectId": record_id,
            "ObjectTypeCode": table.object_type_code,
            "EntityName": table.logical_name,
            "RightsToCheck": "ReadAccess",
            "RoleAccessRights": "None",
            "GrantedAccessRights": "None",
            "PrivilegeDepth": {read_privilege(table): "Basic"},
        }
        checker = f"{org_url}/main.aspx?forceUCI=1&pagetype=entityrecord&etn={table.logical_name}&id={record_id}"
        raise DataverseError(
            403,
            errors.NO_RECORD_ACCESS,
            f"user with id {self.user.systemuserid} does not have ReadAccess right(s) for record with id "
            f"{record_id} of entity {table.display_name}. Consider assigning a role with the required access "
            "level to the user or team. For further troubleshooting, please work with a system administrator to "
            f"use the Access Checker tool on this record: {checker}. More details: {json.dumps(details)}",
        )

    def _missing_privilege(self, table: Table, qualifier: str) -> DataverseError:
        privilege = read_privilege(table)
        return DataverseError(
            403,
            errors.MISSING_PRIVILEGE,
            f"{_principal(self.user)}, is missing {privilege} privilege (Id={privilege_id(privilege)}){qualifier} on "
            f"OTC={table.object_type_code} for entity '{table.logical_name}' (LocalizedName='{table.display_name}'). "
            f"context.Caller={self.user.systemuserid}",
        )


def _user_depth(user: SystemUser) -> str:
    return "organization" if SYSTEM_ADMINISTRATOR in user.roles else user.read_depth


def read_access(caller: Caller) -> ReadAccess:
    """The caller's effective read depth: the shallower of the application user's and the impersonated user's.
    A System Administrator reads at Organization depth (the role holds every read privilege at that depth)."""
    depths = [_user_depth(caller.app_user), _user_depth(caller.user)]
    depth = min(depths, key=READ_DEPTHS.index)
    return ReadAccess(caller.user, depth)


# -- security roles (systemuserroles_association) ----------------------------------------------------------

SYSTEM_ADMINISTRATOR = "System Administrator"
# The built-in System Administrator role has the same roletemplateid in every environment (the Dataverse `role`
# table's roletemplateid; Microsoft's own clients look it up by this id). Custom roles have none.
SYSTEM_ADMINISTRATOR_TEMPLATE = "627090ff-40a3-4053-8790-584edc5be201"


def role_rows(org_id: str, user: SystemUser) -> list[dict[str, object]]:
    """The user's security roles as `systemusers(<id>)/systemuserroles_association` lists them: `roleid` (stable
    per org and name), `name` and `_roletemplateid_value` (None for a custom role)."""
    return [
        {
            "roleid": role_id(org_id, name),
            "name": name,
            "_roletemplateid_value": SYSTEM_ADMINISTRATOR_TEMPLATE if name == SYSTEM_ADMINISTRATOR else None,
        }
        for name in user.roles
    ]


def user_roles(root: str, org_id: str, caller: Caller, target: SystemUser | None, key: str) -> dict[str, object]:
    """The answer to `GET systemusers(<key>)/systemuserroles_association`: anyone may list their own roles, an
    application user or a System Administrator anyone's; another caller gets the missing-privilege 403."""
    if target is None:
        raise errors.not_found("systemuser", key.lower())
    reader = caller.user
    if reader.systemuserid != target.systemuserid and not (
        reader.application_id or SYSTEM_ADMINISTRATOR in reader.roles
    ):
        raise DataverseError(
            403,
            errors.MISSING_PRIVILEGE,
            f"{_principal(reader)} is missing prvReadRole privilege (Id=prvReadRole) on OTC=1036 for entity 'role'.",
        )
    return {
        "@odata.context": f"{root}/$metadata#roles",
        "value": role_rows(org_id, target),
    }
