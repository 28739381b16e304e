"""`regsweep sweep`: an Optuna study over config keys, every trial a nested MLflow run, then
the re-evaluation and the report.

Optuna drives the search and Hydra composes each trial from the same tree as
`regsweep train`, plus the trial's values, so any trial replays with `regsweep train
<its overrides>`. The study lives in Optuna storage (SQLite under mlruns/ by default) and
its budget is a total: re-running the same command tops the study up, or only reports.
The pieces, top to bottom: the search space (regsweep.space), the shared study
(regsweep.study), one trial (regsweep.trial) in a worker process (regsweep.worker), the
re-evaluation (regsweep.reevaluate) and the report (regsweep.report).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import optuna
from omegaconf import OmegaConf

from regsweep import data, reevaluate, report, space, study, tracking
from regsweep.config import RegsweepError, compose, compose_study, override_key, redact, validate
from regsweep.study import Sweep
from regsweep.trial import make_objective
from regsweep.worker import TrialWorker, import_tensorflow_quietly


def prepare(args: list[str]) -> Sweep:
    """Composes the study config from CLI args and checks the whole sweep before any trial."""
    plain, searched = space.split_cli_overrides(args)
    cfg = compose_study(plain)
    settings = cfg.sweep
    fixed_keys = {override_key(a) for a in plain if not a.startswith(("sweep.", "sweep="))}
    expressions = {k: str(v) for k, v in (settings.params or {}).items() if k not in fixed_keys}
    expressions.update(searched)
    space.check_settings(settings, expressions)
    searched_space = space.parse_space(expressions)
    fixed = space.as_overrides(dict(settings.fixed or {}))
    user = [a for a in plain if not a.startswith(("sweep.", "sweep=", "hydra."))]
    base_overrides = fixed + user
    base = compose(base_overrides)
    for key in searched_space:
        if OmegaConf.select(base, key, default="__missing__") == "__missing__":
            raise RegsweepError(f"sweep.params {key}: no such config key: check it against `regsweep train --cfg job`")
    # Bad settings or data stop here, before a study or an MLflow run exists.
    validate(base)
    tracking.check_reachable(base.tracking)
    splits = data.resolve_splits(base.data, base.model.image_size, Path(base.paths.store))
    shared = data.shared_images(splits)
    if shared:
        listed = "".join(f"\n  {' = '.join(group)}" for group in shared[:10])
        more = f"\n  … and {len(shared) - 10} more" if len(shared) > 10 else ""
        print(f"regsweep: warning: {len(shared)} image(s) appear in more than one split (same content), so held-out "
              f"scores are inflated; remove the copies:{listed}{more}", file=sys.stderr, flush=True)
    return Sweep(settings, searched_space, expressions, base_overrides, base, cfg, splits.test is not None,
                 data.fingerprint(splits), shared)


def run_study(args: list[str]) -> optuna.Study:
    """Runs (or tops up) the study, then re-evaluates and reports."""
    sweep = prepare(args)
    s = sweep.settings
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    strength = sweep.space.get("augment.strength")
    if sweep.base.cache.enabled and isinstance(strength, optuna.distributions.FloatDistribution) and strength.step is None:
        print("Note: augment.strength is searched without a step, so each augmented trial computes its own "
              "cached views; declare one to share them, e.g. 'augment.strength=range(0.0, 1.0, step=0.25)'.")
    optuna_study = study.open_study(sweep)
    remaining = s.n_trials - len(optuna_study.get_trials(deepcopy=False, states=study.COUNTED))
    worker = TrialWorker(s.trials_per_worker) if remaining > 0 and s.trials_per_worker > 0 else None
    if worker is not None:
        worker.start()  # it imports TensorFlow while this process sets up the MLflow parent run
    elif remaining > 0:
        import_tensorflow_quietly()  # trials run in this process
    try:
        parent_run_id = study.parent_run(optuna_study, sweep)
        study.fail_stale_trials(optuna_study)  # a killed earlier run's trial: FAIL, and its MLflow run FAILED
        if remaining > 0:
            print(f"Study '{s.study}' ({s.objective}, epsilon {s.epsilon}): {s.n_trials - remaining} of "
                  f"{s.n_trials} trials done, running {remaining} more. Storage: {redact(str(s.storage))}", flush=True)
            try:
                optuna_study.optimize(
                    make_objective(sweep, parent_run_id, worker),
                    n_trials=remaining + s.max_failures,
                    catch=(Exception,),
                    callbacks=[optuna.study.MaxTrialsCallback(s.n_trials, states=study.COUNTED)],
                )
            except KeyboardInterrupt:
                mlflow.MlflowClient().set_terminated(parent_run_id, "KILLED")
                raise
        else:
            print(f"Study '{s.study}' already has its {s.n_trials} trials; reporting.", flush=True)
    finally:
        if worker is not None:
            worker.close()
    study.wait_for_other_workers(optuna_study)
    if s.reevaluate.seeds > 0 and sweep.has_test_split:
        if not reevaluate.reevaluate_missing(optuna_study, sweep.cfg, study.study_settings(optuna_study, sweep.cfg),
                                             parent_run_id, sweep.base_overrides):
            return optuna_study  # the worker that re-evaluates writes the report and ends the parent run
    elif s.reevaluate.seeds > 0:
        print("No test split, so no re-evaluation: give data.test_dir (data=folders) or data.test_fraction "
              "(data=split) to measure the recommendation against a baseline on untouched images.")
    report.write_report(optuna_study, sweep.cfg, parent_run_id)
    mlflow.MlflowClient().set_terminated(parent_run_id, "FINISHED")
    return optuna_study
