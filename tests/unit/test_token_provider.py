import threading

import pytest

from shared.auth.token_provider import TenantTokenProvider, scope_for_resource
from shared.errors import InvalidTenantError, TokenAcquisitionError
from tests.unit.conftest import FakeConfidentialClient

T1 = "11111111-1111-1111-1111-111111111111"
T2 = "22222222-2222-2222-2222-222222222222"
ORG = "https://contoso.crm.dynamics.com"


class RecordingAssertions:
    kind = "certificate"

    def __init__(self):
        self.calls = 0
        self.refreshes = 0

    def __call__(self, context):
        self.calls += 1
        return "assertion"

    def refresh_after_rejection(self):
        self.refreshes += 1

    def describe(self):
        return {"credential": self.kind}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def make_provider(scripts=None, delay=0.0, max_tenants=100, clock=None):
    apps = {}
    assertions = RecordingAssertions()

    def factory(tenant_id):
        app = FakeConfidentialClient(tenant_id, (scripts or {}).get(tenant_id), assertions, delay)
        apps.setdefault(tenant_id, []).append(app)
        return app

    provider = TenantTokenProvider(
        client_id="c",
        authority_host="https://login.example",
        assertion_source=assertions,
        max_tenants=max_tenants,
        app_factory=factory,
        clock=clock or Clock(),
    )
    return provider, apps, assertions


def requests_made(apps, tenant):
    return sum(a.requests for a in apps.get(tenant, []))


@pytest.mark.parametrize(
    ("resource", "scope"),
    [(ORG, f"{ORG}/.default"), (f"{ORG}/", f"{ORG}/.default"), (f"{ORG}//", f"{ORG}/.default")],
)
def test_scope_never_doubles_the_slash(resource, scope):
    assert scope_for_resource(resource) == scope


@pytest.mark.parametrize("bad", ["http://contoso.crm.dynamics.com", "https://x/?a=b", "https://u:p@x", "contoso"])
def test_scope_rejects_non_https_resources(bad):
    with pytest.raises(ValueError, match="https"):
        scope_for_resource(bad)


def test_second_call_comes_from_the_memo_without_a_request():
    provider, apps, _ = make_provider()
    first = provider.get_token(T1, ORG)
    second = provider.get_token(T1, ORG)
    assert first.source == "identity_provider" and second.source == "cache"
    assert first.token == second.token
    assert requests_made(apps, T1) == 1
    assert first.token not in repr(first)


def test_tokens_are_kept_per_tenant_and_resource():
    provider, apps, _ = make_provider()
    a = provider.get_token(T1, ORG)
    b = provider.get_token(T2, ORG)
    c = provider.get_token(T1, "https://fabrikam.crm4.dynamics.com")
    assert len({a.token, b.token, c.token}) == 3
    assert (a.tenant_id, b.tenant_id) == (T1, T2)
    assert len(apps[T1]) == 1  # one long-lived app per tenant


def test_fifty_threads_asking_for_a_first_token_cause_one_request():
    provider, apps, _ = make_provider(delay=0.05)
    barrier = threading.Barrier(50)
    tokens = []

    def ask():
        barrier.wait()
        tokens.append(provider.get_token(T1, ORG).token)

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 50 and len(set(tokens)) == 1
    assert requests_made(apps, T1) == 1


def test_token_is_renewed_five_minutes_before_expiry():
    clock = Clock()
    provider, apps, _ = make_provider(clock=clock)
    provider.get_token(T1, ORG)
    clock.now += 3599 - 301
    assert provider.get_token(T1, ORG).source == "cache"
    clock.now += 2
    apps[T1][0].cache.clear()  # as MSAL would treat a token with < 5 min left
    assert provider.get_token(T1, ORG).source == "identity_provider"
    assert requests_made(apps, T1) == 2


def test_lru_bounds_the_number_of_tenant_apps():
    provider, apps, _ = make_provider(max_tenants=3)
    tenants = [f"{i:08d}-0000-0000-0000-000000000000" for i in range(5)]
    for t in tenants:
        provider.get_token(t, ORG)
    assert provider.tenant_count == 3
    assert provider.evictions == 2
    provider.get_token(tenants[0], ORG)  # evicted: a new app and a new request
    assert len(apps[tenants[0]]) == 2


def test_non_guid_tenant_never_reaches_the_authority():
    provider, apps, _ = make_provider()
    for bad in ["common", "../evil", "11111111-1111-1111-1111-111111111111/x", ""]:
        with pytest.raises(InvalidTenantError):
            provider.get_token(bad, ORG)
    assert apps == {}


def entra_error(code, error="invalid_client", text="nope"):
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: t\r\nCorrelation ID: c",
        "error_codes": [code],
        "correlation_id": "corr-1",
        "trace_id": "trace-1",
    }


@pytest.mark.parametrize(
    ("code", "error", "category"),
    [
        (700016, "unauthorized_client", "consent_missing"),
        (65001, "invalid_grant", "consent_required"),
        (90002, "invalid_request", "tenant_not_found"),
        (7000112, "unauthorized_client", "app_disabled"),
    ],
)
def test_entra_errors_become_typed_errors(code, error, category):
    provider, apps, assertions = make_provider({T1: [entra_error(code, error)]})
    with pytest.raises(TokenAcquisitionError) as info:
        provider.get_token(T1, ORG)
    err = info.value
    assert (err.aadsts_code, err.category, err.tenant_id) == (code, category, T1)
    assert err.correlation_id == "corr-1" and err.trace_id == "trace-1"
    assert err.meaning and err.fix
    assert assertions.refreshes == 0  # not a credential problem: no retry
    assert requests_made(apps, T1) == 1


def test_rejected_certificate_is_reread_and_retried_once():
    provider, apps, assertions = make_provider({T1: [entra_error(700027)]})
    token = provider.get_token(T1, ORG)
    assert token.source == "identity_provider"
    assert assertions.refreshes == 1
    assert requests_made(apps, T1) == 2


def test_a_second_rejection_is_raised_not_retried_again():
    provider, apps, assertions = make_provider({T1: [entra_error(700027), entra_error(700027)]})
    with pytest.raises(TokenAcquisitionError) as info:
        provider.get_token(T1, ORG)
    assert info.value.category == "credential_rejected"
    assert assertions.refreshes == 1
    assert requests_made(apps, T1) == 2


def test_aadsts_code_is_read_from_the_text_when_codes_are_missing():
    provider, _, _ = make_provider(
        {T1: [{"error": "unauthorized_client", "error_description": "AADSTS700016: Application not found"}]}
    )
    with pytest.raises(TokenAcquisitionError) as info:
        provider.get_token(T1, ORG)
    assert info.value.aadsts_code == 700016


def test_unknown_tenant_at_app_construction_is_tenant_not_found():
    def factory(tenant_id):
        raise ValueError("Unable to get authority configuration")

    provider = TenantTokenProvider(
        client_id="c",
        authority_host="https://login.example",
        assertion_source=RecordingAssertions(),
        app_factory=factory,
    )
    with pytest.raises(TokenAcquisitionError) as info:
        provider.get_token(T1, ORG)
    assert info.value.aadsts_code == 90002


def test_network_failure_is_transient():
    import requests

    class Down(FakeConfidentialClient):
        def acquire_token_for_client(self, scopes):
            raise requests.ConnectionError("refused")

    provider = TenantTokenProvider(
        client_id="c",
        authority_host="https://login.example",
        assertion_source=RecordingAssertions(),
        app_factory=Down,
    )
    with pytest.raises(TokenAcquisitionError) as info:
        provider.get_token(T1, ORG)
    assert info.value.is_transient is True
