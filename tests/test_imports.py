"""The package's own imports point one way: no import circle, config.py and errors.py depend on nothing of the
package but errors, and only the CLI imports the package inside functions (it loads what a command needs)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "selfguard_jax"
LAZY_ALLOWED = {"cli.py", "cli_run.py", "cli_lm_eval.py"}  # a command imports what it runs, so `--help` stays fast


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _targets(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The package modules an import statement loads (`from pkg import module` counts as that module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfguard_jax"):
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
        return subs or [node.module]
    return []


def _graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """Module-level imports per module, and the package imports made inside functions."""
    modules = _modules()
    graph, lazy = {}, {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        graph[name] = {t for node in tree.body for t in _targets(node, modules) if t != name}
        inner = [t for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(fn) for t in _targets(node, modules)]
        if inner:
            lazy[name] = inner
    return graph, lazy


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m: str) -> list[str] | None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle():
    graph, _ = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_detector_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["selfguard_jax.config", "selfguard_jax.errors"])
def test_base_modules_import_nothing_of_the_package(module):
    graph, _ = _graph()
    assert graph[module] <= {"selfguard_jax.errors"}


def test_only_the_cli_imports_the_package_inside_functions():
    _, lazy = _graph()
    outside = {m: t for m, t in lazy.items() if Path(_modules()[m]).name not in LAZY_ALLOWED}
    assert not outside, outside
