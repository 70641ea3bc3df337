"""The tables the Dataverse stand-in serves, read from the catalogue file tables.json (accounts, contacts, leads,
opportunities, tasks, systemusers, businessunits, teams and a custom table): columns, choice labels, keys, lookups,
one-to-many relationships and the EntityDefinitions metadata Microsoft's SDK reads before it touches a table.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Org host suffixes the stand-in accepts; its TLS certificate carries a wildcard for each, so an org added
# after start() is still covered. crm.dynamics.com is North America, crm2 … crm21 the other regions.
DATAVERSE_SUFFIXES: tuple[str, ...] = ("crm.dynamics.com", *(f"crm{n}.dynamics.com" for n in range(2, 22)))

_EDM_TYPES = {
    "guid": "Edm.Guid",
    "string": "Edm.String",
    "memo": "Edm.String",
    "money": "Edm.Decimal",
    "int": "Edm.Int32",
    "state": "Edm.Int32",
    "choice": "Edm.Int32",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "bigint": "Edm.Int64",
    "lookup": "Edm.Guid",
}
_ATTRIBUTE_TYPES = {
    "guid": "Uniqueidentifier",
    "string": "String",
    "memo": "Memo",
    "money": "Money",
    "int": "Integer",
    "state": "State",
    "choice": "Picklist",
    "bool": "Boolean",
    "datetime": "DateTime",
    "bigint": "BigInt",
    "lookup": "Lookup",
}
CATALOGUE = Path(__file__).with_name("tables.json")
_DEFAULT_STATES = ((0, "Active"), (1, "Inactive"))


@dataclass(frozen=True)
class Column:
    """One column as the Web API names it: `name`, or `_x_value` for a lookup."""

    name: str
    kind: str  # a key of _EDM_TYPES
    writable: bool = True
    max_length: int | None = None
    # Single-valued navigation properties that set this lookup through `<nav>@odata.bind`, with their
    # target entity sets; a customer lookup has one per target.
    navigation: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[int, str], ...] = ()  # choice and state columns: value -> label

    @property
    def edm_type(self) -> str:
        return _EDM_TYPES[self.kind]

    @property
    def attribute(self) -> str:
        """The attribute's logical name: `_ownerid_value` -> `ownerid`."""
        if self.kind == "lookup":
            return self.name[1 : -len("_value")]
        return self.name

    def label(self, value: Any) -> str | None:
        """The option label of a choice or state value, None for another value."""
        return next((text for number, text in self.options if number == value), None)


@dataclass(frozen=True)
class Relationship:
    """A one-to-many relationship as the 'one' side's collection-valued navigation property sees it."""

    name: str
    many: str  # entity set of the rows listed
    lookup: str  # the lookup column of `many` that points at the 'one' row


@dataclass(frozen=True)
class Table:
    entity_set: str
    logical_name: str
    schema_name: str
    display_name: str
    primary_id: str
    primary_name: str
    object_type_code: int
    metadata_id: str
    columns: tuple[Column, ...]
    alternate_keys: tuple[str, ...] = ()
    full_name: tuple[str, ...] = ()  # columns the primary name is computed from (contacts, leads)
    ownership: str = "UserOwned"
    is_custom: bool = False
    is_activity: bool = False
    mirrors_users: bool = False  # systemusers: rows mirror the org's users (sandbox.dataverse.org)
    relationships: tuple[Relationship, ...] = ()

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def navigation(self, nav: str) -> tuple[Column, str] | None:
        """The lookup column a navigation property sets, with the entity set it points to."""
        for column in self.columns:
            for name, target in column.navigation:
                if name == nav:
                    return column, target
        return None

    def relationship(self, nav: str) -> Relationship | None:
        return next((r for r in self.relationships if r.name == nav), None)

    @property
    def state_values(self) -> tuple[int, ...]:
        column = self.column("statecode")
        return tuple(value for value, _ in column.options) if column else ()


def _system_columns(states: tuple[tuple[int, str], ...]) -> tuple[Column, ...]:
    return (
        Column("statecode", "state", options=states),
        Column("createdon", "datetime", writable=False),
        Column("modifiedon", "datetime", writable=False),
        Column("versionnumber", "bigint", writable=False),
        Column("_ownerid_value", "lookup", writable=False),
        Column("_createdby_value", "lookup", writable=False),
        Column("_modifiedby_value", "lookup", writable=False),
        Column("_createdonbehalfby_value", "lookup", writable=False),
        Column("_modifiedonbehalfby_value", "lookup", writable=False),
    )


def _options(raw: dict[str, str]) -> tuple[tuple[int, str], ...]:
    return tuple((int(value), str(label)) for value, label in raw.items())


def _column(raw: dict[str, Any]) -> Column:
    kind = raw["type"]
    if kind not in _EDM_TYPES or kind == "state":
        raise ValueError(f"column {raw.get('name')!r}: unknown type {kind!r}")
    name = raw["name"]
    if kind == "lookup" and not re.fullmatch(r"_\w+_value", name):
        raise ValueError(f"lookup column {name!r} must be named _<attribute>_value")
    return Column(
        name,
        kind,
        writable=bool(raw.get("writable", True)),
        max_length=raw.get("max_length"),
        navigation=tuple((nav, target) for nav, target in raw.get("navigation", {}).items()),
        options=_options(raw.get("options", {})),
    )


def _table(raw: dict[str, Any], relationships: list[dict[str, Any]]) -> Table:
    logical_name = raw["logical_name"]
    states = _options(raw["state"]) if "state" in raw else _DEFAULT_STATES
    if raw.get("custom") and "_" not in logical_name:
        raise ValueError(f"custom table {logical_name!r} must be named <publisher prefix>_<name>")
    return Table(
        entity_set=raw["entity_set"],
        logical_name=logical_name,
        schema_name=raw["schema_name"],
        display_name=raw["display_name"],
        primary_id=raw["primary_id"],
        primary_name=raw["primary_name"],
        object_type_code=int(raw["object_type_code"]),
        # Real metadata ids are fixed per environment; a table without one gets a stable id from its name.
        metadata_id=raw.get("metadata_id") or str(uuid.uuid5(_METADATA_NAMESPACE, logical_name)),
        columns=(*(_column(c) for c in raw["columns"]), *_system_columns(states)),
        alternate_keys=tuple(raw.get("alternate_keys", ())),
        full_name=tuple(raw.get("full_name", ())),
        ownership=raw.get("ownership", "UserOwned"),
        is_custom=bool(raw.get("custom", False)),
        is_activity=bool(raw.get("activity", False)),
        mirrors_users=bool(raw.get("mirrors_users", False)),
        relationships=tuple(
            Relationship(r["name"], r["many"], r["lookup"]) for r in relationships if r["one"] == raw["entity_set"]
        ),
    )


def load_catalogue(path: Path = CATALOGUE) -> dict[str, Table]:
    """Every table of the catalogue file by entity set. Raises ValueError naming what is wrong in it."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    relationships = list(raw.get("relationships", []))
    tables = {}
    for entry in raw["tables"]:
        try:
            table = _table(entry, relationships)
        except KeyError as exc:
            raise ValueError(f"{path.name}: table {entry.get('entity_set')!r} lacks {exc}") from None
        tables[table.entity_set] = table
    for relationship in relationships:
        many = tables.get(relationship["many"])
        if relationship["one"] not in tables or many is None or many.column(relationship["lookup"]) is None:
            raise ValueError(f"{path.name}: relationship {relationship['name']!r} names an unknown table or column")
    for table in tables.values():
        for column in table.columns:
            for nav, target in column.navigation:
                if target not in tables:
                    raise ValueError(f"{path.name}: {table.entity_set}.{nav} points at unknown table {target!r}")
    return tables


_METADATA_NAMESPACE = uuid.UUID("3c1f7d0e-2a54-4bb5-9a55-58f0a1f0d6b2")
TABLES: dict[str, Table] = load_catalogue()
TABLES_BY_LOGICAL_NAME: dict[str, Table] = {table.logical_name: table for table in TABLES.values()}
ACCOUNTS = TABLES["accounts"]
CONTACTS = TABLES["contacts"]


def _label(text: str) -> dict[str, Any]:
    localized = {"Label": text, "LanguageCode": 1033, "IsManaged": True}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def entity_definition(table: Table) -> dict[str, Any]:
    """The EntityMetadata properties the SDK selects (LogicalName, EntitySetName, PrimaryIdAttribute, …)."""
    return {
        "MetadataId": table.metadata_id,
        "LogicalName": table.logical_name,
        "SchemaName": table.schema_name,
        "EntitySetName": table.entity_set,
        "LogicalCollectionName": table.entity_set,
        "CollectionSchemaName": table.schema_name + "s",
        "PrimaryIdAttribute": table.primary_id,
        "PrimaryNameAttribute": table.primary_name,
        "ObjectTypeCode": table.object_type_code,
        "OwnershipType": table.ownership,
        "TableType": "Standard",
        "IsCustomEntity": table.is_custom,
        "IsPrivate": False,
        "IsActivity": table.is_activity,
        "ChangeTrackingEnabled": True,  # protocol §4: change tracking must be enabled on the table
        "DisplayName": _label(table.display_name),
        "DisplayCollectionName": _label(table.display_name + "s"),
    }


def attribute_definitions(table: Table) -> list[dict[str, Any]]:
    """AttributeMetadata for every column (lookups by attribute name, as the metadata API lists them)."""
    definitions = []
    for column in table.columns:
        definitions.append(
            {
                "MetadataId": _attribute_metadata_id(table, column),
                "LogicalName": column.attribute,
                "SchemaName": column.attribute,
                "AttributeType": _ATTRIBUTE_TYPES[column.kind],
                "IsPrimaryId": column.name == table.primary_id,
                "IsPrimaryName": column.name == table.primary_name,
                "IsValidForCreate": column.writable or column.name == table.primary_id,
                "IsValidForUpdate": column.writable,
                "MaxLength": column.max_length,
                "EntityLogicalName": table.logical_name,
            }
        )
    return definitions


def _attribute_metadata_id(table: Table, column: Column) -> str:
    # Stable per table and column, so repeated metadata reads agree (real ids are fixed per environment).
    return str(uuid.uuid5(uuid.UUID(table.metadata_id), column.attribute))


def picklist_definitions(table: Table) -> list[dict[str, Any]]:
    """The choice columns as `Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName
    &$expand=OptionSet($select=Options)` lists them (Microsoft's SDK reads the labels this way)."""
    return [
        {
            "LogicalName": column.attribute,
            "MetadataId": _attribute_metadata_id(table, column),
            "OptionSet": {
                "MetadataId": str(uuid.uuid5(uuid.UUID(table.metadata_id), "optionset:" + column.attribute)),
                "Options": [{"Value": value, "Label": _label(text)} for value, text in column.options],
            },
        }
        for column in table.columns
        if column.kind == "choice"
    ]
