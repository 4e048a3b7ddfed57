"""The import graph of builder/ and distros/, read with ast (nothing is imported).

- No cycle among the modules, counting the imports that run when a module is loaded:
  those at module level, including under try/if, but not under `if TYPE_CHECKING:`.
  Imports inside functions are left out of the cycle check: they run later, when the
  function is called, and the CLI uses them to stay quick to start. The direction rules
  below count every import, wherever it is written.
- Imports run pipeline -> steps -> context: a step never imports builder.pipeline nor
  another step (builder/steps/__init__.py, the list of steps, imports them all).
- The distro plugins import nothing from the engine but its error types.
- The packages that group builder/ by concern (cache, housekeeping, image, report, vm)
  re-export nothing: their __init__.py is a docstring, and imports name the real module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("builder", "distros")


@dataclass(frozen=True)
class Import:
    target: str  # a module of PACKAGES (the package itself for `from pkg import name`)
    at_load: bool  # runs when the importing module is loaded
    line: int
    type_only: bool = False  # under `if TYPE_CHECKING:`: never runs


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(nodes: list[ast.stmt], at_load: bool,
          type_only: bool = False) -> Iterator[tuple[ast.stmt, bool, bool]]:
    """Every statement, with whether it runs when the module is loaded and whether it is
    only for the type checker."""
    for node in nodes:
        yield node, at_load, type_only
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(node.body, False, type_only)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk(node.body, False, True)
            yield from _walk(node.orelse, at_load, type_only)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    statements = [c for c in children if isinstance(c, ast.stmt)]
                    handlers = [c for c in children if isinstance(c, ast.ExceptHandler)]
                    yield from _walk(statements, at_load, type_only)
                    for handler in handlers:
                        yield from _walk(handler.body, at_load, type_only)


def _targets(node: ast.stmt, importer: str) -> list[str]:
    """The modules of PACKAGES an import statement loads (with `from a import b`, a.b
    when b is a module, else a)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = importer.split(".")
            if MODULES[importer].name != "__init__.py":
                package.pop()
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                 for alias in node.names]
    else:
        return []
    return [name for name in names if name.split(".")[0] in PACKAGES]


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    return [Import(target, at_load, node.lineno, type_only)
            for node, at_load, type_only in _walk(tree.body, True)
            for target in _targets(node, module)]


GRAPH = {module: imports_of(module) for module in MODULES}


def _load_edges(graph: Mapping[str, list[Import]],
                at_run_time: bool = False) -> dict[str, set[str]]:
    """Who loads whom: an import of a.b.c also loads the packages a and a.b. With
    at_run_time, the imports inside functions count too (not those for the type checker)."""
    edges: dict[str, set[str]] = {module: set() for module in graph}
    for module, imports in graph.items():
        for imp in imports:
            if imp.type_only or not (imp.at_load or at_run_time):
                continue
            parts = imp.target.split(".")
            for end in range(1, len(parts) + 1):
                loaded = ".".join(parts[:end])
                if loaded in graph and loaded != module:
                    edges[module].add(loaded)
    return edges


def find_cycle(edges: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of `edges` as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_graph_is_read_from_the_sources() -> None:
    # The walker sees what the code says: load-time, function-level and TYPE_CHECKING
    # imports, `from pkg import module`, and the steps the pipeline runs.
    pipeline = {imp.target: imp.at_load for imp in GRAPH["builder.pipeline"]}
    assert pipeline["builder.steps"] is True and pipeline["builder.context"] is True
    assert {"builder.steps.boot", "builder.steps.install"} <= {
        imp.target for imp in GRAPH["builder.steps"]}
    cli = {imp.target: imp.at_load for imp in GRAPH["builder.cli"]}
    assert cli["builder.pipeline"] is False  # imported inside the build command
    manifest = {imp.target: imp.at_load for imp in GRAPH["builder.manifest"]}
    assert manifest["builder.context"] is False  # under `if TYPE_CHECKING:`
    assert len(MODULES) > 60 and "distros.rhel" in MODULES


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d"}}) == ["d", "d"]


def test_no_import_cycle_among_the_modules() -> None:
    cycle = find_cycle(_load_edges(GRAPH))
    assert cycle is None, " -> ".join(cycle or [])


def test_no_cycle_hidden_in_a_function_level_import() -> None:
    # An import moved into a function hides a circle from the loader, not from the design.
    cycle = find_cycle(_load_edges(GRAPH, at_run_time=True))
    assert cycle is None, " -> ".join(cycle or [])


STEPS = sorted(m for m in MODULES if m.startswith("builder.steps."))


@pytest.mark.parametrize("step", STEPS)
def test_a_step_imports_neither_the_pipeline_nor_another_step(step: str) -> None:
    wrong = [(imp.target, imp.line) for imp in GRAPH[step]
             if imp.target == "builder.pipeline" or imp.target == "builder.steps"
             or imp.target.startswith("builder.steps.")]
    assert wrong == [], f"{MODULES[step].relative_to(ROOT)} imports {wrong}"


def test_the_steps_are_found() -> None:
    assert {"builder.steps.boot", "builder.steps.install", "builder.steps.export"} <= set(STEPS)


@pytest.mark.parametrize("module", [
    "builder.context", "builder.vm.guest", "builder.cache.chain", "builder.work_dir"])
def test_what_the_steps_share_imports_no_step_nor_the_pipeline(module: str) -> None:
    wrong = [imp.target for imp in GRAPH[module]
             if imp.target == "builder.pipeline" or imp.target.startswith("builder.steps")]
    assert wrong == [], module


@pytest.mark.parametrize("plugin", sorted(m for m in MODULES if m.split(".")[0] == "distros"))
def test_the_plugins_import_nothing_from_the_engine_but_its_errors(plugin: str) -> None:
    engine = {imp.target for imp in GRAPH[plugin] if imp.target.split(".")[0] == "builder"}
    assert engine <= {"builder.errors"}, (plugin, engine)


def test_every_plugin_module_is_checked() -> None:
    plugins = {m for m in MODULES if m.split(".")[0] == "distros"}
    assert plugins >= {"distros", "distros.debian", "distros.facts", "distros.rhel",
                       "distros.suse", "distros.ubuntu"}


def test_the_requirements_table_imports_nothing_of_its_own() -> None:
    # The prep writer, the in-guest check and the offline check all read it: it reads none.
    assert GRAPH["builder.requirements"] == []


OFFLINE_CHECK = sorted(m for m in MODULES if m.startswith("builder.offline_check"))


@pytest.mark.parametrize("module", OFFLINE_CHECK)
def test_the_offline_check_stands_apart_from_the_build(module: str) -> None:
    # `azbuild check` runs on any image: it needs no build, no step and no distro plugin.
    wrong = [imp.target for imp in GRAPH[module]
             if imp.target in ("builder.pipeline", "builder.context", "builder.azure_prep")
             or imp.target.startswith(("builder.steps", "distros"))]
    assert wrong == [], module


def test_the_offline_check_package_loads_none_of_its_modules() -> None:
    # Its modules import each other; a package that loaded them would sit in their cycle.
    assert GRAPH["builder.offline_check"] == []
    assert {"builder.offline_check.check", "builder.offline_check.guest_checks",
            "builder.offline_check.image"} <= set(OFFLINE_CHECK)


CONCERNS = ("builder.cache", "builder.housekeeping", "builder.image", "builder.report",
            "builder.vm")


@pytest.mark.parametrize("package", CONCERNS)
def test_a_concern_package_reexports_nothing(package: str) -> None:
    # builder/<concern>/ only groups modules; an import names the module that defines the
    # name, so the package's __init__.py imports nothing and defines nothing but its
    # docstring.
    assert GRAPH[package] == []
    tree = ast.parse(MODULES[package].read_text())
    assert ast.get_docstring(tree) and len(tree.body) == 1, package
    assert any(m.startswith(f"{package}.") for m in MODULES), package
