"""What ``make demo`` runs: the auth module on the local cloud-in-a-box, end to end.

It starts the sandbox, points the app's settings at it (endpoints and a CA bundle, nothing else), gets tokens for
two customer tenants from a Key Vault certificate, rotates the certificate in Key Vault and shows new token
requests picking up the new version without a restart; then calls two Dataverse orgs in two tenants (WhoAmI, a
paged query of 20,000 rows, a throttled burst that completes by honouring Retry-After).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import jwt

from sandbox import Sandbox
from sandbox.demo import demo_settings, seed_demo
from sandbox.net.pki import make_certificate
from shared.bootstrap import build_services
from shared.settings import Settings
from shared.tenants.registry import TenantStatus

ORGS = {"Fabrikam": "https://fabrikam.crm4.dynamics.com", "Northwind": "https://northwind.crm.dynamics.com"}
REFRESH_SECONDS = 3


def step(text: str) -> None:
    print(f"\n== {text}")


def show_token(services: object, tenant: str, org: str) -> None:
    token = services.tokens.get_token(tenant, org)  # type: ignore[attr-defined]
    claims = jwt.decode(token.token, options={"verify_signature": False})
    print(
        f"   tenant {tenant[:8]}…  aud={claims['aud']}  appid={claims['appid'][:8]}…  "
        f"source={token.source:<17} expires in {int(token.expires_on - time.time())} s"
    )


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="   [log] %(levelname)s %(name)s: %(message)s")
    # The throttling warnings are one per 429; the summary line below counts them instead.
    logging.getLogger("shared.dataverse.client").setLevel(logging.ERROR)
    with Sandbox() as sb:
        os.environ.update(sb.env())
        seed = seed_demo(sb.state)
        st = sb.state
        step("Cloud-in-a-box started")
        print(f"   Entra ID       {sb.authority_host}")
        print(f"   Key Vault      {sb.vault_url}")
        print(f"   Managed ident. {sb.identity_endpoint}")
        app_settings = {**demo_settings(sb, seed), "CERTIFICATE_REFRESH_SECONDS": str(REFRESH_SECONDS)}
        settings = Settings.from_env(app_settings)
        services = build_services(settings)
        tenants = dict(zip(ORGS, seed.tenant_ids, strict=True))

        step("Tokens for two customer tenants, certificate read from Key Vault through the managed identity")
        for name, tenant in tenants.items():
            print(f"   {name}:")
            show_token(services, tenant, ORGS[name])
            show_token(services, tenant, ORGS[name])
        cert = services.tokens.assertion_source.describe()
        print(
            f"   certificate in use: {cert['subject']}  version {str(cert['version'])[:8]}…  "
            f"SHA-1 {cert['sha1_thumbprint']}  not after {cert['not_after']}"
        )
        print(f"   identity provider token requests: {st.count('token')}, Key Vault reads: {st.count('vault_get')}")

        step("Rotation: a new certificate version in Key Vault, registered on the app; the old one removed")
        new = make_certificate("contoso-s2s-2027")
        st.add_application_certificate(seed.client_id, new.cert_pem)
        version = st.create_certificate("s2s-client", new)
        st.remove_application_certificate(seed.client_id, seed.certificate.cert_pem)
        print(f"   Key Vault now serves version {version[:8]}…  SHA-1 {new.sha1_thumbprint_hex}")
        print("   Cached tokens stay valid until they near expiry — no restart, no Entra round trip:")
        show_token(services, tenants["Fabrikam"], ORGS["Fabrikam"])

        step("A new token request right away: Entra rejects the old certificate, the worker re-reads Key Vault")
        reads_before = st.count("vault_get")
        show_token(services, tenants["Northwind"], "https://northwind-sales.crm.dynamics.com")
        cert = services.tokens.assertion_source.describe()
        print(f"   certificate in use now: version {str(cert['version'])[:8]}…  SHA-1 {cert['sha1_thumbprint']}")
        print(f"   Key Vault reads for this: {st.count('vault_get') - reads_before} (one re-read, one retry)")

        step(f"Periodic pick-up: another version, old one kept registered; after {REFRESH_SECONDS} s it is used")
        newer = make_certificate("contoso-s2s-2028")
        st.add_application_certificate(seed.client_id, newer.cert_pem)
        version = st.create_certificate("s2s-client", newer)
        time.sleep(REFRESH_SECONDS + 0.5)
        show_token(services, tenants["Fabrikam"], "https://fabrikam-eu.crm4.dynamics.com")
        cert = services.tokens.assertion_source.describe()
        picked = cert["sha1_thumbprint"] == newer.sha1_thumbprint_hex
        print(f"   certificate in use now: version {str(cert['version'])[:8]}…  picked up without restart: {picked}")
        print(f"\n   totals: token requests {st.count('token')}, Key Vault reads {st.count('vault_get')}")
        dataverse_ok = dataverse_part(sb, seed, services, tenants)
        onboarding_ok = onboarding_part(sb, seed, app_settings)
        return 0 if picked and dataverse_ok and onboarding_ok else 1


def dataverse_part(sb: Sandbox, seed: object, services: object, tenants: dict[str, str]) -> bool:
    """Two orgs in two tenants, WhoAmI on each, a paged query of 20,000 rows, a throttled burst."""
    st = sb.state
    client_id = seed.client_id  # type: ignore[attr-defined]
    step("Dataverse orgs: reached at their real-looking URLs through the sandbox proxy (HTTPS_PROXY)")
    for name, tenant in tenants.items():
        st.add_org(tenant, ORGS[name], name=name)
        st.add_application_user(ORGS[name], client_id)
    st.seed_rows(ORGS["Fabrikam"], "accounts", 20_000, prefix="Fabrikam account")
    for name, tenant in tenants.items():
        client = services.dataverse.for_org(tenant, ORGS[name])  # type: ignore[attr-defined]
        who = client.whoami()
        print(f"   {name:<10} {client.org_url:<40} WhoAmI: user {who.user_id[:8]}…  org {who.organization_id[:8]}…")

    step("A paged query of 20,000 rows (Prefer: odata.maxpagesize=5000, @odata.nextLink followed unchanged)")
    fabrikam = services.dataverse.for_org(tenants["Fabrikam"], ORGS["Fabrikam"])  # type: ignore[attr-defined]
    started = time.perf_counter()
    total = 0
    for number, page in enumerate(fabrikam.query("accounts", select=["accountid", "name"]), start=1):
        total += len(page.rows)
        print(f"   page {number}: {len(page.rows):>5} rows  (running total {total:>6})")
    print(f"   {total} rows in {time.perf_counter() - started:.2f} s, one page in memory at a time")

    step("A throttled burst: 8 workers x 25 reads against a limit of 60 requests per 2 s window")
    st.set_dataverse_limits(ORGS["Northwind"], max_requests=60, window_seconds=2)
    st.seed_rows(ORGS["Northwind"], "accounts", 10, prefix="Northwind account")
    northwind = services.dataverse.for_org(tenants["Northwind"], ORGS["Northwind"])  # type: ignore[attr-defined]
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                next(iter(northwind.query("accounts", select=["name"], page_size=10)))
        except Exception as exc:
            failures.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    throttled = st.count("dataverse_throttled", org=ORGS["Northwind"])
    inside = st.count("dataverse_request_in_retry_after", org=ORGS["Northwind"])
    print(f"   200 reads done in {time.perf_counter() - started:.1f} s; failures: {len(failures)}")
    print(
        f"   429s received: {throttled}; waits honoured: {northwind.governor.throttle_waits}; "
        f"requests sent inside a Retry-After window: {inside}"
    )
    paced = northwind.governor.paced_rate
    if paced is not None:
        print(
            f"   learned from the 429: {paced[0]} requests per {paced[1]:g} s; requests paced since: "
            f"{northwind.governor.pacing_waits}"
        )
    return not failures and inside == 0 and total == 20_000


def _fanned_out_sync(services: object) -> dict[str, object]:
    """What the sync timer now does: one queue message per (tenant, org) unit, worked by queue-triggered workers
    (here the local queue runner in this process, as `python -m cli jobs run sync` does), aggregated per run id."""
    from cli.main import _progress_bar, _queue_runner

    scheduled = services.sweep_scheduler.start("sync")  # type: ignore[attr-defined]
    ledger = services.run_ledger  # type: ignore[attr-defined]
    print(f"   timer: run {scheduled.run_id}, {scheduled.planned} units queued")

    def finished() -> bool:
        return bool(ledger.get_status(scheduled.run_id, with_failures=False).finished)

    _queue_runner(services, 4).run(until=finished, max_seconds=300)
    status = ledger.get_status(scheduled.run_id)
    print(f"   workers: {_progress_bar(status)}")
    result: dict[str, object] = status.to_dict()
    return result


def jobs_part(sb: Sandbox, services: object, customers: dict[str, tuple[str, str]], client_id: str) -> bool:
    """The scheduled jobs run now: a sync, changes, a sync that brings only the changes, a health run."""
    import json

    st = sb.state
    jobs = services.jobs  # type: ignore[attr-defined]
    registry = services.registry  # type: ignore[attr-defined]
    adatum_tenant, adatum_org = customers["Adatum"]
    st.seed_rows(adatum_org, "accounts", 12_000, prefix="Adatum account")
    active = [t.tenant_id for t in registry.iter_tenants(status=TenantStatus.ACTIVE)]
    step(f"Sync job over the {len(active)} active tenants (change tracking, NDJSON blobs, checkpoint per page)")
    first = jobs.run_sync()
    print(f"   summary: {json.dumps(first.to_dict())}")
    client = services.dataverse.for_org(adatum_tenant, adatum_org)  # type: ignore[attr-defined]
    rows = st.rows(adatum_org, "accounts")
    new_id = client.create("accounts", {"name": "Adatum new customer"})
    client.update("accounts", rows[0]["accountid"], {"name": "Adatum renamed"})
    client.delete("accounts", rows[1]["accountid"])
    container = services.storage.container(services.settings.sync_container)  # type: ignore[attr-defined]
    before = {b.name for b in container.list_blobs(name_starts_with=f"{adatum_tenant}/")}
    step("Changes in Adatum's org (1 create, 1 update, 1 delete), then the sync again, fanned out through the queue")
    second = _fanned_out_sync(services)
    print(f"   run status: {json.dumps({k: second[k] for k in ('run_id', 'planned', 'done', 'failed', 'rows')})}")
    for name in sorted({b.name for b in container.list_blobs(name_starts_with=f"{adatum_tenant}/")} - before):
        for line in container.download_blob(name).readall().decode().splitlines():
            record = json.loads(line)
            shown = record.get("row", {}).get("name") or record.get("id")
            print(f"   {name.split('/', 1)[1]}: {record['op']:<6} {shown}")
    step("Health job after Woodgrove's administrator removed our application user")
    woodgrove_tenant, woodgrove_org = customers["Woodgrove"]
    st.remove_application_user(woodgrove_org, client_id)
    health = jobs.run_health()
    row = registry.get_tenant(woodgrove_tenant)
    print(f"   Woodgrove is now {row.status} ({row.last_verification.error_code if row.last_verification else ''})")
    print(f"   summary: {json.dumps(health.to_dict())[:300]}")
    step("Certificate expiry check")
    print(f"   {json.dumps(jobs.run_certificate_expiry())}")
    return (
        first.rows >= 12_000
        and second["rows"] == 3
        and second["failed"] == 0
        and row.status is TenantStatus.AWAITING_APPLICATION_USER
        and new_id is not None
    )


def webhook_part(sb: Sandbox, services: object, host: object, tenant: str, org: str) -> bool:
    """A Dataverse webhook on an onboarded org: changes arrive, are queued before the ack, processed once."""
    import json

    st = sb.state
    step("Webhooks: Adatum's org gets its own secret; its service endpoint sends it with the function key (HttpHeader)")
    receiver = f"{host.url}/api/webhooks/dataverse"  # type: ignore[attr-defined]
    key = host.keys.function_keys["dataverse_webhook"]  # type: ignore[attr-defined]
    secret = services.registry.set_webhook_secret(tenant, org)  # type: ignore[attr-defined]
    headers = {"x-functions-key": key, "x-s2s-webhook-secret": secret}
    st.register_webhook(org, receiver, auth_type="HttpHeader", auth_value=headers, entity="account")
    client = services.dataverse.for_org(tenant, org)  # type: ignore[attr-defined]
    row_id = client.create("accounts", {"name": "Adatum Corporation", "accountnumber": "ADT-1"})
    client.update("accounts", row_id, {"telephone1": "+1 555 0100"})
    st.wait_for_webhooks()
    for delivery in st.webhook_deliveries(org):
        print(
            f"   Dataverse -> {delivery.message:<7} {delivery.entity} {delivery.row_id[:8]}…  answered "
            f"{delivery.status} in {delivery.duration_seconds * 1000:.0f} ms"
        )
    queue = services.storage.queue("webhook-events")  # type: ignore[attr-defined]
    processed = []
    for message in queue.receive_messages(max_messages=32, visibility_timeout=30):
        processed.append(services.webhook_processor.process(message.content, 1))  # type: ignore[attr-defined]
        queue.delete_message(message)
    print(f"   processor (queue trigger): {processed}")
    table = services.storage.table("processedchanges")  # type: ignore[attr-defined]
    rows = [r for r in table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant}) if r["RowId"] == row_id]
    for row in sorted(rows, key=lambda r: r["Message"]):
        print(
            f"   processed change: {row['Message']:<7} {row['Entity']} columns {json.loads(row['ChangedAttributes'])}"
        )
    step("Webhooks: a delivery with the function key but another org's secret (a spoof) is refused, nothing queued")
    spoof = st.register_webhook(
        org,
        receiver,
        auth_type="HttpHeader",
        auth_value={"x-functions-key": key, "x-s2s-webhook-secret": "x"},
        entity="contact",
    )
    client.create("contacts", {"firstname": "Spoofed"})
    st.wait_for_webhooks()
    refused = [d.status for d in st.webhook_deliveries(org) if d.webhook_id == spoof]
    left = queue.get_queue_properties().approximate_message_count
    print(f"   Dataverse -> Create contact answered {refused}; messages queued: {left}")
    return sorted(processed) == ["done", "done"] and len(rows) == 2 and refused == [401] and left == 0


def shared_window_part(sb: Sandbox, settings: Settings, tenant: str) -> bool:
    """Two instances of the app (each its own services, as two workers): the one that never got the 429 waits
    out the window the other was given, learned through the orgthrottle table."""
    st = sb.state
    org = "https://adatum-eu.crm4.dynamics.com"  # a second org of Adatum's, with no traffic yet
    st.add_org(tenant, org, name="Adatum EU")
    st.add_application_user(org, settings.entra_client_id)
    step(f"Two instances of the app share a Retry-After window through the orgthrottle table ({org})")
    st.set_dataverse_limits(org, max_requests=2, window_seconds=2, retry_after_seconds=2)
    first = build_services(settings).dataverse.for_org(tenant, org)
    second = build_services(settings).dataverse.for_org(tenant, org)
    throttled_before = st.count("dataverse_throttled", org=org)
    inside_before = st.count("dataverse_request_in_retry_after", org=org)
    reader = threading.Thread(target=lambda: [first.whoami() for _ in range(3)])
    reader.start()
    deadline = time.monotonic() + 10
    while st.count("dataverse_throttled", org=org) == throttled_before and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # instance B starts after instance A's 429, without having seen it
    started = time.perf_counter()
    second.whoami()
    waited = time.perf_counter() - started
    reader.join()
    st.set_dataverse_limits(org)
    throttled = st.count("dataverse_throttled", org=org) - throttled_before
    inside = st.count("dataverse_request_in_retry_after", org=org) - inside_before
    print(f"   instance A: 3 WhoAmI in a row, the third answered 429 with Retry-After: 2 (429s in all: {throttled})")
    print(
        f"   instance B (never got a 429): its WhoAmI waited {waited:.1f} s for A's window; "
        f"requests sent inside a Retry-After window: {inside}"
    )
    return throttled == 1 and inside == 0 and second.governor.throttle_waits == 1


def _sign_in_flow(app_url: str, org: str, user: object) -> tuple[object, str]:
    """A browser's onboarding: the form, the sandbox's sign-in page as `user`, the callback. Returns (the final
    page, the sign-in URL the form redirected to)."""
    import re

    import requests

    from sandbox.entra.authorize import read_sign_in_form

    form = requests.post(
        f"{app_url}/api/onboard", data={"org_url": org}, headers={"Origin": app_url}, allow_redirects=False, timeout=30
    )
    cookie = re.match(r"s2s_onboarding=([^;]+);", form.headers["Set-Cookie"]).group(1)  # type: ignore[union-attr]
    sign_in_url = form.headers["Location"]
    page = requests.get(sign_in_url, timeout=30)
    answer = requests.post(
        sign_in_url,
        data=read_sign_in_form(page.text).submission("accept", user=user),  # type: ignore[arg-type]
        allow_redirects=False,
        timeout=30,
    )
    done = requests.get(answer.headers["Location"], headers={"Cookie": f"s2s_onboarding={cookie}"}, timeout=30)
    return done, sign_in_url


def onboarding_part(sb: Sandbox, seed: object, app_settings: dict[str, str]) -> bool:
    """Two new customer tenants onboard through the real flow: form, the administrator's sign-in, callback,
    registry; a non-administrator and a forged callback are refused first and change nothing."""
    import re

    import requests

    from devhost import DevHost
    from sandbox.azurite import Azurite
    from sandbox.entra.directory import GLOBAL_ADMINISTRATOR
    from shared.bootstrap import build_services, use_services

    st = sb.state
    client_id = seed.client_id  # type: ignore[attr-defined]
    step("Onboarding: Azurite for the registry, the function app on the local development host")
    azurite = Azurite()
    import function_app

    host = DevHost(function_app.app).start()
    try:
        redirect_uri = f"{host.url}/api/consent/callback"
        st.add_redirect_uri(client_id, redirect_uri)
        settings = Settings.from_env(
            {
                **app_settings,
                "STORAGE_CONNECTION_STRING": azurite.connection_string,
                "ONBOARDING_REDIRECT_URI": redirect_uri,
                "APP_DISPLAY_NAME": "Contoso Sync",
                "CREDENTIAL_SOURCE": "key_vault",
                # The manual path first (the fallback): Woodgrove's administrator creates the application user.
                # one_click_part shows the default, where the sign-in creates it.
                "ONBOARDING_PROVISIONING": "false",
            }
        )
        services = build_services(settings)
        use_services(services)
        print(f"   function app at {host.url}/api/onboard; redirect URI registered: {redirect_uri}")
        customers = {
            "Adatum": ("https://adatum.crm.dynamics.com", True),
            "Woodgrove": ("https://woodgrove.crm11.dynamics.com", False),
        }
        results = {}
        for name, (org, with_app_user) in customers.items():
            tenant = st.add_tenant(display_name=name)
            st.add_org(tenant, org, name=name)
            if with_app_user:
                st.add_application_user(org, client_id)
            admin = st.add_user(tenant, display_name=f"{name} Admin", directory_roles=(GLOBAL_ADMINISTRATOR,))
            st.add_org_user(org, admin.object_id, f"{name} Admin", roles=("System Administrator",))
            clerk = st.add_user(tenant, display_name=f"{name} Clerk")
            st.add_org_user(org, clerk.object_id, f"{name} Clerk", roles=("Salesperson",))
            if name == "Adatum":
                step(f"{name}: a user who is not System Administrator of {org} tries first")
                st.grant_consent(tenant, client_id)  # Adatum's IT approved the app earlier
                done, _ = _sign_in_flow(host.url, org, clerk)
                code = re.search(r'data-error-code="([a-z_]+)"', done.text)
                print(
                    f"   {clerk.upn} signs in -> {done.status_code} {code.group(1) if code else ''}; "
                    f"registry: {services.registry.find_tenant(tenant)}"
                )
                step(f"{name}: an anonymous client answers the callback itself (admin_consent=True&tenant=…)")
                form = requests.post(
                    f"{host.url}/api/onboard",
                    data={"org_url": org},
                    headers={"Origin": host.url},
                    allow_redirects=False,
                    timeout=30,
                )
                forged_cookie = re.match(r"s2s_onboarding=([^;]+);", form.headers["Set-Cookie"]).group(1)  # type: ignore[union-attr]
                state = re.search(r"[?&]state=([^&]+)", form.headers["Location"]).group(1)  # type: ignore[union-attr]
                forged = requests.get(
                    redirect_uri,
                    params={"admin_consent": "True", "tenant": tenant, "state": state},
                    headers={"Cookie": f"s2s_onboarding={forged_cookie}"},
                    timeout=30,
                )
                code = re.search(r'data-error-code="([a-z_]+)"', forged.text)
                print(
                    f"   forged callback -> {forged.status_code} {code.group(1) if code else ''}; "
                    f"registry: {services.registry.find_tenant(tenant)}"
                )
            step(f"{name}: the administrator signs in and onboards {org}")
            done, sign_in_url = _sign_in_flow(host.url, org, admin)
            print(f"   POST /api/onboard -> 302 to {sign_in_url.split('?')[0]} (OIDC code flow + PKCE)")
            print(f"   {admin.upn} signs in; the app checks the System Administrator role with their token")
            heading = re.search(r"<h1>(.*?)</h1>", done.text)
            tenant_row = services.registry.get_tenant(tenant)
            title = heading.group(1) if heading else ""
            print(f'   callback -> {done.status_code} page "{title}"; registry: {tenant_row.status}')
            results[name] = (tenant, org, done.text)
        tenant, org, page_text = results["Woodgrove"]
        step("Woodgrove: the customer creates the application user, then clicks 'check again'")
        st.add_application_user(org, client_id)
        fields = dict(re.findall(r'name="(tenant|ticket)" value="([^"]+)"', page_text))
        again = requests.post(f"{host.url}/api/onboard/recheck", data=fields, timeout=30)
        heading = re.search(r"<h1>(.*?)</h1>", again.text)
        print(
            f'   re-check -> {again.status_code} page "{heading.group(1) if heading else ""}"; '
            f"registry: {services.registry.get_tenant(tenant).status}"
        )
        step("Registry: tenants and their history")
        ok = True
        for name, (tenant, _org, _text) in results.items():
            row = services.registry.get_tenant(tenant)
            trail = " -> ".join(h.to_status for h in reversed(services.registry.history(tenant)) if h.org is None)
            print(f"   {name:<10} {row.status:<10} {', '.join(row.org_urls)}   history: {trail}")
            ok = ok and row.status is TenantStatus.ACTIVE
        hooks_ok = webhook_part(sb, services, host, results["Adatum"][0], customers["Adatum"][0])
        jobs_ok = jobs_part(
            sb, services, {name: (tenant, org) for name, (tenant, org, _text) in results.items()}, client_id
        )
        shared_ok = shared_window_part(sb, settings, results["Adatum"][0])
        from demo.one_click import one_click_part

        one_click_ok = one_click_part(sb, settings, host, step, _sign_in_flow)
        return ok and hooks_ok and jobs_ok and shared_ok and one_click_ok
    finally:
        use_services(None)
        host.stop()
        azurite.stop()


if __name__ == "__main__":
    raise SystemExit(main())
