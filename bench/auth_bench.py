"""Benchmark of the auth module: token requests, Key Vault reads, cached-token cost, memory, import time.

Prints one line per figure with its target. Ratios are against baselines measured in the same run, since these
machines are noisy. Run with ``make bench``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import report, write  # noqa: E402
from sandbox import Sandbox  # noqa: E402
from sandbox.demo import demo_settings, seed_demo  # noqa: E402
from shared.auth.token_provider import TenantTokenProvider  # noqa: E402
from shared.bootstrap import build_services  # noqa: E402
from shared.settings import Settings  # noqa: E402

ORG = "https://contoso.crm.dynamics.com"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def concurrent_callers(sb: Sandbox, seed: Any) -> None:
    """50 callers across 10 tenants, 1,000 tokens each: 1 token request per tenant, 1 Key Vault read."""
    tenants = [sb.state.add_tenant(display_name=f"bench-{i}") for i in range(10)]
    for t in tenants:
        sb.state.grant_consent(t, seed.client_id)
    settings = Settings.from_env(demo_settings(sb, seed))
    services = build_services(settings)
    sb.state.reset_counters()
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        tenant = tenants[k % 10]
        barrier.wait()
        try:
            for _ in range(1000):
                services.tokens.get_token(tenant, ORG)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(50)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    per_tenant = [sb.state.count("token", tenant=t) for t in tenants]
    report(
        "token requests per tenant (50 callers x 1,000, 10 tenants)", max(per_tenant), "req", "1", max(per_tenant) == 1
    )
    vault_reads = sb.state.count("vault_get", name="s2s-client")
    report("Key Vault reads in all", vault_reads, "reads", "1", vault_reads == 1)
    report("wall time for the 50,000 get_token calls", elapsed, "s", "(info)", True)

    # Cached-token cost: time single calls, take the median.
    tokens = services.tokens
    samples = []
    for _ in range(20_000):
        t0 = time.perf_counter_ns()
        tokens.get_token(tenants[0], ORG)
        samples.append(time.perf_counter_ns() - t0)
    median_us = statistics.median(samples) / 1000
    report("median cost of a cached token", median_us, "us", "< 50 us", median_us < 50)


class _Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.status_code = 200
        self.text = json.dumps(body)
        self.headers: dict[str, str] = {}

    def raise_for_status(self) -> None:
        return None


class _InProcessEntra:
    """Answers MSAL's two calls per tenant (OpenID configuration, token) without a network, so the memory figure
    measures the worker's clients rather than a server."""

    host = "https://login.bench.invalid"

    def __init__(self) -> None:
        self.token = "eyJ0eXAiOiJKV1QifQ." + "x" * 1400 + ".sig"

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> _Response:
        tenant = url.split("/")[3]
        base = f"{self.host}/{tenant}"
        return _Response(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
            }
        )

    def post(self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any) -> _Response:
        return _Response({"token_type": "Bearer", "expires_in": 3599, "access_token": self.token})


class _CheapAssertion:
    kind = "bench"

    def __call__(self, context: dict[str, str]) -> str:
        return "assertion"

    def refresh_after_rejection(self) -> None:
        return None

    def describe(self) -> dict[str, object]:
        return {}


def _memory_child(tenant_count: int, max_tenants: int) -> None:
    """Runs in its own process so each figure starts from the same baseline RSS."""
    gc.collect()
    before = rss_mb()
    provider = TenantTokenProvider(
        client_id=str(uuid.uuid4()),
        authority_host=_InProcessEntra.host,
        assertion_source=_CheapAssertion(),
        max_tenants=max_tenants,
        http_client=_InProcessEntra(),
    )
    started = time.perf_counter()
    for i in range(tenant_count):
        provider.get_token(str(uuid.UUID(int=i + 1)), ORG)
    elapsed = time.perf_counter() - started
    gc.collect()
    print(
        json.dumps(
            {
                "grown_mb": rss_mb() - before,
                "kept": provider.tenant_count,
                "evicted": provider.evictions,
                "ms_per_tenant": elapsed / tenant_count * 1000,
            }
        )
    )


def memory_at_scale(tenant_count: int = 10_000) -> None:
    for max_tenants, label in ((tenant_count, "LRU not limiting"), (2000, "default LRU of 2,000")):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(tenant_count), str(max_tenants)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        grown = figures["grown_mb"]
        if max_tenants >= tenant_count:
            # Shown for scale: this is what the LRU exists to bound (≈ 13 KB per MSAL app).
            report(f"worker memory, {tenant_count:,} tenants warmed ({label})", grown, "MB", "(info)", True)
        else:
            report(f"worker memory, {tenant_count:,} tenants warmed ({label})", grown, "MB", "< 100 MB", grown < 100)
        report(f"  tenants kept ({label})", figures["kept"], "kept", f"{figures['evicted']} evicted", True)
        report(f"  warm-up time per tenant ({label})", figures["ms_per_tenant"], "ms", "(info)", True)


def _import_seconds(statement: str, preload: str = "") -> float:
    code = f"{preload}\nimport time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    samples = []
    for _ in range(7):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        samples.append(float(out.stdout.strip()))
    return statistics.median(samples)


def import_time() -> None:
    baseline = _import_seconds("import msal, azure.identity, azure.keyvault.secrets")
    # The Functions worker has azure.functions loaded before it imports function_app, so the cold-start cost the
    # app adds is the import with azure.functions already present; the full figure is printed too.
    marginal = _import_seconds("import function_app", preload="import azure.functions")
    full = _import_seconds("import function_app")
    report("baseline: import msal, azure.identity, azure.keyvault.secrets", baseline * 1000, "ms", "(baseline)", True)
    ratio = marginal / baseline
    report("import function_app (worker has azure.functions) / baseline", ratio, "x", "<= 0.35x", ratio <= 0.35)
    report("import function_app incl. azure.functions / baseline", full / baseline, "x", "(info)", True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        _memory_child(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    print("Auth module benchmark\n" + "-" * 110)
    with Sandbox() as sb:
        for name, value in sb.env().items():
            os.environ[name] = value
        seed = seed_demo(sb.state)
        concurrent_callers(sb, seed)
    memory_at_scale()
    import_time()
    write(ROOT / "bench" / "results" / "auth.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
