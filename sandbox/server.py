"""The `Sandbox`: starts the Entra, Key Vault (both HTTPS) and managed identity (HTTP) stand-ins on loopback,
with a throw-away CA whose bundle clients trust through REQUESTS_CA_BUNDLE (environment.md, TLS), plus the
Dataverse Web API stand-in behind an HTTPS CONNECT proxy.

Dataverse orgs keep real-looking URLs (https://fabrikam.crm4.dynamics.com), so the app's token audiences and
host checks stay as in production. `env()` sets HTTPS_PROXY to the sandbox's loopback proxy and NO_PROXY to
127.0.0.1,localhost: requests (under MSAL, azure-core and Microsoft's Dataverse SDK) then sends only
`https://<org>` traffic through the proxy, which tunnels `CONNECT <registered org>:443` to the Dataverse
listener and refuses every other host with 403. That listener's certificate, signed by the sandbox CA, carries
`*.crm.dynamics.com`, `*.crm2.dynamics.com` … `*.crm21.dynamics.com`, and it picks the org by Host header.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import ssl
import tempfile
from pathlib import Path
from types import TracebackType

import certifi

from sandbox.dataverse.org import is_org_host_name
from sandbox.dataverse.schema import DATAVERSE_SUFFIXES
from sandbox.dataverse.service import DataverseService
from sandbox.entra.service import EntraService
from sandbox.keyvault.service import VAULT_RESOURCE, KeyVaultService
from sandbox.managed_identity.service import TOKEN_PATH, ManagedIdentityService
from sandbox.net.connect_proxy import ConnectProxy
from sandbox.net.httpd import LoopbackServer
from sandbox.net.pki import CertificateBundle, make_certificate_authority, make_server_certificate
from sandbox.state import SandboxState

logger = logging.getLogger(__name__)

_CA_DAYS = 3


class Sandbox:
    """Local stand-ins for Entra ID, Key Vault, the App Service managed identity endpoint and Dataverse.

    `state` can be seeded before or after `start()`; the URL properties exist only while running.
    """

    def __init__(self, state_dir: Path | None = None, state: SandboxState | None = None) -> None:
        self.state = state or SandboxState()
        self._requested_dir = state_dir
        self._state_dir: Path | None = None
        self._owns_dir = False
        self._servers: dict[str, LoopbackServer] = {}
        self._proxy: ConnectProxy | None = None
        self.identity_header = secrets.token_urlsafe(24)
        self.vault_resource = VAULT_RESOURCE

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        if self._servers:
            raise RuntimeError("sandbox already started")
        if self._requested_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="sandbox-"))
            self._owns_dir = True
        else:
            self._state_dir = self._requested_dir
            self._state_dir.mkdir(parents=True, exist_ok=True)
        tls, dataverse_tls = self._write_trust_material(self._state_dir)
        entra = LoopbackServer(tls)
        vault = LoopbackServer(tls)
        identity = LoopbackServer(None)  # App Service's endpoint is plain http on loopback
        dataverse = LoopbackServer(dataverse_tls)
        self._servers = {"entra": entra, "vault": vault, "identity": identity, "dataverse": dataverse}
        self.state.authority_host = self.authority_host
        entra.application = EntraService(self.state, self.authority_host)
        vault.application = KeyVaultService(self.state, self.vault_url, self.authority_host)
        identity.application = ManagedIdentityService(self.state, self.authority_host, self.identity_header)
        dataverse.application = DataverseService(self.state, self.authority_host)
        for server in self._servers.values():
            server.start()
        self._proxy = ConnectProxy(dataverse.port, self._is_org_host, self._count_connect, is_org_host_name)
        self._proxy.start()
        logger.info(
            "sandbox running: entra %s, vault %s, identity %s, dataverse proxy %s",
            self.authority_host,
            self.vault_url,
            self.identity_endpoint,
            self.https_proxy,
        )
        return self

    def stop(self) -> None:
        # Queued webhook deliveries get a few seconds to finish; the state's hub restarts its workers on reuse.
        self.state.webhooks.stop()
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        for server in self._servers.values():
            server.stop()
        self._servers = {}
        if self._owns_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
            self._owns_dir = False

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _is_org_host(self, host: str) -> bool:
        return self.state.find_org_store(host) is not None

    def _count_connect(self, host: str, status: int) -> None:
        self.state.counters.bump("proxy_connect", host=host, status=status)

    @staticmethod
    def _write_trust_material(state_dir: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """TLS contexts for the loopback stand-ins and for the Dataverse listener, and the CA bundle files."""
        authority = make_certificate_authority("Sandbox Local CA", days=_CA_DAYS)
        server = make_server_certificate(authority, ("127.0.0.1", "localhost"), days=_CA_DAYS)
        # One wildcard per Dataverse suffix: orgs added after start() are covered without a new certificate.
        dataverse_hosts = (*(f"*.{suffix}" for suffix in DATAVERSE_SUFFIXES), "127.0.0.1", "localhost")
        dataverse = make_server_certificate(authority, dataverse_hosts, days=_CA_DAYS)
        (state_dir / "ca.pem").write_text(authority.cert_pem, encoding="ascii")
        public_roots = Path(certifi.where()).read_text(encoding="utf-8")
        (state_dir / "ca-bundle.pem").write_text(
            public_roots.rstrip("\n") + "\n\n# Sandbox Local CA\n" + authority.cert_pem, encoding="utf-8"
        )
        return (
            Sandbox._server_context(state_dir, server, authority),
            Sandbox._server_context(state_dir, dataverse, authority),
        )

    @staticmethod
    def _server_context(state_dir: Path, server: CertificateBundle, authority: CertificateBundle) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only; the key file lives just long enough to be loaded.
        key_file = state_dir / "server-key.pem"
        key_file.touch(mode=0o600)
        try:
            key_file.write_text(server.key_pem + server.cert_pem + authority.cert_pem, encoding="ascii")
            context.load_cert_chain(key_file)
        finally:
            key_file.unlink(missing_ok=True)
        return context

    # -- where clients find it ------------------------------------------------------------------

    def _port(self, name: str) -> int:
        server = self._servers.get(name)
        if server is None:
            raise RuntimeError("sandbox is not running; call start() first")
        return server.port

    @property
    def authority_host(self) -> str:
        return f"https://127.0.0.1:{self._port('entra')}"

    @property
    def vault_url(self) -> str:
        return f"https://127.0.0.1:{self._port('vault')}/"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port('identity')}{TOKEN_PATH}"

    @property
    def dataverse_port(self) -> int:
        """The Dataverse listener on 127.0.0.1 (TLS; clients reach it through `https_proxy`)."""
        return self._port("dataverse")

    @property
    def https_proxy(self) -> str:
        """The CONNECT proxy that tunnels https://<registered org> to the Dataverse listener."""
        if self._proxy is None:
            raise RuntimeError("sandbox is not running; call start() first")
        return f"http://127.0.0.1:{self._proxy.port}"

    @property
    def state_dir(self) -> Path:
        if self._state_dir is None:
            raise RuntimeError("sandbox is not running; call start() first")
        return self._state_dir

    @property
    def ca_cert_path(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def ca_bundle_path(self) -> Path:
        """certifi's public roots plus the sandbox CA, for REQUESTS_CA_BUNDLE / SSL_CERT_FILE."""
        return self.state_dir / "ca-bundle.pem"

    def env(self) -> dict[str, str]:
        """Environment variables that point unmodified clients at the sandbox.

        HTTPS_PROXY sends https://<org> traffic through the sandbox's proxy; NO_PROXY keeps the loopback
        stand-ins (Entra, Key Vault, managed identity) direct. Both spellings, as tools differ in which they read.
        """
        bundle = str(self.ca_bundle_path)
        no_proxy = "127.0.0.1,localhost"
        return {
            "REQUESTS_CA_BUNDLE": bundle,
            "SSL_CERT_FILE": bundle,
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": self.identity_header,
            "HTTPS_PROXY": self.https_proxy,
            "https_proxy": self.https_proxy,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }
