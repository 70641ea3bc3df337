"""Instance annotations the Dataverse stand-in adds when `Prefer: odata.include-annotations="…"` asks for them
(pad/webapi/query/select-columns.md "Formatted values" and "Lookup property data"; pad/webapi/compose-http-requests-
handle-errors.md "Prefer headers"): `<column>@OData.Community.Display.V1.FormattedValue` (choice and state labels,
Yes/No, currency, numbers, dates, a lookup's primary name), and for lookups
`@Microsoft.Dynamics.CRM.lookuplogicalname` and `@Microsoft.Dynamics.CRM.associatednavigationproperty`.

The preference takes `*`, a comma-separated list of annotation names, or `<namespace>.*` patterns (OData's
include-annotations; a leading `-` excludes). Formatting assumes the org's base currency is US dollars and the
user's locale en-US in UTC: a real org formats with its currency symbol and the user's time zone and locale.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sandbox.dataverse.org import OrgStore, Row
from sandbox.dataverse.schema import TABLES, Column, Table

FORMATTED_VALUE = "OData.Community.Display.V1.FormattedValue"
LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION_PROPERTY = "Microsoft.Dynamics.CRM.associatednavigationproperty"
PAGING_COOKIE = "Microsoft.Dynamics.CRM.fetchxmlpagingcookie"
MORE_RECORDS = "Microsoft.Dynamics.CRM.morerecords"
_USER_LOOKUPS = frozenset({"ownerid", "createdby", "modifiedby", "createdonbehalfby", "modifiedonbehalfby"})


def annotation_filter(preference: str | None) -> Callable[[str], bool]:
    """Whether an annotation name is included under an `odata.include-annotations` value (None: none are)."""
    if not preference:
        return lambda name: False
    rules = [part.strip() for part in preference.split(",") if part.strip()]

    def matches(rule: str, name: str) -> bool:
        if rule == "*":
            return True
        if rule.endswith(".*"):
            return name.startswith(rule[:-1])
        return name == rule

    def included(name: str) -> bool:
        if any(rule.startswith("-") and matches(rule[1:], name) for rule in rules):
            return False
        return any(not rule.startswith("-") and matches(rule, name) for rule in rules)

    return included


def _format_datetime(value: str) -> str:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    hour = moment.hour % 12 or 12
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"


def formatted(column: Column, value: Any) -> str | None:
    """The FormattedValue of a non-lookup column's value, None when it has none."""
    if value is None:
        return None
    if column.kind in ("choice", "state"):
        return column.label(value)
    if column.kind == "bool":
        return "Yes" if value else "No"
    if column.kind == "money":
        return f"${value:,.2f}"
    if column.kind == "int":
        return f"{value:,}"
    if column.kind == "datetime":
        try:
            return _format_datetime(str(value))
        except ValueError:
            return None
    return None


class Annotator:
    """Adds the requested annotations to rendered rows of one org."""

    def __init__(self, store: OrgStore, preference: str | None) -> None:
        self._store = store
        self._wanted = annotation_filter(preference)
        self.active = any(self._wanted(name) for name in (FORMATTED_VALUE, LOOKUP_LOGICAL_NAME, NAVIGATION_PROPERTY))

    def wants(self, name: str) -> bool:
        return self._wanted(name)

    def annotate(self, table: Table, row: Row, rendered: dict[str, Any]) -> dict[str, Any]:
        """`rendered` (a row as render() wrote it) with each of its columns' annotations after the column."""
        if not self.active:
            return rendered
        out: dict[str, Any] = {}
        for name, value in rendered.items():
            out[name] = value
            column = table.column(name)
            if column is None or value is None:
                continue
            if column.kind == "lookup":
                out.update(self._lookup(column, str(value)))
            elif self._wanted(FORMATTED_VALUE) and (text := formatted(column, value)) is not None:
                out[f"{name}@{FORMATTED_VALUE}"] = text
        return out

    def _lookup(self, column: Column, value: str) -> dict[str, Any]:
        target, navigation = self._target(column, value)
        annotations: dict[str, Any] = {}
        if target is not None and self._wanted(FORMATTED_VALUE):
            found = self._store.get(target.entity_set, value)
            if found is not None and found.get(target.primary_name) is not None:
                annotations[f"{column.name}@{FORMATTED_VALUE}"] = found[target.primary_name]
        if self._wanted(NAVIGATION_PROPERTY):
            annotations[f"{column.name}@{NAVIGATION_PROPERTY}"] = navigation
        if target is not None and self._wanted(LOOKUP_LOGICAL_NAME):
            annotations[f"{column.name}@{LOOKUP_LOGICAL_NAME}"] = target.logical_name
        return annotations

    def _target(self, column: Column, value: str) -> tuple[Table | None, str]:
        """The table a lookup value points to and the navigation property for that target (a customer or
        regarding lookup has one per target table)."""
        if column.attribute in _USER_LOOKUPS or not column.navigation:
            return TABLES.get("systemusers"), column.attribute
        for navigation, entity_set in column.navigation:
            if self._store.get(entity_set, value) is not None:
                return TABLES[entity_set], navigation
        navigation, entity_set = column.navigation[0]
        return TABLES[entity_set], navigation
