"""Scale-out: workers on separate machines cooperate on one study through PostgreSQL (Optuna) and
an `mlflow server` (tracking), and any machine can build the report from that shared storage.

Each "machine" here is its own store folder (its own caches, reports, Hydra outputs), so the
only things the workers share are the two services, as on real machines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest

from conftest import new_store, service_url
from regsweep import study as studies
from test_recovery import REGSWEEP, trials, wait_for

TINY = [
    "train.epochs=6",
    "train.fine_tune_epochs=2",
    "tracking.artifacts=none",
    "sweep.pruner.name=none",
    "sweep.heartbeat_seconds=2",
    "sweep.reevaluate.seeds=1",
    "sweep.reevaluate.max_seeds=1",
    "sweep.reevaluate.top_k=1",
    "sweep.reevaluate.screen=0",  # the baseline and the choice only: which worker re-evaluates is what is tested
    "sweep.reevaluate.curve=[]",
]


class ConnectionWatcher:
    """The peak number of PostgreSQL connections per application name, sampled every 50 ms."""

    def __init__(self, url: str, names: list[str]):
        self.url, self.names = url, names
        self.peak = dict.fromkeys(names, 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            while not self.stop.is_set():
                for name, count in connection.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name = ANY(%s) "
                    "GROUP BY application_name",
                    (self.names,),
                ).fetchall():
                    self.peak[name] = max(self.peak[name], count)
                time.sleep(0.05)

    def __enter__(self) -> ConnectionWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def table(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `## heading`."""
    section = markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    first = section[section.index("\n|") + 1 :].split("\n\n", 1)[0]  # the section may hold more tables
    lines = [line for line in first.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
def test_two_machines_complete_one_study_and_any_machine_reports_it(tmp_path, demo_store):
    """Two real `regsweep sweep` processes on one PostgreSQL study and one mlflow server, as two
    machines run it. About 70 s on 2 cores (68 s at 8dfce39): each process starts Python, MLflow,
    Optuna and a TensorFlow worker, and together they train a 6-trial study and its re-evaluation
    against real servers. What it checks happens between processes, so it cannot run in one."""
    postgres = service_url("REGSWEEP_TEST_POSTGRES_URL", "PostgreSQL")
    server = service_url("REGSWEEP_TEST_MLFLOW_URL", "The mlflow server")
    study, budget = f"scale-{uuid.uuid4().hex[:8]}", 6
    shared = [
        f"sweep.storage={postgres}",
        f"tracking.uri={server}",
        f"sweep.study={study}",
        f"sweep.n_trials={budget}",
        *TINY,
        "model.dropout=interval(0.0, 0.5)",
        "augment.strength=choice(0.0, 0.5)",
    ]
    stores = [new_store(tmp_path / name, demo_store) for name in ("machine-a", "machine-b")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    names = [f"{study}-{store.parent.name}" for store in stores]  # libpq names each worker's connections
    with ConnectionWatcher(postgres, names) as connections:
        workers = [
            subprocess.Popen(
                [REGSWEEP, "sweep", f"paths.store={store}", *shared],
                cwd=store.parent,
                env={**env, "PGAPPNAME": name},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for store, name in zip(stores, names)
        ]
        outputs = [worker.communicate(timeout=1200)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    # Many workers share one PostgreSQL: each process opens one small pool (regsweep.study.POOL), so
    # a worker (the sweep process and its trial process) holds at most twice that, however many trials.
    per_process = studies.POOL["pool_size"] + studies.POOL["max_overflow"]
    assert all(1 <= connections.peak[name] <= 2 * per_process for name in names), connections.peak

    # The study: its budget, nothing failed or left running, and the claim given back.
    finished = trials(postgres, study)
    states = [t.state.name for t in finished]
    assert budget <= sum(s in ("COMPLETE", "PRUNED") for s in states) <= budget + 1
    assert "FAIL" not in states and "RUNNING" not in states
    storage = studies.open_storage(postgres, connect_timeout=10)
    assert optuna.load_study(study_name=study, storage=storage).user_attrs[studies.CLAIM_ATTR] is None
    drawn = [tuple(sorted(t.params.items())) for t in finished if not t.user_attrs.get("baseline")]
    assert len(drawn) == len(set(drawn)), drawn  # the two machines explored, not repeated

    # MLflow: one parent; under it exactly one child run per trial, and the re-evaluation once.
    client = mlflow.MlflowClient(server)
    experiment = client.get_experiment_by_name("regsweep").experiment_id
    runs = client.search_runs([experiment], f"tags.`regsweep.study` = '{study}'")
    parents = [r for r in runs if r.data.tags.get("regsweep.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    assert all(r.data.tags.get("mlflow.parentRunId") == parent for r in runs if r is not parents[0])
    trial_runs = [
        r for r in runs if r.data.tags.get("regsweep.trial_number") and r.data.tags.get("regsweep.role") != "reeval"
    ]
    by_trial = {
        t.number: [r for r in trial_runs if r.data.tags["regsweep.trial_number"] == str(t.number)] for t in finished
    }
    assert all(len(found) == 1 for found in by_trial.values()), {n: len(f) for n, f in by_trial.items()}
    assert len(trial_runs) == len(finished)
    for t in finished:
        (run,) = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.info.run_name.startswith(f"#{t.number} do")  # the knobs, readable in the runs table
        assert run.data.metrics["val_accuracy"] == pytest.approx(t.user_attrs["val_accuracy"])
        assert run.data.metrics["gap"] == pytest.approx(t.user_attrs["gap"])
    reevals = [r for r in runs if r.data.tags.get("regsweep.role") == "reeval"]
    # One vocabulary for every run, so MLflow's compare view lines them up.
    assert len({frozenset(r.data.params) for r in trial_runs + reevals}) == 1
    final = {"train_accuracy", "val_accuracy", "gap", "running_train_accuracy"}
    assert all(
        final <= set(r.data.metrics) and not {"test_accuracy", "test_gap"} & set(r.data.metrics) for r in trial_runs
    )
    assert all(final | {"test_accuracy", "test_gap"} <= set(r.data.metrics) for r in reevals)
    assert len(reevals) == 2  # baseline and the recommendation, one seed each: trained by one worker only
    assert len({r.data.tags["regsweep.reeval_key"] for r in reevals}) == 2
    assert sum("Re-evaluating" in output for output in outputs) == 1
    assert sum("Another worker (" in output for output in outputs) == 1  # and left the report to it

    # A third machine, with nothing local, builds the report from the shared storage.
    laptop = tmp_path / "laptop" / "mlruns"
    laptop.mkdir(parents=True)
    result = subprocess.run(
        [REGSWEEP, "report", study, f"paths.store={laptop}", f"sweep.storage={postgres}", f"tracking.uri={server}"],
        cwd=laptop.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (laptop / "reports" / study / "report.md").read_text()
    counts = {state: states.count(state) for state in ("COMPLETE", "PRUNED", "FAIL")}
    assert f"Trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed." in text
    by_number = {t.number: t for t in finished}
    top = table(text, "Top trials")
    assert len(top) == min(10, counts["COMPLETE"])
    for number, val_accuracy, gap, train_accuracy, *_ in top:
        t = by_number[int(number)]
        assert float(val_accuracy) == pytest.approx(t.user_attrs["val_accuracy"], abs=5e-4)
        assert float(gap) == pytest.approx(t.user_attrs["gap"], abs=5e-4)
        assert float(train_accuracy) == pytest.approx(t.user_attrs["train_accuracy"], abs=5e-4)
    reeval_rows = {row[0].split(" (")[0]: row for row in table(text, "Re-evaluation on the test split")}
    for run in reevals:
        label = run.data.tags["reeval"]
        row = reeval_rows["baseline" if label == "baseline" else f"trial {label}"]
        assert row[2] == f"{run.data.metrics['test_accuracy']:.4f} ± 0.0000"
    # The same report is on the parent run, for the MLflow UI.
    logged = Path(
        mlflow.artifacts.download_artifacts(
            run_id=parent, artifact_path="report/report.md", tracking_uri=server, dst_path=str(tmp_path / "download")
        )
    )
    assert logged.read_text() == text

    # The answer's model, registered on the server, served by `mlflow models serve` on 127.0.0.1:
    # a process that loads it by its alias and never imports regsweep.
    recommended = client.get_model_version_by_alias(study, "recommended")
    assert recommended.run_id in {r.info.run_id for r in reevals}
    assert f"models:/{study}@recommended" in result.stdout
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    answer = serve_and_predict(f"models:/{study}@recommended", images, server, env)
    probabilities = np.array(answer["predictions"])
    assert probabilities.shape == (3, 5) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def serve_and_predict(model_uri: str, images: np.ndarray, server: str, env: dict) -> dict:
    """Starts MLflow's model server on 127.0.0.1 (in this environment: --env-manager local), asks
    it one prediction, and stops it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)  # MLflow starts uvicorn from PATH
    # A file, not a pipe: nobody reads it while the server runs. Closed in the finally below, after
    # the server that writes it has stopped, so no with-block can hold it.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115
    served = subprocess.Popen(
        [
            f"{bin_dir}/mlflow",
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={**env, "MLFLOW_TRACKING_URI": server, "PATH": f"{bin_dir}:{env['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    json.dumps({"inputs": images.tolist()}).encode(),
                    {"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=60) as response:
                    return json.load(response)
            except (urllib.error.URLError, ConnectionError):
                assert served.poll() is None, log.seek(0) or log.read()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not answer within 180 s"
                time.sleep(1)
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_workers_started_together_on_an_empty_database_all_open_it(tmp_path):
    """Optuna creates its tables on first use; workers that start at the same moment on a new
    PostgreSQL database race to create them, and none of them may fail for it."""
    import psycopg

    postgres = service_url("REGSWEEP_TEST_POSTGRES_URL", "PostgreSQL")
    for _ in range(2):
        schema = f"fresh_{uuid.uuid4().hex[:8]}"  # an empty database, as far as Optuna can tell
        with psycopg.connect(postgres, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        url = f"{postgres}?options=-csearch_path%3D{schema}"
        ready = tmp_path / schema  # a barrier: each process imports regsweep, says so, and opens once all have
        ready.mkdir()
        code = (
            f"import os, pathlib, time\nfrom regsweep import study\nready = pathlib.Path({str(ready)!r})\n"
            "(ready / str(os.getpid())).touch()\nwhile len(list(ready.iterdir())) < 3:\n    time.sleep(0.001)\n"
            f"study.open_storage({url!r}, connect_timeout=10)\n"
        )
        try:
            workers = [
                subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)
            ]
            errors = [worker.communicate(timeout=120)[1] for worker in workers]
            assert [worker.returncode for worker in workers] == [0, 0, 0], errors
        finally:
            with psycopg.connect(postgres, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA {schema} CASCADE")


def test_one_worker_claims_the_reevaluation_when_several_finish_together(tmp_path):
    study = optuna.create_study(study_name="claims", storage=f"sqlite:///{tmp_path}/optuna.db")
    results: list = [None] * 4

    def worker(index: int) -> None:
        time.sleep(0.05 * index)  # they arrive within the settle time, not at the same instant
        own = optuna.load_study(study_name="claims", storage=f"sqlite:///{tmp_path}/optuna.db")
        results[index] = studies.claim(own, heartbeat_seconds=10, settle_seconds=1.0)[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [token for token in results if token is not None]
    assert len(winners) == 1

    # A worker that comes later leaves a fresh claim to its holder, and takes over a stale one.
    later, holder = studies.claim(study, heartbeat_seconds=10, settle_seconds=0.0)
    assert later is None and re.fullmatch(r".+ pid \d+", holder)
    assert studies.renew(study, winners[0])
    held = study.user_attrs[studies.CLAIM_ATTR]
    assert held["lease"] == 30  # three heartbeats
    stale = {**held, "renewed": time.time() - 31}
    study.set_user_attr(studies.CLAIM_ATTR, stale)
    taken, _ = studies.claim(study, heartbeat_seconds=10, settle_seconds=0.0)
    assert taken is not None and not studies.renew(study, winners[0])  # the old holder learns it lost
    studies.release(study, winners[0])  # not its claim any more: nothing changes
    assert study.user_attrs[studies.CLAIM_ATTR]["token"] == taken
    studies.release(study, taken)
    assert study.user_attrs[studies.CLAIM_ATTR] is None


def test_a_claim_lives_as_long_as_its_holder_renews_it_and_dies_three_heartbeats_after(tmp_path):
    """A holder on another machine (its pid cannot be asked) that is killed mid-run: the next
    worker takes over within three heartbeats, not a fixed 10 minutes."""
    study = optuna.create_study(study_name="lease", storage=f"sqlite:///{tmp_path}/optuna.db")
    heartbeat = 0.5  # the lease: 1.5 s
    token, _ = studies.claim(study, heartbeat_seconds=heartbeat, settle_seconds=0.0)
    study.set_user_attr(studies.CLAIM_ATTR, {**study.user_attrs[studies.CLAIM_ATTR], "host": "elsewhere"})
    claimed = study.user_attrs[studies.CLAIM_ATTR]["renewed"]

    def renewed_past_the_first_lease() -> bool:
        return study.user_attrs[studies.CLAIM_ATTR]["renewed"] > claimed + 3 * heartbeat

    with studies.keeping(study, token, heartbeat_seconds=heartbeat):
        wait_for(renewed_past_the_first_lease, 60, "renewals past the first lease")  # only the heartbeat keeps it
        assert studies.claim_holder(study) is not None
    wait_for(lambda: studies.claim_holder(study) is None, 60, "the lease to run out")  # as for a killed holder
    assert time.time() >= study.user_attrs[studies.CLAIM_ATTR]["renewed"] + 3 * heartbeat
