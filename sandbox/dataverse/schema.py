"""The tables the Dataverse stand-in serves (accounts, contacts): columns, keys, lookups and the
EntityDefinitions metadata Microsoft's SDK reads before it touches a table.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

# Org host suffixes the stand-in accepts; its TLS certificate carries a wildcard for each, so an org added
# after start() is still covered. crm.dynamics.com is North America, crm2 … crm21 the other regions.
DATAVERSE_SUFFIXES: tuple[str, ...] = ("crm.dynamics.com", *(f"crm{n}.dynamics.com" for n in range(2, 22)))

_EDM_TYPES = {
    "guid": "Edm.Guid",
    "string": "Edm.String",
    "money": "Edm.Decimal",
    "int": "Edm.Int32",
    "state": "Edm.Int32",
    "datetime": "Edm.DateTimeOffset",
    "bigint": "Edm.Int64",
    "lookup": "Edm.Guid",
}
_ATTRIBUTE_TYPES = {
    "guid": "Uniqueidentifier",
    "string": "String",
    "money": "Money",
    "int": "Integer",
    "state": "State",
    "datetime": "DateTime",
    "bigint": "BigInt",
    "lookup": "Lookup",
}
STATE_VALUES = (0, 1)  # Active, Inactive


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

    @property
    def edm_type(self) -> str:
        return _EDM_TYPES[self.kind]

    @property
    def attribute(self) -> str:
        """The attribute's logical name: `_ownerid_value` -> `ownerid`."""
        if self.kind == "lookup":
            return self.name[1 : -len("_value")]
        return self.name


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

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def navigation(self, nav: str) -> tuple[Column, str] | None:
        """The lookup column a navigation property sets, with the entity set it points to."""
        for column in self.columns:
            for name, target in column.navigation:
                if name == nav:
                    return column, target
        return None


def _system_columns() -> tuple[Column, ...]:
    return (
        Column("statecode", "state"),
        Column("createdon", "datetime", writable=False),
        Column("modifiedon", "datetime", writable=False),
        Column("versionnumber", "bigint", writable=False),
        Column("_ownerid_value", "lookup", writable=False),
        Column("_createdby_value", "lookup", writable=False),
        Column("_modifiedby_value", "lookup", writable=False),
        Column("_createdonbehalfby_value", "lookup", writable=False),
        Column("_modifiedonbehalfby_value", "lookup", writable=False),
    )


ACCOUNTS = Table(
    entity_set="accounts",
    logical_name="account",
    schema_name="Account",
    display_name="Account",
    primary_id="accountid",
    primary_name="name",
    object_type_code=1,
    metadata_id="70816501-edb9-4740-a16c-6a5efbc05d84",
    columns=(
        Column("accountid", "guid", writable=False),
        Column("name", "string", max_length=160),
        Column("accountnumber", "string", max_length=20),
        Column("revenue", "money"),
        Column("telephone1", "string", max_length=50),
        Column("_primarycontactid_value", "lookup", navigation=(("primarycontactid", "contacts"),)),
        *_system_columns(),
    ),
    alternate_keys=("accountnumber",),
)

CONTACTS = Table(
    entity_set="contacts",
    logical_name="contact",
    schema_name="Contact",
    display_name="Contact",
    primary_id="contactid",
    primary_name="fullname",
    object_type_code=2,
    metadata_id="608861bc-50a4-4c5f-a02c-21fe1943e2cf",
    columns=(
        Column("contactid", "guid", writable=False),
        Column("firstname", "string", max_length=50),
        Column("lastname", "string", max_length=50),
        Column("fullname", "string", writable=False, max_length=160),
        Column("emailaddress1", "string", max_length=100),
        Column(
            "_parentcustomerid_value",
            "lookup",
            navigation=(("parentcustomerid_account", "accounts"), ("parentcustomerid_contact", "contacts")),
        ),
        *_system_columns(),
    ),
)

TABLES: dict[str, Table] = {table.entity_set: table for table in (ACCOUNTS, CONTACTS)}
TABLES_BY_LOGICAL_NAME: dict[str, Table] = {table.logical_name: table for table in TABLES.values()}


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
        "OwnershipType": "UserOwned",
        "TableType": "Standard",
        "IsCustomEntity": False,
        "IsPrivate": False,
        "IsActivity": False,
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
