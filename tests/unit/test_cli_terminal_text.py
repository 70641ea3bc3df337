"""Stored text the CLI prints cannot drive the operator's terminal: control and format characters come out as
escapes in text mode, and ``--json`` stays valid JSON with the exact stored values."""

from __future__ import annotations

import json
import unicodedata
from types import SimpleNamespace

import pytest

from cli.main import main
from cli.terminal_text import terminal_safe
from shared.bootstrap import use_services
from shared.tenants.registry import TenantRegistry, TenantStatus
from tests.unit.fake_table import FakeTable

TENANT = "aaaaaaaa-0000-0000-0000-00000000abcd"
HOSTILE = {
    "ESC (colour, cursor, title)": "\x1b[2J\x1b]0;pwned\x07",
    "CSI as one C1 byte": "\x9b31m",
    "carriage return over the line": "ok\rforged",
    "NUL and DEL": "a\x00b\x7f",
    "newline": "line one\nline two",
    "right-to-left override": "evil\u202egnp.exe",
    "zero-width space and joiner": "ad\u200bmin\u200d",
    "line separator": "a\u2028b",
    "byte order mark": "\ufeffx",
}


def is_terminal_safe(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=list(HOSTILE))
def test_every_control_and_format_character_is_shown_as_an_escape(value: str) -> None:
    shown = terminal_safe(value)
    assert shown.isprintable()
    assert shown != value
    # Nothing is dropped: each escape names the character it replaces.
    for ch in value:
        if not ch.isprintable():
            assert (f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}") in shown


def test_printable_text_in_any_script_is_shown_as_it_is() -> None:
    for text in ("Zoë Müller <zoe@fabrikam.example>", "山田 太郎", "Ελένη", "admin@contoso.onmicrosoft.com", ""):
        assert terminal_safe(text) == text


def test_no_code_point_survives_raw_unless_printable() -> None:
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    shown = terminal_safe(every)
    assert shown.isprintable()
    categories = {unicodedata.category(ch) for ch in every if not ch.isprintable()}
    assert {"Cc", "Cf", "Zl", "Zp", "Co", "Cn"} <= categories  # what the check above covered
    assert terminal_safe("\U000e0001") == "\\U000e0001"  # beyond the BMP: eight hex digits


@pytest.fixture
def stored_tenant() -> SimpleNamespace:
    """A registry row whose free text holds every hostile value, as an old row or another writer may have it."""
    registry = TenantRegistry(FakeTable(), FakeTable())
    hostile = "".join(HOSTILE.values())
    registry.record(
        TENANT,
        TenantStatus.PENDING_CONSENT,
        reason="reason " + hostile,
        actor="actor " + hostile,
        org_url="https://fabrikam.crm4.dynamics.com",
        onboarded_by="upn " + hostile,
        contact="contact " + hostile,
    )
    services = SimpleNamespace(registry=registry, settings=None)
    use_services(services)  # type: ignore[arg-type]
    yield SimpleNamespace(hostile=hostile)
    use_services(None)


def test_tenants_show_in_text_escapes_every_stored_value(stored_tenant, capsys) -> None:
    assert main(["tenants", "show", TENANT]) == 0
    out = capsys.readouterr().out
    assert is_terminal_safe(out)
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert "contact: contact " + terminal_safe(stored_tenant.hostile) in out
    assert "onboarded_by: upn " + terminal_safe(stored_tenant.hostile) in out
    history = next(line for line in out.splitlines() if line.startswith("history: "))
    assert "reason \\x1b[2J" in history and "actor \\x1b[2J" in history


def test_tenants_show_in_json_is_valid_and_keeps_the_exact_values(stored_tenant, capsys) -> None:
    assert main(["--json", "tenants", "show", TENANT]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and is_terminal_safe(out)
    shown = json.loads(out)
    assert shown["contact"] == "contact " + stored_tenant.hostile
    assert shown["onboarded_by"] == "upn " + stored_tenant.hostile
    assert shown["history"][0]["reason"] == "reason " + stored_tenant.hostile
    assert shown["history"][0]["actor"] == "actor " + stored_tenant.hostile


def test_job_progress_on_stderr_is_escaped_too(capsys) -> None:
    from cli import main as cli_main

    def run_health(tenant: str | None, progress) -> SimpleNamespace:
        progress(TENANT, "failed", "Dataverse said \x1b[31mred\x1b[0m\r")
        return SimpleNamespace(to_dict=lambda: {"job": "health"})

    args = SimpleNamespace(jobs_command="run", job="health", tenant=None, single_invocation=True)
    cli_main._jobs(SimpleNamespace(jobs=SimpleNamespace(run_health=run_health)), args)
    err = capsys.readouterr().err
    assert err.endswith("\n") and is_terminal_safe(err) and "\\x1b[31mred" in err
