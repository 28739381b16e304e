"""One trial of a study: compose its config, train it, and record how it ended, on the Optuna
trial and on its MLflow run alike, with a live progress line.

A trial runs in the sweep's worker child (regsweep.worker) or, with
sweep.trials_per_worker=0, in the sweep's own process.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import mlflow
import optuna
from omegaconf import DictConfig

from regsweep import faults, results, space, study, tracking
from regsweep.config import compose, redact
from regsweep.metrics import GAP, RUNNING_TRAIN_ACCURACY, TRAIN_ACCURACY, VAL_ACCURACY, VAL_IMAGES
from regsweep.progress import live, say
from regsweep.study import FAIL_REASON_ATTR, INTERRUPTED, RUN_ID_ATTR, Sweep
from regsweep.worker import ChildDied, TrialWorker


class TrialFailed(Exception):
    """A trial's error, reduced to `Type: message` so it crosses the worker process boundary,
    with the sentence for a full, read-only or damaged store when it was one (it stops the sweep)."""

    def __init__(self, summary: str, store_fault: str | None = None):
        super().__init__(summary, store_fault)
        self.summary, self.store_fault = summary, store_fault

    def __str__(self) -> str:
        return self.summary


class TrialMonitor:
    """Per epoch (as a Keras callback's on_epoch_end): reports val_accuracy to the pruner and
    refreshes the progress line."""

    def __init__(self, trial: optuna.Trial, prune: bool, progress: Progress):
        self.trial, self.prune, self.progress = trial, prune, progress

    def on_epoch_end(self, epoch, logs=None):
        val_accuracy = float((logs or {}).get("val_accuracy", math.nan))  # Keras's per-epoch key, as it logs it
        self.progress.epoch(epoch + 1, val_accuracy)
        if self.prune:
            self.trial.report(val_accuracy, step=epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} (val_accuracy {val_accuracy:.4f})")


class Progress:
    """One live line per trial: trial k/N, knobs, epoch, val accuracy, best so far.

    On a terminal the line updates in place every epoch; in a log, one line per trial. "Best"
    is the trial that regsweep.results.recommend would name now.
    """

    def __init__(self, optuna_study: optuna.Study, settings: DictConfig):
        self.study, self.settings = optuna_study, settings
        self.live = sys.stdout.isatty()
        self.header = self.best = ""

    def _best(self, just_completed: results.TrialRow | None = None) -> str:
        rows = study.trial_rows(self.study)
        if just_completed is not None:  # not yet COMPLETE in storage while the objective returns
            rows.append(just_completed)
        chosen = results.recommend(rows, self.settings.epsilon)
        if chosen is None:
            return "best: none yet"
        return f"best #{chosen.number}: val {chosen.val_accuracy:.3f} gap {chosen.gap:.3f}" + (
            "" if chosen.gap <= self.settings.epsilon else " (gap > ε)"
        )

    def start(self, trial: optuna.Trial, label: str) -> None:
        done = len(self.study.get_trials(deepcopy=False, states=study.COUNTED))
        baseline = " baseline" if trial.user_attrs.get(study.BASELINE_ATTR) else ""
        self.header = f"trial {done + 1}/{self.settings.n_trials} (#{trial.number}{baseline}) {label}"
        self.best = self._best()

    def epoch(self, epoch: int, val_accuracy: float) -> None:
        if self.live:
            live(f"{self.header} | epoch {epoch} val {val_accuracy:.3f} | {self.best}")

    def finish(self, state: str, detail: str, just_completed: results.TrialRow | None = None) -> None:
        line = f"{self.header} | {state} {detail} | {self._best(just_completed)}"
        say(f"\r{line}\033[K" if self.live else line)


def finished_row(trial: optuna.Trial, metrics: dict) -> results.TrialRow:
    return results.TrialRow(
        trial.number,
        "COMPLETE",
        {},
        val_accuracy=metrics[VAL_ACCURACY],
        gap=metrics[GAP],
        val_images=int(metrics[VAL_IMAGES]),
        baseline=bool(trial.user_attrs.get(study.BASELINE_ATTR, False)),
    )


def leads(trial: optuna.Trial, metrics: dict) -> bool:
    """Whether the finished trial can become the recommendation (see regsweep.results.leads)."""
    return results.leads(study.trial_rows(trial.study), finished_row(trial, metrics))


def run_trial(sweep: Sweep, trial: optuna.Trial | TrialInStorage, values: dict, parent_run_id: str) -> dict:
    """One trial: compose, train, log, and record its outcome on the Optuna trial and MLflow run.
    Returns its metrics; the objective turns them into Optuna's values."""
    s = sweep.settings
    single = s.objective != "pareto"  # one objective, val_accuracy: prunable
    overrides = sweep.base_overrides + space.as_overrides(values)
    trial.set_user_attr(study.OVERRIDES_ATTR, [redact(o) for o in overrides])  # the replay line: no password
    trial.set_user_attr(FAIL_REASON_ATTR, INTERRUPTED)  # stays only if this process dies mid-trial
    tracking.use_store(sweep.cfg.tracking)
    client = mlflow.MlflowClient()
    progress = Progress(trial.study, s)
    run_ids: list[str] = []

    def started(run_id: str) -> None:
        run_ids.append(run_id)
        trial.set_user_attr(RUN_ID_ATTR, run_id)

    def set_state(state: str) -> None:
        if run_ids:
            client.set_tag(run_ids[0], tracking.TRIAL_STATE_TAG, state)

    progress.start(trial, space.knob_label(values))
    tags = {
        tracking.STUDY_TAG: s.study,
        tracking.TRIAL_NUMBER_TAG: str(trial.number),
        tracking.TRIAL_STATE_TAG: "RUNNING",
    }
    try:
        import keras  # lazy: the sweep's own process never needs TensorFlow

        from regsweep import train  # lazy: Keras and TensorFlow, in the process that trains

        cfg = compose(overrides)
        # The baseline is never pruned: every answer is measured against it, so it must complete.
        baseline = bool(trial.user_attrs.get(study.BASELINE_ATTR))
        monitor = TrialMonitor(trial, single and s.pruner.name != "none" and not baseline, progress)
        callback = keras.callbacks.LambdaCallback(on_epoch_end=monitor.on_epoch_end)
        result = train.train_and_log(
            cfg,
            parent_run_id=parent_run_id,
            tags=tags,
            callbacks=(callback,),
            on_run_started=started,
            leads=lambda metrics: leads(trial, metrics),
            label=f"#{trial.number}",
        )
        faults.hold_stops()  # trained and logged: record it everywhere before any stop (released once Optuna has)
    except optuna.TrialPruned as pruned:
        trial.set_user_attr(FAIL_REASON_ATTR, "")
        set_state("PRUNED")
        if run_ids:  # the pruner's stop is a normal end, not a crash
            client.delete_tag(run_ids[0], tracking.ERROR_TAG)
            client.set_terminated(run_ids[0], "FINISHED")
        progress.finish("PRUNED", str(pruned))
        raise
    except Exception as error:
        if (stop := faults.requested_stop()) is not None:  # stopped, though TensorFlow's clean-up said otherwise
            _record_stop(trial, stop, set_state, run_ids)
            raise stop from error
        reason = tracking.error_summary(error)
        if (fault := faults.kind(error)) is not None:  # the store itself failed: record what it still takes
            faults.free_reserve(Path(sweep.base.paths.store), error)
            # A silent tracking server takes nothing: the next command ends the run (study.end_orphaned_runs).
            _record_store_fault(trial, [] if fault == faults.SILENT else run_ids, reason)
            raise
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
        if not run_ids:  # failed before training started (bad value, bad data): record it anyway
            experiment_id = client.get_run(parent_run_id).info.experiment_id
            failed = client.create_run(
                experiment_id,
                run_name=f"#{trial.number} {space.knob_label(values)}",
                tags={**tags, tracking.PARENT_TAG: parent_run_id},
            )
            started(failed.info.run_id)
            tracking.fail_run(failed.info.run_id, reason)
        set_state("FAIL")
        progress.finish("FAIL", reason)
        raise
    except KeyboardInterrupt as stop:
        _record_stop(trial, stop, set_state, run_ids)
        raise
    metrics = result.metrics
    trial.set_user_attr(FAIL_REASON_ATTR, "")
    for name in (TRAIN_ACCURACY, VAL_ACCURACY, GAP, RUNNING_TRAIN_ACCURACY, VAL_IMAGES):
        trial.set_user_attr(name, float(metrics[name]))
    set_state("COMPLETE")
    progress.finish(
        "COMPLETE",
        f"val {metrics[VAL_ACCURACY]:.3f} gap {metrics[GAP]:.3f}",
        just_completed=finished_row(trial, metrics),
    )
    return metrics


def _record_stop(trial: optuna.Trial, stop: KeyboardInterrupt, set_state, run_ids: list[str]) -> None:
    """Both stores say the trial was stopped, and why: its MLflow run too, though the stop may
    have come just after the run ended FINISHED (Optuna records the trial FAIL)."""
    with contextlib.suppress(Exception):  # the stop must go on even if the store refuses these
        trial.set_user_attr(FAIL_REASON_ATTR, faults.stop_reason(stop))
        set_state("FAIL")
        if run_ids:
            tracking.stop_run(run_ids[0], faults.stop_reason(stop))


def _record_store_fault(trial: optuna.Trial, run_ids: list[str], reason: str) -> None:
    """Best effort on a full, read-only or damaged store: the trial's reason and its run FAILED.
    What the store refuses now, the next command records (the trial's heartbeat stops)."""
    with contextlib.suppress(Exception):
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
    if run_ids:
        with contextlib.suppress(Exception):
            tracking.fail_run(run_ids[0], reason)


class TrialInStorage:
    """A running trial as the worker child sees it: what `run_trial` asks of an optuna.Trial,
    through the storage's public methods. The trial itself (its sampler, heartbeat and end)
    stays with study.optimize in the sweep's process."""

    def __init__(self, loaded: optuna.Study, storage: optuna.storages.BaseStorage, number: int):
        self.study, self.storage, self.number = loaded, storage, number
        study_id = storage.get_study_id_from_name(loaded.study_name)
        self.trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)

    @property
    def user_attrs(self) -> dict:
        return self.storage.get_trial_user_attrs(self.trial_id)

    def set_user_attr(self, key: str, value) -> None:
        self.storage.set_trial_user_attr(self.trial_id, key, value)

    def report(self, value: float, step: int) -> None:
        self.storage.set_trial_intermediate_value(self.trial_id, step, value)

    def should_prune(self) -> bool:
        return self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id))


def run_trial_in_child(sweep: Sweep, number: int, values: dict, parent_run_id: str) -> dict:
    """`run_trial` in the worker child, on the same study storage as the sweep."""
    s = sweep.settings
    storage = study.open_storage(str(s.storage), connect_timeout=sweep.cfg.tracking.connect_timeout)
    loaded = optuna.load_study(study_name=s.study, storage=storage, pruner=space.make_pruner(s))
    try:
        return run_trial(sweep, TrialInStorage(loaded, storage, number), values, parent_run_id)
    except (optuna.TrialPruned, KeyboardInterrupt):
        raise
    except Exception as error:
        raise TrialFailed(tracking.error_summary(error), faults.sentence(error, str(sweep.base.paths.store))) from None


def run_in_worker(worker: TrialWorker, sweep: Sweep, trial: optuna.Trial, values: dict, parent_run_id: str) -> dict:
    """The trial in the worker's child; if the child dies, the trial and its MLflow run are FAIL."""
    try:
        return worker.call(run_trial_in_child, sweep, trial.number, values, parent_run_id)
    except ChildDied as died:
        reason = str(died)
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
        # The trial as the child left it: the run it started, if any.
        stored = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        run_id = stored.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            tracking.fail_run(run_id, reason)
        raise TrialFailed(reason) from None


def make_objective(sweep: Sweep, parent_run_id: str, worker: TrialWorker | None, store_faults: list[str]):
    """Optuna's objective: the sampler picks values here, the trial runs here or in the worker.

    A full, read-only or damaged store stops the study after this trial (its sentence goes to
    `store_faults`): every later trial would fail the same way.
    """

    def objective(trial: optuna.Trial):
        try:
            faults.release_stops()  # one that came while Optuna set this trial up ends it here, recorded
            values = {key: space.suggest(trial, key, distribution) for key, distribution in sweep.space.items()}
            if worker is None:
                metrics = run_trial(sweep, trial, values, parent_run_id)
            else:
                metrics = run_in_worker(worker, sweep, trial, values, parent_run_id)
        except KeyboardInterrupt as stop:
            with contextlib.suppress(Exception):  # also when it came before the trial's run began
                trial.set_user_attr(FAIL_REASON_ATTR, faults.stop_reason(stop))
            stop.add_note(f"trial #{trial.number} ended FAIL")  # here or in the worker: Optuna records it FAIL
            raise
        except Exception as error:
            found = (
                error.store_fault
                if isinstance(error, TrialFailed)
                else faults.sentence(error, str(sweep.base.paths.store))
            )
            if found is not None:
                store_faults.append(found)
                trial.study.stop()
            raise
        if sweep.settings.objective == "constrained":
            trial.set_constraint(GAP, metrics[GAP] - float(sweep.settings.epsilon))  # feasible when <= 0
        if sweep.settings.objective == "pareto":
            return metrics[VAL_ACCURACY], metrics[GAP]
        return metrics[VAL_ACCURACY]

    return objective
