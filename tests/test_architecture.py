"""The shape of the code: the library's import graph has no circle and never reaches the DAG package."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tlpipe", "components", "pipelines")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (in functions too: a lazy import still makes
    the two modules depend on each other), each resolved to the longest known module name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    known = set(files)
    # A package's __init__ that only re-exports is not a dependency of its own submodules.
    return {name: imports(path, known) - {name} for name, path in files.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports between modules (packages through their __init__ excluded), or None."""
    def deps(name):
        return {d for d in edges.get(name, ()) if not name.startswith(d + ".")}

    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(deps(node)):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()))


def test_the_circle_check_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_dag_or_component_packages():
    offenders = {name: sorted(d for d in deps if d.startswith(("pipelines", "components")))
                 for name, deps in graph().items() if name.startswith("tlpipe")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_components_hold_no_ml_logic():
    """A component is its signature and one call into the library: no torch, numpy or mlflow of its own."""
    for path in (REPO / "components").glob("*.py"):
        heavy = {n for n in imports(path, {"torch", "numpy", "mlflow", "sklearn"}) if n}
        assert not heavy, f"{path.name} imports {sorted(heavy)}"
