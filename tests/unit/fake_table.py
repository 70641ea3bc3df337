"""An in-memory stand-in for azure.data.tables.TableClient: entities by (PartitionKey, RowKey), ETags, the
SDK's exceptions, and conditional updates — enough for the registry and consent-state logic."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode


class FakeTable:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.etags: dict[tuple[str, str], str] = {}
        self._serial = itertools.count(1)
        self._lock = threading.Lock()

    def create_table(self, **_: Any) -> None:
        return None

    def _entity(self, key: tuple[str, str]) -> TableEntity:
        entity = TableEntity(self.rows[key])
        entity._metadata = {"etag": self.etags[key]}  # what the SDK exposes as entity.metadata
        return entity

    def get_entity(self, partition_key: str, row_key: str, **_: Any) -> TableEntity:
        with self._lock:
            if (partition_key, row_key) not in self.rows:
                raise ResourceNotFoundError("not found")
            return self._entity((partition_key, row_key))

    def create_entity(self, entity: dict[str, Any], **_: Any) -> dict[str, Any]:
        key = (entity["PartitionKey"], entity["RowKey"])
        with self._lock:
            if key in self.rows:
                raise ResourceExistsError("exists")
            self.rows[key] = dict(entity)
            self.etags[key] = f'W/"{next(self._serial)}"'
            return {"etag": self.etags[key]}  # the SDK returns the write's metadata, its new ETag among it

    def update_entity(
        self,
        entity: dict[str, Any],
        mode: UpdateMode = UpdateMode.MERGE,
        *,
        etag: str | None = None,
        match_condition: MatchConditions | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        key = (entity["PartitionKey"], entity["RowKey"])
        with self._lock:
            if key not in self.rows:
                raise ResourceNotFoundError("not found")
            if match_condition is MatchConditions.IfNotModified and etag != self.etags[key]:
                raise ResourceModifiedError("etag mismatch")
            self.rows[key] = dict(entity) if mode is UpdateMode.REPLACE else {**self.rows[key], **entity}
            self.etags[key] = f'W/"{next(self._serial)}"'
            return {"etag": self.etags[key]}

    def delete_entity(self, partition_key: str, row_key: str, **_: Any) -> None:
        with self._lock:
            if (partition_key, row_key) not in self.rows:
                raise ResourceNotFoundError("The specified resource does not exist.")
            del self.rows[(partition_key, row_key)]
            del self.etags[(partition_key, row_key)]

    def query_entities(self, query_filter: str, *, parameters: dict[str, Any], **kwargs: Any) -> list[TableEntity]:
        with self._lock:
            keys = sorted(k for k in self.rows if k[0] == parameters["pk"])
            return [self._entity(k) for k in keys]
