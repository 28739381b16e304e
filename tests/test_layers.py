"""The package reads top to bottom: every module imports only modules below it, so there are no
import loops, and the sweep's own process never loads TensorFlow."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "regsweep"

# Top to bottom: CLI → commands → study mechanics → decisions → training → data and models →
# tracking and config. docs/architecture.md's code tour follows the same order.
LAYERS = [
    "cli",
    "sweep",
    "report",
    "ui",
    "reevaluate",
    "trial",
    "study",
    "worker",
    "space",
    "results",
    "export",
    "train",
    "fit",
    "cache",
    "data",
    "demo",
    "model",
    "tracking",
    "plots",
    "files",
    "progress",
    "faults",
    "config",
    "metrics",
]


def own_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(regsweep module imported, line, whether inside a function) for each import of the package."""
    tree = ast.parse(path.read_text())
    inside = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
        if node is not function
    }
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "regsweep":
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("regsweep."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("regsweep.")]
        found += [(name, node.lineno, id(node) in inside) for name in names]
    return found


def test_every_module_has_a_place_in_the_layers():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(LAYERS), "place a new module in LAYERS (and in docs/architecture.md's code tour)"


def test_modules_import_only_modules_below_them_so_there_are_no_loops():
    upward = [
        f"{module}.py:{line} imports {target}"
        for module in LAYERS
        for target, line, _ in own_imports(PACKAGE / f"{module}.py")
        if LAYERS.index(target) <= LAYERS.index(module)
    ]
    assert upward == []


def test_an_import_inside_a_function_says_why_on_its_line():
    lines = {module: (PACKAGE / f"{module}.py").read_text().splitlines() for module in LAYERS}
    unexplained = [
        f"{module}.py:{line}"
        for module in LAYERS
        for _, line, in_function in own_imports(PACKAGE / f"{module}.py")
        if in_function and "lazy:" not in lines[module][line - 1]
    ]
    assert unexplained == []


def test_the_decision_module_is_plain_python():
    """No MLflow, Optuna or TensorFlow in the decisions: NumPy and SciPy for the statistics only."""
    tree = ast.parse((PACKAGE / "results.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= {"__future__", "functools", "math", "statistics", "dataclasses", "numpy", "scipy", "regsweep"}


def test_the_sweep_process_and_the_cli_do_not_load_tensorflow():
    code = (
        "import sys, regsweep.cli, regsweep.sweep, regsweep.report, regsweep.ui, regsweep.cache; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]"


def test_importing_regsweep_changes_no_environment_warning_filter_logger_or_plotting_backend():
    """A library user's process stays theirs: regsweep sets up its libraries' output in
    `regsweep`'s entry function (config.quiet_libraries), never on import."""
    code = f"""
import importlib, logging, os, sys, warnings
import hydra, keras, matplotlib, mlflow, numpy, optuna, omegaconf, sqlalchemy  # their own import-time effects
keras.applications  # which loads matplotlib.pyplot
def state():
    loggers = {{name: logging.getLogger(name).level for name in ["", *logging.root.manager.loggerDict]}}
    pyplot = "matplotlib.pyplot" in sys.modules
    return dict(os.environ), list(warnings.filters), loggers, dict.__getitem__(matplotlib.rcParams, "backend"), pyplot
before = state()
for module in {sorted(LAYERS)!r}:
    importlib.import_module("regsweep." + module)
after = state()
before[2].update((name, level) for name, level in after[2].items() if name not in before[2] and level == 0)
kinds = ("environment", "warnings", "loggers", "backend", "pyplot")
print([kind for kind, b, a in zip(kinds, before, after) if b != a])
"""
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert shown.stdout.strip() == "[]", shown.stdout + shown.stderr[-2000:]


# A library's private attribute (a name with a leading underscore) breaks on its next release.
PRIVATE_ACCESS = re.compile(r"(?<![\w.])(?!self\.|cls\.|os\._exit)([A-Za-z_]\w*)\._[a-z]\w*")


def test_no_private_attribute_of_another_library_is_used():
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_ACCESS.search(line.split("#")[0]) and not line.lstrip().startswith("#")
    ]
    assert found == []
