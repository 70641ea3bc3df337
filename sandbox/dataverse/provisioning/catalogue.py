"""The reference rows every org has and the app looks up by name: privileges (one per access right of each
table, plus the global ones), the sdkmessages Create / Update / Delete and their sdkmessagefilters per table, and
the built-in System Administrator role. Seeded into an org's store on its first provisioning request.

Privilege names are `prv<Access><Entity>` (Dataverse privilege table, e.g. prvReadAccount, prvCreateRole); the
user table's are `prv<Access>User` (prvCreateUser). AccessRight values are the Dataverse AccessRights enum (Read 1,
Write 2, Append 4, AppendTo 16, Create 32, Delete 65536, Share 262144, Assign 524288).
"""

from __future__ import annotations

import uuid

from sandbox.dataverse.org import Actor, OrgStore
from sandbox.dataverse.schema import TABLES, Table
from sandbox.dataverse.security import SYSTEM_ADMINISTRATOR, SYSTEM_ADMINISTRATOR_TEMPLATE, privilege_id, role_id

ACCESS_RIGHTS = {
    "Read": 1,
    "Write": 2,
    "Append": 4,
    "AppendTo": 16,
    "Create": 32,
    "Delete": 65536,
    "Share": 262144,
    "Assign": 524288,
}
# Privileges that are not about one table's rows: impersonation (protocol §4) and assigning roles.
GLOBAL_PRIVILEGES = ("prvActOnBehalfOfAnotherUser", "prvAssignRole")
MESSAGES = ("Create", "Update", "Delete")
DEPTHS = ("Basic", "Local", "Deep", "Global")  # PrivilegeDepth (Web API EnumType reference), shallow to deep
_NAMESPACE = uuid.UUID("0d5c3f55-1d2b-4d8e-9a3e-6f0c1b7e4a21")


def privilege_entity(table: Table) -> str:
    """The entity part of a table's privilege names: `User` for systemuser, else the schema name."""
    return "User" if table.mirrors_users else table.schema_name


def privilege_name(access: str, table: Table) -> str:
    return f"prv{access}{privilege_entity(table)}"


def _privilege_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for table in TABLES.values():
        user_owned = table.ownership == "UserOwned"
        for access, right in ACCESS_RIGHTS.items():
            if not user_owned and access in ("Share", "Assign"):
                continue
            name = privilege_name(access, table)
            rows.append(
                {
                    "privilegeid": privilege_id(name),
                    "name": name,
                    "accessright": right,
                    "canbebasic": user_owned,
                    "canbelocal": user_owned or table.ownership == "BusinessOwned",
                    "canbedeep": user_owned or table.ownership == "BusinessOwned",
                    "canbeglobal": True,
                }
            )
    for name in GLOBAL_PRIVILEGES:
        rows.append(
            {
                "privilegeid": privilege_id(name),
                "name": name,
                "accessright": 0,
                "canbebasic": False,
                "canbelocal": False,
                "canbedeep": False,
                "canbeglobal": True,
            }
        )
    return rows


PRIVILEGES: dict[str, dict[str, object]] = {str(row["privilegeid"]): row for row in _privilege_rows()}
PRIVILEGE_IDS: dict[str, str] = {str(row["name"]): privilege_id for privilege_id, row in PRIVILEGES.items()}


def allowed_depths(privilege: dict[str, object]) -> tuple[str, ...]:
    flags = ("canbebasic", "canbelocal", "canbedeep", "canbeglobal")
    return tuple(depth for depth, flag in zip(DEPTHS, flags, strict=True) if privilege[flag])


def message_id(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"sdkmessage|{name}"))


def filter_id(message: str, logical_name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"sdkmessagefilter|{message}|{logical_name}"))


def seed(store: OrgStore) -> None:
    """Write the reference rows into the org (once: the caller holds the org's lock and remembers it did)."""
    system = Actor(store.system_user_id)
    store.bulk_insert(TABLES["privileges"], (dict(row) for row in PRIVILEGES.values()), system)
    store.bulk_insert(TABLES["sdkmessages"], ({"sdkmessageid": message_id(m), "name": m} for m in MESSAGES), system)
    filters = [
        {
            "sdkmessagefilterid": filter_id(message, table.logical_name),
            "primaryobjecttypecode": table.logical_name,
            "iscustomprocessingstepallowed": True,
            "_sdkmessageid_value": message_id(message),
        }
        for message in MESSAGES
        for table in TABLES.values()
    ]
    store.bulk_insert(TABLES["sdkmessagefilters"], filters, system)
    administrator = {
        "roleid": role_id(store.org.org_id, SYSTEM_ADMINISTRATOR),
        "name": SYSTEM_ADMINISTRATOR,
        "_businessunitid_value": store.org.root_business_unit_id,
        "_roletemplateid_value": SYSTEM_ADMINISTRATOR_TEMPLATE,
    }
    store.insert(TABLES["roles"], administrator, system)
