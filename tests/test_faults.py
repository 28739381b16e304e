"""Faults that are not the user's input, as an operator meets them: a stop request (SIGTERM,
Ctrl-C to a sweep started in the background), a full disk, a damaged or read-only store, a
report read mid-study, trials that all fail.

Each test asserts what a user relies on: one sentence and the exit code, nothing left RUNNING
in MLflow or Optuna, every earlier row still there and the SQLite integrity check passing, and
the same command resuming and finishing. (Secrets and unreachable databases: test_secrets.py;
link loops and nested corrupt images: test_data.py and the sweep case below.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import optuna
import pytest

from conftest import service_url, stored_trials, tracking_client, write_class_folders
from regsweep import cli, faults, fit, sweep, tracking, train
from regsweep import study as studies
from regsweep import trial as trial_module
from regsweep.config import RegsweepError

REGSWEEP = str(Path(sys.executable).with_name("regsweep"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
TINY = [
    "train.epochs=3",
    "train.fine_tune_epochs=1",
    "tracking.artifacts=none",
    "sweep.pruner.name=none",
    "sweep.reevaluate.top_k=1",
    "sweep.reevaluate.curve=[]",
    "sweep.heartbeat_seconds=1",
]


# --- what every fault test checks ------------------------------------------------------------------


def runs(store: Path, study: str | None = None) -> list:
    client = tracking_client(store)
    experiment = client.get_experiment_by_name("regsweep")
    if experiment is None:
        return []
    where = f"tags.`regsweep.study` = '{study}'" if study else ""
    return client.search_runs([experiment.experiment_id], where, max_results=1000)


def trials(store: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return stored_trials(store, study)


def assert_sound_and_nothing_running(store: Path, study: str) -> None:
    for database in ("optuna.db", "mlflow.db"):
        with sqlite3.connect(store / database) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok", database
    assert "RUNNING" not in {t.state.name for t in trials(store, study)}
    assert "RUNNING" not in {r.info.status for r in runs(store, study)}


def one_sentence(stderr: str) -> str:
    """The error output is one `regsweep: …` line (MLflow's INFO lines about its tables aside)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def wait_for(condition, seconds: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the command ended before {what}: {process.communicate()[1][-3000:]}")
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


# --- stop requests ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stopped_mid_trial_and_mid_reevaluation_each_stop_ends_everything_and_the_same_command_resumes(store):
    """Ctrl-C to a sweep a script started in the background (Ctrl-C is ignored there unless
    regsweep listens for it), then SIGTERM, as a scheduler sends it, during the re-evaluation:
    each time one line, exit 130 or 143, nothing RUNNING, the claim released; then the same
    command finishes at once, without waiting out a lease.

    About 70 s on 2 cores: it needs real processes (a background script's Ctrl-C and a
    scheduler's SIGTERM reach a process, not a function), three command starts with TensorFlow,
    and a trial long enough (30 epochs) that the first stop lands mid-trial on a fast machine too."""
    command = [
        REGSWEEP,
        "sweep",
        f"paths.store={store}",
        *TINY,
        "sweep.n_trials=2",
        "sweep.study=stops",
        "sweep.reevaluate.seeds=2",
        "sweep.reevaluate.max_seeds=2",
        # every epoch runs (no early stop): the trial still trains when the stop arrives, on a fast machine too
        "train.epochs=30",
        "train.early_stopping_patience=30",
    ]
    background = subprocess.Popen(
        ["bash", "-c", f'{" ".join(command)} & echo $! > "{store}/pid"; wait $!'],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    pid_file = store / "pid"
    wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip(), 30, "the background sweep", background)
    training = wait_for(
        lambda: [
            r
            for r in runs(store, "stops")
            if r.info.status == "RUNNING" and r.data.tags.get("regsweep.role") != "study"
        ],
        300,
        "a trial's run",
        background,
    )
    os.kill(int(pid_file.read_text()), signal.SIGINT)  # only the sweep, as `kill -INT` does
    stderr = background.communicate(timeout=120)[1]
    assert background.returncode == 130, stderr[-3000:]
    line = one_sentence(stderr)
    assert line.startswith("regsweep: stopped with Ctrl-C (SIGINT): trial #0 ended FAIL") and "re-run the same" in line
    assert_sound_and_nothing_running(store, "stops")
    stopped = trials(store, "stops")[0]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["fail_reason"] == "stopped with Ctrl-C (SIGINT)"
    assert {r.info.run_id: r.info.status for r in runs(store, "stops")}[training[0].info.run_id] == "KILLED"

    during = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(
        lambda: [
            r
            for r in runs(store, "stops")
            if r.info.status == "RUNNING" and r.data.tags.get("regsweep.role") == "reeval"
        ],
        600,
        "a re-evaluation run",
        during,
    )
    during.send_signal(signal.SIGTERM)
    out, err = during.communicate(timeout=120)
    assert during.returncode == 143, err[-3000:]
    line = one_sentence(err)
    assert line.startswith("regsweep: terminated (SIGTERM): MLflow run ") and "re-evaluation claim was released" in line
    assert "(#1 baseline)" in out  # the stopped baseline trial ran again
    assert_sound_and_nothing_running(store, "stops")
    recorded = optuna.load_study(study_name="stops", storage=f"sqlite:///{store}/optuna.db")
    assert recorded.user_attrs[studies.CLAIM_ATTR] is None
    killed = [r for r in runs(store, "stops") if r.info.status == "KILLED"]
    assert {r.data.tags["regsweep.error"] for r in killed} >= {"terminated (SIGTERM)"}
    assert [r.data.tags.get("regsweep.role") for r in runs(store, "stops")].count("study") == 1

    started = time.monotonic()
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Another worker" not in resumed.stdout and "Re-evaluating on the test split" in resumed.stdout
    assert time.monotonic() - started < 300
    assert_sound_and_nothing_running(store, "stops")
    parent = next(r for r in runs(store, "stops") if r.data.tags.get("regsweep.role") == "study")
    assert parent.info.status == "FINISHED" and "regsweep.error" not in parent.data.tags
    assert (store / "reports" / "stops" / "report.md").is_file()


# --- full disks ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_disk_that_fills_under_a_trial_is_one_sentence_the_trial_fails_with_the_reason_and_it_resumes(
    store, monkeypatch
):
    """Injected where it can be anywhere (no tmpfs needed): the trial's weights cannot be written."""
    base = [
        f"paths.store={store}",
        *TINY,
        "sweep.trials_per_worker=0",
        "sweep.study=full",
        "sweep.reevaluate.seeds=0",
        "model.dropout=choice(0.1, 0.2)",
    ]
    sweep.run_study([*base, "sweep.n_trials=1"])
    args = [*base, "sweep.n_trials=2"]
    before = {t.number: t.user_attrs["val_accuracy"] for t in trials(store, "full")}

    def no_space(arrays, recipe):
        raise OSError(errno.ENOSPC, "No space left on device", str(store / "artifacts" / "weights.npz"))

    monkeypatch.setattr(tracking, "log_trained", no_space)
    with pytest.raises(RegsweepError, match=r"^no space left on device for .*weights.npz: free some space"):
        sweep.run_study(args)
    failed = trials(store, "full")[-1]
    assert failed.state.name == "FAIL" and failed.user_attrs["fail_reason"].startswith("no space left on device: ")
    run = next(r for r in runs(store, "full") if r.info.run_id == failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["regsweep.error"].startswith("no space left on device")
    assert_sound_and_nothing_running(store, "full")
    assert not list((store / "cache").rglob(".staging-*"))

    monkeypatch.undo()
    sweep.run_study(args)
    after = trials(store, "full")
    assert {t.number: t.user_attrs["val_accuracy"] for t in after if t.number in before} == before
    assert sum(t.state.name == "COMPLETE" for t in after) == 2
    assert_sound_and_nothing_running(store, "full")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_store_on_a_disk_that_really_fills_up_stops_in_one_sentence_and_resumes_once_there_is_room(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], check=True)
    try:
        store = disk / "mlruns"  # the demo's data and backbone are made there too, as in a user's store
        command = [
            REGSWEEP,
            "sweep",
            f"paths.store={store}",
            *TINY,
            "sweep.study=disk",
            "sweep.reevaluate.seeds=0",
            "model.dropout=choice(0.1, 0.2)",
        ]
        first = subprocess.run([*command, "sweep.n_trials=1"], capture_output=True, text=True, env=ENV, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        ballast = disk / "ballast"
        free = shutil.disk_usage(disk).free
        subprocess.run(["fallocate", "-l", str(free - 300 * 1024), str(ballast)], check=True)  # 300 KiB left

        full = subprocess.run([*command, "sweep.n_trials=3"], capture_output=True, text=True, env=ENV, timeout=600)
        assert full.returncode == 2, full.stderr[-3000:]
        assert one_sentence(full.stderr).startswith(f"regsweep: error: no space left on device for the store {store}")
        assert_sound_and_nothing_running(store, "disk")
        failed = [t for t in trials(store, "disk") if t.state.name == "FAIL"]
        assert failed and all(t.user_attrs["fail_reason"].startswith("no space left on device") for t in failed)
        assert not list((store / "cache").rglob(".staging-*"))

        ballast.unlink()
        resumed = subprocess.run([*command, "sweep.n_trials=3"], capture_output=True, text=True, env=ENV, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert sum(t.state.name == "COMPLETE" for t in trials(store, "disk")) == 3
        assert_sound_and_nothing_running(store, "disk")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --- damaged and read-only stores ------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("database", ["mlflow.db", "optuna.db"])
def test_a_damaged_database_is_named_in_one_sentence_and_never_rewritten(finished_study, tmp_path, database, capsys):
    store = tmp_path / "mlruns"
    shutil.copytree(finished_study, store, symlinks=True)
    damaged = store / database
    damaged.write_bytes(
        damaged.read_bytes()[: damaged.stat().st_size // 3]
    )  # truncated, as a full disk or a bad copy leaves it
    digest = _digest(damaged)
    for command in (["sweep", f"paths.store={store}", *TINY, "sweep.study=fresh"], ["report", f"paths.store={store}"]):
        with pytest.raises(SystemExit) as exit_code:
            cli.main(command)
        assert exit_code.value.code == 2
        line = one_sentence(capsys.readouterr().err)
        assert line.startswith(f"regsweep: error: {damaged} is damaged (") and "move it aside" in line, line
        assert _digest(damaged) == digest
    if database == "mlflow.db":  # refused before the study was created
        assert "fresh" not in optuna.get_all_study_names(f"sqlite:///{store}/optuna.db")


@pytest.mark.slow
def test_train_on_a_damaged_tracking_store_is_one_sentence(finished_study, tmp_path):
    store = tmp_path / "mlruns"
    shutil.copytree(finished_study, store, symlinks=True)
    damaged = store / "mlflow.db"
    damaged.write_bytes(b"this is not a database" * 100)
    digest = _digest(damaged)
    result = subprocess.run(
        [REGSWEEP, "train", f"paths.store={store}", "train.epochs=1", "train.fine_tune_epochs=0"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_sentence(result.stderr).startswith(f"regsweep: error: {damaged} is damaged")
    assert _digest(damaged) == digest


@pytest.fixture
def read_only_folder(tmp_path):
    """An empty folder regsweep cannot write to: a read-only mount as root (root ignores modes)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=True)
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train", "train.epochs=1"], ["sweep", "sweep.n_trials=1"]])
def test_a_read_only_working_folder_is_one_sentence_that_suggests_paths_store(read_only_folder, command):
    result = subprocess.run(
        [REGSWEEP, *command], capture_output=True, text=True, env=ENV, timeout=300, cwd=read_only_folder
    )
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_sentence(result.stderr)
    assert "paths.store=" in line and ("read-only" in line or "not writable" in line), line


# --- a study in progress, and trials that all fail ----------------------------------------------------


def test_a_report_mid_study_says_it_is_in_progress_and_moves_nothing(finished_study, tmp_path, capsys):
    store = tmp_path / "mlruns"
    shutil.copytree(finished_study, store, symlinks=True)
    recorded = optuna.load_study(study_name="regularization", storage=f"sqlite:///{store}/optuna.db")
    counted = len(recorded.get_trials(states=studies.COUNTED))
    recorded.set_user_attr(studies.BUDGET_ATTR, counted + 2)
    recorded.ask()  # a trial another worker is running
    best = store / "configs" / "experiment" / "regularization_best.yaml"
    best.unlink()
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    aliases = {a: client.get_model_version_by_alias("regularization", a).version for a in ("recommended", "baseline")}
    parent = client.get_run(recorded.user_attrs[studies.PARENT_RUN_ATTR])

    sweep.report_study("regularization", [f"paths.store={store}"])
    out = capsys.readouterr().out
    assert f"is in progress: {counted} complete, 1 running, 1 to go" in out.splitlines()[0]
    assert "Provisional" in out.split("The answer")[1]
    assert "**Provisional**" in (store / "reports" / "regularization" / "report.md").read_text()
    assert not best.exists()
    assert aliases == {a: client.get_model_version_by_alias("regularization", a).version for a in aliases}
    assert client.get_run(parent.info.run_id).data.tags == parent.data.tags


def test_a_sweep_whose_trials_all_fail_stops_after_max_failures_with_the_reasons_counted(store):
    args = [
        f"paths.store={store}",
        *TINY,
        "sweep.trials_per_worker=0",
        "sweep.n_trials=10",
        "sweep.max_failures=3",
        "sweep.study=doomed",
        "model.dropout=choice(1.5, 2.5)",
    ]
    with pytest.raises(
        RegsweepError,
        match=r"^3 trials failed in this run, so the sweep stopped \(sweep.max_failures=3\): "
        r"\d× .*outside \[0, 1\)",
    ) as error:
        sweep.run_study(args)
    assert "re-run the same command" in str(error.value)
    assert [t.state.name for t in trials(store, "doomed")] == ["FAIL"] * 3
    assert_sound_and_nothing_running(store, "doomed")
    parent = next(r for r in runs(store, "doomed") if r.data.tags.get("regsweep.role") == "study")
    assert parent.info.status == "FAILED"


def test_a_link_loop_in_the_images_is_refused_before_any_trial(tmp_path, capsys):
    train = write_class_folders(tmp_path / "train", 3, size=32)
    validation = write_class_folders(tmp_path / "validation", 2, size=32, seed=1)
    loop = train / "circle" / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(SystemExit) as exit_code:
        cli.main(
            [
                "sweep",
                f"paths.store={tmp_path / 'mlruns'}",
                "data=folders",
                f"data.train_dir={train}",
                f"data.val_dir={validation}",
                *TINY,
            ]
        )
    assert exit_code.value.code == 2
    assert str(loop) in one_sentence(capsys.readouterr().err)
    assert not (tmp_path / "mlruns" / "optuna.db").exists()


def test_a_stop_that_tensorflow_replaces_with_its_own_error_still_ends_the_run_killed(store):
    """A stop raised inside a traced TensorFlow function can come out as TensorFlow's own
    "Nesting violated …" AssertionError (seen in a Ctrl-C mid-trial): the run ends KILLED with the
    stop's reason, and the stop, not the error, goes on up."""
    from conftest import quick_cfg
    from regsweep import faults

    faults._REQUESTED.append(faults.Terminated())  # as the SIGTERM handler records it
    try:
        with (
            pytest.raises(faults.Terminated) as stopped,
            tracking.training_run(quick_cfg(store), "stopped", ("a", "b"), {}) as run,
        ):
            raise AssertionError("Nesting violated for default stack of FuncGraph objects")
    finally:
        faults.forget_stops()
    assert isinstance(stopped.value.__cause__, AssertionError)
    ended = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db").get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags["regsweep.error"] == "terminated (SIGTERM)"


# --- a stop at each step of a trial's end (#34, item 1) ---------------------------------------------


def _then_stop(function):
    """`function`, then SIGTERM to this process: the stop lands exactly there, on any machine."""

    def stopped(*args, **kwargs):
        result = function(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    return stopped


def _stop_then(function):
    """SIGTERM to this process, then `function` (never reached: the stop raises first)."""

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return function(*args, **kwargs)

    return stopped


# Where the stop lands, and whether the trial's result was recorded by then. (Optuna's ask creates
# the trial RUNNING before its heartbeat starts: a stop there left it RUNNING for good.)
TRIAL_END_STEPS = {
    "while Optuna creates it": (optuna.study.Study, "ask", _then_stop, False),
    "after fit": (fit, "two_phases", _then_stop, False),
    "after evaluation": (tracking, "log_trained", _stop_then, False),
    "after logging": (tracking, "log_results", _then_stop, False),
    "after its run ended": (train, "RunResult", _stop_then, False),
    "before Optuna's tell": (trial_module.Progress, "finish", _then_stop, True),
}


@pytest.fixture
def stops_on_signals():
    """SIGTERM raises in this process as in `regsweep sweep`; the test's own handlers come back after."""
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    faults.stop_on_signals()
    yield
    signal.signal(signal.SIGTERM, saved[0])
    signal.signal(signal.SIGINT, saved[1])
    faults.forget_stops()


def assert_stores_agree(store: Path, study: str) -> None:
    """Optuna's state of every trial is its MLflow run's: finished runs for COMPLETE trials, KILLED
    or FAILED ones with the same reason for FAIL trials."""
    by_id = {r.info.run_id: r for r in runs(store, study)}
    for trial in trials(store, study):
        if "mlflow_run_id" not in trial.user_attrs:  # stopped before its run began
            assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] != ""
            continue
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["regsweep.trial_state"] == trial.state.name, trial.number
        if trial.state.name == "COMPLETE":
            assert run.info.status == "FINISHED" and trial.user_attrs["fail_reason"] == ""
        else:
            assert run.info.status in ("KILLED", "FAILED"), trial.number
            assert run.data.tags["regsweep.error"] == trial.user_attrs["fail_reason"] != ""


@pytest.mark.parametrize("step", TRIAL_END_STEPS)
def test_a_stop_at_each_step_of_a_trials_end_leaves_both_stores_agreeing_and_the_baseline_runs_first_on_resume(
    store, monkeypatch, stops_on_signals, capsys, step
):
    """The stop lands by injection at each step of the baseline trial's end (and its start). Before its result is
    recorded, the trial is FAIL with the stop's reason in both stores, the report gives no answer
    without it, and the resume runs it again first; once recorded, it stays COMPLETE in both and the
    sweep still stops at once."""
    owner, name, inject, recorded = TRIAL_END_STEPS[step]
    args = [
        f"paths.store={store}",
        *TINY,
        "sweep.trials_per_worker=0",
        "sweep.study=ends",
        "sweep.n_trials=1",
        "sweep.reevaluate.seeds=0",
    ]
    monkeypatch.setattr(owner, name, inject(getattr(owner, name)))
    with pytest.raises(faults.Terminated) as stopped:
        sweep.run_study(args)
    monkeypatch.undo()
    assert f"trial #0 ended {'COMPLETE' if recorded else 'FAIL'}" in " ".join(stopped.value.__notes__)
    (baseline,) = trials(store, "ends")
    assert baseline.user_attrs["baseline"] and baseline.state.name == ("COMPLETE" if recorded else "FAIL")
    assert baseline.user_attrs["fail_reason"] == ("" if recorded else "terminated (SIGTERM)")
    assert_stores_agree(store, "ends")
    assert_sound_and_nothing_running(store, "ends")
    capsys.readouterr()

    if not recorded:
        sweep.report_study("ends", [f"paths.store={store}"])
        assert "No answer yet: the baseline trial #0 (your config as given) failed (terminated (SIGTERM))" in (
            capsys.readouterr().out
        )
    signal.signal(signal.SIGTERM, faults.raise_terminated)  # the handler ignores a second SIGTERM: re-armed
    sweep.run_study(args)
    assert ("runs again first" in capsys.readouterr().out) is not recorded
    ended = trials(store, "ends")
    assert [(t.state.name, t.user_attrs["baseline"]) for t in ended] == [
        *([("FAIL", True)] * (not recorded)),
        ("COMPLETE", True),
    ]
    assert_stores_agree(store, "ends")
    assert_sound_and_nothing_running(store, "ends")
    assert "Keep your baseline" in (store / "reports" / "ends" / "report.md").read_text()


def test_a_stop_while_the_worker_records_a_finished_trial_waits_until_the_sweep_has_recorded_it(stops_on_signals):
    """In the worker's child a finished trial holds stops while it records itself; the sweep passes
    its SIGTERM on, gets the result, and raises the stop only when told it has recorded it."""
    from regsweep.worker import TrialWorker
    from worker_calls import stop_the_sweep_while_recording

    worker = TrialWorker(calls_per_child=1)
    try:
        assert worker.call(stop_the_sweep_while_recording) == "recorded"
        assert isinstance(faults.held_stop(), faults.Terminated)
        with pytest.raises(faults.Terminated):
            faults.release_stops()
    finally:
        worker.close()


# --- out of memory (#34, item 6) --------------------------------------------------------------------


def test_a_trial_out_of_memory_says_what_to_lower_in_both_stores_and_the_same_command_resumes(store, monkeypatch):
    """Python's MemoryError (TensorFlow's ResourceExhaustedError reads the same) mid-fit, by injection."""
    args = [
        f"paths.store={store}",
        *TINY,
        "sweep.trials_per_worker=0",
        "sweep.study=memory",
        "sweep.n_trials=1",
        "sweep.max_failures=1",
        "sweep.reevaluate.seeds=0",
    ]

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.21 GiB for an array with shape (431, 128, 128, 3)")

    monkeypatch.setattr(fit, "two_phases", exhausted)
    with pytest.raises(RegsweepError, match=r"\(sweep.max_failures=1\): 1× out of memory: lower data.batch_size"):
        sweep.run_study(args)
    monkeypatch.undo()
    (failed,) = trials(store, "memory")
    assert failed.user_attrs["fail_reason"] == faults.OUT_OF_MEMORY
    assert_stores_agree(store, "memory")
    assert_sound_and_nothing_running(store, "memory")
    sweep.run_study(args)
    assert [t.state.name for t in trials(store, "memory")] == ["FAIL", "COMPLETE"]  # the baseline, again


@pytest.mark.parametrize("command", ["train", "report", "export"])
def test_a_command_out_of_memory_is_one_sentence_with_what_to_lower(command, monkeypatch, capsys):
    """Whichever command trains (train, report --reevaluate) or builds a model (export)."""

    def exhausted(args):
        raise MemoryError("Unable to allocate 3.21 GiB for an array with shape (431, 128, 128, 3)")

    monkeypatch.setitem(cli.COMMANDS, command, exhausted)
    with pytest.raises(SystemExit) as exit_code:
        cli.main([command])
    assert exit_code.value.code == 2
    assert one_sentence(capsys.readouterr().err) == f"regsweep: error: {faults.OUT_OF_MEMORY}"


def _memory_cgroup(tmp_path) -> Path | None:
    """A new memory cgroup beside this process's own (v2, or v1's memory controller), where root
    may make one; None elsewhere."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        root = {"": Path("/sys/fs/cgroup/unified"), "memory": Path("/sys/fs/cgroup/memory")}.get(controllers)
        if controllers == "" and not (root / "cgroup.controllers").exists():
            root = Path("/sys/fs/cgroup")
        if root is None or not (root / path.lstrip("/")).is_dir():
            continue
        created = root / path.lstrip("/") / f"regsweep-test-{os.getpid()}-{tmp_path.name}"
        try:
            created.mkdir()
        except OSError:
            continue
        if (created / "memory.max").exists() or (created / "memory.limit_in_bytes").exists():
            return created
        created.rmdir()
    return None


@pytest.mark.parametrize("how", ["killed in a memory cgroup", "killed, the kernel's count injected"])
def test_a_worker_killed_for_memory_is_one_sentence_naming_memory_and_what_to_lower(tmp_path, monkeypatch, how):
    """The kernel's OOM killer, for real where this machine lets root make a memory cgroup, and by
    injection everywhere: its count of kills rises while the trial's worker dies by SIGKILL."""
    import worker_calls
    from regsweep.worker import ChildDied, TrialWorker

    cgroup = None
    if how.startswith("killed in"):
        cgroup = _memory_cgroup(tmp_path)
        if cgroup is None:
            pytest.skip("no memory cgroup can be made here (needs root and a writable cgroup file system)")
        call = (worker_calls.use_memory_in, str(cgroup), 300_000_000)
    else:
        counts = iter([7, 8])
        monkeypatch.setattr(faults, "oom_kills", lambda: next(counts))
        call = (worker_calls.die_by_sigkill,)
    worker = TrialWorker(calls_per_child=1)
    try:
        with pytest.raises(ChildDied) as died:
            worker.call(*call)
    finally:
        worker.close()
        if cgroup is not None:
            cgroup.rmdir()  # empty now: its one process is gone
    assert str(died.value) == (
        f"the trial's worker process was killed for memory (the kernel's OOM killer): {faults.MEMORY_FIX}"
    )


# --- a tracking server that stops answering (#34, item 5) --------------------------------------------


class Gate:
    """A relay on 127.0.0.1 to a real mlflow server that can go silent: connections open and
    requests go in, but nothing comes through (a hung server, a network dropping packets)."""

    def __init__(self, upstream: str):
        address = urlsplit(upstream)
        self.upstream = (address.hostname, address.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.answering = threading.Event()
        self.answering.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(source, target), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.answering.is_set():  # silent: what comes is dropped, never delivered late
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                end.close()


def _logged(caplog, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 120
    while sum(text in r.getMessage() for r in caplog.records) < count:
        assert time.monotonic() < deadline, f"no log line with {text!r}: {[r.getMessage() for r in caplog.records]}"
        time.sleep(0.05)


def test_a_tracking_server_that_stops_answering_is_said_and_said_back_then_stops_the_sweep_in_one_sentence(
    store, tmp_path, monkeypatch, caplog
):
    """Silenced by injection just after the baseline's fit: a line when the server stops answering
    and one when it is back; silenced again, MLflow gives up (about 20 × tracking.connect_timeout),
    the trial is FAIL with the reason and the sweep stops in one sentence; the same command then
    ends the trial's orphaned run FAILED with that reason and runs the baseline again."""
    server = service_url("REGSWEEP_TEST_MLFLOW_URL", "The mlflow server")
    for name in (
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    ):
        monkeypatch.setenv(name, "")  # regsweep sets them from connect_timeout; the other tests get theirs back
    gate = Gate(server)
    experiment = f"silent-{uuid.uuid4().hex[:8]}"  # the server is shared
    args = [
        f"paths.store={store}",
        f"tracking.uri={gate.url}",
        f"tracking.experiment={experiment}",
        "tracking.connect_timeout=1",
        *TINY,
        "sweep.trials_per_worker=0",
        "sweep.study=silent",
        "sweep.n_trials=1",
        "sweep.reevaluate.seeds=0",
    ]
    two_phases = fit.two_phases

    def fit_then_go_silent(*args, **kwargs):
        fitted = two_phases(*args, **kwargs)
        gate.answering.clear()
        _logged(caplog, "stopped answering")
        gate.answering.set()
        _logged(caplog, "answers again")
        gate.answering.clear()
        return fitted

    monkeypatch.setattr(fit, "two_phases", fit_then_go_silent)
    with pytest.raises(RegsweepError) as stopped:
        sweep.run_study(args)
    assert str(stopped.value).startswith(
        f"the tracking server {gate.url} stopped answering, and MLflow gave up after about 20 × "
        "tracking.connect_timeout: check that it runs"
    )
    assert "the same command resumes" in str(stopped.value)
    (failed,) = trials(store, "silent")
    assert failed.state.name == "FAIL"
    assert failed.user_attrs["fail_reason"] == f"the tracking server stopped answering: {gate.url}"

    gate.answering.set()
    monkeypatch.setattr(fit, "two_phases", two_phases)
    sweep.run_study(args)
    client = mlflow.MlflowClient(server)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], "")
    by_id = {r.info.run_id: r for r in found}
    ended = trials(store, "silent")
    assert [(t.state.name, t.user_attrs["baseline"]) for t in ended] == [("FAIL", True), ("COMPLETE", True)]
    orphan = by_id[failed.user_attrs["mlflow_run_id"]]
    assert orphan.info.status == "FAILED" and orphan.data.tags["regsweep.error"] == failed.user_attrs["fail_reason"]
    assert by_id[ended[1].user_attrs["mlflow_run_id"]].info.status == "FINISHED"
    assert "RUNNING" not in {r.info.status for r in found}
