"""Re-evaluation: re-train the top settings and a baseline with fresh seeds, score each once on
the untouched test split, in rounds, until the verdict against the baseline is decided.

A search scored on the validation set overfits it (Cawley & Talbot, JMLR 2010), and one run
carries seed noise. So the re-evaluation re-trains settings with seeds no trial used, in the
stages of `regsweep.results.rounds`: the screening (the first sweep.reevaluate.screen trials
in the rule's order, one seed each), the race of the top_k on validation (up to
race_seeds), then the confirmation of the race's choice against the unregularized baseline
(sweeps/baselines/<name>.yaml) on the test split, with more seeds while the verdict can't tell,
up to max_seeds. Each round is what the rounds ask for, replayed from the runs logged so far.
The runs are nested under the study's parent run, tagged `reeval`, and found again on the next
report, so re-running trains only what is missing.

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
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from omegaconf import DictConfig

from regsweep import data, progress, results, space, study, tracking
from regsweep.config import compose, override_key
from regsweep.metrics import (
    GAP,
    TEST_ACCURACY,
    TEST_GAP,
    TEST_IMAGES,
    TRAIN_ACCURACY,
    TRAIN_IMAGES,
    VAL_ACCURACY,
    VAL_IMAGES,
)
from regsweep.results import BASELINE, Summary
from regsweep.worker import import_tensorflow_quietly

log = logging.getLogger(__name__)

METRICS = (TEST_ACCURACY, VAL_ACCURACY, TEST_GAP, GAP, TRAIN_ACCURACY)
SIZES = (TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES)  # logged since the noise is measured per image
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
        trial_setting(row, base_overrides)
        for row in results.candidates(
            rows, settings.epsilon, settings.reevaluate.top_k, int(settings.reevaluate.get("screen", 0))
        )
    ]


def baseline_setting(settings: DictConfig, base_overrides: list[str]) -> Setting:
    return Setting(BASELINE, merge(base_overrides, space.baseline_overrides(settings.reevaluate.baseline)))


def trial_setting(row: results.TrialRow, base_overrides: list[str]) -> Setting:
    return Setting(f"#{row.number}", merge(row.overrides, base_overrides, space.as_overrides(row.params)), row.number)


def merge(*override_lists: list[str]) -> list[str]:
    """Overrides by key, later lists winning: one entry a key, so what is recorded in MLflow and
    Optuna reads one value a knob (Hydra itself would silently take the last of two)."""
    merged: dict[str, str] = {}
    for overrides in override_lists:
        for override in overrides:
            merged[override_key(override)] = override
    return list(merged.values())


# --- the rounds ----------------------------------------------------------------------------------


def design(cfg: DictConfig, settings: DictConfig) -> results.Design:
    """The re-evaluation's design from sweep.reevaluate: how many seeds, in which rounds, for the
    race and for the confirmation."""
    r = settings.reevaluate
    return results.Design(
        seeds=int(r.seeds),
        max_seeds=max(int(r.get("max_seeds", r.seeds)), int(r.seeds)),
        margin=float(r.get("margin", results.MARGIN)),
        first_seed=int(cfg.train.seed) + 1,
        race_seeds=int(r.get("race_seeds", r.seeds)),
        entrants=int(r.top_k),
    )


@dataclass
class Reevaluation:
    """One study's re-evaluation: what every step of it reads from."""

    optuna_study: optuna.Study
    cfg: DictConfig
    settings: DictConfig  # the study's own (regsweep.study.study_settings)
    parent_run_id: str | None
    base_overrides: list[str]  # the caller's overrides (where the store is, passwords)

    def look(self) -> Look:
        """The re-evaluation as its runs stand now, read from Optuna and MLflow once: the rounds
        (regsweep.results.rounds) replayed from every finished run, and the learning curve's runs."""
        settings, parent = self.settings, self.parent_run_id
        rows = study.trial_rows(self.optuna_study)
        reevaluated = int(settings.reevaluate.seeds) > 0 and any(row.state == "COMPLETE" for row in rows)
        planned = settings_to_run(rows, settings, self.base_overrides) if reevaluated else []  # seeds=0: none
        # A setting's runs are found by its label and seed, wherever they were trained (paths differ by machine).
        labels = [setting.label for setting in planned]
        summaries = [s for s in collect(self.cfg, parent) if s.label in labels]
        searched = {f"#{row.number}": row.val_accuracy for row in rows}  # each trial's single run, for the screening
        rounds = results.rounds(labels, summaries, design(self.cfg, settings), settings.epsilon, searched)
        curve_runs = logged_runs(self.cfg, parent, CURVE) if parent is not None else []
        finished = sum(len(summary.runs) for summary in summaries)
        log.debug(
            f"re-evaluation: {finished} finished runs of {len(planned)} settings and {len(curve_runs)} learning-curve "
            f"runs read from MLflow; the next round holds {sum(map(len, rounds.todo.values()))} runs"
        )
        return Look(self, rows, planned, rounds, summaries, curve_runs)


@dataclass
class Look:
    """The re-evaluation at one look: what it plans, the rounds replayed from its runs, and what
    is left to train. Everything here is computed from what `Reevaluation.look` read."""

    reevaluation: Reevaluation
    rows: list[results.TrialRow]
    planned: list[Setting]
    rounds: results.Rounds
    summaries: list[Summary]  # every finished run, per setting (the rounds read their looks from these)
    curve_runs: list  # the learning curve's finished MLflow runs

    def todo(self) -> list[tuple[Setting, int]]:
        by_label = {setting.label: setting for setting in self.planned}
        return [(by_label[label], seed) for label, seeds in self.rounds.todo.items() for seed in seeds]

    def work_left(self) -> bool:
        """Whether any re-evaluation or learning-curve run is still to train."""
        return bool(self.todo() or self.missing_curve())

    def missing_curve(self) -> list[tuple[Setting, int]]:
        """The learning curve's (setting, seed) pairs with no FINISHED run yet: the answer's
        setting (the adopted one, or the baseline) at each share of sweep.reevaluate.curve, with
        the first round's seeds. Empty until the rounds have stopped."""
        settings, base_overrides = self.reevaluation.settings, self.reevaluation.base_overrides
        found = results.answer(self.rows, self.rounds, settings.epsilon)
        if found is None or found.verdict is None or self.rounds.todo or not settings.reevaluate.curve:
            return []
        by_label = {f"#{row.number}": row for row in self.rows}
        curve = (
            baseline_setting(settings, base_overrides)
            if found.keep_baseline
            else trial_setting(by_label[found.label], base_overrides)
        )
        points = [
            Setting(curve.label, merge(curve.overrides, [f"data.train_fraction={fraction}"]), curve.trial_number)
            for fraction in settings.reevaluate.curve
        ]
        done = {
            (
                run.data.tags.get(tracking.REEVAL_TAG),
                float(run.data.params.get("data.train_fraction", "nan")),
                int(run.data.params.get("train.seed", -1)),
            )
            for run in self.curve_runs
        }
        seeds = self.rounds.design.selection_seeds(self.rounds.design.seeds)
        return [
            (point, seed)
            for point, fraction in zip(points, settings.reevaluate.curve)
            for seed in seeds
            if (point.label, float(fraction), seed) not in done
        ]

    def curves(self) -> dict[str, list[results.CurvePoint]]:
        """Each learning curve's points: mean val_accuracy over seeds per training-set size, the
        full-size point taken from the re-evaluation runs."""
        by_label: dict[str, dict[int, list[float]]] = {}
        for logged in self.curve_runs:
            metrics = logged.data.metrics
            if VAL_ACCURACY in metrics and TRAIN_IMAGES in metrics:
                sizes = by_label.setdefault(logged.data.tags[tracking.REEVAL_TAG], {})
                sizes.setdefault(int(metrics[TRAIN_IMAGES]), []).append(metrics[VAL_ACCURACY])
        for summary in self.summaries:
            if summary.label in by_label and all(TRAIN_IMAGES in run for run in summary.runs):
                by_label[summary.label].setdefault(summary.runs[0][TRAIN_IMAGES], []).extend(
                    run[VAL_ACCURACY] for run in summary.runs
                )
        return {
            label: [
                results.CurvePoint(size, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
                for size, values in sorted(sizes.items())
            ]
            for label, sizes in by_label.items()
        }


def run_rounds(reevaluation: Reevaluation, token: str) -> Look | None:
    """Trains round after round until the rounds stop, then the learning curve, and returns the
    last look; None when this worker lost its claim on the way (the new holder goes on).

    Each round is what `regsweep.results.rounds` asks for, given every run logged so far, so a
    worker killed mid-round leaves finished runs that the next one counts and never re-trains.
    The first look is taken here, after the claim: another worker may have trained until then.
    """
    end_interrupted_runs(reevaluation.cfg, reevaluation.parent_run_id)
    look = reevaluation.look()
    while todo := look.todo():
        log.info(_round_line(look.rounds, todo))
        if not _train(reevaluation, todo, token, REEVAL):
            return None
        look = reevaluation.look()
    todo = look.missing_curve()
    if todo:
        fractions = ", ".join(f"{100 * f:g} %" for f in reevaluation.settings.reevaluate.curve)
        log.info(f"Learning curve: {len(todo)} runs on {fractions} of the training images (validation only)")
        if not _train(reevaluation, todo, token, CURVE):
            return None
        look = reevaluation.look()
    return look


def _round_line(rounds: results.Rounds, todo: list[tuple[Setting, int]]) -> str:
    """What the next round trains, and why."""
    plan = rounds.design
    labels = list(dict.fromkeys(s.label for s, _ in todo))
    names = [results.setting_name(label) for label in labels]
    who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    if rounds.stage == results.SCREENING:
        return (
            f"Re-evaluating, the screening on validation: {len(todo)} runs, one seed each for {who}; the "
            f"{plan.entrants} best over their search run and this seed race on"
        )
    if rounds.stage == results.RACE:
        last = max(seed for _, seed in todo)
        if last < plan.first_seed + plan.seeds:  # the race's first look (the screening may have given one seed)
            return (
                f"Re-evaluating, the race on validation: {len(todo)} runs for {who} "
                f"({plan.seeds} seeds each, up to {plan.race_looks()[-1]} while within noise of the leader)"
            )
        return (
            f"The race, round {(last - plan.first_seed) // max(plan.seeds, 1) + 1}: {who} still within noise of "
            f"each other on validation: {len(todo)} more runs"
        )
    if rounds.verdict is None:
        return (
            f"Re-evaluating on the test split: {len(todo)} runs for {who}, on seeds the choice never "
            f"saw ({plan.seeds} each, up to {plan.max_seeds} while the verdict can't tell)"
        )
    accuracy = results.with_interval(rounds.verdict.accuracy, rounds.verdict.alpha)
    return (
        f"Round {rounds.looks + 1}: can't tell yet after {len(rounds.chosen.runs)} seeds (test accuracy {accuracy}, "
        f"trial {rounds.chosen.label} against the baseline): {len(todo)} more runs for {who}"
    )


def end_interrupted_runs(cfg: DictConfig, parent_run_id: str) -> None:
    """Ends FAILED the re-evaluation and curve runs left RUNNING by a holder that died mid-run
    (kill -9, a reboot): only the claim's holder trains them, and this process holds it now."""
    tracking.use_store(cfg.tracking)
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    for role in (REEVAL, CURVE):
        for run in client.search_runs(
            [experiment_id],
            f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}' and "
            f"tags.`{tracking.ROLE_TAG}` = '{role}' and attributes.status = 'RUNNING'",
        ):
            tracking.fail_run(
                run.info.run_id,
                "interrupted: the re-evaluating process stopped before this run ended "
                "(killed, rebooted or out of memory); the next one trained it again",
            )


def _train(reevaluation: Reevaluation, todo: list[tuple[Setting, int]], token: str, role: str) -> bool:
    """Trains each (setting, seed) while this worker holds the claim; False when it lost it."""
    optuna_study, parent_run_id = reevaluation.optuna_study, reevaluation.parent_run_id
    import_tensorflow_quietly()
    from regsweep import train  # lazy: TensorFlow, only in the process that re-evaluates

    what = "re-evaluation" if role == REEVAL else "learning curve"
    with progress.steps(what, len(todo), unit="runs") as advance:
        for index, (setting, seed) in enumerate(todo, start=1):
            if not study.renew(optuna_study, token):
                progress.say(
                    "This worker's re-evaluation claim was taken over by another worker; leaving the rest to it."
                )
                return False
            overrides = merge(setting.overrides, [f"train.seed={seed}", "tracking.artifacts=none"])
            run_cfg = compose(overrides)
            tags = {
                tracking.STUDY_TAG: optuna_study.study_name,
                tracking.ROLE_TAG: role,
                tracking.REEVAL_TAG: setting.label,
                tracking.REEVAL_KEY_TAG: run_key(setting, seed),
            }
            if setting.trial_number is not None:
                tags[tracking.TRIAL_NUMBER_TAG] = str(setting.trial_number)
            fraction = run_cfg.data.train_fraction
            name = f"{role} {setting.label}" + (f" {100 * fraction:g}%" if role == CURVE else "") + f" seed {seed}"
            result = train.train_and_log(
                run_cfg,
                parent_run_id=parent_run_id,
                tags=tags,
                evaluate_test=role == REEVAL,
                with_test=role == REEVAL,
                label=name,
            )
            metrics = result.metrics
            scores = (
                f"test {metrics[TEST_ACCURACY]:.3f} val {metrics[VAL_ACCURACY]:.3f} test gap {metrics[TEST_GAP]:.3f}"
                if role == REEVAL
                else f"{metrics[TRAIN_IMAGES]} training images: val {metrics[VAL_ACCURACY]:.3f}"
            )
            progress.say(f"  {index}/{len(todo)} {name}: {scores}")
            advance()
    return True


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
            seed = int(logged.data.params["train.seed"])
            run = {
                "seed": seed,
                "run_id": logged.info.run_id,
                **{name: metrics[name] for name in METRICS},
                **{name: int(metrics[name]) for name in SIZES if name in metrics},
                **_per_image(logged),
            }
            by_label.setdefault(logged.data.tags[tracking.REEVAL_TAG], {}).setdefault(seed, run)  # one run a seed
    order = sorted(by_label, key=lambda label: (label != BASELINE, int(label[1:]) if label[1:].isdigit() else 0))
    return [Summary(label, sorted(by_label[label].values(), key=lambda run: run["seed"])) for label in order]


def _per_image(logged) -> dict[str, str]:
    """{"train_correct": "0110…", "validation_correct": …, "test_correct": …}; {} for a run logged
    before they were (its noise then falls back to binomial bounds)."""
    return {
        f"{split}_correct": value for split, value in tracking.load_per_image_correct(logged.info.artifact_uri).items()
    }


def has_test_split(cfg: DictConfig) -> bool:
    return data.resolve_splits(cfg.data, cfg.model.image_size, Path(cfg.paths.store)).test is not None
