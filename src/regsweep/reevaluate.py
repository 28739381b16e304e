"""Re-evaluation: re-train the top settings and a baseline with fresh seeds, score each once on
the untouched test split, and say whether the recommendation beats doing nothing by more than noise.

A search scored on the validation set overfits it (Cawley & Talbot, JMLR 2010), and one run
carries seed noise. So the recommended setting, the other top non-dominated settings and the
unregularized baseline (sweeps/baselines/<name>.yaml) are each trained S more times, with
seeds the trials never used, and evaluated once on the test split. The runs are nested under
the study's parent run, tagged `reeval`, and found again on the next report, so re-running
trains only what is missing.

With several workers on one study, one of them re-evaluates: the one that holds the study's
claim (regsweep.study.claim); the others leave the re-evaluation and the report to it. The
stable recommendation and the verdict are decided in regsweep.results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from omegaconf import DictConfig

from regsweep import data, results, space, study, tracking
from regsweep.config import RegsweepError, compose, override_key
from regsweep.results import BASELINE, Summary
from regsweep.worker import import_tensorflow_quietly

METRICS = ("test_accuracy", "val_accuracy", "test_gap", "gap", "train_accuracy")


@dataclass
class Setting:
    label: str  # "baseline", or "#<trial number>"
    overrides: list[str]  # the trial's (or baseline's) overrides, before the seed
    trial_number: int | None = None


# --- what to re-train ----------------------------------------------------------------------------


def settings_to_run(rows: list[results.TrialRow], settings: DictConfig, base_overrides: list[str]) -> list[Setting]:
    """Baseline first, then the candidates; each trial's recorded overrides, with the caller's
    own overrides (which may hold the passwords the record masks) taking precedence."""
    chosen = [Setting(BASELINE, merge(base_overrides, space.baseline_overrides(settings.reevaluate.baseline)))]
    for row in results.candidates(rows, settings.epsilon, settings.reevaluate.top_k):
        chosen.append(Setting(f"#{row.number}", merge(row.overrides, base_overrides, space.as_overrides(row.params)),
                              row.number))
    return chosen


def merge(*override_lists: list[str]) -> list[str]:
    """Overrides by key, later lists winning (Hydra refuses a key given twice)."""
    merged: dict[str, str] = {}
    for overrides in override_lists:
        for override in overrides:
            merged[override_key(override)] = override
    return list(merged.values())


# --- training and finding the runs --------------------------------------------------------------


def reevaluate_missing(optuna_study: optuna.Study, cfg: DictConfig, settings: DictConfig, parent_run_id: str,
                       base_overrides: list[str]) -> bool:
    """Trains every (setting, seed) that has no FINISHED re-evaluation run under the parent yet.

    `settings` is the study's sweep settings (its recorded ε); `base_overrides` what every run
    starts from. Returns False when another worker holds the claim and is re-evaluating.
    """
    seeds = int(settings.reevaluate.seeds)
    if seeds < 1:
        raise RegsweepError(f"sweep.reevaluate.seeds={seeds}: re-evaluation needs at least 1 seed, such as 3")
    if not missing_runs(optuna_study, cfg, settings, parent_run_id, base_overrides)[1]:
        return True
    token, holder = study.claim(optuna_study)
    if token is None:
        print(f"Another worker ({holder}) is re-evaluating this study; it writes the report when it is done.", flush=True)
        return False
    try:
        # Listed again now that this process holds the claim: a worker that just finished may have trained some.
        planned, todo = missing_runs(optuna_study, cfg, settings, parent_run_id, base_overrides)
        if todo:
            _train(optuna_study, cfg, planned, todo, seeds, parent_run_id, token)
    finally:
        study.release(optuna_study, token)
    return True


def missing_runs(optuna_study: optuna.Study, cfg: DictConfig, settings: DictConfig, parent_run_id: str,
                 base_overrides: list[str]) -> tuple[list[Setting], list[tuple[Setting, int]]]:
    """The settings to re-evaluate, and the (setting, seed) pairs with no FINISHED run yet."""
    rows = study.trial_rows(optuna_study)
    if not any(row.state == "COMPLETE" for row in rows):
        return [], []  # nothing to compare with the baseline yet
    planned = settings_to_run(rows, settings, base_overrides)
    done = {run.data.tags.get(tracking.REEVAL_KEY_TAG) for run in logged_runs(cfg, parent_run_id)}
    seeds = seed_values(cfg, int(settings.reevaluate.seeds))
    return planned, [(setting, seed) for setting in planned for seed in seeds if run_key(setting, seed) not in done]


def _train(optuna_study: optuna.Study, cfg: DictConfig, planned: list[Setting], todo: list, seeds: int,
           parent_run_id: str, token: str) -> None:
    import_tensorflow_quietly()
    from regsweep import train  # lazy: TensorFlow, only in the process that re-evaluates

    print(f"Re-evaluating {len(planned)} settings x {seeds} seeds on the test split ({len(todo)} runs to train)", flush=True)
    for index, (setting, seed) in enumerate(todo, start=1):
        if not study.renew(optuna_study, token):
            print("This worker's re-evaluation claim was taken over by another worker; leaving the rest to it.", flush=True)
            return
        overrides = merge(setting.overrides, [f"train.seed={seed}", "tracking.artifacts=none"])
        run_cfg = compose(overrides)
        tags = {tracking.STUDY_TAG: optuna_study.study_name, tracking.ROLE_TAG: "reeval",
                tracking.REEVAL_TAG: setting.label, tracking.REEVAL_KEY_TAG: run_key(setting, seed)}
        if setting.trial_number is not None:
            tags[tracking.TRIAL_NUMBER_TAG] = str(setting.trial_number)
        result = train.train_and_log(run_cfg, parent_run_id=parent_run_id, tags=tags, evaluate_test=True,
                                     label=f"reeval {setting.label} seed {seed}")
        metrics = result.metrics
        print(f"  {index}/{len(todo)} {setting.label} seed {seed}: test {metrics['test_accuracy']:.3f} "
              f"val {metrics['val_accuracy']:.3f} test gap {metrics['test_gap']:.3f}", flush=True)


def seed_values(cfg: DictConfig, seeds: int) -> list[int]:
    """Seeds no trial used: the trials all ran with train.seed."""
    return [int(cfg.train.seed) + 1 + i for i in range(seeds)]


def run_key(setting: Setting, seed: int) -> str:
    return hashlib.sha256(repr((sorted(setting.overrides), seed)).encode()).hexdigest()[:16]


def logged_runs(cfg: DictConfig, parent_run_id: str) -> list:
    tracking.use_store(cfg.tracking)
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}' and tags.`{tracking.ROLE_TAG}` = 'reeval' "
        "and attributes.status = 'FINISHED'",
        max_results=10000,
    )


def collect(cfg: DictConfig, parent_run_id: str | None) -> list[Summary]:
    """The finished re-evaluation runs under the parent, per setting (baseline first)."""
    if parent_run_id is None:
        return []
    by_label: dict[str, dict[str, dict[str, float]]] = {}
    for logged in logged_runs(cfg, parent_run_id):
        metrics = logged.data.metrics
        if all(name in metrics for name in METRICS):
            by_label.setdefault(logged.data.tags[tracking.REEVAL_TAG], {})[logged.data.tags[tracking.REEVAL_KEY_TAG]] = {
                "seed": int(logged.data.params["train.seed"]), **{name: metrics[name] for name in METRICS}}
    order = sorted(by_label, key=lambda label: (label != BASELINE, int(label[1:]) if label[1:].isdigit() else 0))
    return [Summary(label, sorted(by_label[label].values(), key=lambda run: run["seed"])) for label in order]


def has_test_split(cfg: DictConfig) -> bool:
    return data.resolve_splits(cfg.data, cfg.model.image_size, Path(cfg.paths.store)).test is not None
