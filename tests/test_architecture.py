"""The package's shape, read statically with `ast` (nothing is imported, so no optional runtime is needed).

- Every module of edgeprune/ is at most 400 lines.
- No import cycle among edgeprune modules through imports run at import time: the module's top level,
  including `try`/`if` blocks, but not `if TYPE_CHECKING:` blocks. Imports inside functions run when called and
  are allowed to point back (they are how an optional runtime or a heavy stage is imported lazily), so they do
  not count as cycles. An edge goes to the module named: `from pkg import name` is an edge to pkg's
  `__init__`, or to `pkg.name` when that is a submodule; the parent packages Python imports on the way are
  not edges (every module would otherwise reach edgeprune/__init__.py).
- Layering, for every import, lazy ones included: the base layers (errors, files, registry, config, targets/,
  backends/base/) never import the upper layers (pipeline/, cli/).
- No module uses another module's private name (`_name`, dunders aside): neither `from .x import _name` nor
  `x._name` on an imported edgeprune module. A package's `__init__` gets no exception: a name another module
  needs is public where it is defined, not re-exported under a private name.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edgeprune"
MAX_LINES = 400
BASE_LAYERS = ("edgeprune.errors", "edgeprune.files", "edgeprune.registry", "edgeprune.config",
               "edgeprune.targets", "edgeprune.backends.base")
UPPER_LAYERS = ("edgeprune.pipeline", "edgeprune.cli")


@dataclass
class Import:
    target: str  # the edgeprune module imported (dotted)
    names: list[str]  # names taken from it (`from x import a, b`); empty for `import x`
    line: int
    lazy: bool  # inside a function


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: int
    imports: list[Import] = field(default_factory=list)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(node: ast.AST, lazy: bool = False):
    """Every import statement under `node`, with whether it runs only when a function is called."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child):
            for sub in child.orelse:
                yield from _walk_imports(ast.Module(body=[sub], type_ignores=[]), lazy)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, lazy
        inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk_imports(child, inner)


def load_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = _module_name(path)
        modules[name] = Module(name, path, ast.parse(text, str(path)), len(text.splitlines()))
    for mod in modules.values():
        package = mod.name if _is_package(mod.path) else mod.name.rpartition(".")[0]
        for node, lazy in _walk_imports(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "edgeprune":
                        mod.imports.append(Import(alias.name, [], node.lineno, lazy))
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "edgeprune":
                continue
            plain = [a.name for a in node.names if f"{source}.{a.name}" not in modules]
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:  # a submodule
                    mod.imports.append(Import(f"{source}.{alias.name}", [], node.lineno, lazy))
            if plain or source in modules and not node.names:
                mod.imports.append(Import(source, plain, node.lineno, lazy))
    return modules


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components (more than one module, or a module importing itself) of the import-time
    graph (Tarjan)."""
    edges = {name: sorted({i.target for i in mod.imports if not i.lazy and i.target in modules})
             for name, mod in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layering_violations(modules: dict[str, Module]) -> list[str]:
    return [f"{mod.name}:{i.line} imports {i.target}" for mod in modules.values() if _under(mod.name, BASE_LAYERS)
            for i in mod.imports if _under(i.target, UPPER_LAYERS)]


def private_imports(modules: dict[str, Module]) -> list[str]:
    """`from x import _name` and `x._name` where x is another edgeprune module."""
    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found = []
    for mod in modules.values():
        for imp in mod.imports:
            if imp.target != mod.name:
                found += [f"{mod.name}:{imp.line} imports {imp.target}.{n}" for n in imp.names if private(n)]
        bound = _bound_modules(mod, modules)
        for node in ast.walk(mod.tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and private(node.attr) and bound[node.value.id] != mod.name):
                found.append(f"{mod.name}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return found


def _bound_modules(mod: Module, modules: dict[str, Module]) -> dict[str, str]:
    """Local names bound to edgeprune modules by `from pkg import submodule [as name]` or `import a.b as name`."""
    bound = {}
    package = mod.name if _is_package(mod.path) else mod.name.rpartition(".")[0]
    for node, _ in _walk_imports(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
    return bound


@pytest.fixture(scope="module")
def modules():
    return load_modules()


def test_the_package_is_read(modules):
    assert "edgeprune.pipeline.loop" in modules and "edgeprune.pruning.prune" in modules
    imported = {i.target for i in modules["edgeprune.pruning.allocation"].imports}
    assert {"edgeprune.pruning.prune", "edgeprune.registry"} <= imported


def test_no_module_is_over_400_lines(modules):
    over = {m.name: m.lines for m in modules.values() if m.lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_no_import_cycle_at_import_time(modules):
    assert import_cycles(modules) == []


def test_base_layers_never_import_the_pipeline_or_the_cli(modules):
    assert layering_violations(modules) == []


def test_no_module_uses_another_modules_private_names(modules):
    assert private_imports(modules) == []


def test_the_checks_find_what_they_look_for():
    """The checks themselves, on a made-up graph: a cycle, a layering breach and a private import are found."""
    def module(name: str, imports: list[Import], source: str = "") -> Module:
        return Module(name, PACKAGE / (name.replace(".", "/") + ".py"), ast.parse(source), 1, imports)

    fake = {
        "edgeprune.a": module("edgeprune.a", [Import("edgeprune.b", ["thing"], 1, False)]),
        "edgeprune.b": module("edgeprune.b", [Import("edgeprune.a", ["_hidden"], 1, False)]),
        "edgeprune.c": module("edgeprune.c", [Import("edgeprune.a", [], 1, True)]),
        "edgeprune.config": module("edgeprune.config", [Import("edgeprune.pipeline.loop", ["build"], 3, True)]),
    }
    assert import_cycles(fake) == [["edgeprune.a", "edgeprune.b"]]
    assert layering_violations(fake) == ["edgeprune.config:3 imports edgeprune.pipeline.loop"]
    assert private_imports(fake) == ["edgeprune.b:1 imports edgeprune.a._hidden"]
