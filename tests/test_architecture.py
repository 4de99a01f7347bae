"""The package's layers (docs/architecture.md): imports go downwards only, with no cycle.

Every module's imports are read from its source, those inside functions included, so a
deferred import cannot hide an upward dependency.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "video_diffusion_pytorch"

# bottom to top; a module may import from its own layer and the ones below
LAYERS = [
    ("foundation", {"version", "helpers", "checks", "files", "host_memory", "denoiser", "pretrained", "text"}),
    ("network", {"nn", "positions", "attention", "unet_inputs", "unet"}),
    ("diffusion", {"schedules", "process", "samplers", "conditioning", "generation", "diffusion"}),
    ("models and data", {"hub", "video_io", "data", "synthetic", "checkpoint", "metrics"}),
    ("training", {
        "loader", "training_data", "ema", "results", "milestones", "run_settings", "run_lock", "run_state",
        "accelerated", "optimisation", "memory", "tracking", "compilation", "trainer", "demo",
    }),  # fmt: skip
    ("interface", {"cli", "__main__", "video_diffusion_pytorch", "__init__"}),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def unit(path: Path) -> str:
    """The layer-table name of a source file: its module, or its top-level subpackage."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def package_imports(path: Path) -> set[str]:
    """The package's modules (layer-table names) that a source file imports, anywhere in it."""
    relative = path.relative_to(PACKAGE)
    package = ["video_diffusion_pytorch", *relative.parts[:-1]]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [*base, *(node.module.split(".") if node.module else [])]
                targets = [names] if node.module else [[*names, alias.name] for alias in node.names]
            else:
                targets = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for target in targets:
            if target[0] == "video_diffusion_pytorch" and len(target) > 1:
                found.add(target[1])
    return found - {unit(path)}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph.setdefault(unit(path), set()).update(package_imports(path))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    unplaced = sorted(set(import_graph()) - set(LAYER_OF))
    assert not unplaced, f"add these modules to a layer in tests/test_architecture.py and docs/architecture.md: {unplaced}"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_downwards_only():
    upward = [
        f"{module} ({LAYERS[LAYER_OF[module]][0]}) imports {target} ({LAYERS[LAYER_OF[target]][0]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if LAYER_OF.get(target, -1) > LAYER_OF.get(module, len(LAYERS))
    ]
    assert not upward, "imports must go downwards only:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", ["nn", "attention", "unet"])
def test_the_network_imports_nothing_above_it(module):
    allowed = LAYERS[0][1] | LAYERS[1][1]
    assert import_graph()[module] <= allowed, sorted(import_graph()[module] - allowed)


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path):
    """The graph reader finds imports inside functions, and the cycle finder finds cycles."""
    source = tmp_path / "unet.py"
    source.write_text("def f():\n    from .trainer import Trainer\n    from . import diffusion\n")
    global PACKAGE
    original, PACKAGE = PACKAGE, tmp_path
    try:
        assert package_imports(source) == {"trainer", "diffusion"}
    finally:
        PACKAGE = original
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None



MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # a constructor's argument list does not count


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.body[0].lineno if node.name == "__init__" else node.lineno
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}: {node.name} is {node.end_lineno - start + 1} lines")
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines or functions over {MAX_FUNCTION_LINES}: {too_long}"
