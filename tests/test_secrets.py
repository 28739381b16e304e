"""A password in a storage or tracking URL is masked as *** everywhere regsweep writes or prints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import service_url
from test_bad_input import regsweep  # the same entry point, in this process but for train

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
        [
            "sweep",
            *common,
            f"sweep.storage={storage}",
            f"sweep.study={study}",
            "sweep.n_trials=2",
            "sweep.heartbeat_seconds=2",
            "tracking.artifacts=all",
            "sweep.reevaluate.seeds=0",
        ],
        ["report", study, *common, f"sweep.storage={storage}"],
        ["train", *common, "model.dropout=0.2"],
        ["sweep", *common, "sweep.storage=postgresql://regsweep:secret@127.0.0.1:9/nowhere"],  # an error message
    ]
    started_ms = int(time.time() * 1000)
    printed = []
    for command in commands:
        result = subprocess.run(
            [REGSWEEP, *command], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
        )
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


# A database tracking URI (MLflow's SQLAlchemy store) on a port that refuses at once: no server needed.
REFUSING_DATABASE = "postgresql://u:secret@127.0.0.1:1/db"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "command, words",
    [
        ("train", []),
        ("sweep", []),
        ("report", ["some-study"]),
        ("ui", ["--port", "free"]),
        ("export", ["0123456789abcdef"]),
    ],
)
def test_every_command_stops_at_a_database_tracking_uri_that_refuses_in_one_masked_sentence(
    command, words, tmp_path, monkeypatch, capfd
):
    store = tmp_path / "store"
    words = [str(free_port()) if word == "free" else word for word in words]
    started = time.monotonic()
    code, out, err = regsweep(
        command,
        [*words, f"tracking.uri={REFUSING_DATABASE}", "tracking.connect_timeout=2", f"paths.store={store}"],
        tmp_path,
        monkeypatch,
        capfd,
    )
    elapsed = time.monotonic() - started
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-3000:]
    masked = "tracking.uri=postgresql://u:***@127.0.0.1:1/db"
    assert lines[0].startswith(f"regsweep: error: {masked} cannot be reached ("), lines
    assert "start the database server or fix the URL" in lines[0]
    assert "secret" not in out + err
    assert elapsed < 30, elapsed  # not MLflow's two minutes of retries
    assert not (store / "optuna.db").exists(), "no Optuna study is recorded before every service answered"
    assert not (store / "mlflow.db").exists()


def test_train_stops_within_the_timeout_at_a_database_that_never_answers(tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; the database's greeting never comes
        url = f"postgresql://u:secret@127.0.0.1:{silent.getsockname()[1]}/db"
        started = time.monotonic()
        result = subprocess.run(
            [REGSWEEP, "train", f"tracking.uri={url}", "tracking.connect_timeout=2", f"paths.store={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        elapsed = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    masked = url.replace(":secret@", ":***@")
    assert lines[0].startswith(f"regsweep: error: tracking.uri={masked} cannot be reached ("), lines
    assert "within 2 s" in lines[0] or "timeout" in lines[0], lines
    assert "secret" not in result.stdout + result.stderr
    assert elapsed < 30, elapsed


def test_a_run_that_fails_inside_hydra_shows_neither_its_overrides_nor_a_password(tmp_path):
    """Hydra prints a failed job's overrides in clear: the job's error reaches regsweep's sentence
    instead, and Hydra only ever holds the password as an interpolation."""
    for split in ("train", "val"):
        (tmp_path / split).mkdir()  # no class folders: the run stops reading its data, inside Hydra's job
    result = subprocess.run(
        [
            REGSWEEP,
            "train",
            "data=folders",
            f"data.train_dir={tmp_path / 'train'}",
            f"data.val_dir={tmp_path / 'val'}",
            f"+note={REFUSING_DATABASE}",
            f"paths.store={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("regsweep: error: data.train_dir="), lines  # the job's own error
    assert "Error executing job" not in result.stderr and "secret" not in result.stdout + result.stderr

    shown = subprocess.run(
        [REGSWEEP, "train", "--cfg", "job", f"tracking.uri={REFUSING_DATABASE}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert shown.returncode == 0 and "uri: postgresql://u:${oc.env:" in shown.stdout, shown.stdout[-3000:]
    assert "secret" not in shown.stdout + shown.stderr
