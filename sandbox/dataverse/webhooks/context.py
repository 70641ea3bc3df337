"""The RemoteExecutionContext a Dataverse webhook POSTs (protocol §5, use-webhooks.md @5d682f23), built from a
row change: the context as a dict in the serializer's member order, its wire encoding, and the 256 KB
truncation.

Dataverse serializes with .NET's DataContractJsonSerializer, which explains the sample's surprises: members
are alphabetical, collections are `{"key","value"}` arrays, `__type` appears only where the declared type is
`object` (parameter values and attribute values, not the entities inside image collections), dates are
`\\/Date(ms)\\/` and every `/` is written `\\/`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.dataverse.events import RowChange
from sandbox.dataverse.org import Org, Row
from sandbox.dataverse.schema import Column, Table

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
ENTITY_TYPE = f"Entity:{CONTRACTS}"
REFERENCE_TYPE = f"EntityReference:{CONTRACTS}"
MONEY_TYPE = f"Money:{CONTRACTS}"
OPTION_TYPE = f"OptionSetValue:{CONTRACTS}"
PAIR_TYPE = "KeyValuePairOfstringstring:#System.Collections.Generic"
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
MAX_BODY_BYTES = 256 * 1024  # protocol §5: over 256 KB the large members are removed
TRUNCATED_MEMBERS = ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages")
IMAGE_NAME = "Image"
PADDING_ATTRIBUTE = "description"  # a multi-line text column on account and contact in real orgs
STAGE_MAIN_OPERATION = 30
STAGE_POST_OPERATION = 40
MODE_SYNC = 0
MODE_ASYNC = 1

_CREATE_SYSTEM = (
    "createdon",
    "_createdby_value",
    "modifiedon",
    "_modifiedby_value",
    "_createdonbehalfby_value",
    "_modifiedonbehalfby_value",
    "_ownerid_value",
    "statecode",
)
_UPDATE_SYSTEM = ("modifiedon", "_modifiedby_value", "_modifiedonbehalfby_value")
# Columns the platform computes from others (contact.fullname from firstname and lastname).
_DERIVED = {"fullname": ("firstname", "lastname")}

LookupResolver = Callable[[Column, str], str]  # (lookup column, id) -> the target's logical name


@dataclass(frozen=True)
class ContextUser:
    user_id: str  # systemuserid
    object_id: str | None  # Entra object id; the context writes the empty GUID when there is none


@dataclass(frozen=True)
class Step:
    """The sdkmessageprocessingstep a context is built for."""

    step_id: str
    stage: int
    mode: int
    pre_image: bool
    post_image: bool


@dataclass(frozen=True)
class PipelineEvent:
    """One change as the pipeline saw it: who made it, in which request, and when."""

    org: Org
    change: RowChange
    user: ContextUser
    initiating_user: ContextUser
    correlation_id: str
    request_id: str | None  # the Web API request's id; synchronous contexts carry it
    created_on: dt.datetime
    padding_bytes: int = 0


def wcf_date(moment: dt.datetime) -> str:
    """`/Date(<ms since epoch>)/`; encode_context writes the slashes escaped."""
    return f"/Date({int(moment.timestamp() * 1000)})/"


def _row_date(value: str) -> str:
    return wcf_date(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))


def _pairs(items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"key": key, "value": value} for key, value in items]


def entity_reference(logical_name: str, record_id: str) -> dict[str, Any]:
    return {
        "__type": REFERENCE_TYPE,
        "Id": record_id,
        "KeyAttributes": [],
        "LogicalName": logical_name,
        "Name": None,
        "RowVersion": None,
    }


def _entity(
    table: Table,
    record_id: str,
    attributes: list[tuple[str, Any]],
    *,
    typed: bool,
    row_version: str | None = None,
) -> dict[str, Any]:
    entity: dict[str, Any] = {"__type": ENTITY_TYPE} if typed else {}
    entity.update(
        {
            "Attributes": _pairs(attributes),
            "EntityState": None,
            "FormattedValues": [],
            "Id": record_id,
            "KeyAttributes": [],
            "LogicalName": table.logical_name,
            "RelatedEntities": [],
            "RowVersion": row_version,
        }
    )
    return entity


class ContextBuilder:
    """Builds contexts for one event; `resolve_lookup` names the table a lookup value points to."""

    def __init__(self, event: PipelineEvent, resolve_lookup: LookupResolver) -> None:
        self._event = event
        self._change = event.change
        self._table = event.change.table
        self._resolve = resolve_lookup

    # -- attribute values -----------------------------------------------------------------------

    def _value(self, column: Column, value: Any) -> Any:
        if value is None:
            return None
        if column.kind == "money":
            return {"__type": MONEY_TYPE, "Value": value}
        if column.kind in ("state", "choice"):
            return {"__type": OPTION_TYPE, "Value": value}
        if column.kind == "datetime":
            return _row_date(str(value))
        if column.kind == "lookup":
            return entity_reference(self._resolve(column, str(value)), str(value))
        return value

    def _attributes(self, row: Row, names: list[str], *, skip_null: bool) -> list[tuple[str, Any]]:
        attributes: list[tuple[str, Any]] = []
        for name in names:
            column = self._table.column(name)
            if column is None or (skip_null and row.get(name) is None):
                continue
            attributes.append((column.attribute, self._value(column, row.get(name))))
        return attributes

    def _padding(self) -> list[tuple[str, Any]]:
        size = self._event.padding_bytes
        return [(PADDING_ATTRIBUTE, "x" * size)] if size > 0 else []

    @staticmethod
    def _unique(names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))

    # -- entities -------------------------------------------------------------------------------

    def _requested(self) -> list[str]:
        """The request's columns and the primary id: what the caller's Target carried."""
        return self._unique([*self._change.columns, self._table.primary_id])

    def _target(self, *, main_operation: bool) -> dict[str, Any]:
        """InputParameters["Target"]: at stage 30 what the caller sent; after it, plus what the platform set."""
        change, table = self._change, self._table
        if change.message == "Delete":
            return entity_reference(table.logical_name, change.record_id)
        row = change.after or {table.primary_id: change.record_id}
        names = self._requested()
        if not main_operation:
            names += [name for name, sources in _DERIVED.items() if set(sources) & set(change.columns)]
            names += list(_CREATE_SYSTEM if change.message == "Create" else _UPDATE_SYSTEM)
        attributes = self._attributes(row, self._unique(names), skip_null=False) + self._padding()
        return _entity(table, change.record_id, attributes, typed=True)

    def _image(self, row: Row) -> dict[str, Any]:
        """A registered image holds every non-null column (no attribute list registered). Image entities carry
        no __type: the collection declares Entity (see the module docstring).
        """
        names = [column.name for column in self._table.columns]
        version = row.get("versionnumber")
        return _entity(
            self._table,
            self._change.record_id,
            self._attributes(row, names, skip_null=True),
            typed=False,
            row_version=str(version) if version is not None else None,
        )

    def _primary_name_image(self, row: Row) -> dict[str, Any]:
        # use-webhooks.md's async sample: without a registered post image, Create/Update carry this one.
        names = [self._table.primary_name, self._table.primary_id]
        return _entity(self._table, self._change.record_id, self._attributes(row, names, skip_null=False), typed=False)

    # -- contexts -------------------------------------------------------------------------------

    def _outputs(self) -> list[dict[str, Any]]:
        return _pairs([("id", self._change.record_id)]) if self._change.message == "Create" else []

    def _images(self, step: Step) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        change = self._change
        pre: list[tuple[str, Any]] = []
        post: list[tuple[str, Any]] = []
        if step.pre_image and change.before is not None and change.message in ("Update", "Delete"):
            pre.append((IMAGE_NAME, self._image(change.before)))
        if step.stage == STAGE_POST_OPERATION and change.message != "Delete":
            row = change.after or {self._table.primary_id: change.record_id}
            if step.post_image:
                post.append((IMAGE_NAME, self._image(row)))
            elif step.mode == MODE_ASYNC:
                post.append(("AsynchronousStepPrimaryName", self._primary_name_image(row)))
        return _pairs(pre), _pairs(post)

    def _common(self, step: Step, operation_id: str) -> dict[str, Any]:
        event = self._event
        org = event.org
        return {
            "BusinessUnitId": org.root_business_unit_id,
            "CorrelationId": event.correlation_id,
            "Depth": 1,
            "InitiatingUserAzureActiveDirectoryObjectId": event.initiating_user.object_id or EMPTY_GUID,
            "InitiatingUserId": event.initiating_user.user_id,
            "InputParameters": [],
            "IsExecutingOffline": False,
            "IsInTransaction": step.mode == MODE_SYNC,
            "IsOfflinePlayback": False,
            "IsolationMode": 1,
            "MessageName": self._change.message,
            "Mode": step.mode,
            "OperationCreatedOn": wcf_date(event.created_on),
            "OperationId": operation_id,
            "OrganizationId": org.org_id,
            "OrganizationName": org.name,
            "OutputParameters": self._outputs(),
            "OwningExtension": {
                "Id": step.step_id,
                "KeyAttributes": [],
                "LogicalName": "sdkmessageprocessingstep",
                "Name": None,
                "RowVersion": None,
            },
            "ParentContext": None,
            "PostEntityImages": [],
            "PreEntityImages": [],
            "PrimaryEntityId": self._change.record_id,
            "PrimaryEntityName": self._table.logical_name,
            # The doc's asynchronous sample has null at both levels; synchronous steps run inside the request.
            "RequestId": event.request_id if step.mode == MODE_SYNC else None,
            "SecondaryEntityName": "none",
            "SharedVariables": [],
            "Stage": step.stage,
            "UserAzureActiveDirectoryObjectId": event.user.object_id or EMPTY_GUID,
            "UserId": event.user.user_id,
        }

    def _parent(self, step: Step, operation_id: str) -> dict[str, Any]:
        """The main operation (stage 30) the step runs after: what the caller sent, no images."""
        parent = self._common(step, operation_id)
        inputs: list[tuple[str, Any]] = [("Target", self._target(main_operation=True))]
        if self._change.message != "Delete":
            inputs.append(("SuppressDuplicateDetection", False))
        changed = [{"__type": PAIR_TYPE, "key": self._table.logical_name, "value": self._change.message}]
        parent.update(
            {
                "InputParameters": _pairs(inputs),
                "SharedVariables": _pairs([("ChangedEntityTypes", changed)]),
                "Stage": STAGE_MAIN_OPERATION,
            }
        )
        return parent

    def build(self, step: Step, operation_id: str) -> dict[str, Any]:
        context = self._common(step, operation_id)
        pre, post = self._images(step)
        context.update(
            {
                "InputParameters": _pairs([("Target", self._target(main_operation=False))]),
                "PostEntityImages": post,
                "PreEntityImages": pre,
                # The doc's (asynchronous) sample; a synchronous step gets the same main operation as parent
                # here, which is not verified.
                "ParentContext": self._parent(step, operation_id),
            }
        )
        return context


def encode_context(context: dict[str, Any]) -> bytes:
    """Compact JSON with every `/` written `\\/` as DataContractJsonSerializer does (legal JSON: `/` occurs only
    inside strings).
    """
    text = json.dumps(context, ensure_ascii=False, separators=(",", ":"))
    return text.replace("/", "\\/").encode("utf-8")


def truncated(context: dict[str, Any]) -> dict[str, Any]:
    """The context without the members Dataverse removes over 256 KB; PrimaryEntityId/Name stay (protocol §5)."""
    return {key: value for key, value in context.items() if key not in TRUNCATED_MEMBERS}
