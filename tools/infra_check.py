"""Checks the Bicep under ``infra/`` offline, without a Bicep CLI (none can be installed here).

Two steps, both run from checkov's own virtual environment ``.venv-infra`` (checkov pins many packages, so it is
kept apart from the project venv; created on first use from ``requirements-infra.txt``):

1. every ``infra/**/*.bicep`` must parse with pycep, the parser checkov uses;
2. ``checkov --framework bicep`` must report no failed check. checkov exits 0 when it cannot parse a file and then
   runs no checks at all, so this also fails on any parsing error, on zero resources or checks, and on an inline
   ``// checkov:skip=ID: reason`` without a reason. Only inline skips count: a checkov config file is refused.

Exit status: 0 when everything passes, 1 when a check fails, 2 when the environment cannot be set up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
VENV = ROOT / ".venv-infra"
REQUIREMENTS = ROOT / "requirements-infra.txt"
# A copy of the requirements the venv was built from: a changed requirements file rebuilds it.
STAMP = VENV / ".installed-requirements.txt"
VENV_PYTHON = VENV / "bin" / "python"
CHECKOV = VENV / "bin" / "checkov"
CHECKOV_CONFIG_FILES = (".checkov.yaml", ".checkov.yml")
MIN_SKIP_REASON = 10

# Runs inside .venv-infra: parses each file named on the command line, prints {path: error or null} as JSON.
PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
parser = BicepParser()
result = {}
for name in sys.argv[1:]:
    try:
        parser.parse(file_path=Path(name))
        result[name] = None
    except Exception as exc:
        result[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
print(json.dumps(result))
"""


class CheckFailed(Exception):
    """A check did not pass; the message says which and why."""


class SetupFailed(Exception):
    """The checker's own environment could not be prepared."""


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def ensure_venv() -> bool:
    """Create ``.venv-infra`` and install requirements-infra.txt unless already done. Returns True if installed."""
    wanted = REQUIREMENTS.read_text()
    if VENV_PYTHON.exists() and CHECKOV.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return False
    out(f"infra check: installing {REQUIREMENTS.name} into {VENV.name} (about a minute when it downloads)")
    if not VENV_PYTHON.exists():
        run_setup([sys.executable, "-m", "venv", str(VENV)])
    # Keep the venv out of git (and so out of ruff, which honours .gitignore) without touching the repo's files.
    (VENV / ".gitignore").write_text("*\n")
    run_setup(
        [
            str(VENV_PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ]
    )
    STAMP.write_text(wanted)
    return True


def run_setup(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise SetupFailed(f"`{' '.join(command)}` failed ({proc.returncode}):\n{tail}")


def bicep_files(infra: Path) -> list[Path]:
    files = sorted(infra.rglob("*.bicep"))
    if not files:
        raise CheckFailed(f"no .bicep files under {infra}/")
    return files


def parse_all(files: list[Path]) -> None:
    """Step 1: every file parses with pycep."""
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [str(VENV_PYTHON), "-c", PARSE_SCRIPT, *(str(f) for f in files)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SetupFailed(f"the pycep parse step could not run:\n{proc.stderr.strip()[-2000:]}")
    errors = {name: error for name, error in json.loads(proc.stdout).items() if error}
    if errors:
        lines = [f"  {name}: {error}" for name, error in sorted(errors.items())]
        raise CheckFailed(
            f"{len(errors)} Bicep file(s) do not parse with pycep (checkov would skip them silently; "
            "avoid newer syntax such as @export() and user-defined types):\n" + "\n".join(lines)
        )


def run_checkov(infra: Path) -> dict[str, Any]:
    """Step 2: run checkov on the folder and merge its report(s)."""
    for folder in (ROOT, infra):
        for name in CHECKOV_CONFIG_FILES:
            if (folder / name).exists():
                raise CheckFailed(f"{folder / name} exists: only inline skips with a reason are allowed")
    env = dict(os.environ, LOG_LEVEL="WARNING")
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [str(CHECKOV), "-d", str(infra), "--framework", "bicep", "--skip-download", "-o", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SetupFailed(
            f"checkov printed no JSON (exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()[-2000:]}"
        ) from None
    reports = data if isinstance(data, list) else [data]
    merged: dict[str, Any] = {"passed": [], "failed": [], "skipped": [], "parsing_errors": [], "resources": 0}
    version = "?"
    for report in reports:
        # With nothing to scan checkov prints a bare summary instead of a report.
        summary = report.get("summary", report)
        version = summary.get("checkov_version", version)
        merged["resources"] += int(summary.get("resource_count", 0))
        results = report.get("results", {})
        merged["passed"] += results.get("passed_checks", [])
        merged["failed"] += results.get("failed_checks", [])
        merged["skipped"] += results.get("skipped_checks", [])
        merged["parsing_errors"] += results.get("parsing_errors", [])
    merged["version"] = version
    merged["folder"] = infra
    return merged


def checked_resources(report: dict[str, Any]) -> set[str]:
    """Resources at least one check ran on. (checkov's own resource_count also counts string parameters.)"""
    checks = report["passed"] + report["failed"] + report["skipped"]
    return {f"{check['file_path']}:{check['resource']}" for check in checks}


def evaluate(report: dict[str, Any]) -> None:
    """Raise CheckFailed unless the checkov report is a real pass."""
    problems: list[str] = []
    if report["parsing_errors"]:
        names = ", ".join(sorted(str(p) for p in report["parsing_errors"]))
        problems.append(f"checkov could not parse: {names} (it runs no checks on them and still exits 0)")
    ran = len(report["passed"]) + len(report["failed"])
    if report["resources"] == 0 or ran == 0 or not checked_resources(report):
        problems.append(f"checkov ran {ran} checks on {len(checked_resources(report))} resources: nothing was scanned")
    for check in report["failed"]:
        lines = check.get("file_line_range") or ["?", "?"]
        problems.append(
            f"FAILED {check['check_id']} {check['check_name']}: {check['resource']} "
            f"({report['folder']}{check['file_path']}:{lines[0]}-{lines[1]})"
        )
    for check in report["skipped"]:
        reason = (check.get("check_result") or {}).get("suppress_comment", "").strip()
        if len(reason) < MIN_SKIP_REASON or reason == "No comment provided":
            where = f"{report['folder']}{check['file_path']}"
            problems.append(
                f"SKIPPED WITHOUT A REASON {check['check_id']} on {check['resource']} ({where}): "
                f"write `// checkov:skip={check['check_id']}: why` inside the resource body"
            )
    if problems:
        raise CheckFailed("checkov:\n" + "\n".join(f"  {p}" for p in problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list the skipped checks with their reasons")
    parser.add_argument("--infra", type=Path, default=INFRA, help="folder to check (default: infra/)")
    args = parser.parse_args(argv)
    infra = args.infra.resolve()
    started = time.monotonic()
    try:
        installed = ensure_venv()
        files = bicep_files(infra)
        parse_all(files)
        report = run_checkov(infra)
        evaluate(report)
    except SetupFailed as exc:
        sys.stderr.write(f"infra check could not run: {exc}\n")
        return 2
    except CheckFailed as exc:
        sys.stderr.write(f"infra check FAILED: {exc}\n")
        return 1
    if args.verbose:
        for check in report["skipped"]:
            reason = check["check_result"]["suppress_comment"].strip()
            out(f"  skipped {check['check_id']} on {check['resource']}: {reason}")
    out(
        f"infra check passed: {len(files)} Bicep files parsed; checkov {report['version']}: "
        f"{len(report['passed'])} passed, {len(report['failed'])} failed, "
        f"{len(report['skipped'])} skipped (inline, with reasons) on {len(checked_resources(report))} resources "
        f"[{time.monotonic() - started:.1f} s{', venv installed' if installed else ''}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
