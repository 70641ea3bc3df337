"""The queues, tables and blob containers main.bicep creates are exactly the ones the app uses.

The names live in shared/ as constants (``*_QUEUE``, ``*_TABLE``, ``*CONTAINER``), in the queue triggers'
bindings, and in the SYNC_CONTAINER setting; a rename on either side must show up here.
"""

from __future__ import annotations

import re

from shared.bootstrap import (
    CHANGES_TABLE,
    CONSENT_STATES_TABLE,
    EVENTS_QUEUE,
    EVENTS_TABLE,
    HISTORY_TABLE,
    ORG_INDEX_TABLE,
    PAYLOAD_CONTAINER,
    POISON_QUEUE,
    SYNC_STATE_TABLE,
    TENANTS_TABLE,
    THROTTLE_TABLE,
    VERIFY_QUEUE,
)
from shared.settings import Settings
from tests.infra import bicep_source
from tests.infra.bicep_source import MAIN, ROOT, literal


def created(opening: str) -> set[str]:
    return {literal(item) if item.startswith("'") else item for item in bicep_source.array_items(MAIN, opening)}


def test_queues_are_the_apps() -> None:
    assert created("var queueNames = [") == {VERIFY_QUEUE, EVENTS_QUEUE, POISON_QUEUE}


def test_queue_triggers_listen_on_created_queues() -> None:
    triggered = set()
    for path in (ROOT / "functions").glob("*.py"):
        triggered |= set(re.findall(r'queue_name="([^"]+)"', path.read_text()))
    assert triggered
    assert triggered <= created("var queueNames = [")


def test_tables_are_the_apps() -> None:
    expected = {
        TENANTS_TABLE,
        HISTORY_TABLE,
        CONSENT_STATES_TABLE,
        ORG_INDEX_TABLE,
        EVENTS_TABLE,
        CHANGES_TABLE,
        SYNC_STATE_TABLE,
        THROTTLE_TABLE,
    }
    assert created("var tableNames = [") == expected


def test_containers_are_the_apps_and_follow_the_sync_container_setting() -> None:
    containers = created("var containerNames = [")
    assert containers == {PAYLOAD_CONTAINER, "syncContainer"}
    default = bicep_source.params(MAIN)["syncContainer"].default
    assert literal(default or "''") == Settings.__dataclass_fields__["sync_container"].default


def test_every_shared_storage_name_is_created() -> None:
    # Guards against a new *_TABLE / *_QUEUE / *CONTAINER constant that nobody added to main.bicep.
    declared = set()
    for path in (ROOT / "shared").glob("*.py"):
        declared |= set(re.findall(r'^\w*(?:_TABLE|_QUEUE|CONTAINER) = "([^"]+)"$', path.read_text(), re.M))
    created_names = created("var queueNames = [") | created("var tableNames = [") | created("var containerNames = [")
    assert declared <= created_names
