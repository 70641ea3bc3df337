"""The development host's queue and timer triggers against Azurite: a message is deleted once its function
returns, retried after a failure with its dequeue count, and moved to `<queue>-poison` after maxDequeueCount
failures; timers resolve their schedule from app settings and run now through POST /admin/functions/<name>;
and `python -m devhost --triggers` names every missing setting before serving anything."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
import requests
from azure.storage.queue import QueueClient

from devhost import DevHost
from devhost.triggers import ncrontab
from devhost.triggers.functions import SettingExpressionError
from devhost.triggers.host_options import HostJsonError, read_queue_options

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


# -- NCRONTAB --------------------------------------------------------------------------------------------------------


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 */15 * * * *", "2026-01-01T10:07:30", "2026-01-01T10:15:00"),
        ("0 */15 * * * *", "2026-01-01T10:15:00", "2026-01-01T10:30:00"),  # strictly after
        ("0 5 * * * *", "2026-01-01T10:05:00", "2026-01-01T11:05:00"),
        ("0 0 6 * * *", "2026-01-01T07:00:00", "2026-01-02T06:00:00"),
        ("*/10 * * * * *", "2026-01-01T00:00:01", "2026-01-01T00:00:10"),
        ("0 30 9 * * 1-5", "2026-01-02T10:00:00", "2026-01-05T09:30:00"),  # Friday after 9:30 -> Monday
        ("0 30 9 * Jan Mon", "2026-01-06T00:00:00", "2026-01-12T09:30:00"),
        ("0 0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
        ("0 0 12 1 * 0", "2026-01-02T00:00:00", "2026-01-04T12:00:00"),  # day or weekday when both restricted
    ],
)
def test_ncrontab_next_firing(expression: str, after: str, expected: str) -> None:
    assert ncrontab.parse(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("0 */15 * * *", "six fields"),
        ("0 61 * * * *", "minute value 61"),
        ("0 0 25 * * *", "hour value 25"),
        ("0 0 0 * Foo *", "month value 'Foo'"),
        ("0 5-1 * * * *", "runs backwards"),
        ("0 */0 * * * *", "step must be at least 1"),
    ],
)
def test_ncrontab_refuses_what_the_host_refuses_naming_the_field(expression: str, names: str) -> None:
    with pytest.raises(ncrontab.ScheduleError, match=names):
        ncrontab.parse(expression)


def test_host_json_queue_options_are_read_and_checked(tmp_path: Path) -> None:
    options = read_queue_options(ROOT / "host.json")
    assert (options.batch_size, options.new_batch_threshold, options.max_dequeue_count) == (16, 8, 5)
    assert options.visibility_timeout_seconds == 30 and options.function_timeout_seconds == 600
    assert options.max_polling_interval_seconds == 2
    bad = tmp_path / "host.json"
    bad.write_text(json.dumps({"extensions": {"queues": {"batchSize": 64}}}))
    with pytest.raises(HostJsonError, match="batchSize"):
        read_queue_options(bad)
    bad.write_text(json.dumps({"extensions": {"queues": {"visibilityTimeout": "thirty"}}}))
    with pytest.raises(HostJsonError, match="visibilityTimeout"):
        read_queue_options(bad)


# -- queue triggers against Azurite ----------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bytes]] = []
        self.lock = threading.Lock()

    def add(self, message: func.QueueMessage) -> None:
        with self.lock:
            self.calls.append((message.id or "", message.dequeue_count or 0, message.get_body()))


def queue_app(queue_name: str, recorder: Recorder) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
    def work(msg: func.QueueMessage) -> None:
        recorder.add(msg)
        if msg.get_body().startswith(b"fail"):
            raise RuntimeError("this message always fails")

    @app.timer_trigger(schedule="%TEST_SCHEDULE%", arg_name="timer", run_on_startup=False)
    def tick(timer: func.TimerRequest) -> None:
        recorder.calls.append(("tick", 0, b"past_due" if timer.past_due else b""))

    @app.route(route="ping", auth_level=func.AuthLevel.ANONYMOUS)
    def ping(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("pong")

    return app


@pytest.fixture
def queue_host(azurite, tmp_path: Path) -> Iterator[tuple[DevHost, QueueClient, Recorder, str]]:
    name = f"devloop-{uuid.uuid4().hex[:10]}"
    host_json = tmp_path / "host.json"
    # Retries one second after a failure, three tries: the poison path in a few seconds.
    host_json.write_text(
        json.dumps({"extensions": {"queues": {"batchSize": 4, "maxDequeueCount": 3, "visibilityTimeout": "00:00:01"}}})
    )
    environ = {
        "AzureWebJobsStorage": azurite.connection_string,
        "TEST_QUEUE": name,
        "TEST_SCHEDULE": "0 0 0 1 1 *",  # once a year: only the admin endpoint fires it here
    }
    recorder = Recorder()
    host = DevHost(queue_app(name, recorder), triggers=True, environ=environ, host_json=host_json).start()
    client = QueueClient.from_connection_string(azurite.connection_string, name)
    yield host, client, recorder, name
    host.stop()


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def send(client: QueueClient, text: str) -> None:
    client.send_message(base64.b64encode(text.encode()).decode())


def test_a_message_runs_once_and_is_deleted(queue_host) -> None:
    host, client, recorder, _ = queue_host
    send(client, "hello")
    wait_for(lambda: recorder.calls)
    wait_for(lambda: client.get_queue_properties().approximate_message_count == 0)
    time.sleep(1.5)  # past the visibility timeout: a message not deleted would come back
    assert [(count, body) for _, count, body in recorder.calls] == [(1, b"hello")]
    assert host.triggers is not None and ("work", recorder.calls[0][0], "done") in host.triggers.outcomes


def test_a_failing_message_is_retried_with_its_dequeue_count_then_poisoned(queue_host, azurite) -> None:
    host, client, recorder, name = queue_host
    send(client, "fail please")
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{name}-poison")
    wait_for(lambda: any(outcome == "poison" for _, _, outcome in host.triggers.outcomes), timeout=30)
    assert [count for _, count, _ in recorder.calls] == [1, 2, 3]  # maxDequeueCount tries, no more
    assert [outcome for _, _, outcome in host.triggers.outcomes] == ["retry", "retry", "poison"]
    (moved,) = list(poison.receive_messages())
    assert base64.b64decode(moved.content) == b"fail please"
    assert client.get_queue_properties().approximate_message_count == 0


def test_a_message_that_is_not_base64_goes_to_poison_without_running(queue_host, azurite) -> None:
    host, client, recorder, _ = queue_host
    client.send_message("not base64 at all!")
    wait_for(lambda: host.triggers.outcomes)
    assert recorder.calls == [] and [o for _, _, o in host.triggers.outcomes] == ["poison"]


def test_a_batch_runs_in_parallel_and_every_message_once(queue_host) -> None:
    _, client, recorder, _ = queue_host
    for n in range(12):
        send(client, f"m{n}")
    wait_for(lambda: len(recorder.calls) == 12)
    assert sorted(body for _, _, body in recorder.calls) == sorted(f"m{n}".encode() for n in range(12))


# -- running a function now -------------------------------------------------------------------------------------------


def test_admin_functions_runs_a_timer_now_with_the_master_key_only(queue_host) -> None:
    host, _, recorder, _ = queue_host
    url = f"{host.url}/admin/functions/tick"
    assert requests.post(url, json={"input": ""}, timeout=5).status_code == 401
    assert (
        requests.post(url, json={"input": ""}, headers={"x-functions-key": host.keys.host_key}, timeout=5).status_code
        == 401
    )
    assert recorder.calls == []
    answer = requests.post(url, json={"input": ""}, headers={"x-functions-key": host.keys.master_key}, timeout=5)
    assert answer.status_code == 202
    wait_for(lambda: recorder.calls)
    assert recorder.calls == [("tick", 0, b"")]


def test_admin_functions_runs_a_queue_function_on_the_input_and_404s_the_rest(queue_host) -> None:
    host, _, recorder, _ = queue_host
    headers = {"x-functions-key": host.keys.master_key}
    assert (
        requests.post(
            f"{host.url}/admin/functions/work", json={"input": "direct"}, headers=headers, timeout=5
        ).status_code
        == 202
    )
    wait_for(lambda: recorder.calls)
    assert [(count, body) for _, count, body in recorder.calls] == [(1, b"direct")]
    assert requests.post(f"{host.url}/admin/functions/ping", json={}, headers=headers, timeout=5).status_code == 404
    assert requests.post(f"{host.url}/admin/functions/nothing", json={}, headers=headers, timeout=5).status_code == 404
    bad = requests.post(f"{host.url}/admin/functions/work", json={"input": 3}, headers=headers, timeout=5)
    assert bad.status_code == 400 and "input" in bad.json()["error"]


def test_an_unset_schedule_setting_is_refused_at_construction(azurite) -> None:
    recorder = Recorder()
    with pytest.raises(SettingExpressionError) as refused:
        DevHost(
            queue_app("q", recorder),
            triggers=True,
            environ={"AzureWebJobsStorage": azurite.connection_string, "TEST_QUEUE": "q"},
        )
    assert refused.value.missing == ["TEST_SCHEDULE"]


# -- every missing setting named at start-up -------------------------------------------------------------------------


def test_python_m_devhost_triggers_names_every_missing_setting_and_serves_nothing(tmp_path: Path) -> None:
    env_file = tmp_path / "partial.env"
    env_file.write_text("ENTRA_CLIENT_ID=not-a-guid\nSYNC_SCHEDULE=0 */15 * * * *\n")
    keep = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devhost",
            "--port",
            "0",
            "--no-local-settings",
            "--triggers",
            "--env-file",
            str(env_file),
        ],
        cwd=ROOT,
        env={**keep, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "listening" not in result.stdout
    named = {line.split(":")[0].strip(" -") for line in result.stderr.splitlines()[1:]}
    assert named == {
        "AzureWebJobsStorage",
        "HEALTH_SCHEDULE",
        "CERTIFICATE_EXPIRY_SCHEDULE",
        "HOUSEKEEPING_SCHEDULE",
        "ENTRA_CLIENT_ID",
        "ENTRA_HOME_TENANT_ID",
        "KEY_VAULT_URL",
        "KEY_VAULT_CERTIFICATE_NAME",
        "STORAGE_CONNECTION_STRING or STORAGE_ACCOUNT_NAME",
        "ONBOARDING_REDIRECT_URI",
    }
    assert "ENTRA_CLIENT_ID: Setting ENTRA_CLIENT_ID must be a GUID" in result.stderr
