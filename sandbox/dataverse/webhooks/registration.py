"""A registered webhook: the serviceendpoint (contract 8, URL and authentication) and its
sdkmessageprocessingsteps, one per message (protocol §5, register-web-hook.md @1b6722f3). Knows which changes
it takes and how its authentication goes on the request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sandbox.dataverse.events import MESSAGES, RowChange
from sandbox.dataverse.schema import TABLES_BY_LOGICAL_NAME
from sandbox.dataverse.webhooks.context import MODE_ASYNC, MODE_SYNC, STAGE_POST_OPERATION, Step

# serviceendpoint.authtype values (protocol §5); the other types are not webhooks.
AUTH_TYPES = {"WebhookKey": 4, "HttpHeader": 5, "HttpQueryString": 6}
STAGES = (10, 20, STAGE_POST_OPERATION)  # PreValidation, PreOperation, PostOperation


@dataclass(frozen=True)
class WebhookRegistration:
    """One webhook and its steps. `auth_value` never appears in repr (it is the receiver's key)."""

    webhook_id: str  # serviceendpointid
    org_url: str
    url: str
    auth_type: str
    auth_value: str | tuple[tuple[str, str], ...] = field(repr=False)
    entity: str  # logical name
    messages: tuple[str, ...]
    stage: int
    mode: int
    filtering_attributes: tuple[str, ...] | None
    include_pre_image: bool
    include_post_image: bool
    step_ids: tuple[tuple[str, str], ...]  # (message, sdkmessageprocessingstepid)

    def step_id(self, message: str) -> str:
        """The step registered for `message`. Raises KeyError when the webhook has none."""
        return dict(self.step_ids)[message]

    def step(self, message: str) -> Step:
        return Step(self.step_id(message), self.stage, self.mode, self.include_pre_image, self.include_post_image)

    def takes(self, change: RowChange, *, every_attribute: bool = False) -> bool:
        """Whether the change runs one of the steps. Filtering attributes apply to Update only, and match when
        the request set one of them, changed value or not; `every_attribute` treats the change as touching all.
        """
        if change.table.logical_name != self.entity or change.message not in self.messages:
            return False
        if change.message != "Update" or not self.filtering_attributes or every_attribute:
            return True
        table = change.table
        touched = {column.attribute for name in change.columns if (column := table.column(name)) is not None}
        return bool(touched & set(self.filtering_attributes))

    def request_url(self) -> str:
        """The URL with the key in the query: `code=<value>` (WebhookKey) or each pair (HttpQueryString)."""
        if self.auth_type == "WebhookKey":
            extra = [("code", str(self.auth_value))]
        elif self.auth_type == "HttpQueryString":
            extra = list(self._pairs())
        else:
            return self.url
        parts = urlsplit(self.url)
        query = [*parse_qsl(parts.query, keep_blank_values=True), *extra]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def request_headers(self) -> dict[str, str]:
        """The HttpHeader pairs; nothing for the query-string types."""
        return dict(self._pairs()) if self.auth_type == "HttpHeader" else {}

    def _pairs(self) -> tuple[tuple[str, str], ...]:
        return self.auth_value if isinstance(self.auth_value, tuple) else ()


def new_registration(
    org_url: str,
    url: str,
    *,
    auth_type: str,
    auth_value: str | dict[str, str],
    entity: str,
    messages: tuple[str, ...],
    stage: int,
    mode: int,
    filtering_attributes: tuple[str, ...] | None,
    include_pre_image: bool,
    include_post_image: bool,
) -> WebhookRegistration:
    """Validate like the Plug-in Registration Tool does. Raises ValueError naming the offending setting."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise ValueError(f"webhook url must be an absolute http(s) URL without a fragment, not {url!r}")
    if auth_type not in AUTH_TYPES:
        raise ValueError(f"auth_type must be one of {', '.join(AUTH_TYPES)}, not {auth_type!r}")
    value: str | tuple[tuple[str, str], ...]
    if auth_type == "WebhookKey":
        if not isinstance(auth_value, str) or not auth_value:
            raise ValueError("a WebhookKey auth_value is the key itself (a non-empty string), not code=…")
        value = auth_value
    else:
        if not isinstance(auth_value, dict) or not auth_value:
            raise ValueError(f"an {auth_type} auth_value is a non-empty dict of key/value pairs")
        value = tuple((str(key), str(item)) for key, item in auth_value.items())
    table = TABLES_BY_LOGICAL_NAME.get(entity)
    if table is None:
        raise ValueError(f"entity must be one of {', '.join(TABLES_BY_LOGICAL_NAME)}, not {entity!r}")
    if not messages or any(message not in MESSAGES for message in messages):
        raise ValueError(f"messages must be a non-empty subset of {MESSAGES}, not {messages!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    if mode not in (MODE_SYNC, MODE_ASYNC):
        raise ValueError("mode is 0 (synchronous) or 1 (asynchronous)")
    if mode == MODE_ASYNC and stage != STAGE_POST_OPERATION:
        raise ValueError("asynchronous steps run only at stage 40 (PostOperation)")
    if filtering_attributes is not None:
        known = {column.attribute for column in table.columns}
        unknown = [name for name in filtering_attributes if name not in known]
        if unknown:
            raise ValueError(f"filtering attributes {unknown} are not attributes of {entity}")
    unique_messages = tuple(dict.fromkeys(messages))
    return WebhookRegistration(
        webhook_id=str(uuid.uuid4()),
        org_url=org_url,
        url=url,
        auth_type=auth_type,
        auth_value=value,
        entity=entity,
        messages=unique_messages,
        stage=stage,
        mode=mode,
        filtering_attributes=tuple(filtering_attributes) if filtering_attributes is not None else None,
        include_pre_image=include_pre_image,
        include_post_image=include_post_image,
        step_ids=tuple((message, str(uuid.uuid4())) for message in unique_messages),
    )
