"""Sync really killed: a child process runs the sync sweep (``services.jobs.run_sync``) and is SIGKILLed at a random
moment, five times, while creates, updates and deletes land in the org between attempts; then the sweep runs to
completion. Replaying the NDJSON the sink wrote, in write order, must give exactly the org's table (no row missed,
every change applied, every delete honoured), and no kill may cost more than one repeated page.

The child is this file run as a script (``python test_sync_kill.py <log>``). It builds the app's services from the
environment as a worker does (``Settings.from_env``: the sandbox's CA bundle and HTTPS proxy, the Azurite connection
string, a certificate file) and wraps the sink and the checkpoint store — test harness only — to append every page it
starts, every page it wrote and every checkpoint it saved to a log it flushes and fsyncs line by line, so the parent
knows what a killed child did up to its last instruction. Each child sweeps until caught up, as successive timer
ticks would: the rest of the run a kill cut short, then a run over the changes made since.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.bootstrap import build_services, use_services
from shared.dataverse.batch import BatchOperation
from shared.jobs.sync import Checkpoint
from shared.settings import Settings
from shared.tenants.orgs import OrgStatus
from shared.tenants.registry import TenantStatus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]  # the child runs with PYTHONPATH=ROOT

ROWS = 4000
PAGE_SIZE = 100
LATENCY_SECONDS = 0.04  # per Dataverse request, so a page takes long enough for a kill to land inside a run
KILLS = 5
COLUMNS = ("accountid", "name", "revenue")
TABLE = "accounts"
# Changes made between attempts: enough for a delta run of several pages.
CREATES, UPDATES, DELETES = 800, 900, 300
START_LINE = "SYNC-CHILD-START"
SUMMARY_PREFIX = "SYNC-CHILD-SUMMARY "

# The patterns tests/conftest.py watches the parent's logs for, applied to the children's stderr.
SECRET_PATTERNS = {
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "PEM block": re.compile(r"-----BEGIN [A-Z ]+-----"),
    "DER (base64)": re.compile(r"\bMII[A-Za-z0-9+/]{60,}"),
    "account key": re.compile(r"AccountKey="),
}


def _checkpoint_key(checkpoint: Checkpoint) -> tuple[str, int, str]:
    """(run id or "-", page, digest of the delta link or "-"): what the log records of a checkpoint."""
    link = checkpoint.delta_link
    return checkpoint.run_id or "-", checkpoint.page, hashlib.sha256(link.encode()).hexdigest()[:16] if link else "-"


# -- the child ---------------------------------------------------------------------------------------------------


class _PageLog:
    """Appends one line per event to the log, flushed and fsynced before the child goes on."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the child's whole life

    def note(self, *fields: object) -> None:
        self._file.write(" ".join([f"{time.time():.6f}", *map(str, fields)]) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


class _LoggingSink:
    """The real sink, with every page noted before ("begin") and after ("wrote") it is written."""

    def __init__(self, inner: Any, log: _PageLog) -> None:
        self._inner, self._log = inner, log

    def write_page(self, **page: Any) -> None:
        self._log.note("begin", page["run_id"], page["page"])
        self._inner.write_page(**page)
        self._log.note("wrote", page["run_id"], page["page"], len(page["upserts"]), len(page["deletions"]))


def _child(log_path: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs' request logs, one per call
    log = _PageLog(log_path)
    tenant_id = os.environ["SYNC_KILL_TENANT"]
    services = build_services(Settings.from_env())
    use_services(services)
    services._sink = _LoggingSink(services.sync_sink, log)  # the sweep's sink, as tests/integration/test_jobs does
    checkpoints = services.sync_checkpoints
    save = checkpoints.save

    def logged_save(tenant: str, org_url: str, table: str, checkpoint: Checkpoint) -> None:
        save(tenant, org_url, table, checkpoint)
        log.note("checkpoint", *_checkpoint_key(checkpoint))

    checkpoints.save = logged_save  # type: ignore[method-assign]
    org_url = services.registry.get_tenant(tenant_id).org_urls[0]
    log.note("start")
    print(START_LINE, flush=True)
    # Sweeps until caught up, as successive timer ticks would: a run resumed from an earlier attempt ends at the
    # version it began at, so the changes made since need one more run.
    for _ in range(3):
        checkpoint = checkpoints.load(tenant_id, org_url, TABLE)
        resumed = checkpoint.run_id is not None and checkpoint.page > 0
        summary = services.jobs.run_sync(tenant_id)
        log.note("summary", summary.tenants_ok, summary.tenants_failed, summary.rows)
        print(SUMMARY_PREFIX + json.dumps(summary.to_dict()), flush=True)
        if not resumed or summary.tenants_failed:
            break
    return 0


# -- the parent --------------------------------------------------------------------------------------------------


@dataclass
class Event:
    at: float
    kind: str
    fields: list[str]


@dataclass
class Attempt:
    number: int
    events: list[Event]
    killed: bool
    delay: float | None  # seconds slept after the child said it was starting; None when not to be killed
    expected: float | None
    summaries: list[dict[str, Any]]
    before: Checkpoint  # the stored checkpoint when the child started, and when it was gone
    after: Checkpoint

    @property
    def checkpoints(self) -> list[tuple[str, int, str]]:
        return [(e.fields[0], int(e.fields[1]), e.fields[2]) for e in self.events if e.kind == "checkpoint"]

    @property
    def unlogged_save(self) -> bool:
        """Whether the child was killed after a checkpoint save reached storage and before the log recorded it."""
        logged = self.checkpoints
        return _checkpoint_key(self.after) != (logged[-1] if logged else _checkpoint_key(self.before))

    @property
    def finished_runs(self) -> list[str]:
        """The runs this child checkpointed as finished (a final save keeps no run id: the run is the last one
        begun), including one whose final save was under way when it was killed."""
        finished, last_run = [], None
        for event in self.events:
            if event.kind == "begin":
                last_run = event.fields[0]
            elif event.kind == "checkpoint" and event.fields[0] == "-" and last_run:
                finished.append(last_run)
        if self.unlogged_save and self.after.run_id is None and last_run and last_run not in finished:
            finished.append(last_run)
        return finished

    def pages(self, kind: str) -> list[tuple[str, int]]:
        return [(e.fields[0], int(e.fields[1])) for e in self.events if e.kind == kind]

    @property
    def timing(self) -> tuple[float | None, list[float]]:
        """(seconds from the start line to the first page written, seconds between pages written)."""
        start_at = next(e.at for e in self.events if e.kind == "start")
        written = [e.at for e in self.events if e.kind == "wrote"]
        startup = written[0] - start_at if written else None
        return startup, [b - a for a, b in itertools.pairwise(written)]

    @property
    def finished_a_run(self) -> bool:
        return bool(self.finished_runs)

    @property
    def landed_mid_run(self) -> bool:
        """Killed inside a run: after this child began some of the run's pages, before it checkpointed its end."""
        inside = False
        for event in self.events:
            if event.kind == "begin":
                inside = True
            elif event.kind == "checkpoint" and event.fields[0] == "-":
                inside = False
        return self.killed and inside and bool(self.pages("wrote"))


def _read_log(path: Path) -> list[Event]:
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        at, kind, *fields = line.split(" ")
        events.append(Event(float(at), kind, fields))
    return events


def _wait_for_start(proc: subprocess.Popen[str], timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the sync child exited (rc {proc.wait()}) before starting")
        if line.strip() == START_LINE:
            return
    raise AssertionError(f"the sync child did not start within {timeout}s")


def _delta_version(delta_link: str) -> int:
    """The version the emulator's delta token names (``<version>!<serial>!<timestamp>``)."""
    token = parse_qs(urlsplit(delta_link).query)["$deltatoken"][0]
    return int(token.split("!")[0])


class KillHarness:
    def __init__(self, sandbox: Any, azurite: Any, tmp_path: Path) -> None:
        from sandbox.net.pki import make_certificate

        st = sandbox.state
        self.sandbox, self.tmp = sandbox, tmp_path
        client_id = st.register_application(display_name="Sync kill test")
        bundle = make_certificate("sync-kill-test")
        st.add_application_certificate(client_id, bundle.cert_pem)
        self.tenant = st.add_tenant(display_name="Killed customer")
        st.grant_consent(self.tenant, client_id)
        self.org_url = f"https://kill{uuid.uuid4().hex[:8]}.crm.dynamics.com"
        st.add_org(self.tenant, self.org_url)
        st.add_application_user(self.org_url, client_id)
        st.seed_rows(self.org_url, TABLE, ROWS)
        # Latency per request; the request limit raised, as the $batch changes count every operation in it.
        st.set_dataverse_limits(self.org_url, latency_seconds=LATENCY_SECONDS, max_requests=1_000_000)
        self.store = st.find_org_store(urlsplit(self.org_url).hostname or "")
        cert = tmp_path / "sync-kill.pem"
        cert.write_text(bundle.key_pem + bundle.cert_pem)
        cert.chmod(0o600)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            **sandbox.env(),
            "ENTRA_CLIENT_ID": client_id,
            "ENTRA_HOME_TENANT_ID": st.home_tenant_id,
            "ENTRA_AUTHORITY_HOST": sandbox.authority_host,
            "CREDENTIAL_SOURCE": "certificate_file",
            "CERTIFICATE_PATH": str(cert),
            "STORAGE_CONNECTION_STRING": azurite.connection_string,
            "SYNC_TABLES": f"{TABLE}:{','.join(COLUMNS)}",
            "SYNC_PAGE_SIZE": str(PAGE_SIZE),
            "SYNC_CONTAINER": f"synckill{uuid.uuid4().hex[:8]}",
            "DATAVERSE_RETRY_BUDGET_SECONDS": "20",  # a stuck child fails the test instead of waiting it out
            "SYNC_KILL_TENANT": self.tenant,
        }
        self.settings = Settings.from_env(self.env)  # the children's settings, for the parent's own reads
        self.services = build_services(self.settings)
        use_services(self.services)
        for status in (TenantStatus.PENDING_CONSENT, TenantStatus.CONSENTED, TenantStatus.ACTIVE):
            self.services.registry.record(self.tenant, status, reason="test", actor="test", org_url=self.org_url)
        self.services.registry.set_org_status(
            self.tenant, self.org_url, OrgStatus.ACTIVE, reason="WhoAmI ok", actor="test"
        )
        self.client = self.services.dataverse.for_org(self.tenant, self.org_url)
        self.children: list[subprocess.Popen[str]] = []
        self.attempts: list[Attempt] = []
        self.waves = 0  # rounds of changes made
        self.versions: dict[int, int] = {}  # the org's version when each attempt started
        self.row_counts: dict[int, int] = {}  # and its row count
        self.stderr_paths: list[Path] = []

    # -- children ---------------------------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        return self.services.sync_checkpoints.load(self.tenant, self.org_url, TABLE)

    def run_child(self, number: int, plan: tuple[float, float] | None = None) -> Attempt:
        """Start a child; with a `plan` (seconds, expected seconds), SIGKILL it that many seconds after it says it
        is starting. Returns what its log says it did."""
        before = self.checkpoint()
        log = self.tmp / f"attempt-{number}.log"
        stderr_path = self.tmp / f"attempt-{number}.stderr"
        self.stderr_paths.append(stderr_path)
        self.versions[number] = self.store.version
        self.row_counts[number] = len(self.store.rows(TABLE))
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(log)],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.children.append(proc)
        _wait_for_start(proc, timeout=30)
        delay, expected = plan or (None, None)
        killed = False
        if delay is not None:
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            self.children.remove(proc)
        assert proc.returncode == (-signal.SIGKILL if killed else 0), (proc.returncode, stderr_path.read_text()[-2000:])
        summaries = [json.loads(x[len(SUMMARY_PREFIX) :]) for x in out.splitlines() if x.startswith(SUMMARY_PREFIX)]
        attempt = Attempt(number, _read_log(log), killed, delay, expected, summaries, before, self.checkpoint())
        self.attempts.append(attempt)
        return attempt

    def kill_children(self) -> None:
        for proc in list(self.children):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    # -- the org ----------------------------------------------------------------------------------------------

    def change_rows(self, rng: random.Random, wave: int) -> None:
        """Creates, updates and deletes through the Dataverse client, one $batch (the client splits at 1,000)."""
        live = sorted(str(r["accountid"]) for r in self.sandbox.state.rows(self.org_url, TABLE))
        picked = rng.sample(live, UPDATES + DELETES)
        operations = [
            BatchOperation("POST", TABLE, {"name": f"Wave {wave} new {n}", "revenue": float(n)}) for n in range(CREATES)
        ]
        operations += [
            BatchOperation(
                "PATCH",
                f"{TABLE}({row_id})",
                {"name": f"Wave {wave} changed {n}", "revenue": float(rng.randint(1, 10**6))},
                headers={"If-Match": "*"},
            )
            for n, row_id in enumerate(picked[:UPDATES])
        ]
        operations += [BatchOperation("DELETE", f"{TABLE}({row_id})") for row_id in picked[UPDATES:]]
        rng.shuffle(operations)
        parts = self.client.execute_batch(operations, atomic=False)
        assert len(parts) == len(operations) and not self.client.batch_errors(parts)
        self.waves += 1

    def pages_ahead(self) -> int:
        """About how many pages the next child writes: the rest of the run in progress, if any, then a run over
        the changes since (from the checkpoint and the emulator's change log)."""
        checkpoint = self.checkpoint()
        now = self.store.version
        in_progress = checkpoint.run_id is not None and checkpoint.page > 0
        # A run in progress reads up to the version the org had when its first page was read (no change lands
        # while a child runs); a run at page 0 starts afresh.
        began = next((a.number for a in self.attempts if checkpoint.run_id in dict(a.pages("begin"))), None)
        upto = self.versions[began] if in_progress and began else now
        if checkpoint.delta_link is None:  # the first (full) run, in id order: the rows past the share it read
            rows = len(self.store.rows(TABLE))
            read = min(1.0, checkpoint.page * PAGE_SIZE / self.row_counts[began]) if in_progress and began else 0.0
            rest = math.ceil(rows * (1 - read) / PAGE_SIZE)
        else:
            changes = len(self.store.changes(TABLE, _delta_version(checkpoint.delta_link), upto))
            rest = math.ceil(changes / PAGE_SIZE) - (checkpoint.page if in_progress else 0)
        after = math.ceil(len(self.store.changes(TABLE, upto, now)) / PAGE_SIZE) if upto < now else 0
        return max(1, rest) + after

    # -- the sink ---------------------------------------------------------------------------------------------

    def sink_runs(self) -> dict[str, dict[int, Any]]:
        """{run id: {page: blob properties}} of this tenant's table in the sink container."""
        container = self.services.storage.container(self.settings.sync_container)
        runs: dict[str, dict[int, Any]] = {}
        for blob in container.list_blobs(name_starts_with=f"{self.tenant}/"):
            _tenant, _host, table, run_id, name = blob.name.split("/")
            assert table == TABLE
            runs.setdefault(run_id, {})[int(name.split(".")[0])] = blob
        return runs

    def materialize(self, runs: dict[str, dict[int, Any]], log_order: list[str]) -> dict[str, tuple[Any, ...]]:
        """Replay the sink in write order: runs by their first blob's creation time (the log's order breaks a tie
        inside the same second, the resolution Blob Storage reports), pages by number; upserts overwrite, deletes
        remove."""
        container = self.services.storage.container(self.settings.sync_container)

        def run_key(run_id: str) -> tuple[Any, int]:
            first = min(blob.creation_time for blob in runs[run_id].values())
            return first, log_order.index(run_id) if run_id in log_order else len(log_order)

        table: dict[str, tuple[Any, ...]] = {}
        for run_id in sorted(runs, key=run_key):
            for _page, blob in sorted(runs[run_id].items()):
                for line in container.download_blob(blob.name).readall().decode().splitlines():
                    record = json.loads(line)
                    if record["op"] == "upsert":
                        row = record["row"]
                        table[row["accountid"]] = tuple(row[c] for c in COLUMNS[1:])
                    else:
                        assert record["op"] == "delete"
                        table.pop(record["id"], None)
        return table

    def emulator_table(self) -> dict[str, tuple[Any, ...]]:
        return {
            str(r["accountid"]): tuple(r[c] for c in COLUMNS[1:]) for r in self.sandbox.state.rows(self.org_url, TABLE)
        }

    def clean_read(self) -> dict[str, tuple[Any, ...]]:
        """An independent read of the whole table through the app's Dataverse client (no change tracking)."""
        return {
            str(r["accountid"]): tuple(r[c] for c in COLUMNS[1:])
            for r in self.client.iter_rows(TABLE, select=list(COLUMNS), page_size=5000)
        }


def check_checkpoint_after(attempt: Attempt, org_url: str) -> None:
    """What a child left in storage is a well-formed checkpoint: the last one it logged, or — killed while saving —
    the save it was making; and a run in progress is at most one page behind the pages the child began."""
    stored = attempt.after
    if stored.run_id is None:
        assert stored.page == 0 and stored.next_link is None, stored
    elif stored.page == 0:
        assert stored.next_link is None, stored  # a run not yet past its first page starts from its delta link
    else:
        assert (stored.next_link or "").startswith(f"{org_url}/api/data/"), stored
    if attempt.unlogged_save:
        assert attempt.killed, (attempt.number, stored)
        last = attempt.events[-1]
        if stored.run_id is None:  # a run's final save: after its last page was written
            assert last.kind == "wrote", (attempt.number, stored, last)
        elif stored.page == 0:  # a new run's first save: before any page of it
            assert last.kind in {"start", "summary"}, (attempt.number, stored, last)
        else:
            assert last.kind == "wrote" and (last.fields[0], int(last.fields[1])) == (stored.run_id, stored.page)
    begun = attempt.pages("begin")
    if stored.run_id is not None and begun and begun[-1][0] == stored.run_id:
        assert begun[-1][1] - 1 <= stored.page <= begun[-1][1], (attempt.number, stored, begun[-1])


@pytest.fixture
def harness(sandbox, sandbox_env, azurite, tmp_path):
    built = KillHarness(sandbox, azurite, tmp_path)
    try:
        yield built
    finally:
        built.kill_children()
        use_services(None)


@pytest.mark.timeout(60)
def test_sync_sigkilled_five_times_ends_equal_to_a_clean_run(harness):
    started = time.monotonic()
    rng = random.Random(20261122)
    # Timing of a child's start and of a page, measured on each attempt; until then a guess, and for a page a lower
    # bound (each page is at least one Dataverse request), so a first kill is early rather than too late.
    startups: list[float] = [0.5]
    intervals: list[float] = [LATENCY_SECONDS]

    def kill_moment() -> tuple[float, float]:
        """A random moment of the child's expected work: past its slowest start so far, within the pages it should
        write. Returns (seconds after its start line, expected seconds in all)."""
        startup, per_page = max(startups), statistics.median(intervals)
        writing = harness.pages_ahead() * per_page
        return startup + rng.uniform(0.05, 0.85) * writing, startup + writing

    # Attempts until five kills have landed (a child that finishes first is a run that completed, and counts
    # towards no kill); changes keep arriving between attempts, so every attempt has pages to cut.
    number = 0
    while sum(a.killed for a in harness.attempts) < KILLS and number < KILLS + 3:
        number += 1
        if number > 1:
            harness.change_rows(rng, number)
        attempt = harness.run_child(number, kill_moment())
        startup, between = attempt.timing
        if startup is not None:
            startups.append(startup)
        intervals.extend(between)
        check_checkpoint_after(attempt, harness.org_url)
    final = harness.run_child(number + 1)
    check_checkpoint_after(final, harness.org_url)
    attempts = harness.attempts

    kills = sum(a.killed for a in attempts)
    mid_run = [a.number for a in attempts if a.landed_mid_run]
    report = [
        (
            a.number,
            a.killed,
            round(a.delay or 0, 2),
            round(a.expected or 0, 2),
            len(a.pages("wrote")),
            a.finished_a_run,
            a.landed_mid_run,
            round(a.timing[0] or 0, 2),
            round(statistics.median(a.timing[1] or [0]), 3),
        )
        for a in attempts
    ]
    assert kills == KILLS, report
    assert len(mid_run) > KILLS // 2, report  # most kills cut a run, rather than landing before or after one

    # The final sweep: ok, nothing failed, and the tenant is still active.
    assert final.summaries and final.summaries[-1]["tenants_failed"] == 0 and final.summaries[-1]["tenants_ok"] == 1
    assert final.finished_a_run
    assert harness.services.registry.get_tenant(harness.tenant).status is TenantStatus.ACTIVE

    # At most one page repeated per kill: a (run, page) is started again only as the first page after a kill.
    begun = [(a.number, key) for a in attempts for key in a.pages("begin")]
    starts = Counter(key for _, key in begun)
    repeated = {key: count for key, count in starts.items() if count > 1}
    assert sum(count - 1 for count in repeated.values()) <= kills, repeated
    seen: set[tuple[str, int]] = set()
    for index, (number, key) in enumerate(begun):
        if key in seen:
            first_of_attempt = index == 0 or begun[index - 1][0] != number
            previous = attempts[number - 2]
            assert first_of_attempt and previous.killed, (number, key, report)
        seen.add(key)

    # Every run the sink holds was finished (none abandoned with pages that a new run then wrote again), and
    # holds pages 1..n with nothing missing.
    log_runs = list(dict.fromkeys(run for _, (run, _page) in begun))
    finished_runs = {run for attempt in attempts for run in attempt.finished_runs}
    runs = harness.sink_runs()
    assert set(runs) == set(log_runs)
    assert set(runs) == finished_runs, (sorted(runs), sorted(finished_runs))
    for run_id, pages in runs.items():
        assert sorted(pages) == list(range(1, len(pages) + 1)), (run_id, sorted(pages))

    # The final state equals a clean run: replaying the sink gives the emulator's rows and a clean read's.
    synced = harness.materialize(runs, log_runs)
    current = harness.emulator_table()
    assert len(current) == ROWS + harness.waves * (CREATES - DELETES)
    missed = set(current) - set(synced)
    assert not missed, f"{len(missed)} rows missed"
    assert set(synced) - set(current) == set(), "deleted rows still in the sink's state"
    stale = [row_id for row_id, values in current.items() if synced[row_id] != values]
    assert not stale, f"{len(stale)} rows stale, e.g. {stale[0]}: {synced[stale[0]]} != {current[stale[0]]}"
    assert synced == harness.clean_read()

    # Nothing secret in what the children logged.
    for path in harness.stderr_paths:
        text = path.read_text()
        leaks = [what for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
        assert not leaks, (path.name, leaks)
    duration = time.monotonic() - started
    print(f"\nsync kill: {ROWS} rows, pages of {PAGE_SIZE}, {kills} kills, {len(mid_run)} mid-run, {duration:.1f}s")
    print(
        "attempt, killed, delay, expected, pages written, finished a run, mid-run, startup, s/page:",
        *report,
        sep="\n  ",
    )


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
