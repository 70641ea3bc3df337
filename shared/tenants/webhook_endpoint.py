"""Registering our webhook in a customer's org with the Web API: one `serviceendpoint` (contract 8, Webhook) that
sends to our receiver with the HttpHeader auth type — the function key in `x-functions-key`, so no key travels in
a URL, and the org's own secret in WEBHOOK_SECRET_HEADER — and one asynchronous post-operation
`sdkmessageprocessingstep` per (table, message) of WEBHOOK_SUBSCRIPTIONS; an Update step carries the
`filteringattributes` WEBHOOK_FILTERING_ATTRIBUTES gives for its table (sdkmessageprocessingstep table reference,
FilteringAttributes: a comma-separated list of columns; the step runs only when at least one of them is modified).
Find-or-create: the endpoint is found by its name (one per app registration), re-pointed when the receiver URL
changed, and its steps made exactly the subscribed ones (a step no longer subscribed is deleted, one whose
filtering attributes differ from the setting is updated).

Shapes: register-web-hook ("WebHook registrations are stored in the ServiceEndpoint table with a contract value
of 8"; auth types HttpHeader, WebhookKey, HttpQueryString; serviceendpoint.authtype 5 = HttpHeader); the
HttpHeader `authvalue` is `<settings><setting name="…" value="…" /></settings>` (the Plug-in Registration Tool's
form; Microsoft's pages do not show it — Stack Overflow 70320656 shows a bare `Name: value` failing with
0x80050203); a step binds `sdkmessageid`, `sdkmessagefilterid` (the message's filter for the table's
`primaryobjecttypecode`) and `eventhandler_serviceendpoint`, with `mode` 1 (asynchronous) and `stage` 40
(post-operation). The secret is rotated only when the endpoint is created or the org has none yet: the
registry keeps only its hash, and a delivery carrying a secret the registry no longer knows is refused.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

from shared.dataverse.client import DataverseClient
from shared.dataverse.errors import DataverseError
from shared.dataverse.odata import string_literal
from shared.tenants.provisioning import StepOutcome

WEBHOOK_CONTRACT = 8
HTTP_HEADER = 5
JSON_FORMAT = 2  # serviceendpoint.messageformat: Json
ASYNCHRONOUS = 1
POST_OPERATION = 40
KEY_HEADER = "x-functions-key"
_UNRESOLVED_REFERENCE = "@Microsoft.KeyVault("


@dataclass(frozen=True)
class WebhookTarget:
    """Where and how the org's webhooks go. `function_key` is secret (never in repr)."""

    receiver_url: str
    function_key: str
    secret_header: str
    subscriptions: tuple[tuple[str, tuple[str, ...]], ...]
    endpoint_name: str
    filtering: tuple[tuple[str, tuple[str, ...]], ...] = ()  # WEBHOOK_FILTERING_ATTRIBUTES: Update steps only

    def filtering_attributes(self, table: str, message: str) -> str | None:
        """The step's `filteringattributes` (comma-separated logical names), or None: fire on every change."""
        if message != "Update":
            return None
        columns = dict(self.filtering).get(table)
        return ",".join(columns) if columns else None

    def __repr__(self) -> str:
        return f"WebhookTarget({self.receiver_url!r}, {self.endpoint_name!r})"


def usable_key(key: str | None) -> str | None:
    """The function key, or None when it is unset or an app setting whose Key Vault reference did not resolve
    (App Service then leaves the reference text in place)."""
    if not key or key.startswith(_UNRESOLVED_REFERENCE):
        return None
    return key


def _settings_xml(pairs: dict[str, str]) -> str:
    inner = "".join(
        f'<setting name="{html.escape(name, quote=True)}" value="{html.escape(value, quote=True)}" />'
        for name, value in pairs.items()
    )
    return f"<settings>{inner}</settings>"


def _normalized(attributes: object) -> frozenset[str]:
    """A step's filteringattributes as a set (Dataverse keeps them comma-separated; order and case carry nothing)."""
    if not isinstance(attributes, str):
        return frozenset()
    return frozenset(a.strip().lower() for a in attributes.split(",") if a.strip())


def endpoint_name(client_id: str) -> str:
    """The name of our service endpoint in every org: one per app registration, found by it."""
    return f"S2S webhook {client_id}"


def auth_value(function_key: str, secret_header: str, secret: str) -> str:
    """The HttpHeader auth value: the function key in x-functions-key and the org's secret in its header."""
    return _settings_xml({KEY_HEADER: function_key, secret_header: secret})


def _endpoint_rows(client: DataverseClient, name: str) -> list[dict[str, object]]:
    return list(
        client.iter_rows(
            "serviceendpoints",
            select=["serviceendpointid", "url"],
            filter=f"name eq {string_literal(name)} and contract eq {WEBHOOK_CONTRACT}",
        )
    )


def find_endpoints(client: DataverseClient, name: str) -> list[str]:
    """The ids of every webhook service endpoint called `name`: normally one, but two onboardings of one org at once
    each find none and create one, and upkeep must reach both. Raises DataverseError."""
    return [str(row["serviceendpointid"]) for row in _endpoint_rows(client, name)]


def endpoint_steps(client: DataverseClient, endpoint_id: str, select: list[str]) -> list[dict[str, object]]:
    """The processing steps that send to the endpoint `endpoint_id` (its `select` columns). Raises DataverseError."""
    return list(
        client.iter_rows("sdkmessageprocessingsteps", select=select, filter=f"_eventhandler_value eq {endpoint_id}")
    )


class WebhookRegistrar:
    """Registers the target in one org. `issue_secret` rotates the org's secret in the registry and returns it;
    `has_secret` says whether the registry has one for the org already."""

    def __init__(self, target: WebhookTarget, issue_secret: Callable[[], str], *, has_secret: bool) -> None:
        self._target = target
        self._issue_secret = issue_secret
        self._has_secret = has_secret

    def endpoint(self, client: DataverseClient) -> tuple[StepOutcome, str]:
        """Find or create the service endpoint; re-point it. Raises DataverseError."""
        target = self._target
        found = _endpoint_rows(client, target.endpoint_name)
        if not found:
            body = {
                "name": target.endpoint_name,
                "description": "Sends this environment's changes to the S2S integration (registered at onboarding).",
                "url": target.receiver_url,
                "contract": WEBHOOK_CONTRACT,
                "authtype": HTTP_HEADER,
                "messageformat": JSON_FORMAT,
                "authvalue": self._auth_value(),
            }
            return StepOutcome.CREATED, client.create("serviceendpoints", body)
        endpoint_id = str(found[0]["serviceendpointid"])
        changes: dict[str, object] = {}
        if found[0].get("url") != target.receiver_url:
            changes["url"] = target.receiver_url
        if not self._has_secret:
            changes |= {"authtype": HTTP_HEADER, "authvalue": self._auth_value()}
        if not changes:
            return StepOutcome.UNCHANGED, endpoint_id
        client.update("serviceendpoints", endpoint_id, changes)
        return StepOutcome.UPDATED, endpoint_id

    def _auth_value(self) -> str:
        secret = self._issue_secret()  # the registry knows it before any delivery can carry it
        return auth_value(self._target.function_key, self._target.secret_header, secret)

    def steps(self, client: DataverseClient, endpoint_id: str) -> tuple[StepOutcome, str]:
        """Exactly one asynchronous post-operation step per subscribed (table, message). Raises DataverseError."""
        existing = {
            str(row["_sdkmessagefilterid_value"]): (
                str(row["sdkmessageprocessingstepid"]),
                _normalized(row.get("filteringattributes")),
            )
            for row in endpoint_steps(
                client, endpoint_id, ["sdkmessageprocessingstepid", "_sdkmessagefilterid_value", "filteringattributes"]
            )
        }
        changed = False
        wanted: set[str] = set()
        for table, messages in self._target.subscriptions:
            for message in messages:
                message_id, filter_id = self._filter(client, table, message)
                wanted.add(filter_id)
                attributes = self._target.filtering_attributes(table, message)
                if filter_id in existing:
                    step_id, current = existing[filter_id]
                    if current != _normalized(attributes):  # the setting changed: the step follows it
                        client.update("sdkmessageprocessingsteps", step_id, {"filteringattributes": attributes})
                        changed = True
                    continue
                body: dict[str, object] = {
                    "name": f"{self._target.endpoint_name}: {message} of {table}",
                    "mode": ASYNCHRONOUS,
                    "stage": POST_OPERATION,
                    "rank": 1,
                    "supporteddeployment": 0,
                    "asyncautodelete": True,
                    "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
                    "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({filter_id})",
                    "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
                }
                if attributes:
                    body["filteringattributes"] = attributes
                client.create("sdkmessageprocessingsteps", body)
                changed = True
        for filter_id, (step_id, _) in existing.items():
            if filter_id not in wanted:
                client.delete("sdkmessageprocessingsteps", step_id)
                changed = True
        return (StepOutcome.UPDATED if changed else StepOutcome.UNCHANGED), endpoint_id

    @staticmethod
    def _filter(client: DataverseClient, table: str, message: str) -> tuple[str, str]:
        messages = list(
            client.iter_rows("sdkmessages", select=["sdkmessageid"], filter=f"name eq {string_literal(message)}")
        )
        if not messages:
            raise DataverseError(f"The environment has no message {message}.", org_url=client.org_url)
        message_id = str(messages[0]["sdkmessageid"])
        filters = list(
            client.iter_rows(
                "sdkmessagefilters",
                select=["sdkmessagefilterid"],
                filter=f"primaryobjecttypecode eq {string_literal(table)} and _sdkmessageid_value eq {message_id}",
            )
        )
        if not filters:
            raise DataverseError(
                f"The environment has no table {table} for the message {message}.", org_url=client.org_url
            )
        return message_id, str(filters[0]["sdkmessagefilterid"])
