import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.webhooks.intake import event_key
from shared.webhooks.remote_context import Entity, EntityReference, InvalidContextError, parse_context, parse_date
from tests.unit import webhook_samples as samples


def test_the_documented_update_sample_parses_into_typed_values():
    # Round-trip through JSON text with escaped slashes, as Dataverse writes dates.
    text = json.dumps(samples.update_contact()).replace("/Date(", "\\/Date(").replace(")/", ")\\/")
    context = parse_context(json.loads(text))
    assert (context.message_name, context.primary_entity_name, context.stage, context.mode) == (
        "Update",
        "contact",
        40,
        1,
    )
    assert context.primary_entity_id == samples.ROW_ID and context.organization_id == samples.ORG_ID
    assert context.initiating_user_object_id == samples.USER_OID
    assert context.operation_created_on == datetime(2017, 9, 26, 7, 4, 8, tzinfo=UTC)
    target = context.target
    assert isinstance(target, Entity) and target.logical_name == "contact"
    assert target.attributes["firstname"] == "Jim"
    assert target.attributes["modifiedon"] == datetime(2017, 9, 26, 7, 4, 8, tzinfo=UTC)
    assert target.attributes["parentcustomerid"] == EntityReference(
        "account", "7d5c2b8a-1a4e-4f0a-9b7e-000000000001", "Contoso"
    )
    assert target.attributes["preferredcontactmethodcode"] == 1
    assert target.attributes["creditlimit"] == Decimal("1500.25")
    assert context.changed_attributes[0] == "contactid"
    assert context.post_images["AsynchronousStepPrimaryName"].attributes["fullname"] == "Jim Glynn (sample)"
    assert context.shared_variables == {"IsAutoTransact": True}
    assert context.parent is not None and context.parent.stage == 30 and context.parent.organization_name == "OneFarm"


def test_images_without_a_type_marker_are_entities():
    body = samples.update_contact()
    image = body["PostEntityImages"][0]["value"]
    del image["__type"]
    context = parse_context(body)
    assert context.post_images["AsynchronousStepPrimaryName"].attributes["fullname"] == "Jim Glynn (sample)"


def test_a_truncated_payload_still_parses():
    context = parse_context(samples.truncated(samples.update_contact()))
    assert context.target is None and context.parent is None
    assert context.primary_entity_id == samples.ROW_ID


def test_delete_target_is_an_entity_reference():
    body = samples.update_contact(
        MessageName="Delete",
        InputParameters=[
            {
                "key": "Target",
                "value": {
                    "__type": samples.REFERENCE,
                    "Id": samples.ROW_ID,
                    "KeyAttributes": [],
                    "LogicalName": "contact",
                    "Name": None,
                    "RowVersion": None,
                },
            }
        ],
    )
    assert parse_context(body).target == EntityReference("contact", samples.ROW_ID, None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("MessageName"), "MessageName"),
        (lambda b: b.update(PrimaryEntityId="not-a-guid"), "PrimaryEntityId"),
        (lambda b: b.update(OrganizationId=12), "OrganizationId"),
        (lambda b: b.update(InputParameters={"Target": 1}), "key/value"),
        (lambda b: b.update(InputParameters=[{"value": 1}]), "without a key"),
        (lambda b: b.update(Stage="forty"), "numbers"),
        (lambda b: b.update(InitiatingUserAzureActiveDirectoryObjectId="x"), "InitiatingUser"),
    ],
)
def test_malformed_contexts_name_the_problem(mutate, message):
    body = samples.update_contact()
    mutate(body)
    with pytest.raises(InvalidContextError, match=message):
        parse_context(body)


def test_non_objects_and_deep_nesting_are_refused():
    for body in ([], "x", 1, None):
        with pytest.raises(InvalidContextError):
            parse_context(body)
    deep = samples.update_contact()
    node = deep
    for _ in range(20):
        node["ParentContext"] = samples.update_contact(ParentContext=None)
        node = node["ParentContext"]
    with pytest.raises(InvalidContextError, match="deeply"):
        parse_context(deep)


def test_dates_with_zones_are_utc_instants():
    assert parse_date("/Date(0+0100)/") == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="Date"):
        parse_date("2017-09-26")


def test_event_identity_is_stable_and_distinguishes_steps_and_rows():
    a = parse_context(samples.update_contact())
    assert event_key(samples.ORG_ID, a) == event_key(samples.ORG_ID, parse_context(samples.update_contact()))
    keys = {
        event_key(samples.ORG_ID, a),
        event_key(samples.ORG_ID, parse_context(samples.update_contact(Stage=20))),
        event_key(samples.ORG_ID, parse_context(samples.update_contact(MessageName="Create"))),
        event_key(samples.ORG_ID, parse_context(samples.update_contact(PrimaryEntityId=samples.USER_OID))),
        event_key(samples.ORG_ID, parse_context(samples.update_contact(OperationId=samples.USER_OID))),
        event_key(samples.USER_OID, a),
    }
    assert len(keys) == 6
