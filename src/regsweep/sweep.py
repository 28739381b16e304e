"""`regsweep sweep`: an Optuna study over config keys, every trial a nested MLflow run.

Optuna drives the search and Hydra composes each trial from the same tree as
`regsweep train`, plus the trial's values, so any trial replays with `regsweep train
<its overrides>`. The study lives in Optuna storage (SQLite under mlruns/ by default) and
its budget is a total: re-running the same command tops the study up, or only reports.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf

from regsweep import data, tracking
from regsweep.config import RegsweepError, compose, compose_study, redact, validate

COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
OBJECTIVES = ("constrained", "pareto")
SAMPLERS = ("tpe", "random", "nsgaii")
PRUNERS = ("median", "hyperband", "none")
STATE_TAG = "regsweep.trial_state"


@dataclass
class Sweep:
    """Everything a study needs, resolved from the composed `study` config and the CLI."""

    settings: DictConfig  # cfg.sweep
    space: dict[str, optuna.distributions.BaseDistribution]
    expressions: dict[str, str]  # the search space as written, for the study's record
    base_overrides: list[str]  # applied to every trial before its own values
    base: DictConfig  # the training config every trial starts from
    cfg: DictConfig  # the training settings plus the sweep definition under `sweep`
    has_test_split: bool  # whether re-evaluation can score the result on untouched images
    data_fingerprint: str  # the images' content: workers on other machines must train on the same


# --- the search space ------------------------------------------------------------------------


def parse_distribution(key: str, expression: str) -> optuna.distributions.BaseDistribution:
    """Hydra sweeper syntax → Optuna distribution.

    interval(a, b) float · tag(log, interval(a, b)) log float · int(interval(a, b)) int ·
    range(a, b) int from a to b inclusive · range(a, b, step=s) with floats: stepped float ·
    choice(x, y, …) categorical.
    """
    try:
        sweep = OverridesParser.create().parse_override(f"{key}={expression}").value()
    except Exception as error:
        raise RegsweepError(
            f"sweep.params {key}: {expression!r} is not search-space syntax ({str(error).splitlines()[0]}): "
            "use interval(a, b), tag(log, interval(a, b)), range(a, b) or choice(x, y)"
        ) from None
    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, IntervalSweep) and sweep.start < sweep.end:
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return optuna.distributions.IntDistribution(sweep.start, sweep.end, log=log)
        return optuna.distributions.FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep) and sweep.start < sweep.stop:
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return optuna.distributions.IntDistribution(sweep.start, sweep.stop, step=sweep.step, log=log)
        return optuna.distributions.FloatDistribution(
            float(sweep.start), float(sweep.stop), step=float(sweep.step), log=log
        )
    raise RegsweepError(
        f"sweep.params {key}: {expression!r} is not a usable search dimension: "
        "give interval(low, high) or range(low, high) with low < high, or choice(x, y, ...)"
    )


def split_cli_overrides(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates plain overrides (fixed values) from sweep-syntax ones (searched keys)."""
    parser = OverridesParser.create()
    plain, searched = [], {}
    for arg in args:
        try:
            override = parser.parse_override(arg)
        except Exception:
            plain.append(arg)  # let composition report it with its own message
            continue
        if override.is_sweep_override():
            searched[override.key_or_group] = arg.split("=", 1)[1]
        else:
            plain.append(arg)
    return plain, searched


def prepare(args: list[str]) -> Sweep:
    """Composes the study config from CLI args and checks the whole sweep before any trial."""
    plain, searched = split_cli_overrides(args)
    cfg = compose_study(plain)
    settings = cfg.sweep
    fixed_keys = {a.split("=", 1)[0].lstrip("+~") for a in plain if not a.startswith(("sweep.", "sweep="))}
    expressions = {k: str(v) for k, v in (settings.params or {}).items() if k not in fixed_keys}
    expressions.update(searched)
    check_settings(settings, expressions)
    space = {key: parse_distribution(key, expression) for key, expression in expressions.items()}
    fixed = [f"{k}={_format(v)}" for k, v in (settings.fixed or {}).items()]
    user = [a for a in plain if not a.startswith(("sweep.", "sweep=", "hydra."))]
    base_overrides = fixed + user
    base = compose(base_overrides)
    for key in space:
        if OmegaConf.select(base, key, default="__missing__") == "__missing__":
            raise RegsweepError(f"sweep.params {key}: no such config key: check it against `regsweep train --cfg job`")
    # Bad settings or data stop here, before a study or an MLflow run exists.
    validate(base)
    splits = data.resolve_splits(base.data, base.model.image_size, Path(base.paths.store))
    return Sweep(settings, space, expressions, base_overrides, base, cfg, splits.test is not None,
                 data.fingerprint(splits))


def check_settings(settings: DictConfig, expressions: dict[str, str]) -> None:
    if settings.objective not in OBJECTIVES:
        raise RegsweepError(f"sweep.objective={settings.objective} is unknown: use one of {', '.join(OBJECTIVES)}")
    if settings.sampler.name not in SAMPLERS:
        raise RegsweepError(f"sweep.sampler.name={settings.sampler.name} is unknown: use one of {', '.join(SAMPLERS)}")
    if settings.pruner.name not in PRUNERS:
        raise RegsweepError(f"sweep.pruner.name={settings.pruner.name} is unknown: use one of {', '.join(PRUNERS)}")
    if not isinstance(settings.n_trials, int) or settings.n_trials < 1:
        raise RegsweepError(f"sweep.n_trials={settings.n_trials} must be a positive integer")
    if not isinstance(settings.trials_per_worker, int) or settings.trials_per_worker < 0:
        raise RegsweepError(
            f"sweep.trials_per_worker={settings.trials_per_worker} must be an integer >= 0 "
            "(0 runs trials in the sweep's own process)"
        )
    if not isinstance(settings.heartbeat_seconds, int) or settings.heartbeat_seconds < 1:
        raise RegsweepError(
            f"sweep.heartbeat_seconds={settings.heartbeat_seconds} must be a whole number of seconds >= 1"
        )
    if not isinstance(settings.epsilon, (int, float)) or settings.epsilon < 0:
        raise RegsweepError(f"sweep.epsilon={settings.epsilon} must be a number >= 0 (the largest acceptable gap)")
    reeval = settings.reevaluate
    for key in ("seeds", "top_k"):
        if not isinstance(reeval[key], int) or reeval[key] < (0 if key == "seeds" else 1):
            raise RegsweepError(f"sweep.reevaluate.{key}={reeval[key]} must be an integer >= {0 if key == 'seeds' else 1}")
    from regsweep.reevaluate import baseline_overrides

    baseline_overrides(reeval.baseline)  # the named baseline file exists and reads
    if not expressions:
        raise RegsweepError("the search space is empty: give sweep.params in the sweep file or key=interval(a, b) on the command line")


def _format(value) -> str:
    """A config value as a Hydra override value (floats keep full precision for exact replay)."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --- the study --------------------------------------------------------------------------------


# Where things live on a machine: workers on several machines give different values, and the
# trials' outcome does not depend on them (the data's content is checked by its fingerprint).
MACHINE_LOCAL_KEYS = ("data.train_dir", "data.val_dir", "data.test_dir", "data.dir", "tracking.uri",
                      "tracking.artifact_root")
MACHINE_LOCAL_GROUPS = ("paths.", "cache.")


def portable(overrides: list[str]) -> list[str]:
    """The overrides two workers of one study must agree on, wherever they run."""
    def key(override: str) -> str:
        return override.lstrip("+~").split("=", 1)[0]

    return [o for o in overrides if key(o) not in MACHINE_LOCAL_KEYS and not key(o).startswith(MACHINE_LOCAL_GROUPS)]


def study_record(sweep: Sweep) -> dict:
    """What makes two invocations the same study; a mismatch on resume is refused."""
    s = sweep.settings
    return {
        "objective": s.objective,
        "epsilon": float(s.epsilon),
        "search_space": sweep.expressions,
        "base_overrides": [redact(o) for o in sweep.base_overrides],  # no password is stored
    }


def open_study(sweep: Sweep) -> optuna.Study:
    """Creates the study, or loads it and checks that it is the same study.

    Exactly one process creates a study (the storage refuses a second name), and only the
    creator records its definition and enqueues the baseline: two workers started at once on
    a new study never enqueue two baselines.
    """
    s = sweep.settings
    constrained = s.objective == "constrained"
    storage = open_storage(sweep)
    existing = _existing_trials(storage, s.study)
    options = dict(
        study_name=s.study,
        storage=storage,
        directions=["maximize"] if constrained else ["maximize", "minimize"],
        sampler=make_sampler(s, existing),
        pruner=make_pruner(s) if constrained else optuna.pruners.NopPruner(),
    )
    record = study_record(sweep)
    try:
        study = optuna.create_study(**options)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.create_study(**options, load_if_exists=True)
        created = False
    if not created:  # another worker may have just created it: wait for its record
        _wait_for_record(study, record)
    if not all(key in study.user_attrs for key in record):  # new (or its creator died at once)
        # The parent run comes first and the record last: a worker that sees the record also
        # finds the one parent run, and the baseline is enqueued once.
        parent_run(study, sweep)
        baseline = baseline_values(sweep)
        if baseline:
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
        check_same_data(study, sweep)  # records the images' fingerprint
        for key, value in record.items():
            study.set_user_attr(key, value)
        return study
    check_same_data(study, sweep)
    previous, current = (_comparable({key: values.get(key) for key in record}) for values in (study.user_attrs, record))
    changed = [key for key in current if previous[key] != current[key]]
    if changed:
        raise RegsweepError(
            f"study '{s.study}' in {redact(str(s.storage))} was started with a different {', '.join(changed)} "
            f"({'; '.join(f'{k} was {previous[k]}, now {current[k]}' for k in changed)}): re-run with the original settings, "
            "or start a new study with sweep.study=<new name>"
        )
    return study


def _comparable(record: dict) -> dict:
    """A study record as two workers must agree on it (see `portable`)."""
    return {**record, "base_overrides": portable(record["base_overrides"] or [])}


def check_same_data(study: optuna.Study, sweep: Sweep) -> None:
    """Every worker, on every machine, trains on the same images (a study recorded before this
    check adopts the first fingerprint it sees)."""
    recorded = study.user_attrs.get("data_fingerprint")
    if recorded is None:
        study.set_user_attr("data_fingerprint", sweep.data_fingerprint)
    elif recorded != sweep.data_fingerprint:
        raise RegsweepError(
            f"study '{study.study_name}' was run on other images (data fingerprint {recorded}, here "
            f"{sweep.data_fingerprint}): point data.* at the same images on every machine, or start a new study "
            "with sweep.study=<new name>"
        )


def _wait_for_record(study: optuna.Study, record: dict, seconds: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not all(key in study.user_attrs for key in record) and time.monotonic() < deadline:
        time.sleep(0.2)


def open_storage(sweep: Sweep) -> optuna.storages.BaseStorage:
    """The study's Optuna storage, with a heartbeat: a trial whose process was killed (kill -9,
    reboot, pre-emption) stops beating, and is marked FAIL once it has been silent for
    2 × sweep.heartbeat_seconds; its MLflow run is then ended FAILED (see `end_stale_trial`).
    """
    s = sweep.settings
    url = str(s.storage)
    import warnings

    try:
        with warnings.catch_warnings(), tracking.creating(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=int(s.heartbeat_seconds), grace_period=2 * int(s.heartbeat_seconds),
                heartbeat_stale_trial_callback=lambda study, trial: end_stale_trial(study, trial, sweep.cfg.tracking),
            )
    except Exception as error:
        raise RegsweepError(
            f"sweep.storage={redact(url)} cannot be opened ({redact(str(error).splitlines()[0])[:200]}): "
            "check the URL and that its database is reachable, or leave it unset for the local SQLite file"
        ) from None


INTERRUPTED = "interrupted: the process running this trial stopped before the trial ended (killed, rebooted or out of memory)"


def end_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, tracking_cfg: DictConfig) -> None:
    """Optuna has just marked a silent trial FAIL: its MLflow run must not stay RUNNING either.

    The trial already carries its reason: every trial starts with `fail_reason` = INTERRUPTED,
    replaced when it ends by itself.
    """
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        return
    tracking.use_store(tracking_cfg)
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "regsweep.error", trial.user_attrs.get("fail_reason") or INTERRUPTED)
        client.set_tag(run_id, STATE_TAG, "FAIL")
        client.set_terminated(run_id, "FAILED")


def _existing_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        summaries = optuna.get_all_study_summaries(storage)
    except Exception as error:
        raise RegsweepError(
            f"the Optuna storage cannot be read ({redact(str(error).splitlines()[0])[:200]}): "
            "check sweep.storage, or leave it unset for the local SQLite file"
        ) from None
    return next((summary.n_trials for summary in summaries if summary.study_name == name), 0)


def make_sampler(settings: DictConfig, existing_trials: int) -> optuna.samplers.BaseSampler:
    """TPE and NSGA-II honour each trial's `gap − ε` constraint (Trial.set_constraint)."""
    # A resumed study must not replay the same random start-up points: offset the seed.
    seed = None if settings.sampler.seed is None else settings.sampler.seed + existing_trials
    name = settings.sampler.name
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.sampler.n_startup_trials)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(settings: DictConfig) -> optuna.pruners.BasePruner:
    pruner = settings.pruner
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=pruner.get("min_resource", 3))
    return optuna.pruners.NopPruner()


def baseline_values(sweep: Sweep) -> dict:
    """The searched keys at their un-swept values (your config as given), where in range.

    Enqueued as trial 0, so every report can compare the recommendation with doing nothing.
    """
    values = {}
    for key, distribution in sweep.space.items():
        value = OmegaConf.select(sweep.base, key)
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            inside = value in distribution.choices
        else:
            inside = isinstance(value, (int, float)) and distribution.low <= value <= distribution.high
        if inside:
            values[key] = value
    return values


# --- MLflow -----------------------------------------------------------------------------------


def parent_run(study: optuna.Study, sweep: Sweep) -> str:
    """The study's one parent run: found again on resume, created once."""
    tracking.use_store(sweep.cfg.tracking)
    client = mlflow.MlflowClient()
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id is not None:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                client.update_run(run_id, status="RUNNING")
                return run_id
        except mlflow.exceptions.MlflowException:
            pass  # deleted from the tracking store: start a new parent
    experiment_id = mlflow.get_experiment_by_name(sweep.cfg.tracking.experiment).experiment_id
    s = sweep.settings
    run = client.create_run(
        experiment_id,
        run_name=f"study {s.study}",
        tags={"regsweep.study": s.study, "regsweep.role": "study"},
    )
    run_id = run.info.run_id
    client.log_batch(run_id, params=[
        mlflow.entities.Param(k, redact(str(v))[:6000]) for k, v in {
            "sweep.study": s.study, "sweep.objective": s.objective, "sweep.epsilon": s.epsilon,
            "sweep.n_trials": s.n_trials, "sweep.sampler": s.sampler.name, "sweep.pruner": s.pruner.name,
            "sweep.storage": s.storage, **{f"search.{k}": v for k, v in sweep.expressions.items()},
            "base_overrides": " ".join(sweep.base_overrides),
        }.items()
    ])
    client.log_text(run_id, redact(OmegaConf.to_yaml(sweep.cfg.sweep, resolve=True)), "sweep.yaml")
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


# --- trials -----------------------------------------------------------------------------------


class TrialMonitor:
    """Per epoch (as a Keras callback's on_epoch_end): reports val_accuracy to the pruner and
    refreshes the progress line."""

    def __init__(self, trial: optuna.Trial, prune: bool, progress: "Progress"):
        self.trial, self.prune, self.progress = trial, prune, progress

    def on_epoch_end(self, epoch, logs=None):
        val_accuracy = float((logs or {}).get("val_accuracy", math.nan))
        self.progress.epoch(epoch + 1, val_accuracy)
        if self.prune:
            self.trial.report(val_accuracy, step=epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} (val_accuracy {val_accuracy:.4f})")


class Progress:
    """One live line per trial: trial k/N, knobs, epoch, val accuracy, best so far.

    On a terminal the line updates in place every epoch; in a log, one line per trial.
    """

    def __init__(self, study: optuna.Study, settings: DictConfig):
        self.study, self.settings = study, settings
        self.live = sys.stdout.isatty()
        self.header = self.best = ""

    def _best(self, just_completed: tuple | None = None) -> str:
        from regsweep.report import TrialRow, recommend, trial_rows

        rows = trial_rows(self.study)
        if just_completed is not None:  # not yet COMPLETE in storage while the objective returns
            number, val_accuracy, gap = just_completed
            rows.append(TrialRow(number, "COMPLETE", {}, val_accuracy=val_accuracy, gap=gap))
        chosen, met = recommend(rows, self.settings.epsilon)
        if chosen is None:
            return "best: none yet"
        return f"best #{chosen.number}: val {chosen.val_accuracy:.3f} gap {chosen.gap:.3f}" + ("" if met else " (gap > ε)")

    def start(self, trial: optuna.Trial, label: str) -> None:
        done = len(self.study.get_trials(deepcopy=False, states=COUNTED))
        baseline = " baseline" if trial.user_attrs.get("baseline") else ""
        self.header = f"trial {done + 1}/{self.settings.n_trials} (#{trial.number}{baseline}) {label}"
        self.best = self._best()

    def epoch(self, epoch: int, val_accuracy: float) -> None:
        if self.live:
            print(f"\r{self.header} | epoch {epoch} val {val_accuracy:.3f} | {self.best}\033[K", end="", flush=True)

    def finish(self, state: str, detail: str, just_completed: tuple | None = None) -> None:
        line = f"{self.header} | {state} {detail} | {self._best(just_completed)}"
        print(f"\r{line}\033[K" if self.live else line, flush=True)


def suggest(trial: optuna.Trial, key: str, distribution: optuna.distributions.BaseDistribution):
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def knob_label(values: dict) -> str:
    """`dropout=0.42 strength=0.61 lr=3.2e-04 unfrozen_blocks=1`: the last key segment and a short value."""
    def short(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key.rsplit('.', 1)[-1]}={short(value)}" for key, value in values.items())


def leads(trial: optuna.Trial, metrics: dict, settings: DictConfig) -> bool:
    """Whether the finished trial would be recommended (constrained) or is on the front
    (pareto) among the study's complete trials and itself.

    A trial the report finally recommends necessarily led when it ended, so with
    tracking.artifacts=best every recommendable trial has its plots and model.
    """
    from regsweep.report import TrialRow, pareto_front, recommend, trial_rows

    rows = [r for r in trial_rows(trial.study) if r.number != trial.number]
    rows.append(TrialRow(trial.number, "COMPLETE", {}, val_accuracy=metrics["val_accuracy"], gap=metrics["gap"]))
    if settings.objective == "constrained":
        chosen, _ = recommend(rows, settings.epsilon)
        return chosen is not None and chosen.number == trial.number
    return any(row.number == trial.number for row in pareto_front(rows))


class TrialFailed(Exception):
    """A trial's error, reduced to `Type: message` so it crosses the worker process boundary."""


def run_trial(sweep: Sweep, trial: optuna.Trial, values: dict, parent_run_id: str) -> float | tuple[float, float]:
    """One trial: compose, train, log, and record its outcome on the Optuna trial and MLflow run."""
    s = sweep.settings
    constrained = s.objective == "constrained"
    overrides = sweep.base_overrides + [f"{key}={_format(value)}" for key, value in values.items()]
    trial.set_user_attr("overrides", [redact(o) for o in overrides])  # the replay line: no password
    trial.set_user_attr("fail_reason", INTERRUPTED)  # stays only if this process dies mid-trial
    tracking.use_store(sweep.cfg.tracking)
    client = mlflow.MlflowClient()
    progress = Progress(trial.study, s)
    run_ids: list[str] = []

    def started(run_id: str) -> None:
        run_ids.append(run_id)
        trial.set_user_attr("mlflow_run_id", run_id)

    def set_state(state: str) -> None:
        if run_ids:
            client.set_tag(run_ids[0], STATE_TAG, state)

    progress.start(trial, knob_label(values))
    tags = {"regsweep.study": s.study, "regsweep.trial_number": str(trial.number), STATE_TAG: "RUNNING"}
    try:
        import keras  # here, not at the top: the sweep's own process never needs TensorFlow

        from regsweep import train

        cfg = compose(overrides)
        monitor = TrialMonitor(trial, constrained and s.pruner.name != "none", progress)
        callback = keras.callbacks.LambdaCallback(on_epoch_end=monitor.on_epoch_end)
        result = train.run(cfg, parent_run_id=parent_run_id, tags=tags, callbacks=(callback,),
                           on_run_started=started, leads=lambda metrics: leads(trial, metrics, s),
                           label=f"#{trial.number}")
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("fail_reason", "")
        set_state("PRUNED")
        if run_ids:  # the pruner's stop is a normal end, not a crash
            client.delete_tag(run_ids[0], "regsweep.error")
            client.set_terminated(run_ids[0], "FINISHED")
        progress.finish("PRUNED", str(pruned))
        raise
    except Exception as error:
        reason = tracking.error_summary(error)
        trial.set_user_attr("fail_reason", reason)
        if not run_ids:  # failed before training started (bad value, bad data): record it anyway
            experiment_id = client.get_run(parent_run_id).info.experiment_id
            failed = client.create_run(experiment_id, run_name=f"#{trial.number} {knob_label(values)}", tags={
                **tags, "mlflow.parentRunId": parent_run_id, "regsweep.error": reason})
            started(failed.info.run_id)
            client.set_terminated(failed.info.run_id, "FAILED")
        set_state("FAIL")
        progress.finish("FAIL", reason)
        raise
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", "KeyboardInterrupt: stopped with Ctrl-C")
        set_state("FAIL")
        raise
    metrics = result.metrics
    trial.set_user_attr("fail_reason", "")
    for name in ("train_accuracy", "val_accuracy", "gap", "running_train_accuracy"):
        trial.set_user_attr(name, float(metrics[name]))
    if constrained:
        trial.set_constraint("gap", float(metrics["gap"]) - float(s.epsilon))  # feasible when <= 0
    set_state("COMPLETE")
    progress.finish("COMPLETE", f"val {metrics['val_accuracy']:.3f} gap {metrics['gap']:.3f}",
                    just_completed=(trial.number, metrics["val_accuracy"], metrics["gap"]))
    if constrained:
        return metrics["val_accuracy"]
    return metrics["val_accuracy"], metrics["gap"]


def _trial_in_worker(sweep: Sweep, trial_id: int, values: dict, parent_run_id: str):
    """`run_trial` in the worker process, on the same study storage as the parent."""
    import signal

    s = sweep.settings
    study = optuna.load_study(study_name=s.study, storage=str(s.storage), sampler=optuna.samplers.RandomSampler(),
                              pruner=make_pruner(s) if s.objective == "constrained" else optuna.pruners.NopPruner())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops the trial, which records it
    try:
        return run_trial(sweep, optuna.Trial(study, trial_id), values, parent_run_id)
    except (optuna.TrialPruned, KeyboardInterrupt):
        raise
    except Exception as error:
        raise TrialFailed(tracking.error_summary(error)) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle between trials: the parent decides


class TrialWorker:
    """Runs trials in a child process that is replaced every `trials_per_worker` trials.

    TensorFlow keeps several MiB per trained model in a process even after
    keras.backend.clear_session() (measured in benchmarks/README.md), so a long sweep
    in one process creeps; a fresh child now and then keeps memory flat, and its start-up
    (importing TensorFlow, a few seconds) is shared by the trials it runs. The old child has
    exited before the new one starts, so two never hold memory at once.
    """

    def __init__(self, trials_per_worker: int):
        self.trials_per_worker = trials_per_worker
        self.pool = None
        self.trials_run = 0

    def _fresh_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from regsweep.cli import start_worker  # lives in a module that does not import TensorFlow

        self.close()
        self.trials_run = 0
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_worker)

    def start(self) -> None:
        """Starts the first worker now: it imports TensorFlow while the sweep sets up its MLflow run."""
        if self.pool is None:
            self.pool = self._fresh_pool()
            self.pool.submit(_warm_up)

    def run(self, sweep: Sweep, trial: optuna.Trial, values: dict, parent_run_id: str):
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None or self.trials_run >= self.trials_per_worker:
            self.pool = self._fresh_pool()
        self.trials_run += 1
        future = self.pool.submit(_trial_in_worker, sweep, trial._trial_id, values, parent_run_id)
        try:
            return future.result()
        except KeyboardInterrupt:
            try:  # the worker got the same Ctrl-C: let it record its run as KILLED first
                future.exception(timeout=60)
            except BaseException:
                pass
            raise
        except BrokenProcessPool:
            self.close()
            reason = "the trial's worker process died (killed, or out of memory)"
            _end_orphaned_run(trial, reason)
            raise TrialFailed(reason) from None

    def close(self) -> None:
        """Stops the worker and waits until it has exited."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _warm_up() -> None:
    from regsweep import train  # noqa: F401 - Keras, TensorFlow and the training code, ahead of the first trial


def _end_orphaned_run(trial: optuna.Trial, reason: str) -> None:
    """Marks the MLflow run of a trial whose process died as FAILED, with the reason."""
    trial.set_user_attr("fail_reason", reason)
    run_id = trial.study._storage.get_trial(trial._trial_id).user_attrs.get("mlflow_run_id")
    if run_id:
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "regsweep.error", reason)
        client.set_tag(run_id, STATE_TAG, "FAIL")
        client.set_terminated(run_id, "FAILED")


def make_objective(sweep: Sweep, parent_run_id: str, worker: TrialWorker | None):
    """Optuna's objective: the sampler picks values here, the trial runs here or in the worker."""

    def objective(trial: optuna.Trial):
        values = {key: suggest(trial, key, distribution) for key, distribution in sweep.space.items()}
        if worker is None:
            return run_trial(sweep, trial, values, parent_run_id)
        return worker.run(sweep, trial, values, parent_run_id)

    return objective


def run(args: list[str]) -> optuna.Study:
    """Runs (or tops up) the study, then reports."""
    from regsweep import report

    sweep = prepare(args)
    s = sweep.settings
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    strength = sweep.space.get("augment.strength")
    if sweep.base.cache.enabled and isinstance(strength, optuna.distributions.FloatDistribution) and strength.step is None:
        print("Note: augment.strength is searched without a step, so each augmented trial computes its own "
              "cached views; declare one to share them, e.g. 'augment.strength=range(0.0, 1.0, step=0.25)'.")
    study = open_study(sweep)
    remaining = s.n_trials - len(study.get_trials(deepcopy=False, states=COUNTED))
    worker = TrialWorker(s.trials_per_worker) if remaining > 0 and s.trials_per_worker > 0 else None
    if worker is not None:
        worker.start()  # it imports TensorFlow while this process sets up the MLflow parent run
    elif remaining > 0:
        from regsweep.cli import import_tensorflow_quietly

        import_tensorflow_quietly()  # trials run in this process
    try:
        parent_run_id = parent_run(study, sweep)
        fail_stale_trials(study)  # a killed earlier run's trial: FAIL, and its MLflow run FAILED
        if remaining > 0:
            print(f"Study '{s.study}' ({s.objective}, epsilon {s.epsilon}): {s.n_trials - remaining} of "
                  f"{s.n_trials} trials done, running {remaining} more. Storage: {redact(str(s.storage))}", flush=True)
            try:
                study.optimize(
                    make_objective(sweep, parent_run_id, worker),
                    n_trials=remaining + s.max_failures,
                    catch=(Exception,),
                    callbacks=[optuna.study.MaxTrialsCallback(s.n_trials, states=COUNTED)],
                )
            except KeyboardInterrupt:
                mlflow.MlflowClient().set_terminated(parent_run_id, "KILLED")
                raise
        else:
            print(f"Study '{s.study}' already has its {s.n_trials} trials; reporting.", flush=True)
    finally:
        if worker is not None:
            worker.close()
    wait_for_other_workers(study)
    if s.reevaluate.seeds > 0 and sweep.has_test_split:
        from regsweep import reevaluate

        if not reevaluate.run(study, sweep.cfg, report.study_settings(study, sweep.cfg), parent_run_id,
                              sweep.base_overrides):
            return study  # the worker that re-evaluates writes the report and ends the parent run
    elif s.reevaluate.seeds > 0:
        print("No test split, so no re-evaluation: give data.test_dir (data=folders) or data.test_fraction "
              "(data=split) to measure the recommendation against a baseline on untouched images.")
    report.report(study, sweep.cfg, parent_run_id)
    mlflow.MlflowClient().set_terminated(parent_run_id, "FINISHED")
    return study


def wait_for_other_workers(study: optuna.Study, poll_seconds: float = 2.0) -> None:
    """Waits until no trial of the study is running: the re-evaluation and the report need them
    all. A trial of a worker that died stops beating and is marked FAIL, which ends the wait."""
    import time

    announced = False
    while True:
        fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        if not announced:
            numbers = ", ".join(f"#{t.number}" for t in running)
            print(f"Waiting for {len(running)} trial(s) still running in other workers ({numbers}) "
                  "before the re-evaluation and report.", flush=True)
            announced = True
        time.sleep(poll_seconds)


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna checks for silent trials before each new trial; also at start and while waiting for other workers."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
