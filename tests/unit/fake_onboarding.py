"""Fakes for what onboarding talks to: the administrator's sign-in (the slice of AdministratorSignIn), what an org
says about the signed-in person (a delegated DataverseClient), and the app-only side (token provider, WhoAmI)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from shared.auth.token_provider import AccessToken
from shared.dataverse.client import WhoAmI
from shared.dataverse.errors import ApplicationUserDisabledError, ApplicationUserMissingError, DataverseError
from shared.signin.administrators import SignedInAdministrator, SignInError
from shared.tenants.onboarding import SYSTEM_ADMINISTRATOR_ROLE_TEMPLATE

AUTHORITY = "https://login.microsoftonline.com"


@dataclass
class Person:
    tenant_id: str
    object_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    username: str = "admin@customer.example"


class FakeSignIn:
    """``begin`` returns an MSAL-shaped flow; ``finish`` accepts only a code handed out by ``sign_in`` for that
    flow's state, once (as Entra and MSAL would)."""

    def __init__(self) -> None:
        self.codes: dict[str, tuple[str, Person]] = {}  # code -> (state it was issued for, who signed in)
        self.begun: list[str] = []
        self.finished = 0

    def begin(self, org_url: str, redirect_uri: str) -> dict[str, Any]:
        state = secrets.token_urlsafe(12)
        self.begun.append(org_url)
        query = urlencode({"client_id": "c", "redirect_uri": redirect_uri, "state": state})
        return {
            "state": state,
            "nonce": secrets.token_urlsafe(12),
            "code_verifier": secrets.token_urlsafe(32),
            "scope": [f"{org_url}/user_impersonation"],
            "auth_uri": f"{AUTHORITY}/organizations/oauth2/v2.0/authorize?{query}",
        }

    def sign_in(self, flow_state: str, person: Person) -> str:
        """What Entra's sign-in page does: a code for this flow and person."""
        code = secrets.token_urlsafe(16)
        self.codes[code] = (flow_state, person)
        return code

    def finish(self, flow: dict[str, Any], auth_response: dict[str, str]) -> SignedInAdministrator:
        self.finished += 1
        if auth_response.get("state") != flow.get("state"):
            raise SignInError(
                "The sign-in answer is incomplete or does not belong to this sign-in.", code="sign_in_answer_invalid"
            )
        issued = self.codes.pop(auth_response.get("code", ""), None)
        if issued is None or issued[0] != flow["state"]:
            raise SignInError("Entra ID refused the sign-in (AADSTS70008).", code="sign_in_refused")
        person = issued[1]
        org = flow["scope"][0].removesuffix("/user_impersonation")
        token = AccessToken(f"delegated-{person.object_id}", 9e12, person.tenant_id, org, "identity_provider")
        return SignedInAdministrator(person.tenant_id, person.object_id, person.username, "Admin", token)


class FakeOrgs:
    """Which tenant owns each org and each org's users with their security role template ids; ``delegated`` gives
    a client that answers as Dataverse would to that person's token."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.users: dict[tuple[str, str], tuple[str, ...]] = {}  # (org, object id) -> role template ids
        self.disabled: set[tuple[str, str]] = set()  # (org, object id) of users disabled there (no licence)
        self.calls: list[str] = []

    def add(self, org_url: str, tenant_id: str) -> None:
        self.owners[org_url] = tenant_id

    def add_user(self, org_url: str, person: Person, *, administrator: bool) -> None:
        roles = (SYSTEM_ADMINISTRATOR_ROLE_TEMPLATE,) if administrator else (str(uuid.uuid4()),)
        self.users[(org_url, person.object_id)] = roles

    def delegated(self, org_url: str, token: AccessToken) -> FakeDelegatedClient:
        return FakeDelegatedClient(self, org_url, token)


class FakeDelegatedClient:
    def __init__(self, orgs: FakeOrgs, org_url: str, token: AccessToken) -> None:
        self._orgs = orgs
        self.org_url = org_url
        self._token = token

    def _user(self) -> tuple[str, ...]:
        self._orgs.calls.append(self.org_url)
        if self._orgs.owners.get(self.org_url) != self._token.tenant_id:
            raise DataverseError("401 from the org", org_url=self.org_url, status_code=401, error_code="0x80072560")
        object_id = self._token.token.removeprefix("delegated-")
        roles = self._orgs.users.get((self.org_url, object_id))
        if (self.org_url, object_id) in self._orgs.disabled:
            raise ApplicationUserDisabledError(
                "The user is disabled.", org_url=self.org_url, status_code=400, error_code="0x80040225"
            )
        if roles is None:
            raise DataverseError("not a member", org_url=self.org_url, status_code=403, error_code="0x80072560")
        return roles

    def whoami(self, caller_object_id: str | None = None) -> WhoAmI:
        self._user()
        return WhoAmI(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()))

    def list_related(self, table: str, row_id: str, navigation: str, **_: Any) -> list[dict[str, Any]]:
        return [{"roleid": str(uuid.uuid4()), "_roletemplateid_value": role} for role in self._user()]


class FakeTokens:
    """App-only tokens: always granted; the requests are kept."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def get_token(self, tenant_id: str, resource: str) -> str:
        self.requests.append((tenant_id, resource))
        return "app-token"

    def forget_tenant(self, tenant_id: str) -> None:
        return None


class FakeAppOnlyClient:
    """WhoAmI as the application user: answers, or 0x80072560 when the org has no application user for the app."""

    def __init__(self, org_url: str, has_application_user: bool, organization_id: str | None = None) -> None:
        self.org_url = org_url
        self.has_application_user = has_application_user
        self.organization_id = organization_id or str(uuid.uuid4())

    def whoami(self, caller_object_id: str | None = None) -> WhoAmI:
        if not self.has_application_user:
            raise ApplicationUserMissingError(
                "No application user for this app.", org_url=self.org_url, status_code=403, error_code="0x80072560"
            )
        return WhoAmI(str(uuid.uuid4()), str(uuid.uuid4()), self.organization_id)

    def iter_rows(self, table: str, **_: object) -> list[dict[str, object]]:
        """Offboarding looks for the app's webhook endpoint: this org has none (registered by hand, or never)."""
        assert table == "serviceendpoints", table
        return []
