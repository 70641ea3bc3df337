"""One Dataverse org in the sandbox: its identity, system users, table rows stamped with org-wide version
numbers, deletion tombstones and the delta tokens it issued. Thread-safe through the org's own lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sandbox.dataverse import errors
from sandbox.dataverse.schema import DATAVERSE_SUFFIXES, TABLES, Table
from sandbox.dataverse.throttle import ServiceProtection

logger = logging.getLogger(__name__)

Row = dict[str, Any]
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Row versions start high so they look like a real org's (and never collide with small test numbers).
_FIRST_VERSION = 1_000_000


def canonical_org_url(url: str) -> str:
    """`https://<org>.<suffix>` in lower case without a trailing slash. Raises ValueError otherwise.

    Only one label before a known suffix: the TLS certificate's wildcards (`*.crm4.dynamics.com`) match
    exactly one label.
    """
    text = url.strip().lower().rstrip("/")
    parts = urlsplit(text)
    host = parts.hostname or ""
    if parts.scheme != "https" or parts.port is not None or parts.path or parts.query or "@" in parts.netloc:
        raise ValueError(f"org URL must be https://<org>.<Dataverse suffix>, not {url!r}")
    label, _, suffix = host.partition(".")
    if suffix not in DATAVERSE_SUFFIXES or not _LABEL.match(label):
        raise ValueError(f"org host {host!r} must be <org>.<one of {', '.join(DATAVERSE_SUFFIXES[:3])}, …>")
    return f"https://{host}"


def _users_table() -> Table | None:
    return next((table for table in TABLES.values() if table.mirrors_users), None)


def is_org_host_name(host: str) -> bool:
    """True for a host name an org could have (`<org>.crm<N>.dynamics.com`), whether or not it exists."""
    try:
        canonical_org_url(f"https://{host}")
    except ValueError:
        return False
    return True


def utc_timestamp() -> str:
    """Dataverse's DateTimeOffset rendering: UTC, whole seconds, `Z`."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Org:
    url: str  # canonical, e.g. https://fabrikam.crm4.dynamics.com
    org_id: str
    tenant_id: str
    root_business_unit_id: str
    name: str

    @property
    def host(self) -> str:
        return self.url.removeprefix("https://")


# Read depths the stand-in models for accounts and contacts (sandbox.dataverse.security): no read privilege,
# Basic ("user": the rows the user owns) and Organization (every row).
READ_DEPTHS = ("none", "user", "organization")


@dataclass(frozen=True)
class SystemUser:
    """A systemuser row: an application user (application_id set) or an ordinary licensed user."""

    systemuserid: str
    full_name: str
    enabled: bool = True
    application_id: str | None = None
    object_id: str | None = None  # Entra object id (azureactivedirectoryobjectid)
    act_on_behalf: bool = False  # holds prvActOnBehalfOfAnotherUser (protocol §4, impersonation)
    roles: tuple[str, ...] = ()
    read_depth: str = "organization"  # depth of prvReadAccount / prvReadContact, one of READ_DEPTHS


@dataclass(frozen=True)
class Actor:
    """Who a write is recorded against: the (possibly impersonated) user and the app user acting for it."""

    user_id: str
    on_behalf_of: str | None = None


@dataclass(frozen=True)
class Change:
    """One entry of a delta: the row as it is now, or a deletion (row None)."""

    version: int
    record_id: str
    row: Row | None


@dataclass(frozen=True)
class _DeltaToken:
    entity_set: str
    version: int
    epoch: int


@dataclass(frozen=True)
class Snapshot:
    rows: dict[str, dict[str, Row]]
    keys: dict[str, dict[str, str]]
    tombstones: dict[str, int]


class OrgStore:
    """Rows and users of one org. Rows are replaced, never mutated, so a snapshot is a shallow copy."""

    def __init__(self, org: Org) -> None:
        self.org = org
        self.lock = threading.RLock()
        self.protection = ServiceProtection()
        self._users: dict[str, SystemUser] = {}
        self._rows: dict[str, dict[str, Row]] = {name: {} for name in TABLES}
        # Alternate-key index per table: case-folded key value -> primary id (accountnumber on accounts).
        self._keys: dict[str, dict[str, str]] = {name: {} for name in TABLES}
        self._tombstones: dict[str, list[tuple[int, str]]] = {name: [] for name in TABLES}
        self._version = _FIRST_VERSION
        self._tokens: dict[str, _DeltaToken] = {}
        self._token_epoch = 0
        self._token_serial = itertools.count(1)
        # Filtered, sorted rows per (entity set, $filter, $orderby), valid while `version` is unchanged: paging
        # through a large table must not re-filter and re-sort it for every page, or the emulator rather than
        # the client under test dominates every measurement. Used by sandbox.dataverse.odata.reads.
        # Keyed also by the owner a Basic-depth caller is limited to ("" for every row).
        self.sorted_rows_cache: dict[tuple[str, str, str, str], tuple[int, list[Any]]] = {}
        # Pre-encoded rows per (entity set, $select): see sandbox.dataverse.wire.render_cached.
        self.rendered_rows_cache: dict[Any, dict[str, Any]] = {}
        # Whole encoded pages per (query, caller scope, $select, position, size), valid while `version` is
        # unchanged, for the same reason: see sandbox.dataverse.odata.reads.
        self.rendered_pages_cache: dict[Any, tuple[int, Any]] = {}
        self.system_user_id = str(uuid.uuid4())
        self._system = Actor(self.system_user_id)
        self._users[self.system_user_id] = SystemUser(self.system_user_id, "SYSTEM")
        # The root business unit and the users are rows too (businessunits, systemusers), so a client can read
        # them as it reads them from Dataverse: `businessunits?$filter=_parentbusinessunitid_value eq null`.
        if "businessunits" in TABLES:
            root = {"businessunitid": org.root_business_unit_id, "name": org.name, "_parentbusinessunitid_value": None}
            self.insert(TABLES["businessunits"], root, self._system)
        self._mirror_user(self._users[self.system_user_id])

    # -- users ----------------------------------------------------------------------------------

    def add_user(self, user: SystemUser) -> None:
        """Raises ValueError when the app or Entra object already has a user here (one app user per app)."""
        with self.lock:
            for existing in self._users.values():
                if user.application_id and existing.application_id == user.application_id:
                    raise ValueError(f"app {user.application_id} already has an application user in {self.org.url}")
                if user.object_id and existing.object_id == user.object_id:
                    raise ValueError(f"object {user.object_id} already has a user in {self.org.url}")
            self._users[user.systemuserid] = user
            self._mirror_user(user)

    def replace_user(self, user: SystemUser) -> None:
        with self.lock:
            self._users[user.systemuserid] = user
            self._mirror_user(user)

    def remove_user(self, systemuserid: str) -> None:
        with self.lock:
            self._users.pop(systemuserid, None)
            table = _users_table()
            if table is not None and systemuserid in self._rows[table.entity_set]:
                self.delete(table, systemuserid)

    def _mirror_user(self, user: SystemUser) -> None:
        """Write the user's systemusers row (pad/reference/entities/systemuser.md: applicationid,
        azureactivedirectoryobjectid, isdisabled, accessmode 4 = Non-interactive for application users)."""
        table = _users_table()
        if table is None:
            return
        values = {
            "systemuserid": user.systemuserid,
            "fullname": user.full_name,
            "applicationid": user.application_id,
            "azureactivedirectoryobjectid": user.object_id,
            "isdisabled": not user.enabled,
            "accessmode": 4 if user.application_id else 0,
            "_businessunitid_value": self.org.root_business_unit_id,
        }
        if user.systemuserid in self._rows[table.entity_set]:
            self.update(table, user.systemuserid, values, self._system)
        else:
            self.insert(table, values, self._system)

    def find_user(self, systemuserid: str) -> SystemUser | None:
        with self.lock:
            return self._users.get(systemuserid.lower())

    def find_application_user(self, client_id: str) -> SystemUser | None:
        with self.lock:
            return next((u for u in self._users.values() if u.application_id == client_id.lower()), None)

    def find_user_by_object_id(self, object_id: str) -> SystemUser | None:
        with self.lock:
            return next((u for u in self._users.values() if u.object_id == object_id.lower()), None)

    # -- rows -----------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        with self.lock:
            return self._version

    def rows(self, entity_set: str) -> list[Row]:
        """The current rows (shared, read-only dicts)."""
        with self.lock:
            return list(self._rows[entity_set].values())

    def get(self, entity_set: str, record_id: str) -> Row | None:
        with self.lock:
            return self._rows[entity_set].get(record_id)

    def find_by_key(self, table: Table, value: str) -> Row | None:
        """The row whose alternate key (the table's only one) equals `value`, case-insensitively as SQL does."""
        with self.lock:
            record_id = self._keys[table.entity_set].get(value.casefold())
            return self._rows[table.entity_set].get(record_id) if record_id else None

    def insert(self, table: Table, values: Row, actor: Actor) -> Row:
        """Create a row from writable `values` (plus an optional client-supplied primary id).

        Raises DataverseError 412 when the id or the alternate key is taken.
        """
        with self.lock:
            record_id = str(values.get(table.primary_id) or uuid.uuid4())
            if record_id in self._rows[table.entity_set]:
                raise errors.duplicate_key()
            now = utc_timestamp()
            row: Row = {column.name: None for column in table.columns}
            row.update(values)
            row.update(
                {
                    table.primary_id: record_id,
                    "createdon": now,
                    "modifiedon": now,
                    "_ownerid_value": actor.user_id,
                    "_createdby_value": actor.user_id,
                    "_modifiedby_value": actor.user_id,
                    "_createdonbehalfby_value": actor.on_behalf_of,
                    "_modifiedonbehalfby_value": actor.on_behalf_of,
                }
            )
            if row.get("statecode") is None:
                row["statecode"] = 0
            self._store(table, None, row)
            return row

    def update(self, table: Table, record_id: str, values: Row, actor: Actor) -> Row:
        """Apply writable `values` to an existing row. Raises DataverseError 404 or 412 (alternate key taken)."""
        with self.lock:
            old = self._rows[table.entity_set].get(record_id)
            if old is None:
                raise errors.not_found(table.logical_name, record_id)
            row = {
                **old,
                **values,
                "modifiedon": utc_timestamp(),
                "_modifiedby_value": actor.user_id,
                "_modifiedonbehalfby_value": actor.on_behalf_of,
            }
            self._store(table, old, row)
            return row

    def delete(self, table: Table, record_id: str) -> None:
        """Raises DataverseError 404 when there is no such row."""
        with self.lock:
            old = self._rows[table.entity_set].pop(record_id, None)
            if old is None:
                raise errors.not_found(table.logical_name, record_id)
            self._index_key(table, old, None)
            self._version += 1
            self._tombstones[table.entity_set].append((self._version, record_id))

    def bulk_insert(self, table: Table, many: Iterable[Row], actor: Actor) -> list[str]:
        """Fast seeding: like `insert` for each, under one lock acquisition."""
        ids = []
        with self.lock:
            for values in many:
                ids.append(self.insert(table, values, actor)[table.primary_id])
        return ids

    def _store(self, table: Table, old: Row | None, row: Row) -> None:
        if table.full_name:  # contacts, leads: fullname is computed from firstname and lastname
            parts = [row.get(name) for name in table.full_name]
            row[table.primary_name] = " ".join(str(p) for p in parts if p) or None
        self._index_key(table, old, row)
        self._version += 1
        row["versionnumber"] = self._version
        self._rows[table.entity_set][row[table.primary_id]] = row

    def _index_key(self, table: Table, old: Row | None, new: Row | None) -> None:
        """Keep the alternate-key index in step; raise 412 when `new` takes another row's key."""
        for key in table.alternate_keys:
            index = self._keys[table.entity_set]
            new_value = new.get(key) if new else None
            if new_value is not None and new is not None:
                holder = index.get(str(new_value).casefold())
                if holder is not None and holder != new[table.primary_id]:
                    raise errors.duplicate_key()
            old_value = old.get(key) if old else None
            if old_value is not None:
                index.pop(str(old_value).casefold(), None)
            if new_value is not None and new is not None:
                index[str(new_value).casefold()] = new[table.primary_id]

    # -- change sets ----------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the org lock across several operations (a $batch change set)."""
        with self.lock:
            yield

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(
                rows={name: dict(rows) for name, rows in self._rows.items()},
                keys={name: dict(keys) for name, keys in self._keys.items()},
                tombstones={name: len(stones) for name, stones in self._tombstones.items()},
            )

    def restore(self, snapshot: Snapshot) -> None:
        """Roll back to `snapshot`. Version numbers stay consumed, like SQL rowversion after a rollback."""
        with self.lock:
            self._rows = {name: dict(rows) for name, rows in snapshot.rows.items()}
            self._keys = {name: dict(keys) for name, keys in snapshot.keys.items()}
            for name, length in snapshot.tombstones.items():
                del self._tombstones[name][length:]

    # -- change tracking ------------------------------------------------------------------------

    def changes(self, entity_set: str, since: int, upto: int) -> list[Change]:
        """Rows created or updated, and rows deleted, with since < version <= upto, oldest first."""
        with self.lock:
            found = [
                Change(row["versionnumber"], record_id, row)
                for record_id, row in self._rows[entity_set].items()
                if since < row["versionnumber"] <= upto
            ]
            found.extend(
                Change(version, record_id, None)
                for version, record_id in self._tombstones[entity_set]
                if since < version <= upto
            )
        found.sort(key=lambda change: change.version)
        return found

    def issue_delta_token(self, entity_set: str, version: int) -> str:
        """A new opaque token naming `version`, shaped like Dataverse's `<version>!<timestamp>`."""
        stamp = dt.datetime.now(dt.UTC).strftime("%m/%d/%Y %H:%M:%S")
        with self.lock:
            token = f"{version}!{next(self._token_serial)}!{stamp}"
            self._tokens[token] = _DeltaToken(entity_set, version, self._token_epoch)
        return token

    def delta_token_version(self, token: str, entity_set: str) -> int:
        """The version a token names. Raises DataverseError for an expired, foreign or garbled token."""
        with self.lock:
            issued = self._tokens.get(token)
            if issued is None or issued.entity_set != entity_set or issued.epoch != self._token_epoch:
                raise errors.delta_token_expired()
            return issued.version

    def expire_delta_tokens(self) -> None:
        with self.lock:
            self._token_epoch += 1
            self._tokens.clear()
