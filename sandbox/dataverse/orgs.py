"""The Dataverse stand-in's orgs and the admin operations tests and the demo use on them: create an org for a
tenant, its application and licensed users, rows, service protection limits, and its webhooks (registered as
Dataverse registers a service endpoint and its steps; delivered by sandbox.dataverse.webhooks).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import replace

from sandbox.dataverse.events import MESSAGES
from sandbox.dataverse.odata.reads import warm_default_order
from sandbox.dataverse.org import READ_DEPTHS, Actor, Org, OrgStore, SystemUser, canonical_org_url
from sandbox.dataverse.schema import TABLES, TABLES_BY_LOGICAL_NAME, Table
from sandbox.dataverse.throttle import DataverseLimits
from sandbox.dataverse.webhooks.context import ContextUser
from sandbox.dataverse.webhooks.delivery import DEFAULT_TIMEOUT_SECONDS, WebhookDelivery
from sandbox.dataverse.webhooks.hub import WebhookHub
from sandbox.dataverse.webhooks.registration import WebhookRegistration, new_registration
from sandbox.entra.directory import Directory
from sandbox.identifiers import SandboxLookupError, normalize_guid


def _check_read_depth(depth: str) -> None:
    if depth not in READ_DEPTHS:
        raise ValueError(f"read depth must be one of {', '.join(READ_DEPTHS)}, not {depth!r}")


def seed_values(table: Table, prefix: str, n: int) -> dict[str, object]:
    """Row `n` of a seeded table: accounts and contacts as they always were; another table gets its primary name
    (or first and last name), e-mail and phone, money and whole numbers from `n` and its choices in turn."""
    if table.entity_set == "accounts":
        return {"name": f"{prefix} {n}", "revenue": float(n * 100), "telephone1": f"555-{n % 10000:04d}"}
    if table.entity_set == "contacts":
        return {"firstname": prefix, "lastname": str(n), "emailaddress1": f"{prefix.lower()}.{n}@example.com"}
    values: dict[str, object] = {}
    for column in table.columns:
        if not column.writable or column.name == table.primary_id:
            continue
        if column.name == "firstname":
            values[column.name] = prefix
        elif column.name == "lastname":
            values[column.name] = str(n)
        elif column.name in (table.primary_name, "subject"):
            values[column.name] = f"{prefix} {n}"
        elif column.name.startswith("emailaddress"):
            values[column.name] = f"{prefix.lower()}.{n}@example.com"
        elif column.name.startswith("telephone"):
            values[column.name] = f"555-{n % 10000:04d}"
        elif column.kind == "money":
            values[column.name] = float(n * 100)
        elif column.kind == "choice" and column.options:
            values[column.name] = column.options[(n - 1) % len(column.options)][0]
    return values


def _table(entity_set: str) -> Table:
    schema = TABLES.get(entity_set)
    if schema is None:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, not {entity_set!r}")
    return schema


class Orgs:
    """Every org the Dataverse stand-in serves, by host name. Each org's rows and users sit behind that org's own
    lock (sandbox.dataverse.org), webhooks and their deliveries behind the hub's (sandbox.dataverse.webhooks.hub).
    Raises SandboxLookupError for an unknown org, tenant or user.
    """

    def __init__(self, directory: Directory, webhooks: WebhookHub) -> None:
        self._lock = threading.Lock()
        self._directory = directory
        self.webhooks = webhooks
        self._orgs: dict[str, OrgStore] = {}  # by host name

    def add_org(self, tenant_id: str, url: str, *, name: str | None = None) -> Org:
        """Create an org at `url` (https://<org>.crm<N>.dynamics.com) belonging to an existing tenant.

        Raises ValueError for a URL the sandbox's certificate cannot cover or an org that exists already.
        """
        canonical = canonical_org_url(url)
        tid = normalize_guid(tenant_id)
        host = canonical.removeprefix("https://")
        org = Org(
            url=canonical,
            org_id=str(uuid.uuid4()),
            tenant_id=tid,
            root_business_unit_id=str(uuid.uuid4()),
            name=name or host.split(".")[0],
        )
        with self._lock:
            self._directory.get_tenant(tid)
            if host in self._orgs:
                raise ValueError(f"org {canonical} already exists")
            self._orgs[host] = OrgStore(org)
        return org

    def get_org(self, url: str) -> Org:
        return self._org_store(url).org

    def find_org_store(self, host: str) -> OrgStore | None:
        """The org served at `host` (no scheme, no port), for the Dataverse stand-in and its proxy."""
        with self._lock:
            return self._orgs.get(host.lower())

    def _org_store(self, url: str) -> OrgStore:
        host = canonical_org_url(url).removeprefix("https://")
        with self._lock:
            store = self._orgs.get(host)
        if store is None:
            raise SandboxLookupError(f"no Dataverse org at {url}")
        return store

    def add_application_user(
        self,
        org_url: str,
        app_client_id: str,
        *,
        enabled: bool = True,
        act_on_behalf: bool = False,
        roles: tuple[str, ...] = ("S2S Integration",),
    ) -> str:
        """Create the app's application user (one per app per org, protocol §1); returns its systemuserid.

        `act_on_behalf` grants prvActOnBehalfOfAnotherUser (impersonation). Raises ValueError when the app
        already has an application user in the org.
        """
        store = self._org_store(org_url)
        client_id = normalize_guid(app_client_id)
        app = self._directory.find_application(client_id)
        principal = self._directory.find_service_principal(store.org.tenant_id, client_id)
        user = SystemUser(
            systemuserid=str(uuid.uuid4()),
            full_name=f"# {app.display_name if app else client_id}",
            enabled=enabled,
            application_id=client_id,
            object_id=principal.object_id if principal else None,
            act_on_behalf=act_on_behalf,
            roles=tuple(roles),
        )
        store.add_user(user)
        return user.systemuserid

    def set_application_user(
        self,
        org_url: str,
        app_client_id: str,
        *,
        enabled: bool | None = None,
        act_on_behalf: bool | None = None,
    ) -> None:
        store = self._org_store(org_url)
        user = self._require_application_user(store, app_client_id)
        store.replace_user(
            replace(
                user,
                enabled=user.enabled if enabled is None else enabled,
                act_on_behalf=user.act_on_behalf if act_on_behalf is None else act_on_behalf,
            )
        )

    def remove_application_user(self, org_url: str, app_client_id: str) -> None:
        store = self._org_store(org_url)
        store.remove_user(self._require_application_user(store, app_client_id).systemuserid)

    @staticmethod
    def _require_application_user(store: OrgStore, app_client_id: str) -> SystemUser:
        user = store.find_application_user(app_client_id)
        if user is None:
            raise SandboxLookupError(f"app {app_client_id} has no application user in {store.org.url}")
        return user

    def add_org_user(
        self,
        org_url: str,
        object_id: str,
        full_name: str,
        *,
        enabled: bool = True,
        read_depth: str = "user",
        roles: tuple[str, ...] = (),
    ) -> str:
        """A licensed user known by its Entra object id (for CallerObjectId impersonation, and the signed-in
        person of a delegated token); returns its systemuserid. `read_depth` is its read privilege on accounts and
        contacts (see set_org_user_read_depth); `roles` its security role names, e.g. ("System Administrator",).
        """
        _check_read_depth(read_depth)
        if isinstance(roles, str):
            raise ValueError("roles is a tuple of security role names, not a string")
        store = self._org_store(org_url)
        user = SystemUser(
            str(uuid.uuid4()),
            full_name,
            enabled=enabled,
            object_id=normalize_guid(object_id),
            read_depth=read_depth,
            roles=tuple(roles),
        )
        store.add_user(user)
        return user.systemuserid

    def set_org_user_read_depth(self, org_url: str, object_id: str, depth: str) -> None:
        """The depth of the user's read privilege (prvReadAccount, prvReadContact), which reads made while
        impersonating it are held to (protocol §4: the intersection with the application user's, which reads
        everything): "user" (Basic: only rows it owns; the default for add_org_user), "organization" (every
        row) or "none" (no read privilege). Raises SandboxLookupError for an unknown org or user, ValueError for
        another depth.
        """
        _check_read_depth(depth)
        store = self._org_store(org_url)
        user = self._require_org_user(store, object_id)
        store.replace_user(replace(user, read_depth=depth))

    @staticmethod
    def _require_org_user(store: OrgStore, object_id: str) -> SystemUser:
        user = store.find_user_by_object_id(normalize_guid(object_id))
        if user is None:
            raise SandboxLookupError(f"no user with object id {object_id} in {store.org.url}")
        return user

    def assign_rows(self, org_url: str, table: str, row_ids: Iterable[str], owner_object_id: str) -> None:
        """Make the org user `owner_object_id` the owner of existing rows, as Assign does (each row's version
        and modifiedon move on; no webhook runs). All or nothing: raises SandboxLookupError for an unknown org,
        user or row id and ValueError for an unknown table or a row id that is not a GUID.
        """
        store = self._org_store(org_url)
        schema = _table(table)
        owner = self._require_org_user(store, owner_object_id)
        ids = [normalize_guid(row_id) for row_id in row_ids]
        with store.exclusive():
            missing = [row_id for row_id in ids if store.get(schema.entity_set, row_id) is None]
            if missing:
                raise SandboxLookupError(f"no {schema.logical_name} {missing[0]} in {store.org.url}")
            for row_id in ids:
                store.update(schema, row_id, {"_ownerid_value": owner.systemuserid}, Actor(store.system_user_id))

    def seed_rows(
        self,
        org_url: str,
        table: str,
        count: int,
        *,
        prefix: str = "Row",
        owner_object_id: str | None = None,
    ) -> list[str]:
        """Insert `count` rows into a table of the catalogue (sandbox/dataverse/tables.json: "accounts",
        "contacts", "leads", "opportunities", "tasks", "teams", a custom table, …), owned (and created) by the org
        user `owner_object_id`, or by the org's SYSTEM user when it is None; returns their ids. Users are added
        with add_org_user / add_application_user, not seeded.

        Raises SandboxLookupError for an unknown org or user and ValueError for an unknown table.
        """
        store = self._org_store(org_url)
        schema = _table(table)
        if schema.mirrors_users:
            raise ValueError(f"{table} rows are the org's users: add them with add_org_user or add_application_user")
        owner = self._require_org_user(store, owner_object_id).systemuserid if owner_object_id else None
        values = (seed_values(schema, prefix, n) for n in range(1, count + 1))
        ids = store.bulk_insert(schema, values, Actor(owner or store.system_user_id))
        warm_default_order(store, schema)
        return ids

    def rows(self, org_url: str, table: str) -> list[dict[str, object]]:
        """A copy of every row of a table of the catalogue ("accounts", "contacts", "leads", …), for assertions."""
        store = self._org_store(org_url)
        _table(table)
        return [dict(row) for row in store.rows(table)]

    def set_dataverse_limits(
        self,
        org_url: str,
        *,
        max_concurrent: int = 52,
        max_requests: int = 6000,
        window_seconds: float = 300,
        max_execution_seconds: float = 1200,
        retry_after_seconds: int | None = None,
        latency_seconds: float = 0.0,
        dop_hint: int | None = None,
    ) -> None:
        """Service protection and latency for the org, applied per user (protocol §4; one web server): concurrent
        requests, requests per window and combined execution time (seconds, latency included) per window."""
        self._org_store(org_url).protection.configure(
            DataverseLimits(
                max_concurrent=max_concurrent,
                max_requests=max_requests,
                window_seconds=window_seconds,
                max_execution_seconds=max_execution_seconds,
                retry_after_seconds=retry_after_seconds,
                latency_seconds=latency_seconds,
                dop_hint=dop_hint,
            )
        )

    def expire_delta_tokens(self, org_url: str) -> None:
        """Every delta token issued so far for the org becomes expired (the next delta asks for a full sync)."""
        self._org_store(org_url).expire_delta_tokens()

    def dataverse_peak_concurrency(self, org_url: str) -> int:
        """The most requests the org has had in flight at once (all users)."""
        return self._org_store(org_url).protection.peak_concurrency

    # -- Dataverse webhooks (protocol §5) -------------------------------------------------------------

    def register_webhook(
        self,
        org_url: str,
        url: str,
        *,
        auth_type: str = "WebhookKey",
        auth_value: str | dict[str, str],
        entity: str = "account",
        messages: tuple[str, ...] = MESSAGES,
        stage: int = 40,
        mode: int = 1,
        filtering_attributes: tuple[str, ...] | None = None,
        include_pre_image: bool = False,
        include_post_image: bool = True,
    ) -> str:
        """Register a webhook on the org: a serviceendpoint (contract 8) with one step per message. Returns the
        serviceendpoint id, which `WebhookDelivery.webhook_id` carries; `get_webhook(...).step_id(message)` is
        the body's OwningExtension.Id.

        auth_type "WebhookKey" sends `?code=<auth_value>` (the key only); "HttpHeader" and "HttpQueryString"
        take a dict sent as headers or query parameters. mode 1 is asynchronous (after the Web API answers),
        0 synchronous (before it answers; a failure fails and rolls back the write). Filtering attributes apply
        to Update. Raises SandboxLookupError for an unknown org and ValueError for a setting Dataverse refuses
        (asynchronous steps run only at stage 40).
        """
        store = self._org_store(org_url)
        registration = new_registration(
            store.org.url,
            url,
            auth_type=auth_type,
            auth_value=auth_value,
            entity=entity,
            messages=tuple(messages),
            stage=stage,
            mode=mode,
            filtering_attributes=tuple(filtering_attributes) if filtering_attributes is not None else None,
            include_pre_image=include_pre_image,
            include_post_image=include_post_image,
        )
        self.webhooks.register(registration)
        return registration.webhook_id

    def get_webhook(self, org_url: str, webhook_id: str) -> WebhookRegistration:
        """Raises SandboxLookupError when the org has no such webhook."""
        registration = self.webhooks.find(canonical_org_url(org_url), webhook_id)
        if registration is None:
            raise SandboxLookupError(f"no webhook {webhook_id} on {org_url}")
        return registration

    def unregister_webhook(self, org_url: str, webhook_id: str) -> None:
        """Delete the webhook and its steps; succeeds when it is already gone. Queued deliveries still run."""
        self.webhooks.unregister(canonical_org_url(org_url), webhook_id)

    def webhook_deliveries(self, org_url: str | None = None) -> list[WebhookDelivery]:
        """Every delivery attempt so far (the latest 100,000), oldest first; one org's when `org_url` is given."""
        return self.webhooks.deliveries(canonical_org_url(org_url) if org_url is not None else None)

    def set_webhook_timeout(self, seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        """How long a delivery waits for the receiver; Dataverse waits 60 s. Raises ValueError unless positive."""
        self.webhooks.set_timeout(seconds)

    def wait_for_webhooks(self, timeout: float = 10) -> None:
        """Block until every queued asynchronous delivery (retries included) is done. Raises TimeoutError."""
        self.webhooks.wait(timeout)

    def emit_webhook_event(
        self,
        org_url: str,
        entity: str,
        message: str,
        row_id: str,
        *,
        initiating_user_object_id: str | None = None,
        payload_padding_bytes: int = 0,
    ) -> list[str]:
        """Run the org's matching webhooks for an event on `row_id` without changing any row (the row's current
        values fill the Target and images when it exists); an Update matches every filtering attribute.
        `payload_padding_bytes` adds a text attribute that large to the Target (to pass 256 KB). Returns each
        matching webhook's x-request-id. Raises SandboxLookupError for an unknown org and ValueError for an
        unknown entity or message, or a row id that is not a GUID.
        """
        store = self._org_store(org_url)
        table = TABLES_BY_LOGICAL_NAME.get(entity) or TABLES.get(entity)
        if table is None:
            raise ValueError(f"entity must be one of {', '.join(TABLES_BY_LOGICAL_NAME)}, not {entity!r}")
        if message not in MESSAGES:
            raise ValueError(f"message must be one of {MESSAGES}, not {message!r}")
        if payload_padding_bytes < 0:
            raise ValueError("payload_padding_bytes cannot be negative")
        user = ContextUser(store.system_user_id, None)
        if initiating_user_object_id is not None:
            object_id = normalize_guid(initiating_user_object_id)
            known = store.find_user_by_object_id(object_id)
            user = ContextUser(known.systemuserid if known else store.system_user_id, object_id)
        return self.webhooks.emit(
            store, table, message, normalize_guid(row_id), user, padding_bytes=payload_padding_bytes
        )
