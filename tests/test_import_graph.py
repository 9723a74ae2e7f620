"""The shape of the code: which package may import which, and no import cycles anywhere.

Read from the source with ``ast`` (nothing is imported), so a cycle that happens to work at
run time because of import order is still found.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fieldgate_common", "adapters", "gateway", "pushservice")
# What each package may import of ours (the leaf imports nothing of ours). The gateway's demo
# runs the reference push service and `fieldgate send` encrypts with the gateway's crypto;
# those two modules are the only bridges, named here.
ALLOWED = {
    "fieldgate_common": set(),
    "adapters": {"fieldgate_common"},
    "gateway": {"fieldgate_common", "adapters"},
    "pushservice": {"fieldgate_common"},
}
BRIDGES = {
    ("gateway.demo", "pushservice"),
    ("pushservice.send", "gateway"),
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(
    path: Path, module: str, modules: dict[str, Path], *, top_level: bool
) -> Iterator[str]:
    """The modules of ours that ``module`` imports (only at module level when ``top_level``;
    imports for type checking count: a cycle there is a cycle in the design)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = (
        list(ast.walk(tree))
        if not top_level
        else [
            node
            for top in tree.body
            for node in (top.body if _is_type_checking(top) else [top])  # type: ignore[attr-defined]
        ]
    )
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != module:
                yield name


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _graph(*, top_level: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: set(_imports(path, name, modules, top_level=top_level))
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search with colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if colour.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_there_is_no_import_cycle_between_modules():
    # Every import counts, those for type checking and those inside functions too: a lazy
    # import that would close a cycle is a cycle in the design.
    assert _cycle(_graph(top_level=True)) is None
    assert _cycle(_graph(top_level=False)) is None


def test_each_package_imports_only_what_it_may():
    wrong = []
    for module, imported in _graph(top_level=False).items():
        own = module.split(".")[0]
        for name in imported:
            other = name.split(".")[0]
            if other == own or other in ALLOWED[own]:
                continue
            if any(module == m and other == p for m, p in BRIDGES):
                continue
            wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
