"""`EntityDefinitions` for the Dataverse stand-in: what Microsoft's SDK (PowerPlatform-Dataverse-Client 1.1.0)
reads before touching a table, namely

- `EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute&$filter=LogicalName eq 'account'`
  (entity set and primary key, before every first create / get / list / delete of a table), and
- `EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata
  ?$select=LogicalName&$expand=OptionSet($select=Options)` (option labels, before a write with string values),

plus single definitions by `LogicalName=` or MetadataId and their `Attributes`.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox.dataverse import errors
from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.odata.query import parse_filter
from sandbox.dataverse.schema import TABLES, Table, attribute_definitions, entity_definition, picklist_definitions

_PICKLIST_CAST = "Microsoft.Dynamics.CRM.PicklistAttributeMetadata"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string"


def _project(items: list[dict[str, Any]], query: dict[str, str], type_name: str, key: str) -> list[dict[str, Any]]:
    """Apply $filter and $select to metadata items; the key property is always returned."""
    for option in query:
        if option not in ("$select", "$filter", "$expand"):
            raise errors.bad_query(f"The query option '{option}' is not supported by the sandbox on metadata.")
    sample = items[0] if items else {}
    kinds = {name: _kind(value) for name, value in sample.items() if not isinstance(value, dict | list)}
    kinds[key] = "guid"
    predicate = parse_filter(query.get("$filter"), kinds, type_name)
    selected = [item for item in items if predicate(item)]
    if "$select" not in query:
        return selected
    names = [name.strip() for name in query["$select"].split(",") if name.strip()]
    for name in names:
        if name not in sample:
            raise errors.unknown_property(name, type_name)
    return [{key: item[key], **{name: item[name] for name in names}} for item in selected]


def _context_select(query: dict[str, str]) -> str:
    return f"({query['$select']})" if query.get("$select") else ""


def _find_table(key: str) -> Table:
    match = re.fullmatch(r"LogicalName='([^']*)'", key)
    for table in TABLES.values():
        if (match and match.group(1).lower() == table.logical_name) or key.lower() == table.metadata_id:
            return table
    shown = match.group(1) if match else key
    raise DataverseError(404, errors.NOT_FOUND, f"Could not find an entity with the name or id {shown}.")


def entity_definitions(service_root: str, key: str | None, rest: str | None, query: dict[str, str]) -> dict[str, Any]:
    """The JSON body for GET EntityDefinitions[(key)][/Attributes…]. Raises DataverseError."""
    if "$expand" in query and not (rest or "").endswith(_PICKLIST_CAST):
        raise errors.bad_query("The query option '$expand' is not supported by the sandbox on metadata.")
    if key is None:
        if rest:
            raise errors.bad_query(f"Resource not found for the segment 'EntityDefinitions/{rest}'.")
        items = _project([entity_definition(t) for t in TABLES.values()], query, "EntityMetadata", "MetadataId")
        return {"@odata.context": f"{service_root}/$metadata#EntityDefinitions{_context_select(query)}", "value": items}
    table = _find_table(key)
    base_context = f"{service_root}/$metadata#EntityDefinitions('{table.logical_name}')"
    if not rest:
        (item,) = _project([entity_definition(table)], query, "EntityMetadata", "MetadataId")
        return {"@odata.context": f"{service_root}/$metadata#EntityDefinitions{_context_select(query)}/$entity", **item}
    if rest == f"Attributes/{_PICKLIST_CAST}":
        # The choice columns with their options (statecode is a State attribute, so the cast leaves it out); the
        # answer always has the shape `$select=LogicalName&$expand=OptionSet($select=Options)` asks for.
        return {"@odata.context": f"{base_context}/Attributes/{_PICKLIST_CAST}", "value": picklist_definitions(table)}
    if rest == "Attributes":
        items = _project(attribute_definitions(table), query, "AttributeMetadata", "MetadataId")
        return {"@odata.context": f"{base_context}/Attributes{_context_select(query)}", "value": items}
    attribute = re.fullmatch(r"Attributes\(LogicalName='([^']*)'\)", rest)
    if attribute:
        found = [a for a in attribute_definitions(table) if a["LogicalName"] == attribute.group(1).lower()]
        if not found:
            raise DataverseError(
                404, errors.NOT_FOUND, f"Could not find attribute {attribute.group(1)} on {table.logical_name}."
            )
        (item,) = _project(found, query, "AttributeMetadata", "MetadataId")
        return {"@odata.context": f"{base_context}/Attributes/$entity", **item}
    raise errors.bad_query(f"Resource not found for the segment '{rest}' (not supported by the sandbox).")
