"""The OData details of the Dataverse Web API that the client needs outside any one call: names it may put in a
URL, query options, page sizes, deleted-row markers in change pages, multipart answers, Retry-After, which
transport failures cannot have reached the server (protocol.md §4) and which say the org's host does not exist.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

MAX_PAGE_SIZE = 5000  # the default and maximum odata.maxpagesize (pad/webapi/query/page-results)
ENTITY_SET = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def query_string(
    *,
    select: Sequence[str] | None = None,
    filter: str | None = None,
    orderby: str | None = None,
    top: int | None = None,
) -> str:
    params: list[str] = []
    if select:
        for name in select:
            if not ATTRIBUTE.fullmatch(name):
                raise ValueError(f"{name!r} is not an attribute name")
        params.append("$select=" + ",".join(select))
    if filter:
        params.append("$filter=" + quote(filter, safe="'(),"))
    if orderby:
        params.append("$orderby=" + quote(orderby, safe=","))
    if top is not None:
        params.append(f"$top={int(top)}")
    return "?" + "&".join(params) if params else ""


def string_literal(value: str) -> str:
    """An OData string literal for a $filter: quoted, with each quote doubled (OData URL conventions)."""
    return "'" + value.replace("'", "''") + "'"


def checked_page_size(page_size: int) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    return page_size


def is_multipart(headers: Any) -> bool:
    return str(headers.get("Content-Type", "")).lower().startswith("multipart/mixed")


def is_deleted_entity(row: Mapping[str, Any]) -> bool:
    if "id" not in row:
        return False
    context = row.get("@odata.context")
    if isinstance(context, str) and context.endswith("/$deletedEntity"):
        return True
    return row.get("reason") == "deleted" and "id" in row and len(row) <= 3


def retry_after_seconds(headers: Any) -> float | None:
    """``Retry-After`` is seconds (what Dataverse sends) or an HTTP date (RFC 9110 §10.2.3)."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def never_left_the_client(exc: BaseException) -> bool:
    """True when the failure happened before any byte of the request reached the server (connect phase)."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.ProxyError):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


# A forward proxy that could not find the host it was asked to CONNECT to: http.client reports the proxy's status
# line as "Tunnel connection failed: 404 …". The sandbox's proxy answers so for an org host it does not serve.
_TUNNEL_NOT_FOUND = re.compile(r"Tunnel connection failed: 404\b")


def host_does_not_exist(exc: BaseException) -> bool:
    """True when a transport failure says the org's host name does not exist: DNS answered "no such name"
    (EAI_NONAME; a temporary resolver failure, EAI_AGAIN, is not this) or the proxy could not find the host.
    A mistyped or deleted org fails this way; retrying cannot help.

    ⚠ That Dataverse's DNS has no name for an org that does not exist is what clients are seen to report ("No such
    host is known"); no Microsoft page documents it.
    """
    import socket

    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, socket.gaierror) and current.errno == socket.EAI_NONAME:
            return True
        if isinstance(current, OSError) and _TUNNEL_NOT_FOUND.search(str(current)):
            return True
        pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return False
