"""`regsweep sweep` and `regsweep report` with real Optuna and real MLflow SQLite on the demo."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest

from conftest import tracking_client
from regsweep import cli, faults, progress, space, sweep, train
from regsweep import study as studies
from regsweep import trial as trials_module
from regsweep.config import RegsweepError
from regsweep.results import TrialRow, failures_by_reason, recommend
from regsweep.worker import TrialWorker

# Tiny trials: the demo CNN, 2 + 1 epochs, no model files.
TINY = ["train.epochs=2", "train.fine_tune_epochs=1", "tracking.artifacts=none", "sweep.reevaluate.seeds=0"]
# Trials in the test process, where the trial's worker process is not what a test is about.
IN_PROCESS = "sweep.trials_per_worker=0"


def sweep_args(store, *extra):
    return [f"paths.store={store}", *TINY, *extra]


def client(store):
    return tracking_client(store)


def runs_of(store):
    c = client(store)
    return c.search_runs([c.get_experiment_by_name("regsweep").experiment_id])


def parents_and_children(store, study_name):
    runs = [r for r in runs_of(store) if r.data.tags.get("regsweep.study") == study_name]
    parents = [r for r in runs if r.data.tags.get("regsweep.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, children


# --- pure rules -------------------------------------------------------------------------------


def test_search_space_syntax_maps_to_optuna_distributions():
    d = optuna.distributions
    assert space.parse_distribution("a", "interval(0.0, 0.7)") == d.FloatDistribution(0.0, 0.7)
    assert space.parse_distribution("a", "tag(log, interval(1e-4, 1e-2))") == d.FloatDistribution(1e-4, 1e-2, log=True)
    assert space.parse_distribution("a", "range(0, 3)") == d.IntDistribution(0, 3)
    assert space.parse_distribution("a", "range(0.0, 1.0, step=0.25)") == d.FloatDistribution(0.0, 1.0, step=0.25)
    assert space.parse_distribution("a", "int(interval(1, 8))") == d.IntDistribution(1, 8)
    assert space.parse_distribution("a", "choice(avg, max)") == d.CategoricalDistribution(["avg", "max"])
    with pytest.raises(RegsweepError, match=r"sweep.params a: 'interval\(0, 1' is not search-space syntax"):
        space.parse_distribution("a", "interval(0, 1")
    with pytest.raises(RegsweepError, match="low < high"):
        space.parse_distribution("a", "interval(1.0, 0.5)")


def test_a_knob_at_the_edge_of_its_range_is_named_with_the_wider_study_to_run():
    from regsweep.config import compose

    searched = space.parse_space(
        {
            "model.dropout": "interval(0.0, 0.7)",
            "augment.strength": "range(0.0, 1.0, step=0.25)",
            "optim.lr": "tag(log, interval(1e-4, 1e-2))",
            "model.unfrozen_blocks": "range(0, 2)",
        }
    )
    command = "regsweep sweep {widened} sweep.study=s-wider"
    found = space.edges(
        {"model.dropout": 0.68, "augment.strength": 1.0, "optim.lr": 1.1e-4, "model.unfrozen_blocks": 2},
        searched,
        compose([]),
        command,
    )
    assert found == [
        "model.dropout=0.68 lies at the top of its searched range [0, 0.7], where a wider range may do better: "
        "`regsweep sweep 'model.dropout=interval(0.0, 0.9)' sweep.study=s-wider`",
        "optim.lr=0.00011 lies at the bottom of its searched range [0.0001, 0.01], where a wider range may do better: "
        "`regsweep sweep 'optim.lr=tag(log, interval(1e-05, 0.01))' sweep.study=s-wider`",
        "model.unfrozen_blocks=2 lies at the top of its searched range [0, 2], where a wider range may do better: "
        "`regsweep sweep 'model.unfrozen_blocks=range(0, 3)' sweep.study=s-wider`",
    ]  # augmentation 1 is its limit: nothing wider to try
    # Inside the range, or at a limit of the knob itself (the demo CNN has 3 blocks): nothing to say.
    assert space.edges({"model.dropout": 0.35, "model.unfrozen_blocks": 0}, searched, compose([]), command) == []
    assert (
        space.edges(
            {"model.unfrozen_blocks": 3},
            space.parse_space({"model.unfrozen_blocks": "range(0, 3)"}),
            compose([]),
            command,
        )
        == []
    )
    # Every suggested range parses back.
    for line in found:
        expression = line.split("'")[1].split("=", 1)[1]
        space.parse_distribution(line.split("=")[0], expression)


def test_workers_on_other_machines_may_differ_only_in_where_things_are():
    given = [
        "paths.store=/scratch/mlruns",
        "cache.dir=/fast/cache",
        "tracking.uri=http://server:5000",
        "data.train_dir=/data/train",
        "+data.test_dir=/data/test",
        "tracking.experiment=pets",
        "train.epochs=40",
        "model=mobilenet_v2",
        "data=folders",
    ]
    assert studies.portable(given) == [
        "tracking.experiment=pets",
        "train.epochs=40",
        "model=mobilenet_v2",
        "data=folders",
    ]


# --- real sweeps ------------------------------------------------------------------------------


def test_with_artifacts_best_only_a_trial_that_can_become_the_recommendation_logs_plots():
    import optuna

    study = optuna.create_study(direction="maximize")
    for val, gap in ((0.80, 0.05), (0.90, 0.20)):
        study.add_trial(
            optuna.trial.create_trial(value=val, user_attrs={"val_accuracy": val, "gap": gap, "val_images": 500})
        )
    trial = study.ask()
    assert trials_module.leads(trial, {"val_accuracy": 0.85, "gap": 0.05, "val_images": 500})
    assert trials_module.leads(trial, {"val_accuracy": 0.95, "gap": 0.15, "val_images": 500})  # the most accurate
    assert not trials_module.leads(
        trial, {"val_accuracy": 0.79, "gap": 0.06, "val_images": 500}
    )  # 0.80/0.05 is better on both


@pytest.mark.slow
def test_sweep_logs_one_parent_and_a_tagged_child_per_trial_then_reports_and_replays(store, capfd):
    args = sweep_args(store, "sweep.study=main", "sweep.n_trials=4")
    study = sweep.run_study(args)  # trials run in a worker process (the default), printing to the same stdout
    printed = capfd.readouterr().out
    assert "trial 1/4 (#0 baseline) dropout=0 strength=0 lr=0.001 unfrozen_blocks=0 | COMPLETE val" in printed
    assert "trial 4/4" in printed and "The answer" in printed

    trials = study.get_trials()
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4
    assert trials[0].user_attrs["baseline"] and trials[0].params["model.dropout"] == 0.0
    parents, children = parents_and_children(store, "main")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(trials) >= 4
    by_id = {c.info.run_id: c for c in children}
    for trial in trials:
        child = by_id[trial.user_attrs["mlflow_run_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["regsweep.trial_number"] == str(trial.number)
        assert child.data.tags["regsweep.trial_state"] == trial.state.name
        if trial.state.name == "COMPLETE":
            assert float(child.data.params["model.dropout"]) == pytest.approx(trial.params["model.dropout"])
            assert child.data.metrics["gap"] == pytest.approx(trial.user_attrs["gap"])
            assert trial.value == trial.user_attrs["val_accuracy"]  # the default objective: accuracy

    # One rule names one trial: the progress line's last "best", the report's answer and the
    # best-settings file (no re-evaluation here, so the single-trial choice is the answer).
    chosen = recommend(studies.trial_rows(study), 0.1)
    progress_best = re.findall(r"best #(\d+):", printed)[-1]
    text = (store / "reports" / "main" / "report.md").read_text()
    answer = text.split("## The answer")[1].split("\n\n")[1]
    best_file = (store / "configs" / "experiment" / "main_best.yaml").read_text()
    assert progress_best == str(chosen.number)
    assert (
        f"trial #{chosen.number}" in answer.lower() and f"model.dropout={chosen.params['model.dropout']:.4g}" in answer
    )
    assert f"Recommended by regsweep: trial #{chosen.number} " in best_file
    # The demo has a test split: the way to confirm is to re-evaluate, not to "give a test split".
    assert "not yet confirmed on the test split" in answer and "sweep.reevaluate.seeds of at least 1" in answer
    assert "give a test split" not in answer
    assert "## Trade-off front" in text and (store / "reports" / "main" / "front.png").is_file()
    artifacts = {a.path for a in client(store).list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/report.md", "report/front.png"} <= artifacts

    # Re-running completes nothing new and recommends the same trial.
    again = sweep.run_study(args)
    assert len(again.get_trials()) == len(trials)
    assert recommend(studies.trial_rows(again), 0.1).number == chosen.number
    assert len(parents_and_children(store, "main")[0]) == 1

    # A different search space under the same name is refused, not mixed in.
    with pytest.raises(RegsweepError, match="different search_space"):
        sweep.run_study([*args, "model.dropout=interval(0.0, 0.9)"])

    # The written best-settings config replays through `regsweep train`.
    # As docs/reading-the-answer.md says: from the folder holding mlruns/, `regsweep train +experiment=<study>_best`.
    command = [sys.executable, "-c", "from regsweep.cli import main; main()", "train", "+experiment=main_best"]
    replay = subprocess.run(command, cwd=store.parent, capture_output=True, text=True, timeout=600)
    assert replay.returncode == 0, replay.stderr[-2000:]
    replayed = [r for r in runs_of(store) if "regsweep.study" not in r.data.tags]
    assert len(replayed) == 1
    for key, value in chosen.params.items():
        assert float(replayed[0].data.params[key]) == pytest.approx(value)
    assert replayed[0].data.params["train.epochs"] == "2"
    assert replayed[0].data.metrics["val_accuracy"] == pytest.approx(chosen.val_accuracy)  # replays exactly


def test_quiet_prints_only_the_answer_and_verbose_adds_each_runs_details(store, capsys, monkeypatch):
    """What `--quiet` and `--verbose` promise: the answer and where the report is, without the
    progress lines; and, verbose, also each run's epochs and stage seconds and each look the
    re-evaluation takes at its runs."""
    monkeypatch.setenv("REGSWEEP_VERBOSE", "")  # --verbose sets them; put back after the test
    monkeypatch.setenv("HYDRA_FULL_ERROR", "")
    args = ["sweep", *sweep_args(store, IN_PROCESS, "sweep.study=talk")]
    try:
        cli.main([*args, "sweep.n_trials=1", "--quiet"])
        quiet = capsys.readouterr().out
        cli.main([*args, "sweep.n_trials=2", "--verbose"])
        verbose = capsys.readouterr().out
    finally:
        progress.configure(logging.INFO)  # as conftest has it
        logging.getLogger(progress.LOGGER).propagate = True
    assert "The answer" in quiet and f"Report: {store / 'reports' / 'talk' / 'report.md'}" in quiet
    assert "trial 1/1" not in quiet and "Study 'talk' (" not in quiet
    assert "trial 2/2 (#1)" in verbose and "Report: " in verbose
    assert re.search(r"run [0-9a-f]{32}: \d+ epochs; seconds: setup [0-9.]+, features", verbose)
    assert "re-evaluation: 0 finished runs of 0 settings" in verbose


@pytest.mark.slow
def test_pareto_mode_runs_two_objectives_and_constrained_mode_records_the_gap_constraint(store):
    study = sweep.run_study(
        sweep_args(store, "sweep.study=front", "sweep.n_trials=3", "sweep.objective=pareto", IN_PROCESS)
    )
    assert len(study.directions) == 2
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    assert all(t.values == [t.user_attrs["val_accuracy"], t.user_attrs["gap"]] for t in complete)
    assert "Pareto" in (store / "reports" / "front" / "report.md").read_text()

    study = sweep.run_study(
        sweep_args(store, "sweep.study=feasible", "sweep.n_trials=2", "sweep.objective=constrained", IN_PROCESS)
    )
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert complete and all(t.constraints["gap"] == pytest.approx(t.user_attrs["gap"] - 0.1) for t in complete)


# A plain value on the command line fixes a key, taking it out of the search space.
FIX_ALL_BUT_ONE = ["augment.strength=0.0", "model.unfrozen_blocks=0"]


def _enqueue(store, name, args, *params):
    prepared = sweep.prepare(sweep_args(store, f"sweep.study={name}", *args))
    study = studies.open_study(prepared)
    for values in params:
        study.enqueue_trial(values)


@pytest.mark.slow
def test_a_pruned_trial_shows_as_pruned_in_mlflow(store):
    args = [
        "sweep.n_trials=2",
        *FIX_ALL_BUT_ONE,
        IN_PROCESS,
        "model.dropout=0.0",
        "optim.lr=choice(0.01, 1e-9)",
        "train.epochs=5",
        "sweep.pruner.name=median",
        "sweep.pruner.n_startup_trials=1",
        "sweep.pruner.n_warmup_steps=2",
    ]
    _enqueue(store, "prune", args, {"optim.lr": 0.01}, {"optim.lr": 1e-9})
    study = sweep.run_study(sweep_args(store, "sweep.study=prune", *args))
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "PRUNED"]
    pruned_run = client(store).get_run(study.get_trials()[1].user_attrs["mlflow_run_id"])
    assert pruned_run.data.tags["regsweep.trial_state"] == "PRUNED"
    assert pruned_run.info.status == "FINISHED" and "regsweep.error" not in pruned_run.data.tags


@pytest.mark.slow
def test_a_failing_trial_is_recorded_fail_with_its_reason_and_the_sweep_goes_on(store):
    args = ["sweep.n_trials=2", *FIX_ALL_BUT_ONE, IN_PROCESS, "optim.lr=0.001", "model.dropout=choice(0.0, 1.5, 0.3)"]
    # Trial 0 is the enqueued baseline (dropout 0.0, the config as given).
    _enqueue(store, "fail", args, {"model.dropout": 1.5}, {"model.dropout": 0.3})
    study = sweep.run_study(sweep_args(store, "sweep.study=fail", *args))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "model.dropout=1.5 is outside [0, 1)" in trials[1].user_attrs["fail_reason"]
    failed_run = client(store).get_run(trials[1].user_attrs["mlflow_run_id"])
    assert failed_run.info.status == "FAILED"
    assert failed_run.data.tags["regsweep.trial_state"] == "FAIL"
    assert "model.dropout=1.5" in failed_run.data.tags["regsweep.error"]
    report_text = (store / "reports" / "fail" / "report.md").read_text()
    assert "## Failed trials, by reason" in report_text
    assert f"| {trials[1].user_attrs['fail_reason']} | 1 | #1 |" in report_text


def test_the_report_counts_failures_by_reason_most_frequent_first():
    rows = [
        TrialRow(0, "COMPLETE", {}, 0.9, gap=0.05),
        TrialRow(1, "FAIL", {}, fail_reason="MemoryError: out"),
        TrialRow(2, "FAIL", {}, fail_reason=studies.INTERRUPTED),
        TrialRow(3, "FAIL", {}, fail_reason=studies.INTERRUPTED),
        TrialRow(4, "FAIL", {}, fail_reason=""),
    ]
    assert failures_by_reason(rows) == [
        (studies.INTERRUPTED, [2, 3]),
        ("MemoryError: out", [1]),
        ("unknown (no reason was recorded)", [4]),
    ]


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_its_budget_with_one_parent_run(store, monkeypatch):
    # In-process trials, so the patched train.train_and_log is the one that runs.
    args = sweep_args(store, "sweep.study=resume", "sweep.n_trials=4", "sweep.trials_per_worker=0")
    real_run, calls = train.train_and_log, []

    def interrupted_on_third_trial(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(*a, **k)

    monkeypatch.setattr(train, "train_and_log", interrupted_on_third_trial)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_study(args)
    parents, _ = parents_and_children(store, "resume")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"

    monkeypatch.setattr(train, "train_and_log", real_run)
    study = sweep.run_study(args)
    states = [t.state.name for t in study.get_trials()]
    assert states.count("FAIL") == 1 and sum(s in ("COMPLETE", "PRUNED") for s in states) == 4
    parents, _ = parents_and_children(store, "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(
        not math.isnan(t.user_attrs.get("gap", math.nan)) for t in study.get_trials() if t.state.name == "COMPLETE"
    )


@pytest.mark.slow
def test_hyperband_pruner_drives_a_study(store):
    study = sweep.run_study(
        sweep_args(store, "sweep.study=hb", "sweep.n_trials=3", "sweep.pruner.name=hyperband", IN_PROCESS)
    )
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials()) == 3


@pytest.mark.slow
def test_a_trial_whose_worker_dies_is_recorded_failed_and_the_next_trial_gets_a_new_worker(store, monkeypatch):
    """Trials run in a worker process: if it is killed (OOM killer, kill -9), the sweep goes on.

    The kernel's count of OOM kills is held still: it counts the whole machine, and the other test
    process's real out-of-memory test (test_faults) would make this kill -9 read as memory."""
    monkeypatch.setattr(faults, "oom_kills", lambda: 0)
    prepared = sweep.prepare(
        sweep_args(
            store,
            "sweep.study=dies",
            "train.epochs=30",
            "model.dropout=interval(0.0, 0.5)",
            "augment.strength=0.0",
            "optim.lr=0.001",
            "model.unfrozen_blocks=0",
        )
    )
    study = studies.open_study(prepared)
    parent = studies.parent_run(study, prepared)
    worker = TrialWorker(calls_per_child=10)
    try:
        doomed = study.ask()
        killer = threading.Thread(target=_kill_worker_once_its_run_started, args=(study, doomed.number))
        killer.start()
        with pytest.raises(trials_module.TrialFailed, match="worker process died"):
            trials_module.run_in_worker(worker, prepared, doomed, {"model.dropout": 0.0}, parent)
        killer.join()
        study.tell(doomed, state=optuna.trial.TrialState.FAIL)
        survivor = study.ask()
        metrics = trials_module.run_in_worker(worker, prepared, survivor, {"model.dropout": 0.1}, parent)
        study.tell(survivor, metrics["val_accuracy"])
    finally:
        faults.release_stops()  # as the sweep does once Optuna has recorded the trial
        worker.close()
    doomed_trial, survivor_trial = study.get_trials()
    assert "worker process died" in doomed_trial.user_attrs["fail_reason"]
    run = client(store).get_run(doomed_trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["regsweep.trial_state"] == "FAIL"
    assert survivor_trial.state.name == "COMPLETE" and 0 <= survivor_trial.value <= 1


def _kill_worker_once_its_run_started(study, number):
    deadline = time.time() + 120
    while time.time() < deadline:
        if "mlflow_run_id" in study.get_trials(deepcopy=False)[number].user_attrs:
            for child in multiprocessing.active_children():  # the worker's process
                os.kill(child.pid, signal.SIGKILL)
            return
        time.sleep(0.05)
