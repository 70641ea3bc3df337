"""Benchmark of the Dataverse client: a sync of 10 orgs x 20,000 rows at 30 ms injected latency.

Figures, all from one run: our wall time against the lower bound latency allows; against Microsoft's Dataverse
SDK doing the same reads as its docs show; requests sent inside a Retry-After window (under a forced throttle);
peak memory while paging, for 20,000 and 80,000 rows. The emulator runs in its own process.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import report, write  # noqa: E402
from bench.sandbox_process import SandboxProcess  # noqa: E402

ORGS = 10
ROWS = 20_000
LATENCY = 0.030
PAGE_SIZE = int(os.environ.get("BENCH_PAGE_SIZE", "5000"))
SELECT = ["accountid", "name", "accountnumber", "revenue", "modifiedon"]


def _our_services(scenario: dict[str, Any], tmp: Path) -> Any:
    from shared.bootstrap import build_services
    from shared.settings import CredentialSource, Settings

    cert = tmp / "bench-client.pem"
    cert.write_text(scenario["key_pem"] + scenario["cert_pem"])
    return build_services(
        Settings(
            entra_client_id=scenario["client_id"],
            entra_home_tenant_id=scenario["home_tenant"],
            entra_authority_host=scenario["authority_host"],
            credential_source=CredentialSource.CERTIFICATE_FILE,
            certificate_path=str(cert),
        )
    )


def _sync_one(services: Any, org: dict[str, str]) -> tuple[int, int]:
    client = services.dataverse.for_org(org["tenant"], org["url"], bulk=True)
    rows = pages = 0
    for page in client.track_changes("accounts", select=SELECT, page_size=PAGE_SIZE):
        rows += len(page.upserts)
        pages += 1
    return rows, pages


def ours(services: Any, orgs: list[dict[str, str]]) -> tuple[float, int, int]:
    for org in orgs:  # tokens first: the figure is about Dataverse reads, not Entra round trips
        services.tokens.get_token(org["tenant"], org["url"])
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(orgs)) as pool:
        done = list(pool.map(lambda o: _sync_one(services, o), orgs))
    return time.perf_counter() - started, sum(r for r, _ in done), max(p for _, p in done)


def bare_reader(services: Any, orgs: list[dict[str, str]], keep: list[bytes] | None = None) -> float:
    """The transport floor: the same change-tracking chains read with nothing but a pooled ``requests`` session
    per org, one read of each body and orjson — no governor, retries, error mapping or row handling — over the
    same TLS and proxy. With ``keep``, an unmeasured pass that collects the page bodies."""
    import orjson
    import requests

    tokens = {o["url"]: services.tokens.get_token(o["tenant"], o["url"]).token for o in orgs}
    sessions = {o["url"]: requests.Session() for o in orgs}

    def read(org: dict[str, str]) -> int:
        url: str | None = f"{org['url']}/api/data/v9.2/accounts?$select={','.join(SELECT)}"
        headers = {
            "Authorization": f"Bearer {tokens[org['url']]}",
            "Accept": "application/json",
            "OData-Version": "4.0",
            "OData-MaxVersion": "4.0",
            "Prefer": f"odata.track-changes,odata.maxpagesize={PAGE_SIZE}",
        }
        rows = 0
        while url:
            body = sessions[org["url"]].get(url, headers=headers, timeout=60, stream=True).raw.read()
            if keep is not None:
                keep.append(body)
            page = orjson.loads(body)
            rows += len(page["value"])
            url = page.get("@odata.nextLink")
        return rows

    for org in orgs:  # open each pooled connection first, as the measured runs of ours have
        read(org)
    if keep is not None:
        return 0.0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(orgs)) as pool:
        rows = sum(pool.map(read, orgs))
    elapsed = time.perf_counter() - started
    assert rows == ORGS * ROWS, rows
    return elapsed


def microsoft_sdk(scenario: dict[str, Any], orgs: list[dict[str, str]]) -> tuple[float, int]:
    """The SDK's documented pattern: a client per org and ``records.list_pages`` in a loop."""
    from azure.identity import CertificateCredential
    from PowerPlatform.Dataverse.client import DataverseClient

    pem = (scenario["key_pem"] + scenario["cert_pem"]).encode("ascii")
    credentials = {}
    for org in orgs:
        credentials[org["url"]] = CertificateCredential(
            org["tenant"],
            scenario["client_id"],
            certificate_data=pem,
            authority=scenario["authority_host"].removeprefix("https://"),
            disable_instance_discovery=True,
        )
        credentials[org["url"]].get_token(f"{org['url']}/.default")
    started = time.perf_counter()
    rows = 0
    for org in orgs:
        with DataverseClient(org["url"], credentials[org["url"]]) as client:
            for page in client.records.list_pages("account", select=SELECT, page_size=PAGE_SIZE):
                rows += len(page)
    return time.perf_counter() - started, rows


def parse_floor(bodies: list[bytes]) -> float:
    """What parsing the same page bodies alone costs, one after another in this process: the part of a sync no
    Python client can spread over cores, since building the rows' objects holds the interpreter lock."""
    import orjson

    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for body in bodies:
            orjson.loads(body)
        best = min(best, time.perf_counter() - started)
    return best


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_while_paging(services: Any, org: dict[str, str], rows: int) -> float:
    """Peak traced allocation (MB) while reading every row, one page held at a time."""
    client = services.dataverse.for_org(org["tenant"], org["url"], bulk=True)
    tracemalloc.start()
    tracemalloc.reset_peak()
    seen = 0
    for page in client.query("accounts", select=SELECT, page_size=PAGE_SIZE):
        seen += len(page.rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == rows, (seen, rows)
    return peak / 1e6


def main() -> int:
    import logging
    import tempfile

    logging.basicConfig(level=logging.ERROR)
    print(
        f"Dataverse client benchmark: {ORGS} orgs x {ROWS:,} rows, {LATENCY * 1000:.0f} ms latency, "
        f"pages of {PAGE_SIZE}\n" + "-" * 110
    )
    with SandboxProcess(ORGS, ROWS, LATENCY) as sandbox, tempfile.TemporaryDirectory() as tmp:
        scenario = sandbox.scenario
        os.environ.update(scenario["env"])
        orgs = scenario["orgs"]
        services = _our_services(scenario, Path(tmp))

        # Warm-up (not measured): the emulator encodes each row once and serves it from cache afterwards, so the
        # measured runs time the clients and the injected latency, not the emulator building JSON.
        ours(services, orgs)
        # Ours and the bare reader alternate, best of three each, so neither gets the quieter moment of the run.
        runs, floors, cpus = [], [], []
        for _ in range(3):
            cpu_before, emulator_before = _cpu_seconds(), sandbox.cpu_seconds()
            elapsed, rows, _pages = ours(services, orgs)
            cpus.append((_cpu_seconds() - cpu_before, sandbox.cpu_seconds() - emulator_before))
            assert rows == ORGS * ROWS, rows
            runs.append(elapsed)
            floors.append(bare_reader(services, orgs))
        elapsed, floor = min(runs), min(floors)
        client_cpu, emulator_cpu = cpus[runs.index(elapsed)]
        # Each org's pages form a chain (a page's link comes from the one before), orgs run side by side
        # within the concurrency limit, so no client can beat pages x latency.
        lower_bound = math.ceil(ROWS / PAGE_SIZE) * LATENCY * math.ceil(ORGS / min(ORGS, 50))
        report("sync wall time, ours (best of 3)", elapsed, "s", "(measured)", True)
        report("latency-only bound (chained pages x latency, orgs in parallel)", lower_bound, "s", "(baseline)", True)
        report("ours / latency-only bound", elapsed / lower_bound, "x", "<= 1.25x", elapsed / lower_bound <= 1.25)
        # Why that bound is out of reach here: reading 36 MB of JSON costs CPU the bound ignores. Parsing the
        # bodies alone, under one interpreter lock, takes about as long as the whole bound on this machine, and
        # TLS and HTTP come on top. The bare reader measures that floor in the same run; the bound a client can
        # be held to is the larger of the two.
        report("  client CPU during the sync (this process)", client_cpu, "s", "(info)", True)
        report("  emulator CPU during the sync (its own process)", emulator_cpu, "s", "(info)", True)
        bodies: list[bytes] = []
        bare_reader(services, orgs, keep=bodies)
        parsing = parse_floor(bodies)
        report(
            f"  parsing the {len(bodies)} page bodies ({sum(map(len, bodies)) / 1e6:.0f} MB) alone, one thread",
            parsing,
            "s",
            "(info)",
            True,
        )
        report("transport floor: bare requests + orjson reader (best of 3)", floor, "s", "(baseline)", True)
        bound = max(lower_bound, floor)
        report("ours / max(latency bound, transport floor)", elapsed / bound, "x", "<= 1.25x", elapsed / bound <= 1.25)

        sdk_elapsed, sdk_rows = microsoft_sdk(scenario, orgs)
        assert sdk_rows == ORGS * ROWS, sdk_rows
        report("sync wall time, Microsoft's Dataverse SDK (list_pages per org)", sdk_elapsed, "s", "(baseline)", True)
        speedup = sdk_elapsed / elapsed
        report("SDK / ours (how many times faster ours is)", speedup, "x", ">= 5x", speedup >= 5)

        # A forced throttle: 40 requests per 2 s window per org; the sync must finish and never call inside
        # an announced Retry-After window.
        throttle_orgs = orgs[:3]
        for org in throttle_orgs:
            sandbox.ask(
                cmd="limits",
                org=org["url"],
                limits={"max_requests": 3, "window_seconds": 1, "latency_seconds": LATENCY},
            )
        before = sandbox.ask(cmd="counters", orgs=[o["url"] for o in throttle_orgs])
        throttled_services = _our_services(scenario, Path(tmp))
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(throttle_orgs)) as pool:
            for _ in range(2):
                list(pool.map(lambda o: _sync_one(throttled_services, o), throttle_orgs))
        throttled_elapsed = time.perf_counter() - started
        after = sandbox.ask(cmd="counters", orgs=[o["url"] for o in throttle_orgs])
        inside = sum(after[u]["in_retry_after"] - before[u]["in_retry_after"] for u in after)
        got_429 = sum(after[u]["throttled"] - before[u]["throttled"] for u in after)
        report(
            f"429s received under a forced throttle (3 orgs, 2 syncs, {throttled_elapsed:.1f} s)",
            got_429,
            "429s",
            "(info)",
            True,
        )
        report("requests sent inside a Retry-After window", inside, "req", "0", inside == 0)

        small, large = orgs[3], orgs[4]
        sandbox.ask(cmd="seed", org=large["url"], rows=3 * ROWS)  # 80,000 rows
        peak_small = memory_while_paging(services, small, ROWS)
        peak_large = memory_while_paging(services, large, 4 * ROWS)
        report(f"peak memory while paging {ROWS:,} rows", peak_small, "MB", "(baseline)", True)
        report(f"peak memory while paging {4 * ROWS:,} rows", peak_large, "MB", "flat", True)
        ratio = peak_large / peak_small
        report("peak for 4x the rows / peak for 1x", ratio, "x", "< 1.3x (flat)", ratio < 1.3)

    write(ROOT / "bench" / "results" / "dataverse.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
