"""The package's import graph, read from the source (ast): no cycles, and the layers of the
architecture only import downward (the library never imports the CLI).

Every import counts, including those inside functions (a late import that closes a cycle is
still a cycle in the design); only ``if TYPE_CHECKING:`` imports, which never run, are left out,
and so is a module's import of its own parent package (Python imports the parent first anyway).
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "archbench"


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(tree: ast.AST):
    """Import nodes, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for b in node.orelse for n in _imports_in(b))
            continue
        yield from _imports_in(node)


def _imports_in(node):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def graph() -> dict[str, set[str]]:
    mods = modules()
    g = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != mod and not mod.startswith(t + "."):
                    g[mod].add(t)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    g = graph()  # a known edge of each kind, so an empty graph cannot pass the tests below
    assert "archbench.registry" in g["archbench.layers.mixers.shift"]  # absolute, top level
    assert "archbench.search.claims" in g["archbench.search.study"]  # `from archbench.search import claims`
    assert "archbench.grammar" in g["archbench.spec"]  # inside a function


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", ["registry", "spec", "grammar", "layers", "macros", "models", "measure", "train",
                                   "search", "ablate", "studies", "results", "errors", "builder"])
def test_the_library_never_imports_the_cli(layer):
    g = graph()
    bad = {m: sorted(d for d in deps if d.startswith("archbench.cli"))
           for m, deps in g.items() if m == f"archbench.{layer}" or m.startswith(f"archbench.{layer}.")}
    assert {m: d for m, d in bad.items() if d} == {}
