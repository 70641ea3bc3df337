"""`make start` as a developer runs it, as a subprocess, with no test code in any of its processes: an administrator
of the seeded Fabrikam tenant onboards its org in Chromium, a change sent through `python -m sandbox` reaches the
app's webhook, its queue and the queue processor (seen in the processed-change records on Azurite); after a
restart of `make start` the world, the registry and the keys are still there and the next change is handled too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient

from tests.e2e.test_onboarding_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FABRIKAM = "https://fabrikam.crm4.dynamics.com"
_START_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MakeStart:
    """One `make start` in its own process group, on free ports, with its state in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.azurite_ports = ",".join(str(free_port()) for _ in range(3))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / "make-start.log"

    def start(self) -> dict[str, Any]:
        arguments = (
            f"--state-dir {self.state_dir} --port {self.port} --azurite-ports {self.azurite_ports} --no-local-settings"
        )
        with self.log.open("ab") as log:
            # -o: the venv and node_modules are already installed (make test set them up); never reinstall here.
            self.process = subprocess.Popen(
                ["make", "-o", ".venv/.installed", "-o", "node_modules/.installed", "start", f"START_ARGS={arguments}"],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        dev = self.state_dir / "dev.json"
        deadline = time.monotonic() + _START_SECONDS
        while not dev.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make start did not come up:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        time.sleep(0.2)  # dev.json is written in one go, but let the writer finish
        return json.loads(dev.read_text())

    def stop(self) -> None:
        """Ctrl-C, as in a terminal: SIGINT to the whole process group make start runs in (ours alone)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def sandbox(self, *args: str) -> dict[str, Any]:
        """`python -m sandbox <args> --json` against this run, as a developer types it."""
        result = subprocess.run(
            [sys.executable, "-m", "sandbox", "--state-dir", str(self.state_dir), *args, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[MakeStart]:
    if not shutil.which("make"):
        pytest.fail("make is not installed")
    running = MakeStart(tmp_path / "state")
    yield running
    running.stop()


@pytest.fixture
def page():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed (make test installs it with apt-get)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = chromium.new_context(ignore_https_errors=True)  # the sandbox CA is not in this profile
        yield context.new_page()
        context.close()
        chromium.close()


def processed(dev: dict[str, Any], tenant: str, row_id: str, count: int, timeout: float = 60.0) -> list[str]:
    """The messages of `row_id` the queue processor recorded, once there are `count` (or the time is up)."""
    table = TableClient.from_connection_string(dev["storage_connection_string"], "processedchanges")
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = [
                str(entity["Message"])
                for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant})
                if entity.get("RowId") == row_id
            ]
        except Exception:  # the table appears with the first processed change
            found = []
        if len(found) >= count or time.monotonic() > deadline:
            return sorted(found)
        time.sleep(0.25)


def test_make_start_onboard_in_chromium_then_a_change_reaches_the_handler_and_survives_a_restart(loop, page):
    dev = loop.start()
    app_url = dev["app_url"]
    fabrikam = next(t for t in dev["world"]["tenants"] if t["name"] == "Fabrikam")
    admin = next(u for u in fabrikam["users"] if u["global_admin"])
    assert app_url == f"http://localhost:{loop.port}"

    # A customer's administrator connects the org from their own browser.
    page.goto(f"{app_url}/api/onboard")
    page.get_by_label("Environment URL").fill(FABRIKAM)
    page.get_by_role("button", name="Sign in with Microsoft").click()
    page.wait_for_url("https://127.0.0.1:*/**")
    page.get_by_label("Account").select_option(f"{fabrikam['id']}:{admin['object_id']}")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{app_url}/api/consent/callback**")
    assert page.get_by_role("heading", name="Connected").is_visible()

    # A change in the org, sent through the sandbox CLI, reaches the webhook, the queue and the processor.
    created = loop.sandbox("create-row", "--org", FABRIKAM, "--table", "accounts", "--set", "name=Loop Ltd")
    assert created["webhooks_fired"] == 1
    updated = loop.sandbox("update-row", created["id"], "--org", FABRIKAM, "--table", "accounts", "--set", "name=Loop")
    assert updated["webhooks_fired"] == 1
    assert processed(dev, fabrikam["id"], created["id"], 2) == ["Create", "Update"]
    deliveries = loop.sandbox("deliveries", "--org", FABRIKAM)["deliveries"]
    assert [d["status"] for d in deliveries if d["row_id"] == created["id"]] == [202, 202]

    # Ctrl-C, then make start again: same world, same registry, same keys; the next change is handled at once.
    loop.stop()
    assert not (loop.state_dir / "dev.json").exists() and (loop.state_dir / "sandbox-state.json").is_file()
    again = loop.start()
    assert again["keys"] == dev["keys"] and again["world"]["app"]["client_id"] == dev["world"]["app"]["client_id"]
    fabrikam_org = next(o for o in again["world"]["orgs"] if o["url"] == FABRIKAM)
    before_org = next(o for o in dev["world"]["orgs"] if o["url"] == FABRIKAM)
    assert fabrikam_org["organization_id"] == before_org["organization_id"]
    assert fabrikam_org["rows"]["accounts"] == before_org["rows"]["accounts"] + 1
    loop.sandbox("update-row", created["id"], "--org", FABRIKAM, "--table", "accounts", "--set", "name=Again")
    assert processed(again, fabrikam["id"], created["id"], 3) == ["Create", "Update", "Update"]
