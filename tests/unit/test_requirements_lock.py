"""The dependency locks are current: requirements.txt pins every package requirements.in asks for at the same
exact version, and every transitive dependency, each with hashes; the same for requirements-dev.in/.txt, whose
runtime part equals requirements.txt. Offline and fast: it reads the files and the installed packages' metadata,
never an index. (`make lock-check` runs this file before the suite; the README's "Dependencies" section says how
to recompile.)

What it cannot see: a newer release on the index (that is an upgrade, done on purpose with pip-compile).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt")]
_ENTRY = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Locked:
    version: str
    hashes: set[str] = field(default_factory=set)
    via: list[str] = field(default_factory=list)


def read_inputs(name: str) -> dict[str, str]:
    """`name: version` of each requirement in a .in file (references to other files are followed); raises
    AssertionError for a requirement that is not an exact pin."""
    pins: dict[str, str] = {}
    for raw in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-c"):
            continue
        if line.startswith("-r"):
            pins.update(read_inputs(line[2:].strip()))
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name}: {line!r} is not an exact pin"
        pins[_normalise(requirement.name)] = specifiers[0].version
    return pins


def read_lock(name: str) -> dict[str, Locked]:
    """The entries of a pip-compile output file with their hashes and `# via` sources."""
    locked: dict[str, Locked] = {}
    current: Locked | None = None
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        entry = _ENTRY.match(line)
        if entry:
            current = locked.setdefault(_normalise(entry["name"]), Locked(entry["version"]))
        elif current is not None and line.startswith("    "):
            text = line.strip()
            current.hashes.update(_HASH.findall(text))
            if text.startswith("# via "):
                current.via.append(text.removeprefix("# via ").strip())
            elif text.startswith("#   "):
                current.via.append(text.removeprefix("#   ").strip())
        elif line.strip() and not line.startswith("#"):
            pytest.fail(f"{name}: unexpected line {line!r} (not pip-compile output?)")
    return locked


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_lock_is_pip_compile_output_with_hashes(source: str, lock: str) -> None:
    header = (ROOT / lock).read_text(encoding="utf-8").splitlines()[:6]

    command = next((line for line in header if line.startswith("#    pip-compile ")), "")
    assert "--generate-hashes" in command and command.endswith(f" {source}"), header


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_every_locked_package_is_pinned_and_hashed(source: str, lock: str) -> None:
    unhashed = [name for name, entry in read_lock(lock).items() if not entry.hashes]

    assert read_lock(lock), f"{lock} pins nothing"
    assert unhashed == [], f"{lock}: no hash for {unhashed}"


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_lock_pins_every_input_at_its_exact_version(source: str, lock: str) -> None:
    wanted = read_inputs(source)
    locked = read_lock(lock)

    stale = {
        name: (version, locked[name].version if name in locked else None)
        for name, version in wanted.items()
        if name not in locked or locked[name].version != version
    }
    assert stale == {}, f"{lock} is not current with {source} (wanted, locked): {stale}; recompile it (README)"


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_lock_holds_nothing_its_inputs_do_not_need(source: str, lock: str) -> None:
    wanted = read_inputs(source)
    locked = read_lock(lock)

    # pip-compile names the input file for a top-level package and the parent packages for the others.
    unexplained = {
        name: entry.via
        for name, entry in locked.items()
        if not any(via.startswith(("-r ", "-c ")) or _normalise(via) in locked for via in entry.via)
    }
    dropped = sorted(name for name, entry in locked.items() if f"-r {source}" in entry.via and name not in wanted)
    assert unexplained == {}, f"{lock}: packages no locked package needs: {unexplained}"
    assert dropped == [], f"{lock} still pins {dropped}, which {source} no longer asks for; recompile it"


def test_development_lock_holds_the_runtime_lock_unchanged() -> None:
    runtime = read_lock("requirements.txt")
    development = read_lock("requirements-dev.txt")

    differing = {
        name: (entry.version, development[name].version if name in development else None)
        for name, entry in runtime.items()
        if name not in development or development[name].version != entry.version
    }
    assert differing == {}, f"requirements-dev.txt disagrees with requirements.txt (runtime, dev): {differing}"
    assert all(development[name].hashes == entry.hashes for name, entry in runtime.items())


def test_azure_functions_is_pinned_exactly() -> None:
    # A range resolves to different releases by Python version (environment.md): the lock pins one.
    assert "azure-functions" in read_inputs("requirements.in")
    assert read_lock("requirements.txt")["azure-functions"].version == read_inputs("requirements.in")["azure-functions"]


@pytest.mark.parametrize("lock", [lock for _, lock in PAIRS])
def test_lock_is_closed_over_the_installed_packages_dependencies(lock: str) -> None:
    """Every dependency that an installed, locked package declares (for this Python and platform) is locked too.
    `make` installs the development lock before the tests, so each locked package is installed at its version."""
    locked = read_lock(lock)
    wrong_version: dict[str, tuple[str, str | None]] = {}
    missing: dict[str, list[str]] = {}
    for name, entry in locked.items():
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            wrong_version[name] = (entry.version, None)
            continue
        if distribution.version != entry.version:
            wrong_version[name] = (entry.version, distribution.version)
            continue
        for declared in distribution.requires or []:
            requirement = Requirement(declared)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if _normalise(requirement.name) not in locked:
                missing.setdefault(name, []).append(requirement.name)

    assert wrong_version == {}, f"installed packages differ from {lock} (locked, installed): run `make install`"
    assert missing == {}, f"{lock} lacks dependencies of: {missing}"
