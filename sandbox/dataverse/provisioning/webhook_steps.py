"""Service endpoints and processing steps created through the Web API, turned into the webhook registrations the
org's hub delivers (sandbox.dataverse.webhooks): one registration per step, keyed by the step's id, carrying its
endpoint's URL and authentication. Re-registered when the step or its endpoint changes.

`authvalue` (serviceendpoint table): for WebhookKey (authtype 4) the key itself; for HttpHeader (5) and
HttpQueryString (6) the pairs as `<settings><setting name="…" value="…" /></settings>` — the form the Plug-in
Registration Tool writes; Microsoft's pages do not document it, it is the one given in answer to "Howto register
a webhook with AuthType=HttpHeader using Dynamics 365 Web API" (Stack Overflow 70320656), where a bare
`Name: value` string made every delivery fail with 0x80050203 "invalid http headers in authValue".
"""

from __future__ import annotations

import html
import re
from dataclasses import replace
from typing import Any

from sandbox.dataverse import errors
from sandbox.dataverse.org import OrgStore, Row
from sandbox.dataverse.webhooks.hub import WebhookHub
from sandbox.dataverse.webhooks.registration import AUTH_TYPES, WebhookRegistration, new_registration

WEBHOOK_CONTRACT = 8  # serviceendpoint.contract: Webhook (register-web-hook: "contract value of 8")
AUTH_TYPE_NAMES = {number: name for name, number in AUTH_TYPES.items()}
_SETTING = re.compile(r'\s*<setting\s+name="([^"<>]*)"\s+value="([^"<>]*)"\s*/>\s*')


def parse_auth_value(auth_type: int, value: Any) -> str | dict[str, str]:
    """The authentication an endpoint sends: the key (WebhookKey) or the pairs. Raises DataverseError 400."""
    if auth_type not in AUTH_TYPE_NAMES:
        raise errors.bad_payload(
            f"authtype {auth_type} is not a webhook authentication type; use 4 (WebhookKey), 5 (HttpHeader) or "
            "6 (HttpQueryString)."
        )
    if not isinstance(value, str) or not value.strip():
        raise errors.bad_payload("authvalue is required for a webhook service endpoint.")
    if AUTH_TYPE_NAMES[auth_type] == "WebhookKey":
        return value
    text = value.strip()
    inner = re.fullmatch(r"<settings>(.*)</settings>", text, re.DOTALL)
    pairs: dict[str, str] = {}
    position = 0
    body = inner.group(1) if inner else ""
    while inner and position < len(body):
        match = _SETTING.match(body, position)
        if match is None:
            break
        pairs[html.unescape(match.group(1))] = html.unescape(match.group(2))
        position = match.end()
    if inner is None or position < len(body) or not pairs:
        raise errors.bad_payload(
            'authvalue must be <settings><setting name="…" value="…" /></settings> for authtype '
            f"{auth_type} ({AUTH_TYPE_NAMES[auth_type]})."
        )
    bad = [name for name in pairs if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name)]
    if bad:
        raise errors.bad_payload(f"authvalue names an invalid header or parameter: '{bad[0]}'.")
    return pairs


def step_registration(
    store: OrgStore, step: Row, auth_values: dict[str, str], endpoint: Row | None = None
) -> WebhookRegistration:
    """The registration a step and its endpoint make (`endpoint`: the endpoint as it is being changed to, else as
    stored). Raises DataverseError 400 for a step Dataverse refuses."""
    if endpoint is None:
        endpoint = store.get("serviceendpoints", step.get("_eventhandler_value") or "")
    if endpoint is None:
        raise errors.bad_payload("The step's event handler (eventhandler_serviceendpoint) is required.")
    message = store.get("sdkmessages", step.get("_sdkmessageid_value") or "")
    message_filter = store.get("sdkmessagefilters", step.get("_sdkmessagefilterid_value") or "")
    if message is None or message_filter is None:
        raise errors.bad_payload("A webhook step needs sdkmessageid and sdkmessagefilterid.")
    if message_filter["_sdkmessageid_value"] != message["sdkmessageid"]:
        raise errors.bad_payload(
            f"The sdkmessagefilter {message_filter['sdkmessagefilterid']} is not a filter of the message "
            f"{message['name']}."
        )
    attributes = step.get("filteringattributes")
    filtering = tuple(a.strip() for a in attributes.split(",") if a.strip()) if attributes else None
    auth_type = int(endpoint["authtype"])
    try:
        registration = new_registration(
            store.org.url,
            str(endpoint["url"]),
            auth_type=AUTH_TYPE_NAMES.get(auth_type, str(auth_type)),
            auth_value=parse_auth_value(auth_type, auth_values.get(endpoint["serviceendpointid"])),
            entity=str(message_filter["primaryobjecttypecode"]),
            messages=(str(message["name"]),),
            stage=40 if step.get("stage") is None else int(str(step["stage"])),
            mode=int(step.get("mode") or 0),
            filtering_attributes=filtering,
            include_pre_image=False,
            include_post_image=False,
        )
    except ValueError as exc:
        raise errors.bad_payload(f"The step cannot be registered: {exc}.") from None
    step_id = str(step["sdkmessageprocessingstepid"])
    return replace(registration, webhook_id=step_id, step_ids=((str(message["name"]), step_id),))


def steps_of(store: OrgStore, endpoint_id: str) -> list[Row]:
    return [row for row in store.rows("sdkmessageprocessingsteps") if row.get("_eventhandler_value") == endpoint_id]


def unregister_step(hub: WebhookHub, store: OrgStore, step_id: str) -> None:
    hub.unregister(store.org.url, step_id)
