"""A password in a storage or tracking URL is masked as *** everywhere regsweep writes or prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import service_url

REGSWEEP = str(Path(sys.executable).with_name("regsweep"))


def with_password(url: str, user: str = "regsweep", password: str = "secret") -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[-1]}"


@pytest.mark.slow
def test_no_output_of_a_sweep_report_and_run_contains_the_password(tmp_path):
    storage = service_url("REGSWEEP_TEST_POSTGRES_URL", "PostgreSQL")  # postgresql://regsweep:secret@127.0.0.1:…
    assert ":secret@" in storage
    tracking = with_password(service_url("REGSWEEP_TEST_MLFLOW_URL", "The mlflow server"))
    study = f"masked-{os.getpid()}"
    store = tmp_path / "mlruns"
    common = [f"paths.store={store}", f"tracking.uri={tracking}", "train.epochs=2", "train.fine_tune_epochs=1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    commands = [
        ["sweep", *common, f"sweep.storage={storage}", f"sweep.study={study}", "sweep.n_trials=2",
         "sweep.heartbeat_seconds=2", "tracking.artifacts=all", "sweep.reevaluate.seeds=0"],
        ["report", study, *common, f"sweep.storage={storage}"],
        ["train", *common, "model.dropout=0.2"],
        ["sweep", *common, "sweep.storage=postgresql://regsweep:secret@127.0.0.1:9/nowhere"],  # an error message
    ]
    started_ms = int(time.time() * 1000)
    printed = []
    for command in commands:
        result = subprocess.run([REGSWEEP, *command], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        printed.append(result.stdout + result.stderr)
        assert result.returncode in (0, 2), result.stderr[-3000:]
    assert printed[0].count("***") >= 1  # the storage line was shown, masked

    for text in printed:  # the terminal
        assert "secret" not in text, text[-3000:]
    for path in [*store.rglob("*"), *tmp_path.glob("outputs/**/*")]:  # reports, logs, Hydra's files, caches
        if path.is_file():
            assert b"secret" not in path.read_bytes(), path

    import mlflow  # MLflow params, tags and every artifact, as the server holds them

    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("regsweep")
    runs = client.search_runs([experiment.experiment_id], f"attributes.start_time >= {started_ms}")  # this test's
    assert len(runs) >= 4  # the parent, two trials, the train run
    for run in runs:
        assert "secret" not in json.dumps({"params": run.data.params, "tags": run.data.tags})
        for artifact in _artifact_files(client, run.info.run_id):
            local = client.download_artifacts(run.info.run_id, artifact, str(tmp_path / "downloaded"))
            assert b"secret" not in Path(local).read_bytes(), artifact

    recorded = optuna.load_study(study_name=study, storage=storage)  # what Optuna keeps of the study
    assert "secret" not in json.dumps([recorded.user_attrs, *[t.user_attrs for t in recorded.trials]], default=str)


def _artifact_files(client, run_id: str, folder: str | None = None) -> list[str]:
    files = []
    for entry in client.list_artifacts(run_id, folder):
        files += _artifact_files(client, run_id, entry.path) if entry.is_dir else [entry.path]
    return files
