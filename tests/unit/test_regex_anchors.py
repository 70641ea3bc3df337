"""`re.match` with `^…$` accepts a trailing newline (`$` also matches just before a final "\\n"); every whole-value
check in shared/ and functions/ uses `fullmatch` instead (issue 16, section 5). The guard test keeps it so."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.dataverse.errors import _parse_error_body
from shared.dataverse.odata import ENTITY_SET, query_string
from shared.dataverse.org_url import _LABEL
from shared.errors import ConfigurationError
from shared.settings import Settings, is_guid
from shared.webhooks.remote_context import parse_date, parse_value

ROOT = Path(__file__).resolve().parents[2]
GUID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
BASE = {
    "ENTRA_CLIENT_ID": GUID,
    "ENTRA_HOME_TENANT_ID": GUID,
    "KEY_VAULT_URL": "https://kv.vault.azure.net/",
    "KEY_VAULT_CERTIFICATE_NAME": "s2s",
}


def _accepted(call: Callable[[], object]) -> bool:
    try:
        call()
    except ValueError:
        return False
    return True


def _select(name: str) -> Callable[[], object]:
    return lambda: query_string(select=[name])


def _date(value: str) -> Callable[[], object]:
    return lambda: parse_date(value)


def _dataverse_code(code: str) -> Callable[[], object]:
    def read() -> object:
        if _parse_error_body(json.dumps({"error": {"code": code, "message": "m"}}).encode())[0] is None:
            raise ValueError("code not recognised")
        return code

    return read


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (_select, "name"),
        (_date, "/Date(1700000000000)/"),
        (_dataverse_code, "0x80072560"),
        (lambda v: lambda: None if is_guid(v) else int("x"), GUID),
        (lambda v: lambda: None if _LABEL.fullmatch(v) else int("x"), "contoso"),
        (lambda v: lambda: None if ENTITY_SET.fullmatch(v) else int("x"), "accounts"),
    ],
)
def test_a_value_is_accepted_and_the_same_value_with_a_trailing_newline_is_not(
    check: Callable[[str], Callable[[], object]], value: str
) -> None:
    assert _accepted(check(value))
    assert not _accepted(check(value + "\n"))


def test_a_webhook_string_ending_in_a_newline_is_not_read_as_a_date() -> None:
    assert parse_value("/Date(1700000000000)/") == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert parse_value("/Date(1700000000000)/\n") == "/Date(1700000000000)/\n"


@pytest.mark.parametrize(
    ("field", "good"),
    [
        ("storage_account_name", "contososyncst"),
        ("webhook_secret_header", "x-contoso-secret"),
        ("sync_container", "dataverse-changes"),
    ],
)
def test_settings_refuse_a_value_with_a_trailing_newline(field: str, good: str) -> None:
    # from_env strips values, so the checks are reached with a newline only when Settings is built directly.
    base = Settings.from_env(BASE)
    assert getattr(replace(base, **{field: good}), field) == good
    with pytest.raises(ConfigurationError, match=field.upper()):
        replace(base, **{field: good + "\n"})


def _anchored_patterns(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals passed to a re function or re.compile that start with ^ or end with an unescaped $."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "re"):
            continue
        if node.func.attr not in {"compile", "match", "fullmatch", "search"} or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            pattern = first.value
            if pattern.startswith("^") or re.search(r"(?<!\\)\$$", pattern):
                found.append((node.lineno, pattern))
    return found


def test_no_anchored_pattern_or_re_match_in_app_code() -> None:
    offenders = []
    for folder in ("shared", "functions"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
            where = path.relative_to(ROOT)
            offenders += [f"{where}:{line}: {pattern!r}" for line, pattern in _anchored_patterns(tree)]
            offenders += [
                f"{where}:{node.lineno}: .match()"
                for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "match"
            ]
    assert offenders == []


def test_the_guard_sees_what_it_looks_for() -> None:
    sample = 'import re\nA = re.compile(r"^x$")\nre.match(r"y$", s)\nre.fullmatch(r"z", s)\nre.search(r"\\$", s)\n'
    assert [p for _, p in _anchored_patterns(ast.parse(sample))] == ["^x$", "y$"]
