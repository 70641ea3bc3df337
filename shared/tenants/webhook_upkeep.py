"""Looking after our webhook in a customer's org after onboarding, with the app's own S2S token: the application
user holds the role's endpoint-upkeep privileges (shared.tenants.security_role.ENDPOINT_UPKEEP), so neither a
secret rotation nor offboarding needs an administrator to sign in.

- **Rotation** (`python -m cli tenants webhook-secret --org`, or `--all` after the function key was rotated or the
  receiver moved): the registry takes the new secret first and keeps
  accepting the one it replaces for WEBHOOK_SECRET_OVERLAP_SECONDS (deliveries already sent, and the moment before
  the endpoint changes), then the endpoint's HttpHeader auth value is rewritten with the new secret and the current
  function key, and its URL set to WEBHOOK_RECEIVER_URL. When the app
  cannot update the endpoint (registered by hand, a privilege missing, no function key where the CLI runs), the
  operator gets the secret once, with what to do and until when the old one still works.
- **Offboarding**: each active org's steps, then its endpoint, are deleted; what the app could not remove is
  named, with how to remove it. The role and the application user always stay: the app must not be able to
  change its own access (no prvDeleteRole, no prvWriteUser), so the customer's administrator removes them.

Web API: the endpoint is found by name (shared.tenants.webhook_endpoint); `PATCH serviceendpoints(<id>)` with
`authtype`/`authvalue`; `sdkmessageprocessingsteps?$filter=_eventhandler_value eq <id>`, then `DELETE` each step
and the endpoint (a service endpoint with steps cannot be deleted; register-web-hook).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from shared.dataverse.clients import DataverseClients
from shared.dataverse.errors import DataverseError
from shared.errors import ConfigurationError, S2SError
from shared.settings import Settings
from shared.telemetry import dims
from shared.tenants.registry import TenantRegistry
from shared.tenants.webhook_endpoint import (
    HTTP_HEADER,
    auth_value,
    endpoint_name,
    endpoint_steps,
    find_endpoints,
    usable_key,
)

logger = logging.getLogger(__name__)

# A rotation whose secret another rotation (or onboarding) replaced while it was writing the endpoint issues a new one
# and writes again, at most this many times in all.
_ROTATION_ATTEMPTS = 3


class UpkeepOutcome(enum.StrEnum):
    DONE = "done"
    NOT_FOUND = "not_found"  # no endpoint of ours in the org (registered by hand, or already removed)
    REFUSED = "refused"  # the application user lacks a privilege (a role made before ENDPOINT_UPKEEP, or trimmed)
    FAILED = "failed"  # a token, the org's answer, or a transient failure
    NOT_CONFIGURED = "not_configured"  # no usable WEBHOOK_FUNCTION_KEY where this runs
    NO_ACCESS = "no_access"  # the org is not active: the app has no working application user there


@dataclass(frozen=True)
class SecretRotation:
    """The outcome of one rotation. `secret` is set only when the operator must put it on the endpoint by hand."""

    tenant_id: str
    org_url: str
    endpoint: UpkeepOutcome
    detail: str
    previous_valid_until: int | None
    secret: str | None = field(default=None, repr=False)
    current_hash: str | None = field(default=None, repr=False, compare=False)  # what the endpoint was given

    def to_dict(self, header: str) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "org_url": self.org_url,
            "endpoint": self.endpoint.value,
            "detail": self.detail,
            "previous_secret_valid_until": self.previous_valid_until,
        }
        if self.secret is not None:
            answer |= {
                "error_code": "webhook_endpoint_not_updated",  # python -m cli explain webhook_endpoint_not_updated
                "header": header,
                "secret": self.secret,
                "next_steps": "Put this header and value on the org's service endpoint (auth type HttpHeader, with "
                "the function key in x-functions-key); it is shown once. Deliveries with the previous secret are "
                "accepted until previous_secret_valid_until, then refused (401).",
            }
        return answer


@dataclass(frozen=True)
class EndpointRemoval:
    org_url: str
    outcome: UpkeepOutcome
    steps_removed: int = 0
    detail: str = ""


def _failure(exc: Exception) -> tuple[UpkeepOutcome, str]:
    if isinstance(exc, DataverseError) and exc.status_code == 403:
        return UpkeepOutcome.REFUSED, f"Dataverse refused it: {exc.message}"[:400]
    if isinstance(exc, DataverseError):
        return UpkeepOutcome.FAILED, f"Dataverse answered {exc.error_code or exc.status_code}: {exc.message}"[:400]
    assert isinstance(exc, S2SError)
    return UpkeepOutcome.FAILED, f"{exc.code}: {exc.message}"[:400]


class WebhookUpkeep:
    def __init__(self, settings: Settings, registry: TenantRegistry, clients: DataverseClients) -> None:
        self._settings = settings
        self._registry = registry
        self._clients = clients
        self._name = endpoint_name(settings.entra_client_id)

    def rotate(
        self, tenant_id: str, org_url: str, *, actor: str = "operator CLI", at_once: bool = False
    ) -> SecretRotation:
        """A new secret for the org, on its endpoint when the app can put it there. `at_once`: the replaced secrets
        stop working now instead of after WEBHOOK_SECRET_OVERLAP_SECONDS (a leaked secret; deliveries already on
        their way with it are refused). Raises TenantNotFoundError, OrgNotFoundError, OrgDisconnectedError
        (nothing changed then).

        Two writers of one org's secret at once (two operators, `--all` beside `--org`, onboarding's own issue) can
        each write the registry and then the endpoint in the other order, leaving the endpoint with the secret the
        registry keeps only as the previous one: it would stop working when the overlap ends. So after writing the
        endpoint the rotation checks that its secret is still the registry's current one, and otherwise rotates
        again (bounded), or says it did not finish."""
        for _ in range(_ROTATION_ATTEMPTS):
            rotation = self._rotate_once(tenant_id, org_url, actor, at_once)
            if rotation.endpoint is not UpkeepOutcome.DONE or self._still_current(tenant_id, org_url, rotation):
                return rotation
        logger.warning(
            "Webhook secret of %s: other rotations kept replacing this one",
            org_url,
            extra=dims("webhooks.secret_rotated", tenant_id=tenant_id, org=org_url, outcome="superseded"),
        )
        return SecretRotation(
            tenant_id,
            org_url,
            UpkeepOutcome.FAILED,
            "Other rotations of this org's secret ran at the same time and kept replacing this one; the endpoint may "
            "send a secret that stops working when the overlap ends. Run this command again once they are done.",
            rotation.previous_valid_until,
        )

    def _still_current(self, tenant_id: str, org_url: str, rotation: SecretRotation) -> bool:
        assert rotation.current_hash is not None
        current = self._registry.webhook_secret_hash(tenant_id, org_url) or ""
        return hmac.compare_digest(current, rotation.current_hash)

    def _rotate_once(self, tenant_id: str, org_url: str, actor: str, at_once: bool) -> SecretRotation:
        settings = self._settings
        overlap = 0 if at_once else settings.webhook_secret_overlap_seconds
        secret = self._registry.set_webhook_secret(tenant_id, org_url, overlap_seconds=overlap, actor=actor)
        org = self._registry.get_tenant(tenant_id).org(org_url)
        until = org.previous_secret_until if org is not None and org.previous_secret_hash else None

        def by_hand(outcome: UpkeepOutcome, detail: str) -> SecretRotation:
            logger.warning(
                "Webhook secret of %s rotated; its endpoint was not updated (%s)",
                org_url,
                outcome.value,
                extra=dims("webhooks.secret_rotated", tenant_id=tenant_id, org=org_url, outcome=outcome.value),
            )
            return SecretRotation(tenant_id, org_url, outcome, detail, until, secret)

        key = usable_key(settings.webhook_function_key)
        if key is None:
            return by_hand(
                UpkeepOutcome.NOT_CONFIGURED,
                "WEBHOOK_FUNCTION_KEY is not set (or its Key Vault reference did not resolve) where this runs, so "
                "the endpoint's auth value cannot be written.",
            )
        try:
            client = self._clients.for_org(tenant_id, org_url)
            endpoints = find_endpoints(client, self._name)
            if not endpoints:
                return by_hand(
                    UpkeepOutcome.NOT_FOUND,
                    f"{org_url} has no service endpoint named '{self._name}' (registered by hand, or removed).",
                )
            value = auth_value(key, settings.webhook_secret_header, secret)
            changes: dict[str, object] = {"authtype": HTTP_HEADER, "authvalue": value}
            if settings.webhook_receiver_url:  # re-pointed too: after a move of the app, one command per org
                changes["url"] = settings.webhook_receiver_url
            for endpoint in endpoints:  # every one of ours (two onboardings at once each create one)
                client.update("serviceendpoints", endpoint, changes)
        except (DataverseError, S2SError) as exc:
            return by_hand(*_failure(exc))
        logger.info(
            "Webhook secret of %s rotated and put on its endpoint",
            org_url,
            extra=dims("webhooks.secret_rotated", tenant_id=tenant_id, org=org_url, outcome="done"),
        )
        return SecretRotation(
            tenant_id,
            org_url,
            UpkeepOutcome.DONE,
            f"The endpoint '{self._name}' now sends the new secret.",
            until,
            current_hash=hashlib.sha256(secret.encode("utf-8")).hexdigest(),
        )

    def rotate_all(self, registry_page_size: int = 500) -> list[SecretRotation]:
        """Rotate every active org of every active tenant: after the function key was rotated (the endpoint's auth
        value holds it beside the secret, and only the secret's hash is kept, so both are written anew) or the
        receiver moved (WEBHOOK_RECEIVER_URL). One org's failure does not stop the others. Raises
        ConfigurationError, before touching anything, without a usable WEBHOOK_FUNCTION_KEY."""
        from shared.tenants.registry import OrgNotFoundError, TenantNotFoundError, TenantStatus

        if usable_key(self._settings.webhook_function_key) is None:
            # Rotating every org without being able to write any endpoint would print every org's new secret.
            raise ConfigurationError(
                "WEBHOOK_FUNCTION_KEY",
                "is needed to rewrite every org's endpoint (unset or unresolved); nothing was rotated",
            )
        rotations = []
        for tenant in self._registry.iter_tenants(status=TenantStatus.ACTIVE, page_size=registry_page_size):
            for org_url in tenant.active_org_urls:
                try:
                    rotations.append(self.rotate(tenant.tenant_id, org_url))
                except (TenantNotFoundError, OrgNotFoundError) as exc:  # offboarded or removed since it was listed
                    rotations.append(
                        SecretRotation(tenant.tenant_id, org_url, UpkeepOutcome.NO_ACCESS, exc.message[:400], None)
                    )
        return rotations

    def remove(self, tenant_id: str, org_urls: tuple[str, ...], active: frozenset[str]) -> tuple[EndpointRemoval, ...]:
        """Delete our steps and endpoint from each org of `active` (the others are reported as left). Never raises
        for what an org or Entra answers."""
        removals = []
        for org_url in org_urls:
            if org_url not in active:
                removals.append(EndpointRemoval(org_url, UpkeepOutcome.NO_ACCESS, detail="the org is not active"))
                continue
            removals.append(self._remove_one(tenant_id, org_url))
        return tuple(removals)

    def _remove_one(self, tenant_id: str, org_url: str) -> EndpointRemoval:
        removed = 0
        try:
            client = self._clients.for_org(tenant_id, org_url)
            endpoints = find_endpoints(client, self._name)
            if not endpoints:
                return EndpointRemoval(org_url, UpkeepOutcome.NOT_FOUND)
            for endpoint in endpoints:  # every one of ours (two onboardings at once each create one)
                for step in endpoint_steps(client, endpoint, ["sdkmessageprocessingstepid"]):
                    client.delete("sdkmessageprocessingsteps", str(step["sdkmessageprocessingstepid"]))
                    removed += 1
                client.delete("serviceendpoints", endpoint)
        except (DataverseError, S2SError) as exc:
            outcome, detail = _failure(exc)
            return EndpointRemoval(org_url, outcome, removed, detail)
        logger.info(
            "Removed the webhook endpoint and %d steps from %s",
            removed,
            org_url,
            extra=dims("offboarding.webhook_removed", tenant_id=tenant_id, org=org_url),
        )
        return EndpointRemoval(org_url, UpkeepOutcome.DONE, removed)

    def left_in_orgs(self, removals: tuple[EndpointRemoval, ...]) -> list[dict[str, Any]]:
        """Per org, what offboarding left in the customer's environment and how its administrator removes it."""
        settings = self._settings
        steps = ", ".join(
            f"{message} of {table}" for table, messages in settings.webhook_subscriptions for message in messages
        )
        always = [
            f"the application user for application ID {settings.entra_client_id} (Power Platform admin center > "
            "Environments > Settings > Application users: deactivate or delete it)",
            f"the security role '{settings.security_role_name}' (delete it after the application user)",
        ]
        report = []
        for removal in removals:
            left = list(always)
            removed = removal.outcome in (UpkeepOutcome.DONE, UpkeepOutcome.NOT_FOUND)
            if not removed:
                left.insert(
                    0,
                    f"the webhook service endpoint '{self._name}' and its steps ({steps}): delete the steps, then the "
                    "endpoint (Plug-in Registration tool, or DELETE sdkmessageprocessingsteps(<id>) and "
                    "serviceendpoints(<id>) through the Web API)",
                )
            report.append(
                {
                    "org_url": removal.org_url,
                    "webhook": removal.outcome.value,
                    "error_code": None if removed else "webhook_left_in_org",
                    "steps_removed": removal.steps_removed,
                    "detail": removal.detail or None,
                    "left": left,
                }
            )
        return report
