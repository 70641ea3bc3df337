"""Storage failing under an HTTP function (registry, consent states): a 503 with ``storage_unavailable`` and a
Retry-After — JSON for the APIs, an escaped page for browsers — never the host's bare 500 or a stack trace."""

from __future__ import annotations

import json

import azure.functions as func
import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from functions import onboarding, user_api
from functions.http_errors import STORAGE_RETRY_AFTER_SECONDS
from shared.bootstrap import use_services
from shared.settings import Settings
from shared.signin.user_tokens import UserPrincipal

CLIENT = "11111111-2222-3333-4444-555555555555"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


class Down:
    """Any call raises what the Azure SDK raises when storage is unreachable or failing."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise self.error

        return fail


class Validator:
    def validate(self, header):
        return UserPrincipal(TENANT, TENANT, "Ada", "ada@x.example", ("access_as_user",), (), "2.0")


class Services:
    def __init__(self, error: Exception) -> None:
        self.settings = Settings(
            entra_client_id=CLIENT,
            entra_home_tenant_id=TENANT,
            key_vault_url="https://kv.vault.azure.net",
            key_vault_certificate_name="c",
            onboarding_redirect_uri="https://app.example/api/consent/callback",
        )
        self.onboarding = Down(error)
        self.registry = Down(error)
        self.user_tokens = Validator()


ERRORS = [
    ServiceRequestError("connection refused"),
    HttpResponseError(message="Server busy", response=None),
]

CASES = [
    (onboarding.onboard_start, "POST", "onboard", {}, b"org_url=https%3A%2F%2Fx.crm.dynamics.com", "html"),
    (onboarding.consent_callback, "GET", "consent/callback", {"state": "s", "code": "c"}, b"", "html"),
    (onboarding.recheck, "POST", "onboard/recheck", {}, f"tenant={TENANT}&ticket=t".encode(), "html"),
    (onboarding.verify_tenant, "POST", f"tenants/{TENANT}/verify", {}, b"", "json"),
    (user_api.me, "GET", "me", {}, b"", "json"),
    (user_api.me_whoami, "GET", "me/whoami", {}, b"", "json"),
    (user_api.me_accounts, "GET", "me/accounts", {}, b"", "json"),
]


@pytest.mark.parametrize("error", ERRORS, ids=["unreachable", "failing"])
@pytest.mark.parametrize("case", CASES, ids=[c[2] for c in CASES])
def test_storage_down_is_a_503_with_a_code_and_retry_after(case, error):
    handler, method, path, params, body, kind = case
    use_services(Services(error))
    try:
        req = func.HttpRequest(
            method,
            f"http://localhost/api/{path}",
            params=params,
            body=body,
            headers={"authorization": "Bearer x", "origin": "https://app.example"},
            route_params={"tenant_id": TENANT},
        )
        resp = handler.build().get_user_function()(req)
    finally:
        use_services(None)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == str(STORAGE_RETRY_AFTER_SECONDS)
    text = resp.get_body().decode()
    assert "Traceback" not in text and "connection refused" not in text and "Server busy" not in text
    if kind == "json":
        assert json.loads(text)["error"]["code"] == "storage_unavailable"
    else:
        assert resp.mimetype == "text/html"
        assert 'data-error-code="storage_unavailable"' in text


def test_the_guard_keeps_the_name_and_signature_the_host_indexes():
    import inspect

    for handler, *_ in CASES:
        built = handler.build()
        user_function = built.get_user_function()
        assert built.get_function_name() == user_function.__name__ != "guarded"
        assert list(inspect.signature(user_function).parameters) == ["req"]
