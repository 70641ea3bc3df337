"""Provisioning the app in a customer's org during onboarding, with the signed-in System Administrator's delegated
token and the Web API only: the custom security role (shared.tenants.security_role) in the root business unit
with exactly its privileges, the app's application user (enabled), and the role associated with it.

Every step finds before it creates, so running it twice leaves the org as once, and a run interrupted half-way is
finished by the next (the administrator signing in again; the awaiting page's re-check keeps no token to do
it). A step the signed-in person may not do (a missing privilege: 403) stops the run and is reported with the
privilege Dataverse named; the page then offers the manual instructions. Nothing raises out of `provision`
except programming errors: every Dataverse or token failure becomes a step of the report.

Web API shapes (Dataverse Web API reference): the root business unit is `businessunits?$filter=
_parentbusinessunitid_value eq null`; a role is created with `name` and `businessunitid@odata.bind`; its
privileges are set with the bound action `roles(<id>)/Microsoft.Dynamics.CRM.ReplacePrivilegesRole` taking
`Privileges`, a collection of RolePrivilege (`Depth`, `PrivilegeId`, `BusinessUnitId`); privileges are looked up
by `name`; an application user is a `systemusers` row with `applicationid` (our client id) and
`businessunitid@odata.bind`, enabled with `isdisabled: false`; a role is associated by POSTing
`{"@odata.id": "<root>/roles(<id>)"}` to `systemusers(<id>)/systemuserroles_association/$ref`. The action and the
association go through `$batch` (one operation each), the client's public way to send a request it has no method
for.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from shared.dataverse.batch import BatchOperation
from shared.dataverse.client import DataverseClient
from shared.dataverse.errors import DataverseError
from shared.dataverse.odata import string_literal
from shared.errors import S2SError
from shared.telemetry import dims
from shared.tenants.security_role import SecurityRole

logger = logging.getLogger(__name__)

_MISSING_PRIVILEGE = re.compile(r"missing (prv\w+) privilege")


class StepOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REFUSED = "refused"  # the signed-in person lacks a privilege: the manual instructions are the way on
    FAILED = "failed"  # anything else (the org's answer, a transient failure): retry finishes it


@dataclass(frozen=True)
class ProvisioningStep:
    """One step: `name` (role, privileges, application_user, role_assignment), its outcome and, for a refused
    or failed step, what Dataverse said (its error code and message, never a token)."""

    name: str
    outcome: StepOutcome
    detail: str = ""
    missing_privilege: str | None = None


@dataclass(frozen=True)
class ProvisioningReport:
    """What a run did in `org_url`, step by step; `notes` say what it left out on purpose and why (e.g. no webhook
    without a receiver URL), which no retry changes."""

    org_url: str
    steps: tuple[ProvisioningStep, ...]
    notes: tuple[str, ...] = ()

    @property
    def stopped_at(self) -> ProvisioningStep | None:
        """The refused or failed step that ended the run, or None when every step was done."""
        return next((s for s in self.steps if s.outcome in (StepOutcome.REFUSED, StepOutcome.FAILED)), None)

    @property
    def complete(self) -> bool:
        return self.stopped_at is None

    def summary(self) -> str:
        """One line for the administrator's page and the tenant's history."""
        done = ", ".join(f"{s.name} {s.outcome.value}" for s in self.steps if s is not self.stopped_at)
        stop = self.stopped_at
        notes = "".join(f" {note}" for note in self.notes)
        if stop is None:
            return f"Provisioned in {self.org_url}: {done}.{notes}"
        return (
            f"Provisioning in {self.org_url} stopped at {stop.name} ({stop.outcome.value}): {stop.detail}"
            + (f" Done before that: {done}." if done else "")
            + notes
        )


class _Stop(Exception):
    """Control flow inside provision(): carries the step that ended the run; never escapes it."""

    def __init__(self, step: ProvisioningStep) -> None:
        super().__init__(step.detail)
        self.step = step


class WebhookSteps(Protocol):
    """The webhook half (shared.tenants.webhook_endpoint.WebhookRegistrar): each returns (outcome, endpoint id)."""

    def endpoint(self, client: DataverseClient) -> tuple[StepOutcome, str]: ...

    def steps(self, client: DataverseClient, endpoint_id: str) -> tuple[StepOutcome, str]: ...


class OrgProvisioner:
    """Provisions the app in one org with a delegated client. `client_id` is our app registration's; `webhooks`,
    when given, registers our webhook after the role and application user."""

    def __init__(self, role: SecurityRole, client_id: str, webhooks: WebhookSteps | None = None) -> None:
        self._role = role
        self._client_id = client_id.lower()
        self._webhooks = webhooks

    def provision(self, client: DataverseClient) -> ProvisioningReport:
        """Run every step until one cannot be done. Never raises for what the org or Entra answers."""
        steps: list[ProvisioningStep] = []
        try:
            unit = self._step(steps, "root_business_unit", lambda: self._root_unit(client))
            role_id = self._step(steps, "role", lambda: self._role_id(client, unit))
            self._step(steps, "privileges", lambda: self._set_privileges(client, role_id, unit))
            user_id = self._step(steps, "application_user", lambda: self._application_user(client, unit))
            self._step(steps, "role_assignment", lambda: self._assign(client, user_id, role_id))
            if self._webhooks is not None:
                webhooks = self._webhooks
                endpoint_id = self._step(steps, "webhook_endpoint", lambda: webhooks.endpoint(client))
                self._step(steps, "webhook_steps", lambda: webhooks.steps(client, endpoint_id))
        except _Stop as stop:
            steps.append(stop.step)
        report = ProvisioningReport(client.org_url, tuple(s for s in steps if s.name != "root_business_unit"))
        logger.info("%s", report.summary()[:500], extra=dims("onboarding.provisioned", org=client.org_url))
        return report

    @staticmethod
    def _step(steps: list[ProvisioningStep], name: str, run: Callable[[], tuple[StepOutcome, str]]) -> str:
        try:
            outcome, value = run()
        except DataverseError as exc:
            privilege = _MISSING_PRIVILEGE.search(exc.message or "")
            if exc.status_code == 403:
                missing = privilege.group(1) if privilege else None
                detail = (
                    f"you are missing the {missing} privilege in this environment."
                    if missing
                    else f"Dataverse refused it ({exc.error_code or exc.status_code})."
                )
                raise _Stop(ProvisioningStep(name, StepOutcome.REFUSED, detail, missing)) from exc
            code = exc.error_code or str(exc.status_code or "")
            raise _Stop(
                ProvisioningStep(name, StepOutcome.FAILED, f"Dataverse answered {code}: {exc.message}"[:400])
            ) from exc
        except S2SError as exc:  # a token or credential problem: nothing was changed by this step
            raise _Stop(ProvisioningStep(name, StepOutcome.FAILED, f"{exc.code}: {exc.message}"[:400])) from exc
        steps.append(ProvisioningStep(name, outcome))
        return str(value)

    # -- the steps ------------------------------------------------------------------------------

    @staticmethod
    def _first(client: DataverseClient, table: str, select: list[str], filter: str) -> dict[str, object] | None:
        for page in client.query(table, select=select, filter=filter, top=1):
            return page.rows[0] if page.rows else None
        return None

    def _root_unit(self, client: DataverseClient) -> tuple[StepOutcome, str]:
        row = self._first(client, "businessunits", ["businessunitid"], "_parentbusinessunitid_value eq null")
        if row is None:
            raise DataverseError("The environment has no root business unit.", org_url=client.org_url)
        return StepOutcome.UNCHANGED, str(row["businessunitid"])

    def _role_id(self, client: DataverseClient, unit: str) -> tuple[StepOutcome, str]:
        name = self._role.name
        row = self._first(
            client, "roles", ["roleid"], f"name eq {string_literal(name)} and _businessunitid_value eq {unit}"
        )
        if row is not None:
            return StepOutcome.UNCHANGED, str(row["roleid"])
        created = client.create("roles", {"name": name, "businessunitid@odata.bind": f"/businessunits({unit})"})
        return StepOutcome.CREATED, created

    def _set_privileges(self, client: DataverseClient, role_id: str, unit: str) -> tuple[StepOutcome, str]:
        """ReplacePrivilegesRole with exactly the role's privileges: the same request every time, so a role
        someone widened by hand is put back to what the app needs."""
        privileges = []
        for wanted in self._role.privileges:
            row = self._first(client, "privileges", ["privilegeid"], f"name eq {string_literal(wanted.name)}")
            if row is None:
                raise DataverseError(
                    f"The environment has no privilege named {wanted.name} (is the table installed?).",
                    org_url=client.org_url,
                )
            privileges.append({"PrivilegeId": str(row["privilegeid"]), "Depth": wanted.depth, "BusinessUnitId": unit})
        self._action(
            client, f"roles({role_id})/Microsoft.Dynamics.CRM.ReplacePrivilegesRole", {"Privileges": privileges}
        )
        return StepOutcome.UPDATED, role_id

    def _application_user(self, client: DataverseClient, unit: str) -> tuple[StepOutcome, str]:
        row = self._first(client, "systemusers", ["systemuserid", "isdisabled"], f"applicationid eq {self._client_id}")
        if row is None:
            body = {"applicationid": self._client_id, "businessunitid@odata.bind": f"/businessunits({unit})"}
            return StepOutcome.CREATED, client.create("systemusers", body)
        user_id = str(row["systemuserid"])
        if row.get("isdisabled"):
            client.update("systemusers", user_id, {"isdisabled": False})
            return StepOutcome.UPDATED, user_id
        return StepOutcome.UNCHANGED, user_id

    def _assign(self, client: DataverseClient, user_id: str, role_id: str) -> tuple[StepOutcome, str]:
        roles = client.list_related("systemusers", user_id, "systemuserroles_association", select=["roleid"])
        if any(str(r.get("roleid", "")).lower() == role_id for r in roles):
            return StepOutcome.UNCHANGED, role_id
        reference = {"@odata.id": f"{client.api_root}/roles({role_id})"}
        self._action(client, f"systemusers({user_id})/systemuserroles_association/$ref", reference)
        return StepOutcome.CREATED, role_id

    @staticmethod
    def _action(client: DataverseClient, path: str, body: Mapping[str, object]) -> None:
        """POST one request through $batch. Raises the DataverseError its part answered."""
        parts = client.execute_batch([BatchOperation("POST", path, body)], atomic=False)
        errors = client.batch_errors(parts)
        if errors:
            raise errors[0]
