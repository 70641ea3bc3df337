"""The development host over real HTTP: routing from binding metadata, route parameters and constraints, keys
per auth level, request and response mapping (query, headers, cookies, content type), errors and limits,
async functions, the real `function_app.app`, and `python -m devhost`; Set-Cookie written back as the Functions
host does (the onboarding cookie included), and refusal to start an app the Python worker would not index.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import azure.functions as func
import pytest
import requests

from devhost import DevHost, HostKeys, read_route_prefix
from devhost.worker_rules import WorkerIndexingError, check_functions, find_function_app
from shared.bootstrap import use_services
from shared.settings import Settings
from shared.tenants.onboarding import OnboardingStart, VerificationResult
from shared.tenants.registry import TenantStatus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _echo(req: func.HttpRequest) -> dict[str, object]:
    return {
        "method": req.method,
        "url": req.url,
        "params": dict(req.params),
        "route_params": dict(req.route_params),
        "headers": {name: req.headers[name] for name in ("x-custom", "cookie", "content-type") if name in req.headers},
        "body": req.get_body().decode("utf-8"),
    }


def build_app() -> func.FunctionApp:
    """A fresh app per test: get_functions() may be called only once per FunctionApp (environment.md)."""
    public = func.Blueprint()
    keyed = func.Blueprint()

    @public.route(route="echo/{id:int}/{name?}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
    def echo(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(json.dumps(_echo(req)), mimetype="application/json")

    @public.route(route="echo/latest", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def echo_latest(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("literal wins", mimetype="text/plain")

    @public.route(route="things/{thing_id:guid}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def thing(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(req.route_params["thing_id"])

    @public.route(route="cookies", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def cookies(req: func.HttpRequest) -> func.HttpResponse:
        response = func.HttpResponse(
            "<p>hi</p>", mimetype="text/html", headers={"X-Frame-Options": "DENY", "Cache-Control": "no-store"}
        )
        response.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly; SameSite=Lax")
        response.headers.add("Set-Cookie", "b=2; Path=/api; Secure")
        return response

    @public.route(route="typed", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def typed(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(b"{}", status_code=201, headers={"Content-Type": "application/problem+json"})

    @public.route(route="boom", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("secret-detail-xyz")

    @public.route(route="slow-async", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
    async def async_echo(req: func.HttpRequest) -> func.HttpResponse:
        import asyncio

        await asyncio.sleep(0.01)
        return func.HttpResponse(req.get_body(), mimetype="application/octet-stream")

    @public.route(route="ctx", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def with_context(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
        return func.HttpResponse(f"{context.function_name} {len(context.invocation_id)}")

    @keyed.route(route="secured", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
    def secured(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("function level")

    @keyed.route(route="other", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
    def other(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("other")

    @keyed.route(route="admin/{action}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
    def admin(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(f"admin {req.route_params['action']}")

    @keyed.timer_trigger(schedule="0 */5 * * * *", arg_name="timer")
    def tick(timer: func.TimerRequest) -> None:
        return None

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(public)
    app.register_functions(keyed)
    return app


@pytest.fixture
def host() -> Iterator[DevHost]:
    with DevHost(build_app(), max_body_bytes=64 * 1024) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # loopback only: no proxy, whatever the environment says
    yield session
    session.close()


# -- routing ----------------------------------------------------------------------------------------------


def test_route_params_query_headers_and_body_reach_the_function(host: DevHost, http: requests.Session) -> None:
    response = http.post(
        f"{host.url}/api/echo/42/bob%20smith?x=1&x=2&empty=&q=a%2Bb",
        data=b"payload",
        headers={"X-Custom": "yes", "Content-Type": "text/plain"},
        cookies={"c1": "v1"},
        timeout=5,
    )

    seen = response.json()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert seen["method"] == "POST"
    assert seen["url"] == f"{host.url}/api/echo/42/bob%20smith?x=1&x=2&empty=&q=a%2Bb"
    assert seen["params"] == {"x": "1", "empty": "", "q": "a+b"}
    assert seen["route_params"] == {"id": "42", "name": "bob smith"}
    assert seen["headers"] == {"x-custom": "yes", "cookie": "c1=v1", "content-type": "text/plain"}
    assert seen["body"] == "payload"


def test_optional_parameter_constraint_and_literal_precedence(host: DevHost, http: requests.Session) -> None:
    without_name = http.get(f"{host.url}/api/echo/7", timeout=5).json()
    not_an_int = http.get(f"{host.url}/api/echo/seven", timeout=5)
    literal = http.get(f"{host.url}/api/echo/latest", timeout=5)
    case_and_slash = http.get(f"{host.url}/API/Echo/8/", timeout=5)
    guid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"

    assert without_name["route_params"] == {"id": "7"}
    assert not_an_int.status_code == 404
    assert literal.text == "literal wins"
    assert case_and_slash.json()["route_params"] == {"id": "8"}
    assert http.get(f"{host.url}/api/things/{guid}", timeout=5).text == guid
    assert http.get(f"{host.url}/api/things/not-a-guid", timeout=5).status_code == 404


def test_unknown_route_wrong_method_and_missing_prefix_are_empty_404s(host: DevHost, http: requests.Session) -> None:
    for method, path in (
        ("GET", "/api/nothing-here"),
        ("DELETE", "/api/echo/1"),  # the route exists, not for DELETE: the Functions host answers 404
        ("GET", "/echo/1"),
        ("GET", "/apiecho/1"),
    ):
        response = http.request(method, f"{host.url}{path}", timeout=5)
        assert (response.status_code, response.content) == (404, b""), (method, path)


def test_only_http_functions_are_served_and_skipped_ones_are_listed(host: DevHost) -> None:
    assert [s.name for s in host.skipped] == ["tick"] and host.skipped[0].trigger == "timerTrigger"
    assert host.route_path(next(f for f in host.functions if f.name == "echo")) == "/api/echo/{id:int}/{name?}"
    order = [f.name for f in host.functions]
    assert order.index("echo_latest") < order.index("echo")  # literal segments are tried before parameters


def test_route_prefix_is_configurable_and_read_from_host_json(tmp_path: Path, http: requests.Session) -> None:
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}))

    prefix = read_route_prefix(tmp_path / "host.json")
    with DevHost(build_app(), route_prefix=prefix) as bare:
        response = http.get(f"{bare.url}/echo/5", timeout=5)

    assert prefix == ""
    assert read_route_prefix(ROOT / "host.json") == "api"
    assert read_route_prefix(tmp_path / "missing.json") == "api"
    assert response.json()["route_params"] == {"id": "5"}


# -- keys -------------------------------------------------------------------------------------------------------


def test_function_level_accepts_its_key_the_host_key_or_the_master_key(host: DevHost, http: requests.Session) -> None:
    keys = host.keys
    url = f"{host.url}/api/secured"

    def status(**kwargs: object) -> int:
        return http.get(url, timeout=5, **kwargs).status_code  # type: ignore[arg-type]

    assert status() == 401
    assert http.get(url, timeout=5).content == b""
    assert status(params={"code": "wrong"}) == 401
    assert status(params={"code": keys.function_keys["other"]}) == 401  # another function's key
    assert status(params={"code": keys.function_keys["secured"]}) == 200
    assert status(headers={"x-functions-key": keys.function_keys["secured"]}) == 200
    assert status(params={"code": keys.host_key}) == 200
    assert status(headers={"x-functions-key": keys.master_key}) == 200
    # The header wins over the query parameter.
    assert status(headers={"x-functions-key": "wrong"}, params={"code": keys.host_key}) == 401


def test_admin_level_accepts_only_the_master_key(host: DevHost, http: requests.Session) -> None:
    url = f"{host.url}/api/admin/rotate"
    keys = host.keys

    assert http.post(url, timeout=5).status_code == 401
    assert http.post(url, params={"code": keys.host_key}, timeout=5).status_code == 401
    assert http.post(url, params={"code": keys.function_keys["admin"]}, timeout=5).status_code == 401
    ok = http.post(url, headers={"x-functions-key": keys.master_key}, timeout=5)
    assert (ok.status_code, ok.text) == (200, "admin rotate")


def test_keys_are_generated_per_function_unless_given() -> None:
    generated = DevHost(build_app()).keys
    given = DevHost(build_app(), keys=HostKeys(master_key="m" * 40, host_key="h" * 40)).keys

    http_functions = {"echo", "echo_latest", "thing", "cookies", "typed", "boom", "async_echo", "with_context"}
    assert set(generated.function_keys) == http_functions | {"secured", "other", "admin"}
    all_keys = [generated.master_key, generated.host_key, *generated.function_keys.values()]
    assert len(set(all_keys)) == len(all_keys) and all(len(key) >= 40 for key in all_keys)
    assert given.master_key == "m" * 40 and given.host_key == "h" * 40
    assert "m" * 40 not in repr(given)  # keys stay out of reprs and logs


# -- responses ------------------------------------------------------------------------------------------------


def test_every_set_cookie_and_header_is_sent_with_text_charset(host: DevHost) -> None:
    connection = HTTPConnection("127.0.0.1", int(host.url.rsplit(":", 1)[1]), timeout=5)
    try:
        connection.request("GET", "/api/cookies")
        response = connection.getresponse()
        body = response.read()
        headers = response.getheaders()
    finally:
        connection.close()

    assert response.status == 200 and body == b"<p>hi</p>"
    # Rewritten as the Functions host writes cookies back (see the Set-Cookie tests below).
    assert [v for n, v in headers if n.lower() == "set-cookie"] == [
        "a=1; domain=; path=/; samesite=lax; httponly",
        "b=2; domain=; path=/api; secure",
    ]
    named = {n.lower(): v for n, v in headers}
    assert named["content-type"] == "text/html; charset=utf-8"
    assert named["x-frame-options"] == "DENY" and named["cache-control"] == "no-store"
    assert named["content-length"] == str(len(body))


def test_explicit_content_type_and_status_are_kept(host: DevHost, http: requests.Session) -> None:
    response = http.get(f"{host.url}/api/typed", timeout=5)

    assert response.status_code == 201
    assert response.headers["Content-Type"] == "application/problem+json"


def test_exception_gives_generic_500_and_logs_the_traceback(
    host: DevHost, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="devhost"):
        response = http.get(f"{host.url}/api/boom", timeout=5)

    assert response.status_code == 500
    assert "secret-detail-xyz" not in response.text and "Traceback" not in response.text
    record = next(r for r in caplog.records if r.levelno == logging.ERROR and "boom" in r.getMessage())
    assert record.exc_info is not None and "secret-detail-xyz" in str(record.exc_info[1])


def test_async_function_and_context_argument(host: DevHost, http: requests.Session) -> None:
    body = bytes(range(256)) * 4
    echoed = http.post(f"{host.url}/api/slow-async", data=body, timeout=5)
    context = http.get(f"{host.url}/api/ctx", timeout=5)

    assert (echoed.status_code, echoed.content) == (200, body)
    assert echoed.headers["Content-Type"] == "application/octet-stream"
    assert context.text == "with_context 36"


def test_body_over_the_limit_gets_413(host: DevHost, http: requests.Session) -> None:
    too_big = http.post(f"{host.url}/api/slow-async", data=b"x" * (64 * 1024 + 1), timeout=5)
    chunked = http.post(f"{host.url}/api/slow-async", data=iter([b"y" * 40_000, b"y" * 40_000]), timeout=5)
    at_limit = http.post(f"{host.url}/api/slow-async", data=b"z" * (64 * 1024), timeout=5)

    assert too_big.status_code == 413
    assert chunked.status_code == 413
    assert at_limit.status_code == 200 and len(at_limit.content) == 64 * 1024


def test_chunked_request_body_is_decoded(host: DevHost, http: requests.Session) -> None:
    response = http.post(f"{host.url}/api/slow-async", data=iter([b"ab", b"cd", b"ef"]), timeout=5)

    assert response.content == b"abcdef"


def test_keep_alive_serves_several_requests_on_one_connection(host: DevHost, http: requests.Session) -> None:
    for n in range(5):
        assert http.get(f"{host.url}/api/echo/{n}", timeout=5).status_code == 200


def test_stop_closes_the_port() -> None:
    with DevHost(build_app()) as running:
        port = int(running.url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_non_loopback_address_is_refused() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DevHost(build_app(), host="0.0.0.0").start()


def test_ambiguous_routes_are_refused_at_start() -> None:
    app = func.FunctionApp()

    @app.route(route="items/{a}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def first(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("1")

    @app.route(route="items/{b}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
    def second(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("2")

    with pytest.raises(ValueError, match="both serve GET"):
        DevHost(app)


# -- the real app -------------------------------------------------------------------------------------------------


def test_real_function_app_health(http: requests.Session) -> None:
    import function_app

    app = importlib.reload(function_app).app  # a fresh FunctionApp: get_functions() runs once per app
    with DevHost(app) as running:
        response = http.get(f"{running.url}/api/health", timeout=5)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["Content-Type"] == "application/json"


def test_python_m_devhost_prints_url_keys_and_routes_then_serves(http: requests.Session) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--port", "0", "--no-local-settings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        lines = [first]
        while lines[-1].strip() != "HTTP functions:":
            lines.append(process.stdout.readline())
        lines.append(process.stdout.readline())
        url = first.rsplit(" ", 1)[1].strip()
        response = http.get(f"{url}/api/health", timeout=5)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)

    printed = "".join(lines)
    assert url.startswith("http://127.0.0.1:")
    assert "master key : " in printed and "host key   : " in printed
    assert "health" in lines[-1] and "GET" in lines[-1] and "ANONYMOUS" in lines[-1] and "/api/health" in lines[-1]
    assert response.json() == {"status": "ok"}
    assert process.returncode == 0


# -- Set-Cookie as the Functions host writes it back ------------------------------------------------------------------

# Each case: the Set-Cookie headers a function sets. The worker parses them into structured cookies and the host
# writes each back with ASP.NET Core (devhost/cookies.py cites the sources).
COOKIE_CASES: dict[str, list[str]] = {
    # The worker's own end-to-end sample against the real host (azure-functions-python-worker
    # tests/unittests/test_http_functions.py, test_multiple_cookie_header_in_response).
    "worker-sample": [
        "foo3=42; Domain=example.com; Expires=Thu, 12-Jan-2017 13:55:08 GMT; Path=/; Max-Age=10000000; "
        "Secure; HttpOnly",
        "foo3=43; Domain=example.com; Expires=Thu, 12-Jan-2018 13:55:08 GMT; Path=/; Max-Age=10000000; "
        "Secure; HttpOnly",
    ],
    "defaults": ["foo=bar"],
    "empty": [""],
    "unparsable": ["a=1; Partitioned"],  # Python 3.11's http.cookies does not know the attribute
    "escaped": ['v="a b/c"; Path=/; SameSite=Strict'],
    "bad-expires": ["foo=bar; Expires=Dummy"],
    "negative-max-age": ["foo=bar; Max-Age=-1"],
    "bad-max-age": ["foo=bar; Max-Age=soon"],
}


def cookie_app() -> func.FunctionApp:
    app = func.FunctionApp()

    @app.route(route="jar/{case}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def jar(req: func.HttpRequest) -> func.HttpResponse:
        response = func.HttpResponse("ok", headers={"Hello": "world"})
        for value in COOKIE_CASES[req.route_params["case"]]:
            response.headers.add("Set-Cookie", value)
        return response

    return app


def _raw(
    host: DevHost, method: str, target: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on a plain connection: every response header as sent, repeated ones included."""
    connection = HTTPConnection("127.0.0.1", int(host.url.rsplit(":", 1)[1]), timeout=5)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def _set_cookies(headers: list[tuple[str, str]]) -> list[str]:
    return [value for name, value in headers if name.lower() == "set-cookie"]


@pytest.fixture
def cookie_host() -> Iterator[DevHost]:
    with DevHost(cookie_app()) as running:
        yield running


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "worker-sample",
            [
                "foo3=42; expires=Thu, 12 Jan 2017 13:55:08 GMT; max-age=10000000; domain=example.com; path=/; "
                "secure; httponly",
                "foo3=43; expires=Fri, 12 Jan 2018 13:55:08 GMT; max-age=10000000; domain=example.com; path=/; "
                "secure; httponly",
            ],
        ),
        ("defaults", ["foo=bar; domain=; path="]),  # as the worker's test observes on the real host
        ("empty", []),
        ("escaped", ["v=a%20b%2Fc; domain=; path=/; samesite=strict"]),
    ],
)
def test_set_cookie_is_written_back_as_the_functions_host_does(
    cookie_host: DevHost, case: str, expected: list[str]
) -> None:
    status, headers, body = _raw(cookie_host, "GET", f"/api/jar/{case}")

    assert (status, body) == (200, b"ok")
    assert _set_cookies(headers) == expected
    assert dict(headers)["Hello"] == "world"


def test_set_cookie_python_cannot_parse_is_dropped_with_a_warning(
    cookie_host: DevHost, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="devhost"):
        status, headers, _ = _raw(cookie_host, "GET", "/api/jar/unparsable")

    assert status == 200 and _set_cookies(headers) == []
    assert any("Set-Cookie header was dropped" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("case", ["bad-expires", "negative-max-age", "bad-max-age"])
def test_cookie_the_host_cannot_write_fails_the_request(cookie_host: DevHost, case: str) -> None:
    status, headers, body = _raw(cookie_host, "GET", f"/api/jar/{case}")

    assert (status, body) == (500, b"Internal Server Error")
    assert _set_cookies(headers) == []


# -- the onboarding cookie through the development host -------------------------------------------------------------

ONBOARDING_TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ONBOARDING_CLIENT = "11111111-2222-3333-4444-555555555555"
ONBOARDING_REDIRECT = "https://app.example/api/consent/callback"


class _FakeOnboarding:
    """Stands in for the onboarding service: issues a nonce shaped like the real one and records what comes back."""

    def __init__(self) -> None:
        self.nonce = secrets.token_urlsafe(32)
        self.returned_nonces: list[str | None] = []

    def start(self, org_url: str, contact: str | None) -> OnboardingStart:
        sign_in = f"https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?client_id={ONBOARDING_CLIENT}"
        return OnboardingStart(sign_in, self.nonce, time.time() + 600)

    def complete(self, params: dict[str, str], browser_nonce: str | None) -> VerificationResult:
        self.returned_nonces.append(browser_nonce)
        return VerificationResult(ONBOARDING_TENANT, TenantStatus.ACTIVE, ("https://fab.crm.dynamics.com",))


class _FakeServices:
    def __init__(self, onboarding: _FakeOnboarding) -> None:
        self.settings = Settings(
            entra_client_id=ONBOARDING_CLIENT,
            entra_home_tenant_id=ONBOARDING_TENANT,
            key_vault_url="https://kv.vault.azure.net",
            key_vault_certificate_name="c",
            onboarding_redirect_uri=ONBOARDING_REDIRECT,
        )
        self.onboarding = onboarding


@pytest.fixture
def onboarding() -> Iterator[tuple[DevHost, _FakeOnboarding]]:
    from functions.onboarding import bp

    fake = _FakeOnboarding()
    use_services(_FakeServices(fake))  # type: ignore[arg-type]
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(bp)
    try:
        with DevHost(app) as running:
            yield running, fake
    finally:
        use_services(None)


def _attributes(set_cookie: str) -> tuple[str, dict[str, str]]:
    name_value, *attributes = set_cookie.split("; ")
    return name_value, {name: value for name, _, value in (a.partition("=") for a in attributes)}


def test_onboarding_cookie_reaches_the_browser_locked_down(onboarding: tuple[DevHost, _FakeOnboarding]) -> None:
    host, fake = onboarding
    status, headers, _ = _raw(
        host,
        "POST",
        "/api/onboard",
        body=b"org_url=https%3A%2F%2Ffab.crm.dynamics.com",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://app.example"},
    )

    (cookie,) = _set_cookies(headers)
    name_value, attributes = _attributes(cookie)
    assert status == 302
    assert name_value == f"s2s_onboarding={fake.nonce}"  # the host's escaping leaves a token_urlsafe nonce as is
    assert set(attributes) == {"max-age", "domain", "path", "secure", "samesite", "httponly"}
    assert attributes["path"] == "/api" and attributes["samesite"] == "lax"
    assert attributes["secure"] == "" and attributes["httponly"] == ""
    assert attributes["domain"] == ""  # written empty by the host: a host-only cookie (RFC 6265bis §5.6.3)
    assert 590 <= int(attributes["max-age"]) <= 600


def test_onboarding_cookie_comes_back_intact_and_is_cleared(onboarding: tuple[DevHost, _FakeOnboarding]) -> None:
    host, fake = onboarding
    _, started, _ = _raw(
        host,
        "POST",
        "/api/onboard",
        body=b"org_url=https%3A%2F%2Ffab.crm.dynamics.com",
        headers={"Origin": "https://app.example"},
    )
    name_value, _ = _attributes(_set_cookies(started)[0])

    status, headers, body = _raw(
        host,
        "GET",
        "/api/consent/callback?code=c0de&state=s",
        headers={"Cookie": f"other=1; {name_value}"},
    )

    assert status == 200 and b"connected" in body
    assert fake.returned_nonces == [fake.nonce]
    assert _set_cookies(headers) == ["s2s_onboarding=; max-age=0; domain=; path=/api; secure; samesite=lax; httponly"]


# -- the worker's indexing rules ------------------------------------------------------------------------------------


def broken_app() -> func.FunctionApp:
    """A copy of functions/health.py's `health` whose request parameter carries the wrong type."""
    app = func.FunctionApp()

    @app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def health(req: func.QueueMessage) -> func.HttpResponse:
        return func.HttpResponse(json.dumps({"status": "ok"}), mimetype="application/json")

    return app


def test_devhost_refuses_an_app_the_worker_would_not_index() -> None:
    with pytest.raises(WorkerIndexingError) as refused:
        DevHost(broken_app())
    with pytest.raises(WorkerIndexingError) as checked:
        check_functions(broken_app().get_functions())

    assert str(refused.value) == str(checked.value)
    assert [v.rule for v in refused.value.violations] == ["annotation-matches-binding"]


BROKEN_MODULES = {
    "type_checking_only_app": """
from __future__ import annotations
from typing import TYPE_CHECKING
import azure.functions as func
if TYPE_CHECKING:
    from azure.functions import HttpRequest
app = func.FunctionApp()
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("ok")
""",
    "two_apps": """
import azure.functions as func
app = func.FunctionApp()
admin = func.FunctionApp()
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("ok")
""",
}


@pytest.mark.parametrize("module_name", sorted(BROKEN_MODULES))
def test_python_m_devhost_refuses_to_start_with_the_checkers_message(
    module_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{module_name}.py").write_text(BROKEN_MODULES[module_name], encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkerIndexingError) as expected:
        check_functions(find_function_app(importlib.import_module(module_name)).get_functions())
    del sys.modules[module_name]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "--port", "0", "--no-local-settings", "--app", module_name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert "listening" not in result.stdout
    assert result.stderr == f"devhost: refusing to start: {expected.value}\n"


def test_python_m_devhost_refuses_an_attribute_that_is_not_the_function_app() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devhost", "--port", "0", "--no-local-settings", "--app", "function_app:health_bp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2 and "listening" not in result.stdout
    assert "function_app.health_bp is not its FunctionApp" in result.stderr
