"""Fanned-out sync with real worker processes sharing the queue and Azurite, as instances of the app would.

The child is this file run as a script (``python test_sweep_processes.py <log>``): it builds the app's services from
the environment (as test_sync_kill's child does, whose harness and page log this reuses) and works the sweep queue
with the in-process runner until the queue stays empty; its sink notes every page it begins and writes, fsynced,
so the parent knows what a killed child did. Runner options come from ``SWEEP_CHILD_*`` variables.

- A worker SIGKILLed in the middle of the unit: the message reappears once its invisibility runs out, the next
  worker waits out the dead worker's lease and resumes the same change-tracking run from its checkpoint — no row
  missed, at most one page written again.
- A message delivered again while its first attempt still runs (the runner does not renew its invisibility, as
  when an instance is lost): the second worker finds the unit leased and puts it back; nothing is written twice and
  the run counts the unit once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.bootstrap import build_services, use_services
from shared.jobs.queue_runner import LocalQueueRunner
from shared.jobs.units import SWEEP_POISON_QUEUE, SWEEP_QUEUE
from shared.settings import Settings
from tests.integration.test_sync_kill import (
    ROOT,
    ROWS,
    SECRET_PATTERNS,
    START_LINE,
    KillHarness,
    _LoggingSink,
    _PageLog,
    _read_log,
)

pytestmark = pytest.mark.integration

STATS_PREFIX = "SWEEP-CHILD-STATS "
PAGES = ROWS // 100


def _child(log_path: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    log = _PageLog(log_path)
    services = build_services(Settings.from_env())
    use_services(services)
    services._sink = _LoggingSink(services.sync_sink, log)
    worker = services.sweep_worker
    worker._defer_seconds = float(os.environ.get("SWEEP_CHILD_DEFER_SECONDS", "2"))
    runner = LocalQueueRunner(
        services.sweep_queue(),
        worker.handle,
        poison_queue=services.storage.queue(SWEEP_POISON_QUEUE),
        batch_size=2,
        new_batch_threshold=1,
        lock_seconds=float(os.environ["SWEEP_CHILD_LOCK_SECONDS"]),
        retry_visibility=1,
        renew=os.environ.get("SWEEP_CHILD_RENEW", "1") == "1",
    )
    log.note("start")
    print(START_LINE, flush=True)
    stats = runner.run(idle_seconds=float(os.environ.get("SWEEP_CHILD_IDLE_SECONDS", "3")), max_seconds=60)
    print(STATS_PREFIX + json.dumps({"outcomes": stats.outcomes, "failed": stats.failed_attempts}), flush=True)
    return 0


class Workers:
    def __init__(self, harness: KillHarness, **env: str) -> None:
        self.harness = harness
        self.env = {**harness.env, "SWEEP_LEASE_SECONDS": "5", **env}
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        for name in (SWEEP_QUEUE, SWEEP_POISON_QUEUE):
            queue = harness.services.storage.queue(name)
            with contextlib.suppress(Exception):
                queue.create_queue()
            queue.clear_messages()

    def start(self, number: int, **env: str) -> tuple[subprocess.Popen[str], Path]:
        log = self.harness.tmp / f"worker-{number}.log"
        stderr_path = self.harness.tmp / f"worker-{number}.stderr"
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(log)],
                cwd=ROOT,
                env={**self.env, **env},
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.procs.append((proc, stderr_path))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == START_LINE, (line, stderr_path.read_text()[-2000:])
        return proc, log

    def finish(self, proc: subprocess.Popen[str]) -> dict:
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out
        return next(json.loads(x[len(STATS_PREFIX) :]) for x in out.splitlines() if x.startswith(STATS_PREFIX))

    def kill_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def check_no_secrets(self) -> None:
        for _, path in self.procs:
            text = path.read_text()
            assert not [what for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)], path.name


@pytest.fixture
def harness(sandbox, sandbox_env, azurite, tmp_path):
    built = KillHarness(sandbox, azurite, tmp_path)
    try:
        yield built
    finally:
        built.kill_children()
        use_services(None)


def _synced_ids(harness: KillHarness) -> Counter:
    runs = harness.sink_runs()
    container = harness.services.storage.container(harness.settings.sync_container)
    ids: Counter = Counter()
    for pages in runs.values():
        for blob in pages.values():
            for line in container.download_blob(blob.name).readall().decode().splitlines():
                record = json.loads(line)
                ids[record["row"]["accountid"]] += 1
    return ids


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_unit_is_resumed_by_another_from_its_checkpoint(harness):
    workers = Workers(harness)
    try:
        run = harness.services.sweep_scheduler.start("sync", harness.tenant)
        first, first_log = workers.start(1, SWEEP_CHILD_LOCK_SECONDS="4")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once a good part of the unit is written, before its end
            written = [e for e in _read_log(first_log) if e.kind == "wrote"]
            if len(written) >= PAGES // 4:
                break
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = harness.checkpoint()
        assert killed_at.run_id is not None and 0 < killed_at.page < PAGES  # killed mid-unit, checkpoint mid-run
        second, second_log = workers.start(2, SWEEP_CHILD_LOCK_SECONDS="4", SWEEP_CHILD_IDLE_SECONDS="3")
        stats = workers.finish(second)
        status = harness.services.run_ledger.get_status(run.run_id)
        assert status.finished and (status.done, status.failed) == (1, 0), (status, stats)
        assert stats["outcomes"].get("done") == 1
        # The second worker resumed the same change-tracking run where the checkpoint stood.
        begun_first = [(e.fields[0], int(e.fields[1])) for e in _read_log(first_log) if e.kind == "begin"]
        begun_second = [(e.fields[0], int(e.fields[1])) for e in _read_log(second_log) if e.kind == "begin"]
        assert begun_second[0][0] == killed_at.run_id and begun_second[0][1] in (killed_at.page, killed_at.page + 1)
        repeated = set(begun_first) & set(begun_second)
        assert len(repeated) <= 1, repeated  # at most one page written again
        runs = harness.sink_runs()
        assert list(runs) == [killed_at.run_id] and sorted(runs[killed_at.run_id]) == list(range(1, PAGES + 1))
        assert set(_synced_ids(harness)) == set(harness.emulator_table())  # no row missed
        workers.check_no_secrets()
    finally:
        workers.kill_all()


@pytest.mark.timeout(120)
def test_a_message_redelivered_while_its_first_attempt_runs_is_not_worked_twice(harness):
    # Invisibility of 2 s, never renewed: the message reappears while the unit (4,000 rows) is still being synced —
    # at 0.15 s a request its 40 pages take 6 s, whatever the machine's load (at 0.04 s a quick run could finish
    # inside the 2 s, and the redelivery then found the unit done rather than held).
    harness.sandbox.state.set_dataverse_limits(harness.org_url, latency_seconds=0.15, max_requests=1_000_000)
    workers = Workers(harness, SWEEP_CHILD_LOCK_SECONDS="2", SWEEP_CHILD_RENEW="0", SWEEP_CHILD_IDLE_SECONDS="4")
    try:
        run = harness.services.sweep_scheduler.start("sync", harness.tenant)
        one, one_log = workers.start(1)
        two, two_log = workers.start(2)
        stats = [workers.finish(one), workers.finish(two)]
        outcomes = Counter()
        for s in stats:
            outcomes.update(s["outcomes"])
        status = harness.services.run_ledger.get_status(run.run_id)
        assert status.finished and (status.done, status.failed, status.rows) == (1, 0, ROWS), (status, stats)
        assert outcomes["done"] == 1 and outcomes["deferred"] >= 1, outcomes  # the redelivery found the lease held
        begun = [
            (e.fields[0], int(e.fields[1]), e.at, log)
            for log in (one_log, two_log)
            for e in _read_log(log)
            if e.kind == "begin"
        ]
        pages = Counter((run_id, page) for run_id, page, _, _ in begun)
        assert max(pages.values()) == 1, pages.most_common(3)  # no page written twice
        assert len(pages) == PAGES
        assert set(_synced_ids(harness).values()) == {1}  # every row exactly once
        workers.check_no_secrets()
    finally:
        workers.kill_all()


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
