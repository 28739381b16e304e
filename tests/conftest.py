"""Shared fixtures: a throwaway lab notebook, generated image folders, quick configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests never write to a user's tracking server

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = Path(os.environ.get("REGSWEEP_SHARED_WEIGHTS", REPO.parent / "shared" / "weights"))

# The longest files first: `make test` hands whole files to two processes as each becomes free
# (with --no-loadscope-reorder; xdist otherwise sorts files by their number of tests), so starting
# with the long ones lets both finish together. Seconds each file took (fresh clone of 1d3f043,
# 2026-12-08, --durations=0, machine otherwise idle): faults 216, ui 165, train 105, sweep 98,
# recovery 92, reevaluate 85, scale_out 81, secrets 80, rounds 76, calibration 69, cache 53,
# bad_input 52 (31 of them building the shared finished study), model 22, wheel 17; the rest under
# 12 each. A stale order costs only balance, never a result.
LONGEST_FIRST = [
    "test_faults.py",
    "test_ui.py",
    "test_train.py",
    "test_sweep.py",
    "test_recovery.py",
    "test_reevaluate.py",
    "test_scale_out.py",
    "test_secrets.py",
    "test_rounds.py",
    "test_calibration.py",
    "test_cache.py",
    "test_bad_input.py",
    "test_model.py",
    "test_wheel.py",
]


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept


# Small budgets: a test checks behaviour, not accuracy.
QUICK = ["train.epochs=3", "train.fine_tune_epochs=2", "train.early_stopping_patience=10"]


@pytest.fixture(autouse=True, scope="session")
def printing_as_the_cli_does():
    """regsweep's lines reach the test's captured stdout and stderr as the `regsweep` command prints
    them, and (propagated) pytest's caplog too: the command stops them there, where a host's root
    handlers would print each twice."""
    import logging

    from regsweep import progress

    progress.configure(logging.INFO)
    logging.getLogger(progress.LOGGER).propagate = True


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """The folder `name`, filled by `build(folder)` once per test run and shared by pytest-xdist's
    workers (`make test` runs two): what one worker built, the other waits for and reads."""
    from regsweep.files import file_lock

    if worker_id == "master":  # not distributed: this process is the whole run
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    folder, built = root / name, root / f"{name}.built"
    with file_lock(root / f"{name}.lock"):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died half-way
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory, worker_id) -> Path:
    """One store for the test run, so the demo backbone is pretrained once."""
    return built_once(tmp_path_factory, worker_id, "mlruns", lambda folder: None)


@pytest.fixture
def store(tmp_path, demo_store) -> Path:
    """A fresh store per test that reuses the session's demo cache (data and backbone)."""
    return new_store(tmp_path, demo_store)


# The shared study's settings: 3 short trials in the test process, every artifact logged, and a
# one-seed re-evaluation, so the answer's model is registered.
FINISHED_STUDY = [
    "sweep.n_trials=3",
    "train.epochs=3",
    "train.fine_tune_epochs=1",
    "sweep.reevaluate.seeds=1",
    "sweep.reevaluate.max_seeds=1",
    "sweep.reevaluate.top_k=1",
    "sweep.reevaluate.curve=[]",
    "sweep.pruner.name=none",
    "sweep.trials_per_worker=0",
    "tracking.artifacts=all",
]


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory, worker_id, demo_store) -> Path:
    """A store holding one finished demo study, `regularization`, with its report: for the tests
    that only read a study (the browser test, the bad-input test), so it is swept once a run."""
    from regsweep import sweep

    def sweep_once(folder: Path) -> None:
        sweep.run_study([f"paths.store={new_store(folder, demo_store)}", *FINISHED_STUDY])

    return built_once(tmp_path_factory, worker_id, "finished-study", sweep_once) / "mlruns"


def tracking_client(store: Path):
    """An MLflow client on a test store, opened under regsweep's own creation lock.

    A test that polls a store while a sweep in another process creates it would otherwise create
    MLflow's tables too, and the sweep can die on "table ... already exists" (it did in CI).
    """
    import mlflow

    from regsweep import tracking

    url = f"sqlite:///{store}/mlflow.db"
    with tracking.creating(url):
        return mlflow.MlflowClient(url)


def stored_trials(store: Path, study: str) -> list:
    """The study's Optuna trials, read under the creation lock for the same reason."""
    import optuna

    from regsweep import tracking

    url = f"sqlite:///{store}/optuna.db"
    with tracking.creating(url):
        return optuna.load_study(study_name=study, storage=url).get_trials()


def new_store(root: Path, demo_store: Path) -> Path:
    """<root>/mlruns, empty but for the session's demo cache (a machine of its own, in scale-out tests)."""
    store = root / "mlruns"
    store.mkdir(parents=True)
    (demo_store / "demo").mkdir(parents=True, exist_ok=True)
    (store / "demo").symlink_to(demo_store / "demo")
    return store


def quick_cfg(store: Path, *overrides: str):
    from regsweep.config import compose

    return compose([f"paths.store={store}", *QUICK, *overrides])


def write_class_folders(
    root: Path, per_class: int, size: int = 40, classes=("circle", "square", "stripes"), modes=("RGB",), seed: int = 0
) -> Path:
    """Writes a learnable toy dataset: each class is a drawn pattern with random colour and position."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for class_index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
            draw = ImageDraw.Draw(image)
            colour = tuple(int(v) for v in rng.integers(150, 256, 3))
            x, y = rng.integers(2, size // 3, 2)
            extent = size // 2
            if class_index % 3 == 0:
                draw.ellipse([x, y, x + extent, y + extent], fill=colour)
            elif class_index % 3 == 1:
                draw.rectangle([x, y, x + extent, y + extent], fill=colour)
            else:
                for row in range(0, size, 6):
                    draw.line([0, row, size, row], fill=colour, width=2)
            mode = modes[i % len(modes)]
            image.convert(mode).save(folder / f"{name}_{i:03d}.png")
    return root


def service_url(variable: str, what: str) -> str:
    """The URL of a real service that .ci/run starts (PostgreSQL, an mlflow server).

    Locally a test that needs one is skipped, visibly; in CI (CI=true) its absence is a failure.
    """
    url = os.environ.get(variable)
    if url:
        return url
    message = f"{what} is not running: {variable} is unset (bash .ci/run starts it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgresql"])
def optuna_storage(request, tmp_path) -> str:
    """The embedded SQLite file, and (where .ci/run started it) a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.db"
    return service_url("REGSWEEP_TEST_POSTGRES_URL", "PostgreSQL")
