"""Hand-built RemoteExecutionContext bodies in the shapes Dataverse sends (pad/use-webhooks sample)."""

from __future__ import annotations

import copy
from typing import Any

ORG_ID = "b2ff5f4a-7e2b-4b1e-9e7f-0c6e3a7f1a11"
ROW_ID = "9a11d6b2-22c1-4f4b-8d7a-2b6f0b0d0c01"
USER_OID = "4e2f8f0c-7a1d-4c6e-9a55-3b1c2d3e4f50"
ENTITY = "Entity:http://schemas.microsoft.com/xrm/2011/Contracts"
REFERENCE = "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts"


def update_contact(**overrides: Any) -> dict[str, Any]:
    target = {
        "__type": ENTITY,
        "Attributes": [
            {"key": "firstname", "value": "Jim"},
            {"key": "lastname", "value": "Glynn (sample)"},
            {"key": "contactid", "value": ROW_ID},
            {"key": "modifiedon", "value": "/Date(1506409448000)/"},
            {
                "key": "parentcustomerid",
                "value": {
                    "__type": REFERENCE,
                    "Id": "7d5c2b8a-1a4e-4f0a-9b7e-000000000001",
                    "KeyAttributes": [],
                    "LogicalName": "account",
                    "Name": "Contoso",
                    "RowVersion": None,
                },
            },
            {
                "key": "preferredcontactmethodcode",
                "value": {"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1},
            },
            {
                "key": "creditlimit",
                "value": {"__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts", "Value": 1500.25},
            },
        ],
        "EntityState": None,
        "FormattedValues": [],
        "Id": ROW_ID,
        "KeyAttributes": [],
        "LogicalName": "contact",
        "RelatedEntities": [],
        "RowVersion": None,
    }
    body: dict[str, Any] = {
        "BusinessUnitId": "5d3e1a2b-0000-4000-8000-000000000002",
        "CorrelationId": "c2a1b3d4-0000-4000-8000-000000000003",
        "Depth": 1,
        "InitiatingUserAzureActiveDirectoryObjectId": USER_OID,
        "InitiatingUserId": "8e7d6c5b-0000-4000-8000-000000000004",
        "InputParameters": [{"key": "Target", "value": target}],
        "IsExecutingOffline": False,
        "IsInTransaction": False,
        "IsOfflinePlayback": False,
        "IsolationMode": 1,
        "MessageName": "Update",
        "Mode": 1,
        "OperationCreatedOn": "/Date(1506409448000-0700)/",
        "OperationId": "0f0e0d0c-0000-4000-8000-000000000005",
        "OrganizationId": ORG_ID,
        "OrganizationName": "OrgName",
        "OutputParameters": [],
        "OwningExtension": {
            "Id": "1a2b3c4d-0000-4000-8000-000000000006",
            "KeyAttributes": [],
            "LogicalName": "sdkmessageprocessingstep",
            "Name": "step",
            "RowVersion": None,
        },
        "ParentContext": None,
        "PostEntityImages": [
            {
                "key": "AsynchronousStepPrimaryName",
                "value": {
                    "__type": ENTITY,
                    "Attributes": [{"key": "fullname", "value": "Jim Glynn (sample)"}],
                    "EntityState": None,
                    "FormattedValues": [],
                    "Id": ROW_ID,
                    "KeyAttributes": [],
                    "LogicalName": "contact",
                    "RelatedEntities": [],
                    "RowVersion": None,
                },
            }
        ],
        "PreEntityImages": [],
        "PrimaryEntityId": ROW_ID,
        "PrimaryEntityName": "contact",
        "RequestId": None,
        "SecondaryEntityName": "none",
        "SharedVariables": [{"key": "IsAutoTransact", "value": True}],
        "Stage": 40,
        "UserAzureActiveDirectoryObjectId": USER_OID,
        "UserId": "8e7d6c5b-0000-4000-8000-000000000004",
    }
    parent = copy.deepcopy(body)
    parent.update({"Stage": 30, "OrganizationName": "OneFarm", "ParentContext": None})
    body["ParentContext"] = parent
    body.update(overrides)
    return body


def truncated(body: dict[str, Any]) -> dict[str, Any]:
    stripped = dict(body)
    for name in ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"):
        stripped.pop(name, None)
    return stripped
