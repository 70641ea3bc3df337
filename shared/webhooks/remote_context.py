"""The RemoteExecutionContext Dataverse posts to webhooks, parsed into typed values.

The JSON is the WCF data-contract serialisation (pad/use-webhooks): parameter bags and attributes are lists of
``{"key", "value"}``, typed values carry a ``__type`` marker (``Entity:…``, ``EntityReference:…``,
``OptionSetValue:…``, ``Money:…``), and dates are ``/Date(ms±zone)/`` strings. Microsoft advises parsing it as
plain JSON rather than binding to the .NET type, which is what this does.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from shared.errors import S2SError

_DATE = re.compile(r"/Date\((-?\d+)([+-]\d{4})?\)/")
_MAX_DEPTH = 8  # ParentContext nesting in practice is 1-2; deeper input is refused rather than recursed into


class InvalidContextError(S2SError):
    """The body is not a RemoteExecutionContext; ``message`` names what is missing or malformed."""

    code = "not_remote_execution_context"


@dataclass(frozen=True)
class EntityReference:
    logical_name: str
    id: str
    name: str | None = None


@dataclass(frozen=True)
class Entity:
    logical_name: str
    id: str | None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutionContext:
    message_name: str
    primary_entity_name: str
    primary_entity_id: str
    organization_id: str
    organization_name: str | None
    correlation_id: str | None
    operation_id: str | None
    request_id: str | None
    stage: int
    mode: int
    depth: int
    initiating_user_id: str | None
    initiating_user_object_id: str | None
    user_object_id: str | None
    business_unit_id: str | None
    operation_created_on: datetime | None
    input_parameters: dict[str, Any] = field(default_factory=dict)
    output_parameters: dict[str, Any] = field(default_factory=dict)
    shared_variables: dict[str, Any] = field(default_factory=dict)
    pre_images: dict[str, Entity] = field(default_factory=dict)
    post_images: dict[str, Entity] = field(default_factory=dict)
    parent: ExecutionContext | None = None

    @property
    def target(self) -> Entity | EntityReference | None:
        value = self.input_parameters.get("Target")
        return value if isinstance(value, Entity | EntityReference) else None

    @property
    def changed_attributes(self) -> list[str]:
        target = self.target
        return sorted(target.attributes) if isinstance(target, Entity) else []


def parse_date(value: str) -> datetime:
    """``/Date(1506409448000-0700)/`` → an aware UTC datetime. The milliseconds are UTC already; the zone suffix
    only says where the writer was. Raises ValueError, also for a date outside what datetime can hold."""
    match = _DATE.fullmatch(value)
    if not match:
        raise ValueError(f"not a /Date()/ value: {value[:40]!r}")
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(match.group(1)))
    except (OverflowError, ValueError) as exc:  # beyond year 9999, or more digits than int() parses
        raise ValueError(f"/Date()/ value out of range: {value[:40]!r}") from exc


def _date(value: str) -> datetime:
    try:
        return parse_date(value)
    except ValueError:
        raise InvalidContextError("A /Date()/ value is out of range.") from None


def parse_value(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise InvalidContextError("The payload nests values too deeply.")
    if isinstance(value, str):
        return _date(value) if _DATE.fullmatch(value) else value
    if isinstance(value, list):
        if all(isinstance(item, dict) and set(item) >= {"key", "value"} for item in value) and value:
            return parse_bag(value, depth + 1)
        return [parse_value(item, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    kind = str(value.get("__type", "")).split(":", 1)[0]
    # Entity images come without a __type marker (Microsoft's own sample shows them so); recognise their shape.
    if kind == "Entity" or (not kind and "LogicalName" in value and "Attributes" in value):
        return _entity(value, depth + 1)
    if kind == "EntityReference":
        return EntityReference(
            str(value.get("LogicalName", "")), _guid(value.get("Id"), "EntityReference Id"), value.get("Name")
        )
    if kind == "OptionSetValue":
        return value.get("Value")
    if kind == "Money":
        try:
            return Decimal(str(value.get("Value")))
        except InvalidOperation:
            raise InvalidContextError("A Money value is not a number.") from None
    return {k: parse_value(v, depth + 1) for k, v in value.items() if k != "__type"}


def parse_bag(items: Any, depth: int = 0) -> dict[str, Any]:
    """A ``[{"key", "value"}]`` list as a dict (later keys win, as in .NET's collection)."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise InvalidContextError("A parameter collection is not a list of key/value pairs.")
    bag: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or "key" not in item:
            raise InvalidContextError("A parameter collection holds an entry without a key.")
        bag[str(item["key"])] = parse_value(item.get("value"), depth + 1)
    return bag


def _entity(value: dict[str, Any], depth: int) -> Entity:
    raw_id = value.get("Id")
    entity_id = None if raw_id in (None, "", "00000000-0000-0000-0000-000000000000") else _guid(raw_id, "Entity Id")
    return Entity(str(value.get("LogicalName", "")), entity_id, parse_bag(value.get("Attributes"), depth))


def _guid(value: Any, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidContextError(f"{what} is not a GUID.") from None


def _optional_guid(value: Any, what: str) -> str | None:
    return None if value in (None, "") else _guid(value, what)


def _images(items: Any, depth: int) -> dict[str, Entity]:
    bag = parse_bag(items, depth)
    return {name: image for name, image in bag.items() if isinstance(image, Entity)}


def parse_context(body: Any, depth: int = 0) -> ExecutionContext:
    """Parse a decoded JSON body. Raises InvalidContextError naming what is wrong."""
    if depth > _MAX_DEPTH:
        raise InvalidContextError("ParentContext nests too deeply.")
    if not isinstance(body, dict):
        raise InvalidContextError("The body is not a JSON object.")
    for required in ("MessageName", "PrimaryEntityName", "PrimaryEntityId", "OrganizationId"):
        if not isinstance(body.get(required), str) or not body[required]:
            raise InvalidContextError(f"The body has no {required}: it is not a RemoteExecutionContext.")
    created = body.get("OperationCreatedOn")
    parent = body.get("ParentContext")
    try:
        stage, mode, depth_value = int(body.get("Stage", 0)), int(body.get("Mode", 0)), int(body.get("Depth", 1))
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(1e400), which JSON decodes to infinity
        raise InvalidContextError("Stage, Mode and Depth must be numbers.") from None
    return ExecutionContext(
        message_name=body["MessageName"][:100],
        primary_entity_name=body["PrimaryEntityName"][:100],
        primary_entity_id=_guid(body["PrimaryEntityId"], "PrimaryEntityId"),
        organization_id=_guid(body["OrganizationId"], "OrganizationId"),
        organization_name=body.get("OrganizationName"),
        correlation_id=_optional_guid(body.get("CorrelationId"), "CorrelationId"),
        operation_id=_optional_guid(body.get("OperationId"), "OperationId"),
        request_id=_optional_guid(body.get("RequestId"), "RequestId"),
        stage=stage,
        mode=mode,
        depth=depth_value,
        initiating_user_id=_optional_guid(body.get("InitiatingUserId"), "InitiatingUserId"),
        initiating_user_object_id=_optional_guid(
            body.get("InitiatingUserAzureActiveDirectoryObjectId"), "InitiatingUserAzureActiveDirectoryObjectId"
        ),
        user_object_id=_optional_guid(body.get("UserAzureActiveDirectoryObjectId"), "UserAzureActiveDirectoryObjectId"),
        business_unit_id=_optional_guid(body.get("BusinessUnitId"), "BusinessUnitId"),
        operation_created_on=_date(created) if isinstance(created, str) and _DATE.fullmatch(created) else None,
        input_parameters=parse_bag(body.get("InputParameters")),
        output_parameters=parse_bag(body.get("OutputParameters")),
        shared_variables=parse_bag(body.get("SharedVariables")),
        pre_images=_images(body.get("PreEntityImages"), 0),
        post_images=_images(body.get("PostEntityImages"), 0),
        parent=parse_context(parent, depth + 1) if isinstance(parent, dict) else None,
    )
