"""Before the development host serves anything: every app setting it and the app need, named at once.

Three sources: the triggers' own settings (a queue trigger's connection, every `%NAME%` in a schedule or queue
name; the Functions host refuses to start a function whose expression it cannot resolve), the app's settings
check (for this app `shared.settings.Settings.from_env`, which stops at the first problem: it is run again with
a stand-in value for each setting it names, so that all of them are reported together), and settings the app
reads only on first use, declared by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from devhost.indexing import SkippedFunction
from devhost.triggers.functions import settings_named

# Values that satisfy one setting's own validation, tried in turn, so the check can go on to the next setting.
_STAND_INS = ("00000000-0000-0000-0000-000000000001", "https://stand-in.invalid", "standin", "1", "true")
_MAX_ROUNDS = 60


@dataclass(frozen=True)
class SettingProblem:
    setting: str
    problem: str


@dataclass(frozen=True)
class RuntimeNeed:
    """One of `settings` must be set; `purpose` says what needs it."""

    settings: tuple[str, ...]
    purpose: str


def trigger_problems(skipped: list[SkippedFunction], environ: Mapping[str, str]) -> list[SettingProblem]:
    return [
        SettingProblem(name, f"is not set; needed by the trigger of {', '.join(functions)}")
        for name, functions in sorted(settings_named(skipped).items())
        if not environ.get(name, "").strip()
    ]


def app_check_problems(
    check: Callable[[Mapping[str, str]], object], environ: Mapping[str, str]
) -> list[SettingProblem]:
    """Run `check(environ)`; for each error carrying a `setting` attribute, note it, give that setting a stand-in
    value that passes and run again. An error without `setting` is reported as it is and ends the search."""
    env = dict(environ)
    problems: list[SettingProblem] = []
    error = _run(check, env)
    for _ in range(_MAX_ROUNDS):
        if error is None:
            break
        name = getattr(error, "setting", None)
        if not isinstance(name, str) or any(p.setting == name for p in problems):
            problems.append(SettingProblem(str(name or "settings"), str(error)))
            break
        problems.append(SettingProblem(name, str(error)))
        for stand_in in _STAND_INS:
            env[name] = stand_in
            error = _run(check, env)
            if error is None or getattr(error, "setting", None) != name:
                break
    return problems


def runtime_problems(needs: Sequence[RuntimeNeed], environ: Mapping[str, str]) -> list[SettingProblem]:
    return [
        SettingProblem(" or ".join(need.settings), f"is not set; needed by {need.purpose}")
        for need in needs
        if not any(environ.get(name, "").strip() for name in need.settings)
    ]


def _run(check: Callable[[Mapping[str, str]], object], env: Mapping[str, str]) -> Exception | None:
    try:
        check(env)
    except Exception as exc:
        return exc
    return None


def report(problems: list[SettingProblem]) -> str:
    """The refusal message: every problem on its own line."""
    lines = [f"{len(problems)} app setting(s) missing or invalid:"]
    lines += [f"  - {p.setting}: {p.problem}" for p in problems]
    return "\n".join(lines)
