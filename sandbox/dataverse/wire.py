"""Shapes shared by the Dataverse stand-in's modules: a request and response as the Web API operations see
them, the calling user, and how a row is written in JSON (etag, selected columns, primary key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.org import Actor, Row, SystemUser
from sandbox.dataverse.schema import Table

JSON_TYPE = "application/json; odata.metadata=minimal"


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str  # below the service root, percent-decoded: "accounts(…)", "WhoAmI", "$batch"
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def json_body(status: int, payload: Any, headers: dict[str, str] | None = None) -> ApiResponse:
    # orjson: a 5,000-row page must cost the emulator little next to the latency it injects.
    return ApiResponse(status, {"Content-Type": JSON_TYPE, **(headers or {})}, orjson.dumps(payload))


def error_response(error: DataverseError) -> ApiResponse:
    return json_body(error.status, error.body(), error.headers)


@dataclass(frozen=True)
class Caller:
    """The authenticated application user and the user it acts as (itself unless impersonating)."""

    app_user: SystemUser
    user: SystemUser

    @property
    def impersonating(self) -> bool:
        return self.user.systemuserid != self.app_user.systemuserid

    @property
    def actor(self) -> Actor:
        return Actor(self.user.systemuserid, self.app_user.systemuserid if self.impersonating else None)


def etag(row: Row) -> str:
    return f'W/"{row["versionnumber"]}"'


def render(table: Table, row: Row, select: tuple[str, ...] | None) -> dict[str, Any]:
    """A row as the Web API returns it: etag, the selected columns and always the primary key."""
    names = select if select is not None else tuple(column.name for column in table.columns)
    get = row.get
    rendered: dict[str, Any] = {"@odata.etag": etag(row), **{name: get(name) for name in names}}
    rendered[table.primary_id] = row[table.primary_id]
    return rendered


def render_cached(
    cache: dict[tuple[str, tuple[str, ...] | None], dict[str, tuple[object, orjson.Fragment]]],
    table: Table,
    row: Row,
    select: tuple[str, ...] | None,
) -> orjson.Fragment:
    """``render`` pre-encoded and kept per row version and selection, so re-reading a large table (benchmark
    warm-up, then the measured runs) costs the emulator a lookup instead of building every row again."""
    rows = cache.setdefault((table.entity_set, select), {})
    row_id = row[table.primary_id]
    version = row["versionnumber"]
    hit = rows.get(row_id)
    if hit is not None and hit[0] == version:
        return hit[1]
    fragment = orjson.Fragment(orjson.dumps(render(table, row, select)))
    rows[row_id] = (version, fragment)
    return fragment


def selection(select: tuple[str, ...] | None) -> str:
    return f"({','.join(select)})" if select else ""
