"""The Dataverse Web API operations under `/api/data/v9.2/` for one authenticated caller: routing, WhoAmI,
create / retrieve / update / upsert / delete, CreateMultiple / UpdateMultiple and `$batch` with atomic change
sets (protocol §4). Entity-set reads live in sandbox.dataverse.odata.reads, metadata in
sandbox.dataverse.odata.metadata; authentication, impersonation and service protection happen before this, in
sandbox.dataverse.service; reads are held to the caller's read depth (sandbox.dataverse.security).

Every write is reported to a ChangeJournal (sandbox.dataverse.events) with the same transaction boundaries as
the rows: what a change set or CreateMultiple rolls back is rolled back in the journal too.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from sandbox.dataverse import errors
from sandbox.dataverse.errors import DataverseError
from sandbox.dataverse.events import ChangeJournal, NoJournal, RowChange
from sandbox.dataverse.odata.batch import (
    MAX_OPERATIONS,
    BatchFormatError,
    BatchOperation,
    ChangeSet,
    ItemResponse,
    OperationResponse,
    operation_count,
    parse_batch,
    write_batch_response,
)
from sandbox.dataverse.odata.expand import context_selection, parse_expand
from sandbox.dataverse.odata.metadata import entity_definitions
from sandbox.dataverse.odata.query import Preferences, parse_prefer, parse_select
from sandbox.dataverse.odata.reads import COUNT_LIMIT, CollectionReader
from sandbox.dataverse.org import OrgStore, Row
from sandbox.dataverse.payload import PayloadReader, coerce, json_payload, reference
from sandbox.dataverse.provisioning.router import Provisioning
from sandbox.dataverse.schema import TABLES, Table
from sandbox.dataverse.security import read_access, user_roles
from sandbox.dataverse.wire import (
    JSON_TYPE,
    ApiRequest,
    ApiResponse,
    Caller,
    error_response,
    etag,
    json_body,
    render,
    selection,
)
from sandbox.identifiers import is_guid

logger = logging.getLogger(__name__)

_Result = TypeVar("_Result", ApiResponse, OperationResponse)
_RESOURCE = re.compile(r"^(?P<name>[A-Za-z_$][\w.]*)(?:\((?P<key>(?:[^()']|'(?:[^']|'')*')*)\))?(?:/(?P<rest>.*))?$")


class WebApi:
    """Executes Web API requests against one org's store on behalf of one caller."""

    def __init__(
        self,
        store: OrgStore,
        service_root: str,
        caller: Caller,
        on_operation: Callable[[str], None] = lambda method: None,
        journal: ChangeJournal | None = None,
        *,
        provisioning: Provisioning | None = None,
    ) -> None:
        self._store = store
        self._provisioning = provisioning
        self._root = service_root
        self._caller = caller
        self._on_operation = on_operation
        self._journal: ChangeJournal = journal or NoJournal()
        self._access = read_access(caller)
        self._reader = CollectionReader(store, service_root, self._access)
        self._payload = PayloadReader(store, service_root)

    # -- routing --------------------------------------------------------------------------------

    def execute(self, request: ApiRequest, references: dict[str, str] | None = None) -> ApiResponse:
        """Run one operation: the request itself (`references` None), or a part of a `$batch`. Raises
        DataverseError for every failure.
        """
        if references is None and request.method != "GET" and request.path != "$batch":
            return self._atomic(lambda: self._execute(request, None))
        return self._execute(request, references)

    def _atomic(self, run: Callable[[], _Result]) -> _Result:
        """Run one write as its own transaction while a synchronous webhook could fail it (protocol §5: the
        step fails "the entire transaction"): rows and journal go back to where they were when it fails.

        Only then: the snapshot copies the org's row index, which bulk writes should not pay for.
        """
        if not self._journal.has_sync_steps():
            return run()
        with self._store.exclusive():
            snapshot = self._store.snapshot()
            savepoint = self._journal.savepoint()
            try:
                result = run()
            except DataverseError:
                self._store.restore(snapshot)
                self._journal.rollback(savepoint)
                raise
            if result.status >= 400:
                self._store.restore(snapshot)
                self._journal.rollback(savepoint)
            return result

    def _record(
        self,
        message: str,
        table: Table,
        record_id: str,
        *,
        before: Row | None,
        after: Row | None,
        values: dict[str, Any] | None = None,
    ) -> None:
        self._journal.record(RowChange(message, table, record_id, before, after, tuple(values or ())))

    def _execute(self, request: ApiRequest, references: dict[str, str] | None) -> ApiResponse:
        self._on_operation(request.method)
        if request.path in ("", "/") and request.method == "GET":
            return self._service_document()
        if request.path == "$metadata":
            raise errors.bad_query("The CSDL document ($metadata) is not served by the sandbox; use EntityDefinitions.")
        match = _RESOURCE.match(request.path)
        if match is None:
            raise errors.unknown_segment(request.path.split("/")[0])
        name, key, rest = match.group("name"), match.group("key"), match.group("rest") or None
        method = request.method
        if name in ("WhoAmI", "WhoAmI()") and not rest:
            if method != "GET":  # WhoAmI is a function: only GET (web-api-client-errors, "No HTTP resource")
                raise errors.no_http_resource(f"{self._root}/{request.path}")
            return self._who_am_i()
        if name == "$batch" and method == "POST" and key is None:
            if references is not None:
                raise errors.bad_query("A $batch request cannot contain another $batch request.")
            return self._batch(request)
        if name == "EntityDefinitions" and method == "GET":
            return json_body(200, entity_definitions(self._root, key, rest, request.query))
        if name == "systemusers" and key is not None and rest == "systemuserroles_association" and method == "GET":
            target = self._store.find_user(key) if is_guid(key) else None
            return json_body(200, user_roles(self._root, self._store.org.org_id, self._caller, target, key))
        if self._provisioning is not None:  # roles, application users, webhook steps (sandbox.dataverse.provisioning)
            provisioned = self._provisioning.handle(request, name, key, rest)
            if provisioned is not None:
                return provisioned
        table = TABLES.get(name)  # case-sensitive, as the service's entity set names are
        if table is None:
            raise errors.unknown_segment(name)
        if key is None:
            return self._collection(table, rest, request, references)
        return self._entity(table, key, rest, request, references)

    def _collection(
        self, table: Table, rest: str | None, request: ApiRequest, references: dict[str, str] | None
    ) -> ApiResponse:
        if rest is None and request.method == "GET":
            return self._reader.query(table, request)
        if rest is None and request.method == "POST":
            return self._create(table, request, references)
        if rest == "$count" and request.method == "GET":
            self._access.require_privilege(table)
            visible = sum(1 for row in self._store.rows(table.entity_set) if self._access.can_read(row))
            count = min(visible, COUNT_LIMIT)
            return ApiResponse(200, {"Content-Type": "text/plain"}, str(count).encode("ascii"))
        if rest == "Microsoft.Dynamics.CRM.CreateMultiple" and request.method == "POST":
            return self._create_multiple(table, request)
        if rest == "Microsoft.Dynamics.CRM.UpdateMultiple" and request.method == "POST":
            return self._update_multiple(table, request)
        raise errors.bad_query(
            f"{request.method} {table.entity_set}{'/' + rest if rest else ''} is not supported by the sandbox."
        )

    def _entity(
        self, table: Table, key: str, rest: str | None, request: ApiRequest, references: dict[str, str] | None
    ) -> ApiResponse:
        method = request.method
        if rest is not None:
            return self._property(table, key, rest, request)
        if method == "GET":
            return self._retrieve(table, key, request)
        if method == "PATCH":
            return self._upsert(table, key, request, references)
        if method == "DELETE":
            return self._delete(table, key, request)
        raise errors.bad_query(f"{method} on a single {table.logical_name} is not supported.")

    def _service_document(self) -> ApiResponse:
        entity_sets = [{"name": name, "kind": "EntitySet", "url": name} for name in TABLES]
        return json_body(200, {"@odata.context": f"{self._root}/$metadata", "value": entity_sets})

    # -- WhoAmI ---------------------------------------------------------------------------------

    def _who_am_i(self) -> ApiResponse:
        org = self._store.org
        return json_body(
            200,
            {
                "@odata.context": f"{self._root}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": org.root_business_unit_id,
                "UserId": self._caller.user.systemuserid,
                "OrganizationId": org.org_id,
            },
        )

    # -- keys and payloads ----------------------------------------------------------------------

    def _find(self, table: Table, key: str) -> tuple[Row | None, str | None, str | None]:
        """(row, primary id named by the key, alternate key value named by the key)."""
        text = key.strip()
        named = re.fullmatch(r"(\w+)=(.*)", text)
        if named and named.group(1) == table.primary_id:
            text = named.group(2)
        elif named:
            column, value = named.group(1), named.group(2)
            literal = re.fullmatch(r"'((?:[^']|'')*)'", value)
            if column not in table.alternate_keys or literal is None:
                raise errors.bad_query(
                    f"The key '{column}' is not an alternate key of {table.logical_name} known to the sandbox."
                )
            alternate = literal.group(1).replace("''", "'")
            return self._store.find_by_key(table, alternate), None, alternate
        if not is_guid(text):
            raise errors.bad_query(f"The key value '{key}' is not a valid GUID.")
        record_id = str(uuid.UUID(text))
        return self._store.get(table.entity_set, record_id), record_id, None

    @staticmethod
    def _missing(table: Table, key: str) -> DataverseError:
        text = key.strip()
        return errors.not_found(table.logical_name, text.lower() if is_guid(text) else text)

    def _entity_id_url(self, table: Table, row: Row) -> str:
        return f"{self._root}/{table.entity_set}({row[table.primary_id]})"

    def _written(
        self, table: Table, row: Row, request: ApiRequest, prefs: Preferences, *, created: bool
    ) -> ApiResponse:
        headers = {"OData-EntityId": self._entity_id_url(table, row)}
        if not prefs.return_representation:
            return ApiResponse(204, headers)
        select = parse_select(request.query.get("$select"), table)
        body = {
            "@odata.context": f"{self._root}/$metadata#{table.entity_set}{selection(select)}/$entity",
            **render(table, row, select),
        }
        headers |= {"Preference-Applied": "return=representation", "ETag": etag(row)}
        return json_body(201 if created else 200, body, headers)

    # -- create / retrieve / upsert / delete ----------------------------------------------------

    def _create(self, table: Table, request: ApiRequest, references: dict[str, str] | None) -> ApiResponse:
        prefs = parse_prefer(request.headers.get("prefer", ""))
        values = self._payload.values(table, json_payload(request.body), references)
        row = self._store.insert(table, values, self._caller.actor)
        logger.debug("created %s %s in %s", table.logical_name, row[table.primary_id], self._store.org.url)
        self._record("Create", table, row[table.primary_id], before=None, after=row, values=values)
        return self._written(table, row, request, prefs, created=True)

    def _retrieve(self, table: Table, key: str, request: ApiRequest) -> ApiResponse:
        for option in request.query:
            if option not in ("$select", "$expand"):
                raise errors.bad_query(f"The query option '{option}' is not supported by the sandbox here.")
        select = parse_select(request.query.get("$select"), table)
        expansions = parse_expand(request.query.get("$expand"), table)
        prefs = parse_prefer(request.headers.get("prefer", ""))
        self._access.require_privilege(table)
        row, _, _ = self._find(table, key)
        if row is None:
            raise self._missing(table, key)
        self._access.require_row(table, row, self._store.org.url)
        if request.headers.get("if-none-match") == etag(row):
            return ApiResponse(304, {"ETag": etag(row)})
        (rendered,) = self._reader.decorate(table, [row], select, expansions, prefs)
        shape = context_selection(select, expansions)
        body = {"@odata.context": f"{self._root}/$metadata#{table.entity_set}{shape}/$entity", **rendered}
        headers = {"ETag": etag(row)}
        if prefs.include_annotations is not None:
            headers["Preference-Applied"] = f'odata.include-annotations="{prefs.include_annotations}"'
        return json_body(200, body, headers)

    def _check_if_match(self, row: Row | None, if_match: str | None, table: Table, key: str) -> None:
        if if_match is None:
            return
        if row is None:
            raise self._missing(table, key)
        if if_match != "*" and if_match.removeprefix("W/") != etag(row).removeprefix("W/"):
            raise errors.version_mismatch()

    def _upsert(self, table: Table, key: str, request: ApiRequest, references: dict[str, str] | None) -> ApiResponse:
        """PATCH: update, or create when missing; If-Match makes it update-only, If-None-Match: * create-only."""
        prefs = parse_prefer(request.headers.get("prefer", ""))
        payload = json_payload(request.body)
        with self._store.exclusive():
            row, record_id, alternate = self._find(table, key)
            if request.headers.get("if-none-match") == "*" and row is not None:
                raise errors.duplicate_key()
            self._check_if_match(row, request.headers.get("if-match"), table, key)
            values = self._payload.values(table, payload, references)
            if row is not None:
                if values.get(table.primary_id, row[table.primary_id]) != row[table.primary_id]:
                    raise errors.bad_payload("The primary key in the body does not match the key in the URL.")
                updated = self._store.update(table, row[table.primary_id], values, self._caller.actor)
                self._record("Update", table, row[table.primary_id], before=row, after=updated, values=values)
                return self._written(table, updated, request, prefs, created=False)
            if record_id is not None:
                if values.get(table.primary_id, record_id) != record_id:
                    raise errors.bad_payload("The primary key in the body does not match the key in the URL.")
                values[table.primary_id] = record_id
            if alternate is not None:
                (key_column,) = table.alternate_keys
                supplied = values.get(key_column)
                if supplied is not None and str(supplied).casefold() != alternate.casefold():
                    raise errors.bad_payload(f"The {key_column} in the body does not match the key in the URL.")
                values[key_column] = alternate
            created = self._store.insert(table, values, self._caller.actor)
            self._record("Create", table, created[table.primary_id], before=None, after=created, values=values)
            return self._written(table, created, request, prefs, created=True)

    def _delete(self, table: Table, key: str, request: ApiRequest) -> ApiResponse:
        with self._store.exclusive():
            row, _, _ = self._find(table, key)
            if row is None:
                raise self._missing(table, key)
            self._check_if_match(row, request.headers.get("if-match"), table, key)
            self._store.delete(table, row[table.primary_id])
            self._record("Delete", table, row[table.primary_id], before=row, after=None)
        return ApiResponse(204)

    def _property(self, table: Table, key: str, name: str, request: ApiRequest) -> ApiResponse:
        """GET / PUT / DELETE of one column: `accounts(<id>)/name`."""
        column = table.column(name)
        if column is None:
            raise errors.unknown_segment(name)
        with self._store.exclusive():
            row, _, _ = self._find(table, key)
            if row is None:
                raise self._missing(table, key)
            if request.method == "GET":
                self._access.require_row(table, row, self._store.org.url)
                if row.get(name) is None:
                    return ApiResponse(204)
                context = f"{self._root}/$metadata#{table.entity_set}({row[table.primary_id]})/{name}"
                return json_body(200, {"@odata.context": context, "value": row[name]})
            if request.method in ("PUT", "DELETE") and column.writable:
                value = json_payload(request.body).get("value") if request.method == "PUT" else None
                changes = {name: coerce(table, column, value)}
                updated = self._store.update(table, row[table.primary_id], changes, self._caller.actor)
                self._record("Update", table, row[table.primary_id], before=row, after=updated, values=changes)
                return ApiResponse(204)
        raise errors.bad_query(f"{request.method} of '{name}' is not supported by the sandbox.")

    # -- CreateMultiple / UpdateMultiple ----------------------------------------------------------

    def _targets(self, request: ApiRequest) -> list[dict[str, Any]]:
        targets = json_payload(request.body).get("Targets")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, dict) for t in targets):
            raise errors.bad_payload("The Targets parameter must be a non-empty array of entities.")
        return targets

    def _create_multiple(self, table: Table, request: ApiRequest) -> ApiResponse:
        targets = self._targets(request)
        with self._store.exclusive():
            snapshot = self._store.snapshot()
            savepoint = self._journal.savepoint()
            ids = []
            try:
                # Create and CreateMultiple share one pipeline: steps on Create run for every row.
                for target in targets:
                    values = self._payload.values(table, target, None)
                    row = self._store.insert(table, values, self._caller.actor)
                    ids.append(row[table.primary_id])
                    self._record("Create", table, row[table.primary_id], before=None, after=row, values=values)
            except DataverseError:
                self._store.restore(snapshot)  # CreateMultiple is one transaction
                self._journal.rollback(savepoint)
                raise
        context = f"{self._root}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
        return json_body(200, {"@odata.context": context, "Ids": ids})

    def _update_multiple(self, table: Table, request: ApiRequest) -> ApiResponse:
        targets = self._targets(request)
        with self._store.exclusive():
            snapshot = self._store.snapshot()
            savepoint = self._journal.savepoint()
            try:
                for target in targets:
                    values = self._payload.values(table, target, None)
                    record_id = values.pop(table.primary_id, None)
                    if record_id is None:
                        raise errors.bad_payload(f"Every target must carry {table.primary_id}.")
                    before = self._store.get(table.entity_set, record_id)
                    updated = self._store.update(table, record_id, values, self._caller.actor)
                    self._record("Update", table, record_id, before=before, after=updated, values=values)
            except DataverseError:
                self._store.restore(snapshot)
                self._journal.rollback(savepoint)
                raise
        return ApiResponse(204)

    # -- $batch ---------------------------------------------------------------------------------

    def _batch(self, request: ApiRequest) -> ApiResponse:
        try:
            items = parse_batch(request.body, request.headers.get("content-type", ""))
        except BatchFormatError as exc:
            raise errors.bad_payload(str(exc)) from None
        count = operation_count(items)
        if count > MAX_OPERATIONS:
            # protocol §4: at most 1,000 requests per batch. The service's exact code here is not verified.
            raise errors.bad_query(f"The batch contains {count} requests; the limit is {MAX_OPERATIONS}.")
        prefs = parse_prefer(request.headers.get("prefer", ""))
        responses: list[ItemResponse] = []
        failed = False
        for item in items:
            if isinstance(item, ChangeSet):
                change_set_responses = self._change_set(item)
                failed = any(response.status >= 400 for response in change_set_responses)
                responses.append(change_set_responses)
            else:
                run = functools.partial(self._batch_operation, item, None)
                response = run() if item.method == "GET" else self._atomic(run)
                failed = response.status >= 400
                responses.append(response)
            if failed and not prefs.continue_on_error:
                break
        content_type, body = write_batch_response(responses)
        # execute-batch-operations doc: without odata.continue-on-error the batch stops at the first failure
        # and the batch itself answers 400 (its only example); with it the batch answers 200.
        status = 400 if failed and not prefs.continue_on_error else 200
        headers = {"Content-Type": content_type}
        if prefs.continue_on_error:
            headers["Preference-Applied"] = "odata.continue-on-error"
        return ApiResponse(status, headers, body)

    def _operation_request(self, operation: BatchOperation, references: dict[str, str] | None) -> ApiRequest:
        url = operation.url
        if url.startswith("$"):
            url = reference(url, references)
        parts = urlsplit(url)
        if parts.scheme and f"{parts.scheme}://{parts.netloc}".lower() != self._store.org.url:
            raise errors.bad_query(f"The batch request URL '{operation.url}' names another host.")
        path = unquote(parts.path)
        versioned = re.match(r"^/api/data/v9\.\d/", path)
        if versioned:
            path = path[versioned.end() :]
        elif path.startswith("/"):
            raise errors.bad_query(f"The batch request URL '{operation.url}' is outside the Web API.")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        return ApiRequest(operation.method, path, query, operation.headers, operation.body)

    def _batch_operation(self, operation: BatchOperation, references: dict[str, str] | None) -> OperationResponse:
        try:
            response = self.execute(self._operation_request(operation, references), references or {})
        except DataverseError as err:
            response = error_response(err)
        headers = {"OData-Version": "4.0", **response.headers}
        if "OData-EntityId" in headers:
            headers["Location"] = headers["OData-EntityId"]
        return OperationResponse(response.status, headers, response.body, operation.content_id)

    def _change_set(self, change_set: ChangeSet) -> list[OperationResponse]:
        """Run a change set atomically. On the first failure roll back and answer with that failure alone.

        The OData spec would send the failure as a bare application/http part; Dataverse wraps it in a
        changesetresponse part carrying its Content-ID (its reply in MicrosoftDocs/powerapps-docs#2843).
        """
        references: dict[str, str] = {}
        responses: list[OperationResponse] = []
        with self._store.exclusive():
            snapshot = self._store.snapshot()
            savepoint = self._journal.savepoint()
            for operation in change_set.operations:
                if operation.method == "GET":
                    error = errors.bad_query("GET requests are not allowed in a change set.")
                    response = OperationResponse(
                        400,
                        {"OData-Version": "4.0", "Content-Type": JSON_TYPE},
                        json.dumps(error.body()).encode(),
                        operation.content_id,
                    )
                else:
                    response = self._batch_operation(operation, references)
                if response.status >= 400:
                    self._store.restore(snapshot)
                    self._journal.rollback(savepoint)
                    return [response]
                entity = response.headers.get("OData-EntityId", "")
                if operation.content_id and entity.startswith(self._root + "/"):
                    references[operation.content_id] = entity[len(self._root) + 1 :]
                responses.append(response)
        return responses
