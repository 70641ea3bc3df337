"""Hostile input against every HTTP function (issue 9): generated query strings, headers, route values and bodies.

For every generated request: no exception escapes; no 5xx but the documented 503, and that only while storage is
down; nothing from the request comes back as live markup, JSON bodies parse, no header carries CR/LF; every 4xx
carries an error code; no stack trace and no secret in a body. The real parsers run (form and cookie parsing, org
URL validation, consent states and the registry on an in-memory table with Table Storage's key rules, user-token
validation with a locally made signing key, the webhook intake); only Dataverse, the token provider and the
webhook store are fakes.

``HYPOTHESIS_PROFILE=nightly`` runs about 12,000 cases instead of the default profile's 2,500.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import html
import importlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from functions import health, onboarding, onboarding_pages, user_api, webhooks
from shared.bootstrap import use_services
from shared.dataverse.client import Page
from shared.dataverse.clients import OrgDiscoveryError
from shared.dataverse.org_url import validate_org_url
from shared.errors import S2SError
from shared.settings import AppMode, Settings
from shared.signin.user_tokens import JwksCache, UserTokenValidator
from shared.tenants.consent_states import ConsentStateStore
from shared.tenants.onboarding import OnboardingService
from shared.tenants.org_index import OrgIndex
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantRegistry, TenantStatus
from shared.webhooks.intake import WebhookIntake
from shared.webhooks.store import WebhookStore
from tests.unit import hostile_strategies as hs
from tests.unit import webhook_samples as samples
from tests.unit.fake_onboarding import FakeAppOnlyClient, FakeOrgs, FakeSignIn, FakeTokens, Person
from tests.unit.fake_table import FakeTable

# -- sizes ----------------------------------------------------------------------------------------------------

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example, HealthCheck.filter_too_much]
# max_examples is the total over the file; each test takes its share (SHARES).
settings.register_profile(
    "hostile-default",
    max_examples=2_500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=_QUIET,
)
# Nightly explores new cases each night; a failure prints the blob that reproduces it (@reproduce_failure).
settings.register_profile(
    "nightly", settings.get_profile("hostile-default"), max_examples=12_000, derandomize=False, print_blob=True
)
PROFILE = settings.get_profile("nightly" if os.environ.get("HYPOTHESIS_PROFILE") == "nightly" else "hostile-default")

SHARES = {
    "health": 0.03,
    "onboard_form": 0.04,
    "onboard_start": 0.14,
    "consent_callback": 0.14,
    "recheck_form": 0.05,
    "recheck": 0.09,
    "verify_tenant": 0.07,
    "dataverse_webhook": 0.18,
    "me": 0.10,
    "me_whoami": 0.08,
    "me_accounts": 0.08,
}


def budget(function_name: str) -> settings:
    return settings(PROFILE, max_examples=max(20, round(PROFILE.max_examples * SHARES[function_name])))


# -- the app's HTTP functions, straight from the blueprints ---------------------------------------------------


def _http_handlers() -> dict[str, Callable[[func.HttpRequest], func.HttpResponse]]:
    app = func.FunctionApp()
    for module in (health, onboarding, user_api, webhooks):
        app.register_functions(module.bp)
    handlers = {}
    for function in app.get_functions():
        trigger = json.loads(function.get_function_json())["bindings"][0]
        if trigger["type"] == "httpTrigger":
            handlers[function.get_function_name()] = function.get_user_function()
    return handlers


HANDLERS = _http_handlers()


def test_every_http_function_of_the_app_is_under_hostile_input():
    import function_app

    # A fresh app, as the host indexes it (the SDK refuses to list an app's functions twice).
    registered = {
        f.get_function_name()
        for f in importlib.reload(function_app).app.get_functions()
        if json.loads(f.get_function_json())["bindings"][0]["type"] == "httpTrigger"
    }
    assert registered == set(HANDLERS) == set(SHARES)


# -- the world: real services on in-memory storage ------------------------------------------------------------

AUTHORITY = "https://login.microsoftonline.com"
CLIENT = "11111111-2222-3333-4444-555555555555"
HOME = "aaaaaaaa-0000-4000-8000-000000000001"  # active, owns ORG
WAITING = "bbbbbbbb-0000-4000-8000-000000000002"  # consented, no application user in WAITING_ORG
NEWCOMER = "cccccccc-0000-4000-8000-000000000003"  # owns every other org; not registered yet
ORG = "https://contoso.crm.dynamics.com"
WAITING_ORG = "https://fabrikam.crm4.dynamics.com"
ORG_HOSTS = (
    "contoso.crm.dynamics.com",
    "fabrikam.crm4.dynamics.com",
    "unreachable.crm.dynamics.com",
    "newcorp.crm11.dynamics.com",
    "evil.example.com",
    "crm.dynamics.com.evil.example",
)
TICKET = "ISSUED-RECHECK-TICKET"  # placeholder the tests swap for the ticket the registry issued to WAITING
HOME_TICKET = "ISSUED-HOME-TICKET"  # likewise, HOME's


def make_settings(mode: AppMode) -> Settings:
    return Settings(
        entra_client_id=CLIENT,
        entra_home_tenant_id=HOME,
        app_mode=mode,
        key_vault_url="https://kv.vault.azure.net",
        key_vault_certificate_name="c",
        app_display_name="Contoso <Sync> & 'Co'",
        onboarding_redirect_uri="https://app.example/api/consent/callback",
        webhook_max_body_bytes=64 * 1024,
        onboarding_provisioning=False,  # the manual path: the fake orgs answer only the role check
    )


class Outage:
    """The switch that takes every fake storage call down. A down call raises the SDK's HttpResponseError (a
    refused request, as an outage of the account or its network rules looks): the store gives up on it at once,
    where a connection error would be retried for seconds."""

    down = False

    def check(self) -> None:
        if self.down:
            raise HttpResponseError("storage refused the request (test outage)")


class StorageTable(FakeTable):
    """The in-memory table with Table Storage's key rules (no / \\ # ? or control characters, at most 1 KiB; a
    write breaking them is a 400), ``upsert_entity``, and an outage switch."""

    _BAD_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    def _key_ok(self, *keys: str) -> bool:
        return all(isinstance(k, str) and len(k) <= 1024 and not self._BAD_KEY.search(k) for k in keys)

    def _writable(self, entity: dict[str, Any]) -> None:
        self.outage.check()
        if not self._key_ok(entity["PartitionKey"], entity["RowKey"]):
            raise HttpResponseError("OutOfRangeInput: the key holds a character Table Storage does not allow")

    def get_entity(self, partition_key: str, row_key: str, **options: Any) -> Any:
        self.outage.check()
        if not self._key_ok(partition_key, row_key):
            raise ResourceNotFoundError("no such entity")
        return super().get_entity(partition_key, row_key)

    def create_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        self._writable(entity)
        return super().create_entity(entity)

    def update_entity(self, entity: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._writable(entity)
        return super().update_entity(entity, *args, **kwargs)

    def upsert_entity(self, entity: dict[str, Any], **options: Any) -> dict[str, Any]:
        self._writable(entity)
        with self._lock:
            key = (entity["PartitionKey"], entity["RowKey"])
            self.rows[key] = {**self.rows.get(key, {}), **entity}
            self.etags[key] = f'W/"{next(self._serial)}"'
        return {}

    def query_entities(self, query_filter: str, **kwargs: Any) -> Any:
        self.outage.check()
        return super().query_entities(query_filter, **kwargs)


class FakeQueue:
    """QueueClient's send_message, for the real WebhookStore."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage
        self.messages: list[str] = []

    def send_message(self, content: str, **options: Any) -> None:
        self.outage.check()
        assert isinstance(content, str)
        self.messages.append(content)


class FakeContainer:
    """ContainerClient's upload_blob, for the real WebhookStore."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage
        self.blobs: dict[str, bytes] = {}

    def upload_blob(self, name: str, data: bytes, overwrite: bool = False, **options: Any) -> None:
        self.outage.check()
        self.blobs[name] = bytes(data)


class FakeDataverseClient(FakeAppOnlyClient):
    def query(self, entity_set: str, *, select: list[str], page_size: int, caller_object_id: str) -> Iterator[Page]:
        rows = [{"accountid": str(uuid.uuid4()), "name": f"Account {n}"} for n in range(min(page_size, 3))]
        yield Page(rows, None)


PEOPLE = {tenant: Person(tenant, username=f"admin@{tenant[:8]}.example") for tenant in (HOME, WAITING, NEWCOMER)}
CLERK = Person(HOME, username="clerk@home.example")  # a user of ORG without the System Administrator role
FOREIGNER = Person(str(uuid.UUID(int=7)), username="admin@elsewhere.example")


class FakeDataverse(FakeOrgs):
    """Org discovery by label (contoso → HOME, fabrikam → WAITING, unreachable fails, others → NEWCOMER), after
    the real org-URL validation; each tenant's person in PEOPLE is System Administrator of its orgs."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        for host in (*ORG_HOSTS, "newcorp.crm.dynamics.com"):
            with contextlib.suppress(S2SError):
                canonical = validate_org_url(f"https://{host}", settings.dataverse_domain_suffixes)
                label = host.split(".")[0]
                owner = {"contoso": HOME, "fabrikam": WAITING}.get(label, NEWCOMER)
                self.add(canonical, owner)
                self.add_user(canonical, PEOPLE[owner], administrator=True)
        self.add_user(ORG, CLERK, administrator=False)

    def discover_tenant(self, org_url: str) -> str:
        canonical = validate_org_url(org_url, self.settings.dataverse_domain_suffixes)
        label = canonical.removeprefix("https://").split(".")[0]
        if label == "unreachable":
            raise OrgDiscoveryError(f"{canonical} could not be reached. Check the address of your environment.")
        return {"contoso": HOME, "fabrikam": WAITING}.get(label, NEWCOMER)

    def for_org(self, tenant_id: str, org_url: str, *, bulk: bool = False) -> FakeDataverseClient:
        canonical = validate_org_url(org_url, self.settings.dataverse_domain_suffixes)
        return FakeDataverseClient(canonical, tenant_id.lower() != WAITING, samples.ORG_ID)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def encode(n: int) -> str:
        return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {
        "kty": "RSA",
        "use": "sig",
        "kid": kid,
        "n": encode(numbers.n),
        "e": encode(numbers.e),
        "issuer": f"{AUTHORITY}/{{tenantid}}/v2.0",
    }


SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # published in the JWKS as "good"
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # published nowhere
JWKS = {"keys": [_jwk(SIGNING_KEY, "good"), {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}]}
PUBLIC_PEM = SIGNING_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


class World:
    """Everything the HTTP functions reach through ``get_services()``, built fresh for each generated case."""

    def __init__(self, mode: AppMode = AppMode.MULTI_TENANT, *, webhook_secret: bool = False) -> None:
        self.outage = Outage()
        self.settings = make_settings(mode)
        self.tables = {name: StorageTable(self.outage) for name in ("tenants", "history", "orgindex", "states")}
        for name, rows in _seeded_rows().items():
            self.tables[name].rows.update(copy.deepcopy(rows))
            self.tables[name].etags.update({key: 'W/"0"' for key in rows})
        self.registry = TenantRegistry(self.tables["tenants"], self.tables["history"])
        self.consent_states = ConsentStateStore(self.tables["states"], self.settings.consent_state_ttl_seconds)
        self.org_index = OrgIndex(self.tables["orgindex"])
        self.dataverse = FakeDataverse(self.settings)
        self.sign_in = FakeSignIn()
        self.enqueued: list[tuple[dict[str, Any], int]] = []
        self.onboarding = OnboardingService(
            self.settings,
            self.registry,
            self.consent_states,
            self.dataverse,  # type: ignore[arg-type]
            FakeTokens(),  # type: ignore[arg-type]
            sign_in=self.sign_in,  # type: ignore[arg-type]
            enqueue_verification=lambda message, delay: self.enqueued.append((message, delay)),
            org_index=self.org_index,
            sleep=lambda seconds: None,
        )
        self.user_tokens = UserTokenValidator(
            jwks=JwksCache(lambda: JWKS),
            v2_issuer_template=f"{AUTHORITY}/{{tenantid}}/v2.0",
            v1_issuer_template="https://sts.windows.net/{tenantid}/",
            audiences=self.settings.effective_oidc_audiences,
            required_scope=self.settings.oidc_required_scope,
        )
        self.store_outage = Outage()  # the webhook store's queue, table and container only
        self.queue = FakeQueue(self.store_outage)
        self.webhook_store = WebhookStore(
            queue=self.queue,
            poison_queue=FakeQueue(self.store_outage),
            table=StorageTable(self.store_outage),
            container=FakeContainer(self.store_outage),
        )
        self.webhook_intake = WebhookIntake(
            store=self.webhook_store,
            org_index=self.org_index,
            registry=self.registry,
            max_body_bytes=self.settings.webhook_max_body_bytes,
            header_secret_name=self.settings.webhook_secret_header,
            # Without a secret on record the world runs in the documented migration mode (secrets not required).
            secret_required=webhook_secret,
        )
        self.webhook_secret = self.registry.set_webhook_secret(HOME, ORG) if webhook_secret else None


@functools.cache
def _seeded_rows() -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """HOME active with ORG; WAITING consented with no application user in WAITING_ORG; both orgs indexed. Written
    once through the real registry and index, then copied into every world."""
    tables = {name: StorageTable(Outage()) for name in ("tenants", "history", "orgindex")}
    registry, index = TenantRegistry(tables["tenants"], tables["history"]), OrgIndex(tables["orgindex"])
    for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
        registry.record(HOME, status, reason="seed", actor="test", org_url=ORG)
    registry.set_org_status(HOME, ORG, OrgStatus.ACTIVE, reason="seed", actor="test")
    for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.AWAITING_APPLICATION_USER):
        registry.record(WAITING, status, reason="seed", actor="test", org_url=WAITING_ORG)
    index.record(ORG, HOME, samples.ORG_ID)
    index.record(WAITING_ORG, WAITING, samples.ORG_ID)
    return {name: table.rows for name, table in tables.items()}


@pytest.fixture(autouse=True)
def _reset_services() -> Iterator[None]:
    yield
    use_services(None)


def install(world: World) -> World:
    use_services(world)  # type: ignore[arg-type]
    return world


def request(method: str, route: str, *, params=None, headers=None, body=b"", route_params=None) -> func.HttpRequest:
    return func.HttpRequest(
        method,
        f"http://localhost/api/{route}",
        params=params or {},
        headers=headers or {},
        route_params=route_params or {},
        body=body,
    )


# -- the properties -------------------------------------------------------------------------------------------

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{8,64}")
_DANGEROUS = re.compile(r"[<>\"']")
_SECRET_PATTERNS = {
    "a JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "a PEM block": re.compile(r"-----BEGIN [A-Z ]+-----"),
    "a base64 DER key or certificate": re.compile(r"\bMII[A-Za-z0-9+/]{60,}"),
    "a function key in a URL": re.compile(r"[?&]code=[A-Za-z0-9_\-]{20,}"),
    "a stack trace": re.compile(r"Traceback \(most recent call last\)|File \\?\""),
}
_ERROR_CODE = re.compile(r'Error code: <code data-error-code="([a-z0-9_]+)">([a-z0-9_]+)</code>')


@dataclass
class Sent:
    """What one generated request carried, for the checks."""

    strings: list[str] = field(default_factory=list)  # every text the function could see
    secrets: list[str] = field(default_factory=list)  # issued secrets that must never come back in a body
    outage: bool = False

    def add(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, str):
                self.strings.append(value)
            elif isinstance(value, bytes):
                text = value.decode("utf-8", errors="replace")
                self.strings.append(text)
                self.strings.extend(s for pair in parse_qsl(text, keep_blank_values=True) for s in pair)
            elif isinstance(value, dict):
                for key, item in value.items():
                    self.add(key, item)
            elif isinstance(value, list | tuple):
                self.add(*value)


def _strict_json(text: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def _benign_pages() -> str:
    """Every page the onboarding flow renders, with harmless values: markup found here is template, not input."""
    settings = make_settings(AppMode.MULTI_TENANT)
    name, client, authority = settings.app_display_name, settings.entra_client_id, settings.entra_authority_host
    responses = [
        onboarding_pages.onboard_form(name, client, authority),
        onboarding_pages.onboard_form(
            name, client, authority, org_url="x", contact="y", error="z", error_code="invalid_org_url", status=400
        ),
        onboarding_pages.active_page(name, HOME, (ORG, WAITING_ORG)),
        onboarding_pages.awaiting_page(name, client, WAITING, WAITING_ORG, detail="d", ticket="t", ticket_expires=9),
        onboarding_pages.pending_page("d"),
        onboarding_pages.consent_error_page("access_denied", "d"),
        onboarding_pages.consent_error_page("server_error", "d"),
        onboarding_pages.refused_page("m"),
        onboarding_pages.failed_page("d"),
        onboarding_pages.recheck_page(),
        *(onboarding_pages.invalid_state_page(reason) for reason in ("missing", "unknown", "expired", "nope")),
    ]
    return "\n".join(r.get_body().decode() for r in responses)


TEMPLATES = _benign_pages()


def _reflections(text: str, sent: Sent) -> list[str]:
    """Pieces of generated strings around a < > " or ' that appear verbatim in the page and in no template.

    A piece is centred on the dangerous character with at least two characters of the input on each side, so it
    cannot be matched by a template quote that merely follows an (escaped, harmless) echo of the same input's
    start; escaped echoes of whole inputs, stripped or cut at the lengths the functions cut at, are blanked out
    before matching for the same reason."""
    neutral = text
    forms = set()
    for s in sent.strings:
        for variant in {s, s.strip(), s.strip()[:200], *(s[:n] for n in (64, 100, 200, 300, 1000, 2000))}:
            escaped = html.escape(variant, quote=True)
            if len(escaped) >= 2:
                forms.add(escaped)
    for escaped in sorted(forms, key=len, reverse=True):
        neutral = neutral.replace(escaped, hs.SENTINEL)
    found = []
    for s in sent.strings:
        pieces = set()
        for match in list(_DANGEROUS.finditer(s))[:40]:
            i = match.start()
            if 2 <= i <= len(s) - 3:
                pieces.add(s[max(0, i - 6) : i + 7])
        found += [p for p in pieces if p not in TEMPLATES and p in neutral]
    return found


def check(resp: Any, sent: Sent) -> Any:
    """The properties every answer to hostile input must have; returns the parsed JSON body, if any."""
    assert isinstance(resp, func.HttpResponse), f"not an HttpResponse: {resp!r}"
    status = resp.status_code
    event(f"status {status}")  # --hypothesis-show-statistics: how often each outcome was reached
    assert status < 500 or (status == 503 and sent.outage), f"{status} without a storage outage"
    for name, value in resp.headers.items():
        assert not re.search(r"[\r\n]", name + value), f"CR/LF in response header {name}: {value!r}"
    text = resp.get_body().decode("utf-8")
    for what, pattern in _SECRET_PATTERNS.items():
        for match in pattern.finditer(text):
            # allowed only as an echo of the request's own (non-secret) text, e.g. a user's name shown as JSON
            echoed = match.group(0).replace('\\"', '"')
            assert any(echoed in s for s in sent.strings), f"{what} in the body: {match.group(0)!r}"
    for secret in sent.secrets:
        assert secret not in text, "an issued secret came back in the body"
    if 300 <= status < 400:
        assert resp.headers["Location"].startswith(f"{AUTHORITY}/"), "redirect to somewhere else than the authority"
        return None
    if resp.mimetype == "application/json":
        document = _strict_json(text)
        assert isinstance(document, dict)
        error = document.get("error")
        if status >= 400:
            assert isinstance(error, dict) and isinstance(error.get("message"), str)
            assert isinstance(error.get("code"), str) and error["code"], "a 4xx/5xx without an error code"
        rid = (error or document).get("request_id")
        assert rid is None or _SAFE_REQUEST_ID.fullmatch(rid), f"unsafe request id echoed: {rid!r}"
        return document
    assert resp.mimetype == "text/html", f"unexpected content type {resp.mimetype!r} ({status})"
    reflected = _reflections(text, sent)
    assert not reflected, f"input reflected unescaped: {reflected[:3]!r}"
    if status >= 400:
        shown = _ERROR_CODE.search(text)
        assert shown and shown.group(1) == shown.group(2), "an HTML error page without a visible error code"
    return None


# -- health and the onboarding form ---------------------------------------------------------------------------

anything_body = st.one_of(st.binary(max_size=200), hs.invalid_utf8, hs.deep_json, hs.json_bytes(hs.json_values))


@budget("health")
@given(params=hs.query(), headers=hs.headers(), body=anything_body)
def test_health_answers_ok_to_anything(params, headers, body):
    sent = Sent()
    sent.add(params, headers, body)
    resp = HANDLERS["health"](request("GET", "health", params=params, headers=headers, body=body))
    assert check(resp, sent) == {"status": "ok"} and resp.status_code == 200


@budget("onboard_form")
@given(
    params=hs.query(org_url=st.none() | hs.hostile_text),
    headers=hs.headers(cookie=st.none() | hs.hostile_text),
    body=anything_body,
)
def test_onboarding_form_page_ignores_hostile_input(params, headers, body):
    install(World())
    sent = Sent()
    sent.add(params, headers, body)
    resp = HANDLERS["onboard_form"](request("GET", "onboard", params=params, headers=headers, body=body))
    check(resp, sent)
    assert resp.status_code == 200


APP_ORIGIN = "https://app.example"


@budget("onboard_start")
@example(
    mode=AppMode.MULTI_TENANT,
    body=b"org_url=https%3A%2F%2Fcontoso.crm.dynamics.com&contact=%3Cb%3E",
    headers={},
    params={},
    origin=APP_ORIGIN,
)
@example(
    mode=AppMode.SINGLE_TENANT, body=b"org_url=https://newcorp.crm11.dynamics.com", headers={}, params={}, origin=None
)
@given(
    mode=st.sampled_from(AppMode),
    body=hs.form_bodies({"org_url": hs.org_urls(ORG_HOSTS), "contact": hs.hostile_text}),
    headers=hs.headers(cookie=st.none() | hs.hostile_text),
    params=hs.query(),
    origin=st.one_of(st.just(APP_ORIGIN), st.just(APP_ORIGIN), st.none(), hs.hostile_text),
)
def test_onboarding_start_validates_or_redirects_to_the_authority_only(mode, body, headers, params, origin):
    world = install(World(mode))
    headers = {k: v for k, v in headers.items() if k.lower() not in ("origin", "referer")}
    if origin is not None:
        headers["origin"] = origin
    sent = Sent()
    sent.add(body, headers, params)
    resp = HANDLERS["onboard_start"](request("POST", "onboard", params=params, headers=headers, body=body))
    check(resp, sent)
    assert resp.status_code in (302, 400, 403)
    if origin != APP_ORIGIN:
        assert resp.status_code == 403, "a cross-site form post was not refused"
    if resp.status_code == 302:
        cookie = resp.headers["Set-Cookie"]
        assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Lax"))
        assert resp.headers["Location"].startswith(f"{AUTHORITY}/organizations/oauth2/v2.0/authorize?")
        assert len(world.tables["states"].rows) == 1, "a redirect without a stored sign-in state"
    else:
        assert world.tables["states"].rows == {}, "a refused form stored a sign-in state"
    assert world.dataverse.calls == [], "an anonymous form post reached an org"
    assert world.tables["tenants"].rows == _seeded_rows()["tenants"], "an anonymous form post changed a tenant"


_cookies = st.one_of(
    st.none(),
    hs.hostile_text,
    st.sampled_from(
        (
            's2s_onboarding="unterminated',
            "s2s_onboarding",
            "=;=;",
            "s2s_onboarding=a; s2s_onboarding=b",
            "$Version=1; s2s_onboarding=x; $Path=/",
            "s2s_onboarding=\\x00",
        )
    ),
    hs.hostile_text.map(lambda v: f"s2s_onboarding={v}"),
)


@st.composite
def callback_cases(draw: st.DrawFn) -> dict[str, Any]:
    state = draw(st.sampled_from(("absent", "hostile", "issued", "issued", "issued", "other_browser", "replayed")))
    params = draw(
        hs.query(
            code=st.one_of(st.none(), hs.hostile_text),
            tenant=st.one_of(st.none(), st.sampled_from((HOME, WAITING, NEWCOMER)), hs.hostile_text),
            admin_consent=st.one_of(st.none(), st.sampled_from(("True", "False")), hs.hostile_text),
            error=st.one_of(st.none(), st.none(), st.sampled_from(("access_denied", "server_error")), hs.hostile_text),
            error_description=st.one_of(st.none(), hs.hostile_text),
            state=hs.hostile_text if state == "hostile" else st.none(),
        )
    )
    signed_in = state != "hostile" and draw(st.integers(1, 3)) > 1  # a real sign-in answer, so everything runs
    if signed_in:
        params.pop("error", None)
    return {
        "state": state,
        "params": params,
        "signed_in": signed_in,
        "who": draw(st.sampled_from(("admin", "admin", "clerk", "foreigner"))),
        "org": draw(st.sampled_from((ORG, WAITING_ORG, "https://newcorp.crm.dynamics.com"))),
        "clean_cookie": draw(st.integers(1, 3)) > 1,  # only our cookie, or ours after a hostile Cookie header
        "cookie": draw(_cookies),
        "headers": draw(hs.headers()),
        "mode": draw(st.sampled_from(AppMode)),
    }


def _signed_in(org: str, mode: AppMode = AppMode.MULTI_TENANT, who: str = "admin") -> dict[str, Any]:
    return {
        "state": "issued",
        "params": {},
        "signed_in": True,
        "who": who,
        "org": org,
        "clean_cookie": True,
        "cookie": None,
        "headers": {},
        "mode": mode,
    }


@budget("consent_callback")
@example(case=_signed_in(ORG))
@example(case=_signed_in(WAITING_ORG))
@example(case=_signed_in(ORG, who="clerk"))
@example(case=_signed_in(ORG, who="foreigner"))
@example(case=_signed_in("https://newcorp.crm.dynamics.com", AppMode.SINGLE_TENANT))
@given(case=callback_cases())
def test_consent_callback_survives_hostile_answers(case):
    world = install(World(case["mode"]))
    params, headers, sent = dict(case["params"]), dict(case["headers"]), Sent()
    if case["cookie"] is not None:
        headers["cookie"] = case["cookie"]
    owner = world.dataverse.owners[case["org"]]
    if case["state"] in ("issued", "other_browser", "replayed"):
        flow = world.sign_in.begin(case["org"], world.settings.onboarding_redirect_uri)
        issued = world.consent_states.issue(flow, case["org"], "admin@example.com")
        params["state"] = issued.state
        if case["signed_in"]:
            person = {"admin": PEOPLE[owner], "clerk": CLERK, "foreigner": FOREIGNER}[case["who"]]
            params["code"] = world.sign_in.sign_in(issued.state, person)
            sent.secrets.append(params["code"])
        if case["state"] != "other_browser":
            ours = f"s2s_onboarding={issued.browser_nonce}"
            headers["cookie"] = ours if case["clean_cookie"] else f"{headers.get('cookie', 'x=1')}; {ours}"
        if case["state"] == "replayed":
            world.consent_states.redeem(issued.state, issued.browser_nonce)
        sent.secrets += [issued.state, issued.browser_nonce]
    sent.add(params, headers)
    before = copy.deepcopy(world.tables["tenants"].rows)
    resp = HANDLERS["consent_callback"](request("GET", "consent/callback", params=params, headers=headers))
    check(resp, sent)
    assert resp.status_code in (200, 202, 400, 403)
    assert "Location" not in resp.headers
    completed = (
        case["state"] == "issued"
        and case["signed_in"]
        and case["who"] == "admin"
        and (case["mode"] is AppMode.MULTI_TENANT or owner == HOME)
    )
    if not completed:
        assert world.tables["tenants"].rows == before, "a callback without a completed sign-in changed a tenant"


@budget("recheck_form")
@given(
    params=hs.query(tenant=st.none() | hs.guid_like | hs.hostile_text, ticket=st.none() | hs.hostile_text),
    headers=hs.headers(),
)
def test_recheck_link_page_escapes_its_values(params, headers):
    install(World())
    sent = Sent()
    sent.add(params, headers)
    resp = HANDLERS["recheck_form"](request("GET", "onboard/recheck", params=params, headers=headers))
    check(resp, sent)
    assert resp.status_code in (200, 400)


@budget("recheck")
@given(
    body=hs.form_bodies(
        {
            "tenant": hs.weighted(
                (6, st.sampled_from((WAITING, WAITING.upper(), HOME))), (1, hs.guid_like), (2, hs.hostile_text)
            ),
            "ticket": hs.weighted((6, st.sampled_from((TICKET, HOME_TICKET))), (2, hs.hostile_text)),
            "org": hs.weighted((3, st.sampled_from(("", WAITING_ORG, ORG))), (1, hs.hostile_text)),
        }
    ),
    headers=hs.headers(),
)
def test_recheck_accepts_only_the_ticket_issued_to_that_tenant(body, headers):
    world = install(World())
    tickets = {
        WAITING: world.registry.issue_recheck_ticket(WAITING, WAITING_ORG),
        HOME: world.registry.issue_recheck_ticket(HOME, ORG),
    }
    for placeholder, tenant in ((TICKET, WAITING), (HOME_TICKET, HOME)):
        body = body.replace(placeholder.encode(), tickets[tenant].encode())
    sent = Sent()
    sent.add(body, headers)
    resp = HANDLERS["recheck"](request("POST", "onboard/recheck", headers=headers, body=body))
    check(resp, sent)
    assert resp.status_code in (200, 400)
    if resp.status_code == 200:
        form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        assert tickets.get(form.get("tenant", "").lower()) == form.get("ticket"), "a ticket opened another tenant"
        ticket_org = {WAITING: WAITING_ORG, HOME: ORG}[form["tenant"].lower()]
        assert form.get("org") in (None, "", ticket_org), "a ticket opened another org of its tenant"


@budget("verify_tenant")
@given(
    tenant_id=st.one_of(st.none(), st.sampled_from((HOME, WAITING, HOME.upper())), hs.guid_like, hs.hostile_text),
    params=hs.query(),
    headers=hs.headers(),
    body=anything_body,
)
def test_admin_verify_answers_json_for_any_route_value(tenant_id, params, headers, body):
    install(World())
    sent = Sent()
    sent.add(tenant_id, params, headers, body)
    route = {} if tenant_id is None else {"tenant_id": tenant_id}
    resp = HANDLERS["verify_tenant"](
        request("POST", "tenants/x/verify", params=params, headers=headers, body=body, route_params=route)
    )
    document = check(resp, sent)
    assert resp.status_code in (200, 400, 404) and resp.mimetype == "application/json"
    if resp.status_code == 200:
        assert document["tenant_id"] in (HOME, WAITING) and (tenant_id or "").lower() == document["tenant_id"]


# -- the webhook receiver -------------------------------------------------------------------------------------

_org_headers = hs.weighted(
    (3, st.just("contoso.crm.dynamics.com")),
    (1, st.none()),
    (
        3,
        st.one_of(
            st.sampled_from(
                (
                    "contoso.crm.dynamics.com",
                    "CONTOSO.crm.dynamics.com",
                    " contoso.crm.dynamics.com ",
                    "contoso.crm.dynamics.com.",
                    "fabrikam.crm4.dynamics.com",
                    "https://contoso.crm.dynamics.com",
                    "contoso.crm.dynamics.com:443",
                    "contoso.crm.dynamics.com#",
                    "contoso.crm.dynamics.com\x00",
                    "contoso.crm.dynamics.com/x",
                    "a" * 300,
                )
            ),
            hs.hostile_text,
        ),
    ),
)
SECRET = "ISSUED-WEBHOOK-SECRET"


_DELIVERY = json.dumps(samples.update_contact()).encode()
_TO_CONTOSO = {"x-ms-dynamics-organization": "contoso.crm.dynamics.com", "x-s2s-webhook-secret": SECRET}


def _delivery(**fields: Any) -> bytes:
    return hs.dump_json({**samples.update_contact(), **fields}).encode()


# Each of these once escaped the webhook intake as an exception (a 500 where a 400 is due).
WEBHOOK_REGRESSIONS = (
    _delivery(Stage=hs.RawJson("1e400")),
    _delivery(OperationCreatedOn="/Date(99999999999999999999)/"),
    _delivery(OperationCreatedOn="/Date(" + "9" * 5000 + ")/"),
    _delivery(SharedVariables=[{"key": "d", "value": "/Date(-99999999999999)/"}]),
    _delivery(InputParameters=[{"key": "x", "value": {"__type": hs.MONEY_TYPE, "Value": "abc"}}]),
    _delivery(MessageName="\ud800"),
    hs.dump_json(samples.update_contact()).encode("utf-16"),
    b"[" * 5000 + b"]" * 5000,
)


def webhook_regressions(test: Callable[..., None]) -> Callable[..., None]:
    for body in WEBHOOK_REGRESSIONS:
        test = example(body=body, headers=_TO_CONTOSO, params={}, with_secret=False, outage="none", again=False)(test)
    return test


@budget("dataverse_webhook")
@webhook_regressions
@example(body=_DELIVERY, headers=_TO_CONTOSO, params={}, with_secret=True, outage="none", again=True)
@example(body=_DELIVERY, headers=_TO_CONTOSO, params={}, with_secret=False, outage="all", again=False)
@example(body=_DELIVERY, headers=_TO_CONTOSO, params={}, with_secret=True, outage="store", again=True)
@given(
    body=hs.webhook_bodies(),
    headers=hs.headers(
        x_ms_dynamics_organization=_org_headers,
        x_s2s_webhook_secret=hs.weighted(
            (3, st.just(SECRET)), (1, st.none()), (1, st.just(SECRET + " ")), (1, hs.hostile_text)
        ),
        x_ms_dynamics_msg_size_exceeded=st.one_of(st.none(), st.sampled_from(("true", "TRUE")), hs.hostile_text),
    ),
    params=hs.query(code=st.none() | st.just("fUnCtIoNkEy-0123456789abcdef")),
    with_secret=st.booleans(),
    outage=hs.weighted((8, st.just("none")), (1, st.just("all")), (1, st.just("store"))),
    again=st.booleans(),
)
def test_webhook_receiver_answers_with_a_code_and_stores_before_acknowledging(
    body, headers, params, *, with_secret, outage, again
):
    world = install(World(webhook_secret=with_secret))
    secret = world.webhook_secret
    if secret is not None and headers.get("x-s2s-webhook-secret", "").startswith(SECRET):
        headers["x-s2s-webhook-secret"] = headers["x-s2s-webhook-secret"].replace(SECRET, secret)
    world.outage.down = outage == "all"
    world.store_outage.down = outage in ("all", "store")
    sent = Sent(outage=outage != "none", secrets=[s for s in (secret, params.get("code")) if s])
    sent.add(headers, params)
    sent.add(body.decode("utf-8", errors="replace"))
    resp = HANDLERS["dataverse_webhook"](
        request("POST", "webhooks/dataverse", params=params, headers=headers, body=body)
    )
    check(resp, sent)
    assert resp.status_code in (200, 202, 400, 401, 403, 413, 503)
    if resp.status_code < 300:
        assert len(world.queue.messages) == 1, "acknowledged without queuing the event"
        assert secret is None or headers.get("x-s2s-webhook-secret") == secret
        (queued,) = world.queue.messages
        assert json.loads(queued)["authenticated"] is (secret is not None), "an unproven org's body was trusted"
    else:
        assert world.queue.messages == [], "queued an event it refused"
    if resp.status_code == 401:
        assert json.loads(resp.get_body())["error"]["code"] == "unauthenticated"
    if again:  # Dataverse's retry of the same delivery: queued again, one write, the processor's claim skips it
        retried = HANDLERS["dataverse_webhook"](
            request("POST", "webhooks/dataverse", params=params, headers=headers, body=body)
        )
        check(retried, sent)
        if resp.status_code == 202:
            assert retried.status_code == 202 and len(world.queue.messages) == 2, "a retry was not acknowledged"
            first, second = (json.loads(m)["key"] for m in world.queue.messages)
            assert first == second, "a retry of the same delivery got another identity"


# -- the user API ---------------------------------------------------------------------------------------------


def _sign(header: Any, claims: Any, key: rsa.RSAPrivateKey) -> str:
    signing_input = f"{hs.segment(header)}.{hs.segment(claims)}"
    return signing_input + "." + _b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


def _hs256(header: Any, claims: Any) -> str:
    import hmac

    signing_input = f"{hs.segment(header)}.{hs.segment(claims)}"
    return signing_input + "." + _b64(hmac.new(PUBLIC_PEM, signing_input.encode(), "sha256").digest())


def _base_claims(tid: str, name: Any, username: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": f"{AUTHORITY}/{tid}/v2.0",
        "aud": CLIENT,
        "tid": tid,
        "oid": str(uuid.uuid4()),
        "scp": "access_as_user",
        "ver": "2.0",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "name": name,
        "preferred_username": username,
    }


@dataclass
class TokenCase:
    authorization: str | None
    claims: Any = None
    ours: bool = False  # signed by our key, with our kid, as RS256


@st.composite
def token_cases(draw: st.DrawFn) -> TokenCase:
    tid = draw(
        hs.weighted(
            (4, st.just(HOME)),
            (2, st.sampled_from((HOME.upper(), WAITING, NEWCOMER))),
            (1, hs.guid_like),
            (1, hs.json_values),
        )
    )
    claims: Any = _base_claims(tid, draw(hs.json_text), draw(st.one_of(hs.json_text, hs.json_values)))
    kind = draw(
        st.sampled_from(("valid", "valid", "mutated", "mutated", "mutated", "header", "stranger", "hs256", "forged"))
    )
    ours = False
    if kind in ("valid", "mutated", "header"):
        header: Any = {"alg": "RS256", "typ": "JWT", "kid": "good"}
        if kind == "mutated":
            claims = draw(hs.claim_sets(claims))
        if kind == "header":
            header = {
                **header,
                **draw(
                    st.dictionaries(
                        st.sampled_from(("kid", "alg", "typ", "crit", "b64", "jku", "x5u", "cty", "zip")),
                        hs.json_values,
                        min_size=1,
                        max_size=3,
                    )
                ),
            }
        token = _sign(header, claims, SIGNING_KEY)
        ours = header.get("alg") == "RS256" and header.get("kid") == "good"
    elif kind == "stranger":
        token = _sign({"alg": "RS256", "kid": draw(st.sampled_from(("good", "stranger", "sym")))}, claims, STRANGER_KEY)
    elif kind == "hs256":
        token = _hs256({"alg": "HS256", "kid": draw(st.sampled_from(("good", "sym")))}, claims)
    else:
        token = draw(hs.forged_tokens())
    authorization = draw(hs.authorization_values(token))
    return TokenCase(authorization, claims, ours and authorization is not None and token in authorization)


def _user_call(
    name: str, route: str, case: TokenCase, params: dict[str, str], headers: dict[str, str], *, mode: AppMode
) -> tuple[func.HttpResponse, Any]:
    install(World(mode))
    headers = dict(headers)
    if case.authorization is None:
        headers.pop("authorization", None)
    else:
        headers["authorization"] = case.authorization
    sent = Sent()
    sent.add(params, {k: v for k, v in headers.items() if k != "authorization"})
    sent.add(case.claims)  # the user's own claims may be shown back to them, as JSON
    if case.ours:
        sent.secrets.append(case.authorization.removeprefix("Bearer ").strip())
    resp = HANDLERS[name](request("GET", route, params=params, headers=headers))
    document = check(resp, sent)
    assert resp.mimetype == "application/json"
    if resp.status_code == 401:
        assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    if resp.status_code == 200:
        assert case.ours, "200 for a token our key did not sign"
        assert case.claims["tid"].lower() == HOME, "200 for a tenant that is not active"
    return resp, document


_user_modes = st.sampled_from((AppMode.MULTI_TENANT, AppMode.MULTI_TENANT, AppMode.SINGLE_TENANT))


def _ours(header: dict[str, Any] | None = None, **overrides: Any) -> TokenCase:
    """A token our key signed for the active tenant, with some header fields or claims replaced."""
    claims = {**_base_claims(HOME, "Ada", "ada@example.com"), **overrides}
    header = {"alg": "RS256", "typ": "JWT", "kid": "good", **(header or {})}
    ours = header["alg"] == "RS256" and header["kid"] == "good"
    return TokenCase("Bearer " + _sign(header, claims, SIGNING_KEY), claims, ours)


# Each of these once escaped the token validator as an exception, or came back from /me as invalid JSON (NaN).
TOKEN_REGRESSIONS = (
    _ours(),
    _ours(roles=5),
    _ours(name=hs.RawJson("NaN"), preferred_username=["a"]),
    _ours({"kid": 5}),
    _ours({"crit": 5}),
    TokenCase(f"Bearer {hs.segment({'alg': 'RS256', 'kid': 'good'})}.{hs.segment(b'[' * 5000 + b']' * 5000)}.x"),
)


def token_regressions(test: Callable[..., None]) -> Callable[..., None]:
    for case in TOKEN_REGRESSIONS:
        headers = {"x-ms-client-request-id": "abcdefgh\n"}
        test = example(case=case, params={"top": "²"}, headers=headers, mode=AppMode.MULTI_TENANT)(test)
    return test


@budget("me")
@token_regressions
@given(case=token_cases(), params=hs.query(), headers=hs.headers(), mode=_user_modes)
def test_me_rejects_every_token_it_cannot_verify(case, params, headers, mode):
    resp, _ = _user_call("me", "me", case, params, headers, mode=mode)
    assert resp.status_code in (200, 401, 403)


@budget("me_whoami")
@token_regressions
@given(case=token_cases(), params=hs.query(), headers=hs.headers(), mode=_user_modes)
def test_whoami_rejects_every_token_it_cannot_verify(case, params, headers, mode):
    resp, document = _user_call("me_whoami", "me/whoami", case, params, headers, mode=mode)
    assert resp.status_code in (200, 401, 403)
    if resp.status_code == 200:
        assert document["org_url"] == ORG


_tops = st.one_of(
    st.none(),
    st.integers(-5, 60).map(str),
    st.sampled_from(
        (
            "²",
            "١٢",
            "٣",
            "\U0001d7d3",
            "½",
            "1_0",
            " 5",
            "5 ",
            "+5",
            "05",
            "0" * 5000 + "1",
            "9" * 5000,
            "1e1",
            "0x10",
            "5\n",
            "Infinity",
        )
    ),
    hs.hostile_text,
)


@budget("me_accounts")
@token_regressions
@example(case=_ours(), params={"top": "0" * 5000 + "1"}, headers={}, mode=AppMode.MULTI_TENANT)
@given(case=token_cases(), params=hs.query(top=_tops), headers=hs.headers(), mode=_user_modes)
def test_accounts_validates_top_and_the_token(case, params, headers, mode):
    resp, document = _user_call("me_accounts", "me/accounts", case, params, headers, mode=mode)
    assert resp.status_code in (200, 400, 401, 403)
    if resp.status_code == 200:
        top = params.get("top", "10")
        assert re.fullmatch(r"[0-9]+", top) and 1 <= int(top) <= 50
        assert len(document["accounts"]) == min(int(top), 3)
