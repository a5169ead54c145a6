"""The package's shape: imports run one way (no circle, type-only imports counted, read with `ast` from every
module), no layer reaches up, and only `backends/` tells the kinds of role spec and backend apart."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "builders" / "popalign"
SPEC_TYPES = {"ModelSpec", "EndpointSpec", "Spec"}
#: The backends' kinds (`popalign.backends.REGISTRY`), which only `backends/` may compare a spec's kind with.
BACKEND_KINDS = {"local", "llama.cpp", "endpoint"}
#: What the strategy contract (`contrasts`) may import: the types its declarations name, and nothing above them.
CONTRACT_IMPORTS = {"popalign.errors", "popalign.styles", "popalign.generation", "popalign.prompts"}
#: Modules above the data layer (`dataset/`), which it never imports: it is written by them, not the other way.
ABOVE_DATA = {
    f"popalign.{name}"
    for name in ("judging", "scoring", "pipeline", "api", "cli", "commands", "evaluation", "engine", "merge", "publish")
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports: at the top, in a function, or for type checking alone (a type the
    module names is a dependency as much as a function it calls)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("popalign"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {node.module}
    return found - {module_name(path)}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, found by a depth-first walk (each reported once, from where the walk met it)."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state[target] == 1:
                found.append([*path[path.index(target) :], target])
            elif state[target] == 0:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module, [module])
    return found


def test_the_walk_sees_the_imports_it_must() -> None:
    graph = import_graph()
    assert "popalign.api" in graph["popalign.cli"]
    assert {"popalign.pipeline", "popalign.plan"} <= graph["popalign.scale_out"]
    assert "popalign.backends.local" in graph["popalign.backends"]  # a lazy import counts too
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_imports_one_that_imports_it() -> None:
    graph = import_graph()
    assert circles(graph) == []
    assert "popalign.api" not in graph["popalign.scale_out"]  # tasks run a plan, never the API
    assert "popalign" not in graph["popalign.dataset.card"]  # the version comes from package metadata


def test_no_layer_reaches_up() -> None:
    """The data layer does not import what writes it (the card once read the paper's figures from `judging`), and
    the strategy contract's types live below it."""
    graph = import_graph()
    for module, imported in graph.items():
        if module.startswith("popalign.dataset"):
            assert imported & ABOVE_DATA == set(), module
    assert graph["popalign.contrasts"] <= CONTRACT_IMPORTS, graph["popalign.contrasts"] - CONTRACT_IMPORTS
    assert "popalign.contrasts" in graph["popalign.config"]  # the walk sees what it must


def test_only_backends_compare_a_backend_kind() -> None:
    """Outside `backends/`, code asks a spec what it is (`served`, `runner`), never compares its kind with a
    backend's name."""
    compared = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = {side.value for side in sides if isinstance(side, ast.Constant)}
                if names & BACKEND_KINDS and any(ast.unparse(side).endswith(".kind") for side in sides):
                    compared.append(f"{path.name}:{node.lineno}")
    assert compared == []


def test_only_backends_tell_spec_kinds_apart() -> None:
    tested = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance" and len(node.args) == 2:
                names = {part.id for part in ast.walk(node.args[1]) if isinstance(part, ast.Name)}
                if names & SPEC_TYPES:
                    tested.append(f"{path.name}:{node.lineno}")
    assert tested == []
