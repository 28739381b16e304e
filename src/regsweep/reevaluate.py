"""Re-evaluation: re-train the top settings and a baseline with fresh seeds, score each once on
the untouched test split, and say whether the recommendation beats doing nothing by more than noise.

A search scored on the validation set overfits it (Cawley & Talbot, JMLR 2010), and one run
carries seed noise. So the first top_k trials in the rule's order (regsweep.results) and the
unregularized baseline (sweeps/baselines/<name>.yaml) are each trained S more times, with
seeds the trials never used, and evaluated once on the test split. The runs are nested under
the study's parent run, tagged `reeval`, and found again on the next report, so re-running
trains only what is missing.

Then the learning curve: the answer's setting (the adopted one, or the baseline) re-trained on
25 % and 50 % of the training images (sweep.reevaluate.curve), scored on the validation split
only; their test split is not even listed. It says whether more images would help more than
any setting did.

With several workers on one study, one of them re-evaluates: the one that holds the study's
claim (regsweep.study.claim); the others leave the re-evaluation and the report to it. The
stable recommendation and the verdict are decided in regsweep.results.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from omegaconf import DictConfig

from regsweep import data, progress, results, space, study, tracking
from regsweep.config import RegsweepError, compose, override_key
from regsweep.results import BASELINE, Summary
from regsweep.worker import import_tensorflow_quietly

METRICS = ("test_accuracy", "val_accuracy", "test_gap", "gap", "train_accuracy")
SIZES = ("train_images", "val_images", "test_images")  # logged since the noise is measured per image
REEVAL, CURVE = "reeval", "curve"  # the two roles of these runs (tracking.ROLE_TAG)


@dataclass
class Setting:
    label: str  # "baseline", or "#<trial number>"
    overrides: list[str]  # the trial's (or baseline's) overrides, before the seed
    trial_number: int | None = None


# --- what to re-train ----------------------------------------------------------------------------


def settings_to_run(rows: list[results.TrialRow], settings: DictConfig, base_overrides: list[str]) -> list[Setting]:
    """Baseline first, then the candidates; each trial's recorded overrides, with the caller's
    own overrides (which may hold the passwords the record masks) taking precedence."""
    return [baseline_setting(settings, base_overrides)] + [
        trial_setting(row, base_overrides) for row in results.candidates(rows, settings.epsilon, settings.reevaluate.top_k)]


def baseline_setting(settings: DictConfig, base_overrides: list[str]) -> Setting:
    return Setting(BASELINE, merge(base_overrides, space.baseline_overrides(settings.reevaluate.baseline)))


def trial_setting(row: results.TrialRow, base_overrides: list[str]) -> Setting:
    return Setting(f"#{row.number}", merge(row.overrides, base_overrides, space.as_overrides(row.params)), row.number)


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
    if not missing_runs(optuna_study, cfg, settings, parent_run_id, base_overrides)[1] and \
            not missing_curve_runs(optuna_study, cfg, settings, parent_run_id, base_overrides):
        return True
    token, holder = study.claim(optuna_study)
    if token is None:
        print(f"Another worker ({holder}) is re-evaluating this study; it writes the report when it is done.", flush=True)
        return False
    try:
        # Listed again now that this process holds the claim: a worker that just finished may have trained some.
        planned, todo = missing_runs(optuna_study, cfg, settings, parent_run_id, base_overrides)
        if todo:
            print(f"Re-evaluating {len(planned)} settings x {seeds} seeds on the test split ({len(todo)} runs to train)",
                  flush=True)
            if not _train(optuna_study, cfg, todo, parent_run_id, token, REEVAL):
                return True
        todo = missing_curve_runs(optuna_study, cfg, settings, parent_run_id, base_overrides)
        if todo:
            fractions = ", ".join(f"{100 * f:g} %" for f in settings.reevaluate.curve)
            print(f"Learning curve: {len(todo)} runs on {fractions} of the training images (validation only)", flush=True)
            _train(optuna_study, cfg, todo, parent_run_id, token, CURVE)
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
    return planned, _not_yet_run(cfg, parent_run_id, planned, int(settings.reevaluate.seeds), REEVAL)


def missing_curve_runs(optuna_study: optuna.Study, cfg: DictConfig, settings: DictConfig, parent_run_id: str,
                       base_overrides: list[str]) -> list[tuple[Setting, int]]:
    """The learning curve's (setting, seed) pairs with no FINISHED run yet: the answer's setting
    (the adopted one, or the baseline) at each share of sweep.reevaluate.curve. Empty until the
    re-evaluation is done."""
    rows = study.trial_rows(optuna_study)
    found = results.answer(rows, collect(cfg, parent_run_id), settings.epsilon)
    if found is None or found.verdict is None or not settings.reevaluate.curve:
        return []
    by_label = {f"#{row.number}": row for row in rows}
    curve = (baseline_setting(settings, base_overrides) if found.keep_baseline
             else trial_setting(by_label[found.label], base_overrides))
    points = [Setting(curve.label, merge(curve.overrides, [f"data.train_fraction={fraction}"]), curve.trial_number)
              for fraction in settings.reevaluate.curve]
    return _not_yet_run(cfg, parent_run_id, points, int(settings.reevaluate.seeds), CURVE)


def _not_yet_run(cfg: DictConfig, parent_run_id: str, planned: list[Setting], seeds: int, role: str) -> list[tuple[Setting, int]]:
    done = {run.data.tags.get(tracking.REEVAL_KEY_TAG) for run in logged_runs(cfg, parent_run_id, role)}
    return [(setting, seed) for setting in planned for seed in seed_values(cfg, seeds) if run_key(setting, seed) not in done]


def _train(optuna_study: optuna.Study, cfg: DictConfig, todo: list[tuple[Setting, int]], parent_run_id: str,
           token: str, role: str) -> bool:
    """Trains each (setting, seed) while this worker holds the claim; False when it lost it."""
    import_tensorflow_quietly()
    from regsweep import train  # lazy: TensorFlow, only in the process that re-evaluates

    what = "re-evaluation" if role == REEVAL else "learning curve"
    with progress.steps(what, len(todo), unit="runs") as advance:
        for index, (setting, seed) in enumerate(todo, start=1):
            if not study.renew(optuna_study, token):
                progress.say("This worker's re-evaluation claim was taken over by another worker; "
                             "leaving the rest to it.")
                return False
            overrides = merge(setting.overrides, [f"train.seed={seed}", "tracking.artifacts=none"])
            run_cfg = compose(overrides)
            tags = {tracking.STUDY_TAG: optuna_study.study_name, tracking.ROLE_TAG: role,
                    tracking.REEVAL_TAG: setting.label, tracking.REEVAL_KEY_TAG: run_key(setting, seed)}
            if setting.trial_number is not None:
                tags[tracking.TRIAL_NUMBER_TAG] = str(setting.trial_number)
            fraction = run_cfg.data.train_fraction
            name = f"{role} {setting.label}" + (f" {100 * fraction:g}%" if role == CURVE else "") + f" seed {seed}"
            result = train.train_and_log(run_cfg, parent_run_id=parent_run_id, tags=tags, evaluate_test=role == REEVAL,
                                         with_test=role == REEVAL, label=name)
            metrics = result.metrics
            scores = (f"test {metrics['test_accuracy']:.3f} val {metrics['val_accuracy']:.3f} "
                      f"test gap {metrics['test_gap']:.3f}" if role == REEVAL
                      else f"{metrics['train_images']} training images: val {metrics['val_accuracy']:.3f}")
            progress.say(f"  {index}/{len(todo)} {name}: {scores}")
            advance()
    return True


def seed_values(cfg: DictConfig, seeds: int) -> list[int]:
    """Seeds no trial used: the trials all ran with train.seed."""
    return [int(cfg.train.seed) + 1 + i for i in range(seeds)]


def run_key(setting: Setting, seed: int) -> str:
    return hashlib.sha256(repr((sorted(setting.overrides), seed)).encode()).hexdigest()[:16]


def logged_runs(cfg: DictConfig, parent_run_id: str, role: str = REEVAL) -> list:
    tracking.use_store(cfg.tracking)
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}' and tags.`{tracking.ROLE_TAG}` = '{role}' "
        "and attributes.status = 'FINISHED'",
        max_results=10000,
    )


def collect(cfg: DictConfig, parent_run_id: str | None) -> list[Summary]:
    """The finished re-evaluation runs under the parent, per setting (baseline first), with
    each run's per-image results where it logged them."""
    if parent_run_id is None:
        return []
    by_label: dict[str, dict[str, dict]] = {}
    for logged in logged_runs(cfg, parent_run_id):
        metrics = logged.data.metrics
        if all(name in metrics for name in METRICS):
            run = {"seed": int(logged.data.params["train.seed"]), "run_id": logged.info.run_id,
                   **{name: metrics[name] for name in METRICS},
                   **{name: int(metrics[name]) for name in SIZES if name in metrics}, **_per_image(logged)}
            by_label.setdefault(logged.data.tags[tracking.REEVAL_TAG], {})[logged.data.tags[tracking.REEVAL_KEY_TAG]] = run
    order = sorted(by_label, key=lambda label: (label != BASELINE, int(label[1:]) if label[1:].isdigit() else 0))
    return [Summary(label, sorted(by_label[label].values(), key=lambda run: run["seed"])) for label in order]


def _per_image(logged) -> dict[str, str]:
    """{"train_correct": "0110…", "validation_correct": …, "test_correct": …}; {} for a run logged
    before they were (its noise then falls back to binomial bounds)."""
    return {f"{split}_correct": value for split, value in tracking.load_per_image_correct(logged.info.artifact_uri).items()}


def collect_curve(cfg: DictConfig, parent_run_id: str | None, summaries: list[Summary]) -> dict[str, list[results.CurvePoint]]:
    """Each learning curve's points: mean val_accuracy over seeds per training-set size, the
    full-size point taken from the re-evaluation runs."""
    if parent_run_id is None:
        return {}
    by_label: dict[str, dict[int, list[float]]] = {}
    for logged in logged_runs(cfg, parent_run_id, CURVE):
        metrics = logged.data.metrics
        if "val_accuracy" in metrics and "train_images" in metrics:
            sizes = by_label.setdefault(logged.data.tags[tracking.REEVAL_TAG], {})
            sizes.setdefault(int(metrics["train_images"]), []).append(metrics["val_accuracy"])
    for summary in summaries:
        if summary.label in by_label and all("train_images" in run for run in summary.runs):
            by_label[summary.label].setdefault(summary.runs[0]["train_images"], []).extend(
                run["val_accuracy"] for run in summary.runs)
    return {label: [results.CurvePoint(size, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
                     for size, values in sorted(sizes.items())]
            for label, sizes in by_label.items()}


def has_test_split(cfg: DictConfig) -> bool:
    return data.resolve_splits(cfg.data, cfg.model.image_size, Path(cfg.paths.store)).test is not None
