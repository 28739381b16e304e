"""regsweep as a user installs it: a wheel built from this checkout, installed (not editable) into
a fresh virtual environment, finds its configs and sweep definitions and runs a study from an
empty folder, far from the checkout's conf/ and sweeps/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "mlruns", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "test-artifacts"
)


def dependency_dirs() -> list[str]:
    """This interpreter's site-packages folders. Listed as plain lines in a .pth file, they lend
    the fresh environment TensorFlow and the rest without a download, but not the editable
    regsweep: Python does not run the .pth files (the editable install's hook) inside them."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


def run(command: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # no other regsweep
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh virtual environment with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, root / "checkout", ignore=NOT_SOURCES)  # the build's files stay out of the checkout
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            root / "dist",
            root / "checkout",
        ],
        root,
    )
    wheel = next((root / "dist").glob("regsweep-*.whl"))
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    Path(purelib, "_test_dependencies.pth").write_text("\n".join(dependency_dirs()) + "\n")
    # --ignore-installed: the editable regsweep's metadata is visible through the .pth; leave it be.
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], root)
    return root / "venv" / "bin"


def test_the_wheel_carries_the_license_the_version_and_py_typed(installed, tmp_path):
    wheel = next((installed.parents[1] / "dist").glob("regsweep-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode().splitlines()
        assert archive.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert "regsweep/py.typed" in names  # PEP 561: type checkers read the package's annotations
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert run([installed / "python", "-m", "regsweep", "--version"], tmp_path).stdout == f"regsweep {version}\n"
    shown = run([installed / "python", "-m", "pip", "show", "regsweep"], tmp_path).stdout  # the wheel's metadata
    assert "License-Expression: Apache-2.0" in shown and f"Version: {version}" in shown


@pytest.mark.slow
def test_the_installed_wheel_runs_from_an_empty_folder(installed, tmp_path, store):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([installed / "python", "-c", "import regsweep; print(regsweep.__file__)"], empty).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where  # the wheel's copy, not the checkout's src/
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert run([installed / "regsweep", "--version"], empty).stdout.strip() == f"regsweep {version}"
    job = run([installed / "regsweep", "train", "--cfg", "job", "model.dropout=0.25"], empty).stdout
    assert "backbone: demo_cnn" in job and "dropout: 0.25" in job
    swept = run(
        [
            installed / "regsweep",
            "sweep",
            f"paths.store={store}",
            "sweep.study=wheel",
            "sweep.n_trials=1",
            "train.epochs=1",
            "train.fine_tune_epochs=1",
            "tracking.artifacts=none",
            "sweep.reevaluate.seeds=0",
        ],
        empty,
        timeout=600,
    )
    assert "trial 1/1 (#0 baseline)" in swept.stdout and "| COMPLETE" in swept.stdout, swept.stdout[-3000:]
    assert (store / "reports" / "wheel" / "report.md").is_file()
    assert not any(empty.iterdir())  # everything went to the store

    own = tmp_path / "own" / "conf" / "model"  # a user's own option beside the packaged ones
    own.mkdir(parents=True)
    (own / "wide.yaml").write_text("defaults:\n  - demo_cnn\n  - _self_\nhead_units: 256\n")
    job = run([installed / "regsweep", "train", "--cfg", "job", "model=wide"], tmp_path / "own").stdout
    assert "head_units: 256" in job and "backbone: demo_cnn" in job
