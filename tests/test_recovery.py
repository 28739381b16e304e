"""Nothing lost: a sweep killed with SIGKILL resumes to its budget, keeping every finished result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest

from regsweep import cache
from regsweep import study as studies

REGSWEEP = str(Path(sys.executable).with_name("regsweep"))
TINY = [
    "train.epochs=6",
    "train.fine_tune_epochs=2",
    "tracking.artifacts=none",
    "sweep.pruner.name=none",
    "sweep.reevaluate.seeds=0",
]
UNSTOPPED_EPOCHS = ["train.epochs=30", "train.early_stopping_patience=30"]


def sweep_command(store: Path, storage: str, study: str, *extra: str) -> list[str]:
    return [
        REGSWEEP,
        "sweep",
        f"paths.store={store}",
        f"sweep.storage={storage}",
        f"sweep.study={study}",
        "sweep.heartbeat_seconds=1",
        *TINY,
        *extra,
    ]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc. A thread or process that ends while it is
    read has no children left to list (TensorFlow's threads come and go)."""
    children = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            listed = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in listed:
            children += [int(child), *descendants(int(child))]
    return children


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read through one engine per URL: polling must not open a connection each time."""
    try:
        opened = studies.open_storage(storage, connect_timeout=10)
        return optuna.load_study(study_name=study, storage=opened).get_trials()
    except KeyError:  # not created yet
        return []


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_to_its_budget_and_loses_nothing(store, optuna_storage):
    study = f"kill-{uuid.uuid4().hex[:8]}"
    # Every epoch of the budget runs (no early stop), so the victim trains for seconds after its
    # run appears even on a fast machine: the kill lands mid-trial, not after the trial ended.
    command = sweep_command(
        store,
        optuna_storage,
        study,
        "sweep.n_trials=4",
        "augment.strength=choice(0.0, 0.5)",
        *UNSTOPPED_EPOCHS,
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def second_trial_training():  # one trial finished, the next has its MLflow run
        states = trials(optuna_storage, study)
        done = [t for t in states if t.state.name == "COMPLETE"]
        running = [t for t in states if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
        return (done, running[0]) if done and running else None

    try:
        done_before, victim = wait_for(second_trial_training, 300, "a complete trial and a running one")
        worker_pids = descendants(process.pid)
        process.send_signal(signal.SIGKILL)  # at once: a fixed wait raced the trial's end on a fast machine
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    # The trial's worker goes with its sweep: nothing finishes the trial behind the restart's back.
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in worker_pids),
        10,
        "the sweep's worker to exit",
    )
    tracking = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    assert tracking.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "RUNNING"

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    after = {t.number: t for t in trials(optuna_storage, study)}
    for before in done_before:  # finished results are kept, exactly
        assert after[before.number].state.name == "COMPLETE"
        assert after[before.number].user_attrs["val_accuracy"] == before.user_attrs["val_accuracy"]
        assert tracking.get_run(before.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    killed = after[victim.number]
    assert killed.state.name == "FAIL"
    assert killed.user_attrs["fail_reason"].startswith("interrupted")
    killed_run = tracking.get_run(victim.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "FAILED"
    assert killed_run.data.tags["regsweep.error"].startswith("interrupted")
    states = [t.state.name for t in after.values()]
    assert "RUNNING" not in states
    assert sum(state in ("COMPLETE", "PRUNED") for state in states) == 4

    experiment = tracking.get_experiment_by_name("regsweep").experiment_id
    runs = tracking.search_runs([experiment], f"tags.`regsweep.study` = '{study}'")
    parents = [r for r in runs if r.data.tags.get("regsweep.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert "RUNNING" not in {r.info.status for r in children}
    assert {t.user_attrs["mlflow_run_id"] for t in after.values()} == {r.info.run_id for r in children}

    # The feature cache holds only whole entries: each one reads back against its checksums.
    rows = cache.FeatureStore(store / "cache", 10**12).listing()
    assert rows
    for row in rows:
        cache._verified_arrays(row["path"])


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (FileNotFoundError, IndexError):
        return "zombie"


@pytest.mark.slow
def test_two_sweeps_on_one_study_share_the_budget_without_losing_or_repeating_a_trial(store, tmp_path):
    """Two `regsweep sweep` processes started together on one new study in the embedded SQLite
    stores of one machine (test_scale_out.py does it across machines, on PostgreSQL and an
    mlflow server)."""
    study = f"pair-{uuid.uuid4().hex[:8]}"
    optuna_url, mlflow_url = f"sqlite:///{store}/optuna.db", f"sqlite:///{store}/mlflow.db"
    budget, workers = 6, 2
    command = sweep_command(
        store,
        optuna_url,
        study,
        f"sweep.n_trials={budget}",
        f"tracking.uri={mlflow_url}",
        "model.dropout=interval(0.0, 0.5)",
        "augment.strength=choice(0.0, 0.5)",
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(workers)
    ]
    outputs = [p.communicate(timeout=900) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, (out + err)[-3000:]

    finished = trials(optuna_url, study)
    states = [t.state.name for t in finished]
    counted = sum(state in ("COMPLETE", "PRUNED") for state in states)
    assert budget <= counted <= budget + workers - 1  # docs/scaling-out.md's bound: at most one extra per worker
    assert states.count("FAIL") == 0 and "RUNNING" not in states
    assert sum(bool(t.user_attrs.get("baseline")) for t in finished) == 1
    # Each worker's sampler has its own seed: two workers started together explore, not repeat.
    drawn = [tuple(sorted(t.params.items())) for t in finished if not t.user_attrs.get("baseline")]
    assert len(drawn) == len(set(drawn)), drawn

    tracking = mlflow.MlflowClient(mlflow_url)
    experiment = tracking.get_experiment_by_name("regsweep").experiment_id
    runs = tracking.search_runs([experiment], f"tags.`regsweep.study` = '{study}'")
    parents = [r for r in runs if r.data.tags.get("regsweep.role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    run_ids = [t.user_attrs["mlflow_run_id"] for t in finished]
    assert len(set(run_ids)) == len(run_ids) == len(children)  # one run per trial, none twice
    assert set(run_ids) == {r.info.run_id for r in children}
    assert {r.info.status for r in children} == {"FINISHED"}
    rows = cache.FeatureStore(store / "cache", 10**12).listing()  # filled by both, whole entries only
    assert rows
    for row in rows:
        cache._verified_arrays(row["path"])
