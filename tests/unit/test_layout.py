"""The shape of the code base: no import cycle between project modules, the direction of imports
(`function_app → functions → shared`, never from shared into development-only folders), which shared package may
import which, and the size limits that keep a folder or a module readable (issue: one folder per concept).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("shared", "functions", "sandbox", "devhost", "cli", "bench", "demo", "tools", "tests")
DEVELOPMENT_ONLY = ("sandbox", "devhost", "cli", "bench", "demo", "tools", "tests")
MAX_MODULES_PER_FOLDER = 12
MAX_MODULE_LINES = 600

# What each package of shared/ may import of the project (besides itself). Its __init__ docstring says the same
# in prose; this is the check.
SHARED_DEPENDENCIES: dict[str, set[str]] = {
    "shared.errors": set(),
    "shared.telemetry": set(),
    "shared.settings": {"shared.errors"},
    "shared.auth": {"shared.errors", "shared.settings"},
    "shared.signin": {"shared.errors", "shared.settings", "shared.auth"},
    "shared.dataverse": {"shared.errors", "shared.settings", "shared.auth", "shared.telemetry"},
    "shared.tenants": {
        "shared.errors",
        "shared.settings",
        "shared.auth",
        "shared.dataverse",
        "shared.signin",
        "shared.telemetry",
    },
    "shared.webhooks": {"shared.errors", "shared.settings", "shared.dataverse", "shared.tenants", "shared.telemetry"},
    "shared.jobs": {"shared.errors", "shared.settings", "shared.dataverse", "shared.tenants", "shared.telemetry"},
    "shared.storage": {"shared.errors", "shared.settings", "shared.auth"},
    "shared.troubleshooting": {"shared.auth", "shared.dataverse"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {"function_app": ROOT / "function_app.py"}
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every module name an import statement in `tree` asks for, function-level imports included (a lazy
    import still ties the two modules together). Imports under `if TYPE_CHECKING:` are left out: they never run,
    and a stand-in may name the facade that holds it in a type hint.
    """
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from package import name` counts when `name` is a module)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {
            imported
            for imported in _imported_names(tree, name, path.name == "__init__.py")
            if imported in modules and imported != name
        }
        graph[name] = targets
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted; [] when acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _owner(module: str, owners: Iterable[str]) -> str | None:
    return next((o for o in sorted(owners, key=len, reverse=True) if module == o or module.startswith(o + ".")), None)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_cycle_finder_reports_a_cycle_and_nothing_else() -> None:
    fabricated = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set(), "f": {"f2"}, "f2": {"f"}}
    assert cycles(fabricated) == [["a", "b", "c"], ["f", "f2"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_import_graph_sees_lazy_and_relative_imports_but_not_type_checking_ones(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n    from pkg import hinted\n"
        "def f():\n    from pkg.lazy import thing\n"
    )
    names = set(_imported_names(ast.parse(source), "pkg.mod", is_package=False))
    assert {"pkg.sibling", "pkg.lazy"} <= names
    assert "pkg.hinted" not in names


def test_no_import_cycle_between_project_modules(graph: dict[str, set[str]]) -> None:
    assert len(graph) > 150  # the walk found the project
    assert cycles(graph) == []


def test_app_code_never_imports_development_only_folders(graph: dict[str, set[str]]) -> None:
    app_modules = [m for m in graph if m == "function_app" or _owner(m, ("shared", "functions"))]
    wrong = sorted(
        (module, target)
        for module in app_modules
        for target in graph[module]
        if _owner(target, DEVELOPMENT_ONLY) is not None
    )
    assert app_modules and wrong == []


def test_imports_run_function_app_to_functions_to_shared(graph: dict[str, set[str]]) -> None:
    upward = sorted(
        (module, target)
        for module in graph
        if _owner(module, ("shared",))
        for target in graph[module]
        if target == "function_app" or _owner(target, ("functions",))
    )
    assert upward == []


def test_each_shared_package_imports_only_what_it_declares(graph: dict[str, set[str]]) -> None:
    packages = set(SHARED_DEPENDENCIES)
    undeclared = sorted(
        (module, target)
        for module in graph
        if (owner := _owner(module, packages)) is not None
        for target in graph[module]
        if (target_owner := _owner(target, packages | {"shared.bootstrap"})) not in (None, owner)
        and target_owner not in SHARED_DEPENDENCIES[owner]
    )
    assert undeclared == []


def test_every_package_says_what_it_owns() -> None:
    silent = []
    for base in ("shared", "sandbox"):
        for init in sorted((ROOT / base).rglob("__init__.py")):
            tree = ast.parse(init.read_text(encoding="utf-8"))
            if init.parent != ROOT / base and not ast.get_docstring(tree):
                silent.append(str(init.relative_to(ROOT)))
    assert silent == []


def test_no_folder_of_shared_or_sandbox_holds_more_than_twelve_modules() -> None:
    crowded = {}
    for base in ("shared", "sandbox"):
        for folder in [ROOT / base, *(p for p in (ROOT / base).rglob("*") if p.is_dir())]:
            modules = [p for p in folder.glob("*.py")]
            if len(modules) > MAX_MODULES_PER_FOLDER:
                crowded[str(folder.relative_to(ROOT))] = len(modules)
    assert crowded == {}


def test_no_module_outside_tests_is_longer_than_six_hundred_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for name, path in project_modules().items()
        if not name.startswith("tests")
        and (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
