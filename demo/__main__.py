"""What ``make demo`` runs: the auth module on the local cloud-in-a-box, end to end.

It starts the sandbox, points the app's settings at it (endpoints and a CA bundle, nothing else), gets tokens for
two customer tenants from a Key Vault certificate, then rotates the certificate in Key Vault and shows new token
requests picking up the new version without a restart.
"""

from __future__ import annotations

import logging
import os
import time

import jwt

from sandbox import Sandbox
from sandbox.demo import demo_settings, seed_demo
from sandbox.pki import make_certificate
from shared.bootstrap import build_services
from shared.settings import Settings

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
        return 0 if picked else 1


if __name__ == "__main__":
    raise SystemExit(main())
