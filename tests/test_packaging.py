"""The package as its metadata describes it: one version, the license, every import declared,
and each optional feature's missing extra named in one sentence with the install to run."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from regsweep import cli
from regsweep.config import RegsweepError, require_extra

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def name(requirement: str) -> str:
    """The normalized distribution name of a requirement such as "mlflow[auth]>=3.17"."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def test_python_m_regsweep_prints_the_version_from_the_metadata():
    result = subprocess.run(
        [sys.executable, "-m", "regsweep", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"regsweep {importlib.metadata.version('regsweep')}\n"
    assert importlib.metadata.version("regsweep") == PROJECT["version"]  # the installed metadata is this checkout's


def test_the_version_has_one_copy():
    import regsweep

    assert regsweep.__version__ == PROJECT["version"]
    copies = [p for p in (REPO / "src" / "regsweep").rglob("*.py") if f'"{PROJECT["version"]}"' in p.read_text()]
    assert not copies, f"a second copy of the version in {copies}: read importlib.metadata.version('regsweep')"


def test_pip_show_reports_the_license():
    shown = subprocess.run(
        [sys.executable, "-m", "pip", "show", "regsweep"], capture_output=True, text=True, timeout=120
    ).stdout
    assert re.search(r"^License(-Expression)?: Apache-2\.0$", shown, re.MULTILINE), shown
    assert (REPO / "LICENSE").read_text().startswith("Copyright 2026 the regsweep authors\n")
    assert "Apache License\n                           Version 2.0, January 2004" in (REPO / "LICENSE").read_text()


def test_every_import_of_the_package_is_a_declared_dependency():
    """What src/ imports at any point is a runtime dependency, not something another package
    happens to bring (sqlalchemy and requests were), nor an extra: an optional feature looks its
    package up through require_extra instead."""
    declared = {name(r) for r in PROJECT["dependencies"]}
    owners = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in sorted((REPO / "src" / "regsweep").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("regsweep", "__future__"):
                    continue
                if not {name(d) for d in owners.get(top, [top])} & declared:
                    undeclared.setdefault(top, f"{path.relative_to(REPO)}:{node.lineno}")
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


def test_each_optional_package_is_in_one_extra():
    extras = PROJECT["optional-dependencies"]
    places: dict[str, list[str]] = {}
    for extra, requirements in extras.items():
        for requirement in requirements:
            if name(requirement) != "regsweep":
                places.setdefault(name(requirement), []).append(extra)
    assert {package: where for package, where in places.items() if len(where) > 1} == {}
    assert {"ui", "postgres", "joblib", "bench", "test"} <= set(extras)
    assert "regsweep[ui,postgres,joblib]" in extras["test"]  # the suite covers every optional feature


def test_require_extra_passes_an_installed_module_and_names_the_install_for_a_missing_one(monkeypatch):
    require_extra("optuna", "ui", "regsweep ui --optuna")
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if it were not installed
    with pytest.raises(RegsweepError) as missing:
        require_extra("optuna_dashboard", "ui", "regsweep ui --optuna", "optuna-dashboard")
    assert str(missing.value) == (
        "regsweep ui --optuna needs the optional package optuna-dashboard, which is not installed: "
        "pip install 'regsweep[ui]'"
    )
    with pytest.raises(RegsweepError, match=r"pip install 'regsweep\[joblib\]'"):
        require_extra("no_such_package.plugin", "joblib", "hydra/launcher=joblib")  # no parent package either


@pytest.mark.parametrize(
    "module, args, feature, extra",
    [
        ("optuna_dashboard", ["ui", "--optuna"], "regsweep ui --optuna", "ui"),
        ("flask_wtf", ["ui", "--auth"], "regsweep ui --auth", "ui"),
        (
            "hydra_plugins.hydra_joblib_launcher",
            ["train", "-m", "hydra/launcher=joblib", "model.dropout=0.1,0.2"],
            "hydra/launcher=joblib",
            "joblib",
        ),
    ],
    ids=["ui-optuna", "ui-auth", "joblib-launcher"],
)
def test_a_missing_extra_is_one_sentence_and_exit_code_2(module, args, feature, extra, monkeypatch, tmp_path, capsys):
    """Checked before anything starts or is written: the command stops at once, in this process."""
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"regsweep: error: {feature} needs the optional package "), err
    assert err.endswith(f", which is not installed: pip install 'regsweep[{extra}]'\n"), err
    assert err.count("\n") == 1 and out == ""
    assert not any(tmp_path.iterdir())  # no store, no Hydra run folder
