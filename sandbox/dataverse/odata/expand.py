"""`$expand` on the Dataverse stand-in (pad/webapi/query/join-tables.md): single-valued navigation properties
(a lookup's target row, or null) and collection-valued ones (the related rows of a one-to-many relationship),
each with `$select` and, for collections, `$filter`, `$orderby` and `$top` inside the parentheses, options
separated by `;`: `$expand=primarycontactid($select=fullname),contact_customer_accounts($select=fullname;$top=5)`.

Expanded rows are held to the caller's read access, like the rows of the query itself. Nested `$expand` is not
supported by the sandbox (Dataverse allows it on single-valued properties only) and is refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.dataverse import errors
from sandbox.dataverse.odata.query import (
    parse_filter,
    parse_orderby,
    parse_select,
    parse_top,
    sort_key,
    table_filter_kinds,
)
from sandbox.dataverse.org import OrgStore, Row
from sandbox.dataverse.schema import TABLES, Table
from sandbox.dataverse.wire import render

_ITEM = re.compile(r"^\s*(?P<nav>\w+)\s*(?:\((?P<options>.*)\))?\s*$", re.DOTALL)
_INNER_OPTIONS = frozenset({"$select", "$filter", "$orderby", "$top"})


@dataclass(frozen=True)
class Expansion:
    """One navigation property to expand and its options."""

    navigation: str
    target: Table
    lookup: str  # single-valued: the row's lookup column; collection-valued: the related table's lookup column
    collection: bool
    select: tuple[str, ...] | None
    options: dict[str, str]

    @property
    def context(self) -> str:
        return f"{self.navigation}({','.join(self.select)})" if self.select else f"{self.navigation}()"


def _split(text: str, separator: str) -> list[str]:
    """Split at `separator` outside parentheses and quotes."""
    parts, depth, quoted, current = [], 0, False, ""
    for char in text:
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        if char == separator and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0 or quoted:
        raise errors.bad_query(f"The $expand expression '{text}' has unbalanced parentheses or quotes.")
    parts.append(current)
    return [part for part in parts if part.strip()]


def parse_expand(text: str | None, table: Table) -> tuple[Expansion, ...]:
    """The navigation properties `$expand` names. Raises DataverseError 400 naming what it does not accept."""
    if text is None:
        return ()
    expansions = []
    for item in _split(text, ","):
        match = _ITEM.match(item)
        if match is None:
            raise errors.bad_query(f"The $expand item '{item.strip()}' is not valid.")
        navigation = match.group("nav")
        options: dict[str, str] = {}
        for option in _split(match.group("options") or "", ";"):
            name, _, value = option.partition("=")
            name = name.strip()
            if name == "$expand":
                raise errors.bad_query("A nested $expand is not supported by the sandbox.")
            if name not in _INNER_OPTIONS:
                raise errors.bad_query(f"The query option '{name}' is not supported inside $expand by the sandbox.")
            options[name] = value.strip()
        single = table.navigation(navigation)
        relationship = table.relationship(navigation)
        if single is not None:
            column, entity_set = single
            if set(options) - {"$select"}:
                raise errors.bad_query(f"Only $select applies to the single-valued navigation property '{navigation}'.")
            target = TABLES[entity_set]
            expansions.append(
                Expansion(navigation, target, column.name, False, parse_select(options.get("$select"), target), options)
            )
        elif relationship is not None:
            target = TABLES[relationship.many]
            parse_top(options.get("$top"))
            expansions.append(
                Expansion(
                    navigation,
                    target,
                    relationship.lookup,
                    True,
                    parse_select(options.get("$select"), target),
                    options,
                )
            )
        else:
            raise errors.bad_query(
                f"Could not find a property named '{navigation}' on type 'Microsoft.Dynamics.CRM.{table.logical_name}'."
            )
    return tuple(expansions)


def context_selection(select: tuple[str, ...] | None, expansions: tuple[Expansion, ...]) -> str:
    """The `(…)` of an `@odata.context` URL: `accounts(name,primarycontactid(fullname))`."""
    names = [*(select or ()), *(expansion.context for expansion in expansions)]
    return f"({','.join(names)})" if names else ""


class Expander:
    """Adds expanded navigation properties to rendered rows of one org, for a caller who may read `can_read` rows."""

    def __init__(self, store: OrgStore, can_read: Callable[[Row], bool]) -> None:
        self._store = store
        self._can_read = can_read

    def expand(self, table: Table, row: Row, rendered: dict[str, Any], expansions: tuple[Expansion, ...]) -> None:
        for expansion in expansions:
            if not expansion.collection:
                value = row.get(expansion.lookup)
                related = self._store.get(expansion.target.entity_set, value) if value else None
                readable = related is not None and self._can_read(related)
                rendered[expansion.navigation] = (
                    render(expansion.target, related, expansion.select) if related is not None and readable else None
                )
                continue
            rendered[expansion.navigation] = self._collection(row[table.primary_id], expansion)

    def _collection(self, record_id: str, expansion: Expansion) -> list[dict[str, Any]]:
        target, options = expansion.target, expansion.options
        predicate = parse_filter(options.get("$filter"), table_filter_kinds(target), target.logical_name)
        rows = [
            row
            for row in self._store.rows(target.entity_set)
            if row.get(expansion.lookup) == record_id and predicate(row) and self._can_read(row)
        ]
        rows.sort(key=sort_key(parse_orderby(options.get("$orderby"), target), target.primary_id))
        top = parse_top(options.get("$top"))
        return [render(target, row, expansion.select) for row in rows[: top if top is not None else len(rows)]]
