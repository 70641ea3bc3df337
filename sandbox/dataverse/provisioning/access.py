"""Who may provision what in one org, and what provisioning remembers beside the rows: each custom role's
privileges and depths, the service endpoints' authentication values (never read back), and which application
users were created through the Web API (their impersonation and read depth follow their roles exactly).

A System Administrator may do everything. Anyone else needs the privilege each operation names, held through a
custom role. A missing one is refused as Dataverse refuses it: 403 -2147220960 (0x80040220) "Principal user … is
missing <privilege> privilege" (Microsoft's "Troubleshoot Dataverse Web API client errors"); the 403 status is
the sandbox's choice, as in sandbox.dataverse.security.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field, replace

from sandbox.dataverse import errors
from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.org import OrgStore, SystemUser
from sandbox.dataverse.provisioning import catalogue
from sandbox.dataverse.security import SYSTEM_ADMINISTRATOR, privilege_id, role_id
from sandbox.dataverse.wire import Caller

ACT_ON_BEHALF = "prvActOnBehalfOfAnotherUser"
# What decides the stand-in's read depth model (accounts and contacts, sandbox.dataverse.security).
_DEPTH_MODEL = {"Basic": "user", "Local": "organization", "Deep": "organization", "Global": "organization"}


@dataclass
class OrgProvisioning:
    """Provisioning state of one org; guarded by the org store's lock."""

    seeded: bool = False
    role_privileges: dict[str, dict[str, str]] = field(default_factory=dict)  # roleid -> privilege name -> depth
    auth_values: dict[str, str] = field(default_factory=dict)  # serviceendpointid -> authvalue
    provisioned_users: set[str] = field(default_factory=set)  # systemuserids created through POST systemusers


_STATES: weakref.WeakKeyDictionary[OrgStore, OrgProvisioning] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def existing_state(store: OrgStore) -> OrgProvisioning | None:
    """The org's provisioning state if anything used it yet (seeds nothing): for the development snapshot."""
    with _STATES_LOCK:
        return _STATES.get(store)


def restore_state(store: OrgStore, state: OrgProvisioning) -> None:
    """Put back a saved provisioning state (its reference rows came back with the org's rows)."""
    with _STATES_LOCK:
        _STATES[store] = state


def org_state(store: OrgStore) -> OrgProvisioning:
    """The org's provisioning state, its reference rows seeded on first use."""
    with _STATES_LOCK:
        state = _STATES.setdefault(store, OrgProvisioning())
    with store.lock:
        if not state.seeded:
            catalogue.seed(store)
            state.seeded = True
    return state


def is_administrator(user: SystemUser) -> bool:
    return SYSTEM_ADMINISTRATOR in user.roles


def held_privileges(store: OrgStore, user: SystemUser) -> dict[str, str]:
    """The privileges the user's custom roles grant, each at its deepest depth."""
    state = org_state(store)
    held: dict[str, str] = {}
    for name in user.roles:
        for privilege, depth in state.role_privileges.get(role_id(store.org.org_id, name), {}).items():
            known = held.get(privilege)
            if known is None or catalogue.DEPTHS.index(depth) > catalogue.DEPTHS.index(known):
                held[privilege] = depth
    return held


def missing_privilege(user: SystemUser, privilege: str, entity: str, otc: int) -> DataverseError:
    access_mode = 4 if user.application_id else 0
    return DataverseError(
        403,
        errors.MISSING_PRIVILEGE,
        f"Principal user (Id={user.systemuserid}, type=8, roleCount={len(user.roles)}, privilegeCount=0, "
        f"accessMode={access_mode}), is missing {privilege} privilege (Id={privilege_id(privilege)}) on "
        f"OTC={otc} for entity '{entity}'. context.Caller={user.systemuserid}",
    )


def require(store: OrgStore, caller: Caller, privilege: str, entity: str, otc: int) -> None:
    """Raises the missing-privilege DataverseError unless the caller (and, impersonating, its app user) holds
    `privilege` or is a System Administrator."""
    for user in {caller.user.systemuserid: caller.user, caller.app_user.systemuserid: caller.app_user}.values():
        if not is_administrator(user) and privilege not in held_privileges(store, user):
            raise missing_privilege(user, privilege, entity, otc)


def apply_roles(store: OrgStore, user: SystemUser) -> SystemUser:
    """The user with the impersonation privilege and read depth its roles give. A user created through the Web
    API has exactly what its roles give; one added by the sandbox's admin operations keeps what it was given and
    gains what its roles add."""
    state = org_state(store)
    held = held_privileges(store, user)
    read = held.get("prvReadAccount")
    depth = _DEPTH_MODEL[read] if read else "none"
    if user.systemuserid in state.provisioned_users:
        return replace(user, act_on_behalf=ACT_ON_BEHALF in held, read_depth=depth)
    order = ("none", "user", "organization")
    deeper = max(user.read_depth, depth, key=order.index)
    return replace(user, act_on_behalf=user.act_on_behalf or ACT_ON_BEHALF in held, read_depth=deeper)
