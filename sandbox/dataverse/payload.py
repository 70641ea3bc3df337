"""How the Dataverse stand-in reads a create or update body: the JSON object, its column values checked against
the table catalogue (sandbox.dataverse.schema), and lookups set through `<navigation property>@odata.bind`
(pad/webapi/create-entity-web-api.md "Associate table rows on create"; update-delete-entities-using-web-api.md
"Associate with a single-valued navigation property"), including `$<Content-ID>` references inside a `$batch`.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from sandbox.dataverse import errors
from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.org import OrgStore
from sandbox.dataverse.schema import TABLES, Column, Table
from sandbox.identifiers import is_guid


def json_payload(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object. Raises DataverseError 400 otherwise."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError as exc:
        raise errors.bad_payload(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise errors.bad_payload("The request body must be a JSON object.")
    return payload


def reference(text: str, references: dict[str, str] | None) -> str:
    """`$1/…` with the entity path the change set's Content-ID 1 created. Raises DataverseError 400."""
    match = re.match(r"\$(\w+)", text)
    target = (references or {}).get(match.group(1)) if match else None
    if match is None or target is None:
        shown = match.group(0) if match else text
        raise errors.bad_query(f"Content-ID Reference: '{shown}' does not exist in the batch context.")
    return target + text[match.end() :]


def coerce(table: Table, column: Column, value: Any) -> Any:
    """A JSON value as the column stores it. Raises DataverseError 400 for a value of another type."""
    if value is None:
        return None
    if column.kind in ("string", "memo", "datetime", "guid"):
        if not isinstance(value, str):
            raise errors.bad_payload(f"Cannot convert the literal '{value}' to the expected type '{column.edm_type}'.")
        if column.kind == "guid":
            if not is_guid(value):
                raise errors.bad_payload(f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid'.")
            return str(uuid.UUID(value))
        if column.max_length is not None and len(value) > column.max_length:
            raise DataverseError(
                400,
                errors.VALIDATION,
                f"A validation error occurred.  The length of the '{column.name}' attribute of the "
                f"'{table.logical_name}' entity exceeded the maximum allowed length of '{column.max_length}'.",
            )
        return value
    if column.kind == "bool":
        if not isinstance(value, bool):
            raise errors.bad_payload(f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean'.")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.bad_payload(f"Cannot convert the literal '{value}' to the expected type '{column.edm_type}'.")
    if column.kind in ("state", "choice") and column.label(value) is None:
        # A value outside the option set fails validation (the message names the attribute and value; its exact
        # wording on the service is not verified).
        what = "state code" if column.kind == "state" else f"value for {column.name}"
        raise DataverseError(400, errors.VALIDATION, f"{value} is not a valid {what} on {table.logical_name}.")
    if column.kind == "money":
        return float(value)
    return int(value)


class PayloadReader:
    """Turns create / update bodies into column values for one org's store."""

    def __init__(self, store: OrgStore, service_root: str) -> None:
        self._store = store
        self._root = service_root

    def values(self, table: Table, payload: dict[str, Any], references: dict[str, str] | None) -> dict[str, Any]:
        """The writable column values a create/update payload sets (lookups through `nav@odata.bind`)."""
        values: dict[str, Any] = {}
        for name, value in payload.items():
            if name.endswith("@odata.bind"):
                navigation = name[: -len("@odata.bind")]
                found = table.navigation(navigation)
                if found is None:
                    raise errors.bad_payload(
                        f"An undeclared property '{navigation}' which only has property annotations in the "
                        "payload but no property value was found in the payload. In OData, only declared "
                        "navigation properties and declared named streams can be represented as properties "
                        "without values."
                    )
                lookup, target = found
                values[lookup.name] = None if value is None else self._bound_id(value, target, references)
                continue
            if "@" in name:
                continue  # @odata.type and instance annotations
            column = table.column(name)
            if column is None:
                raise errors.bad_query(
                    f"The property '{name}' does not exist on type 'Microsoft.Dynamics.CRM.{table.logical_name}'. "
                    "Make sure to only use property names that are defined by the type."
                )
            if column.name == table.primary_id:
                if not isinstance(value, str) or not is_guid(value):
                    raise errors.bad_payload(f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid'.")
                values[column.name] = str(uuid.UUID(value))
            elif column.kind == "lookup":
                raise errors.bad_query(
                    "CRM do not support direct update of Entity Reference properties, Use Navigation properties "
                    f"instead ({name})."
                )
            elif column.writable:
                values[column.name] = coerce(table, column, value)
            # Other read-only columns (createdon, versionnumber, fullname, …) are ignored, as the service does.
        return values

    def _bound_id(self, value: Any, target: str, references: dict[str, str] | None) -> str:
        """The id an `@odata.bind` value names: `/accounts(id)`, `accounts(id)`, a full URL or `$n`."""
        if not isinstance(value, str):
            raise errors.bad_payload("An @odata.bind value must be a string such as '/accounts(<guid>)'.")
        text = value
        if text.startswith("$"):
            text = reference(text, references)
        text = text.removeprefix(self._root).removeprefix("/")
        text = re.sub(r"^api/data/v9\.\d/", "", text)
        match = re.fullmatch(r"(\w+)\(([0-9A-Fa-f-]{36})\)", text)
        if match is None or match.group(1) != target or not is_guid(match.group(2)):
            raise errors.bad_payload(f"The @odata.bind value '{value}' does not name a row of {target}.")
        record_id = match.group(2).lower()
        if self._store.get(target, record_id) is None:
            raise errors.not_found(TABLES[target].logical_name, record_id)
        return record_id
