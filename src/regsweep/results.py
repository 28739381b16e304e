"""The decisions: which setting to recommend, whether it beats doing nothing by more than noise,
and what else would help.

Plain data in, plain data out: no MLflow, no Optuna, no TensorFlow, no rendering. One rule
drives the progress line, the report, the re-evaluation, the best-settings file and the
answer, so it lives here once, testable in milliseconds.

The rule: held-out accuracy first, the gap second (DESIGN.md, "The gap").

- Single trials: a trial is *tied* with the most accurate one when its val_accuracy is within
  one standard error of it, the binomial error of the best trial's accuracy on a validation
  set of that size (the "one-standard-error rule" of model selection). Among tied trials the
  ones with gap ≤ ε come first, then the smallest gap, then the higher val_accuracy, then the
  unregularized baseline, then the earlier trial. The baseline trial competes like any other.
- Across seeds, after re-evaluation: the same rule on the mean val_accuracy, with the standard
  error of the difference measured over seeds and validation images (`difference`).
- Adopting it: the chosen setting is compared with the baseline on the untouched test split
  (`verdict`). Test accuracy never picks among settings; it only decides whether the choice is
  worth adopting. The answer is the choice when it is better, or equally accurate and less
  overfit, beyond noise; otherwise it is the baseline.

Noise: a difference is beyond noise when it exceeds two standard errors. For two settings
re-trained with the same seeds and scored on the same images, the standard error combines the
seed-to-seed spread of the paired differences (over √seeds) and the images' spread of the
per-image differences (over √images), the two sources a paired bootstrap over seeds and images
would resample. More seeds shrink only the first; a larger test split only the second.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from regsweep.config import redact

BASELINE = "baseline"  # the re-evaluation label of the unregularized reference
Z = 2.0  # a difference beyond Z standard errors is beyond noise (about 95 %)

# Verdict cases, after re-evaluation on the test split.
BETTER = "better"
LESS_OVERFIT = "same accuracy, smaller gap"
TRADE_OFF = "trade-off"
NO_EFFECT = "no effect"


@dataclass
class TrialRow:
    """One Optuna trial as the decisions see it."""

    number: int
    state: str
    params: dict
    val_accuracy: float = math.nan
    train_accuracy: float = math.nan
    gap: float = math.nan
    val_images: int = 0  # the validation set's size: how much of an accuracy difference is noise
    overrides: list[str] = field(default_factory=list)
    run_id: str = ""
    baseline: bool = False
    fail_reason: str = ""


def binomial_se(accuracy: float, images: int) -> float:
    """The standard error of an accuracy measured on `images` images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / images) if images > 0 else 0.0


def preference(gap: float, val_accuracy: float, epsilon: float, baseline: bool, number: int) -> tuple:
    """How tied settings are ordered: gap ≤ ε, smaller gap, more accurate, doing nothing, earlier."""
    return gap > epsilon, gap, -val_accuracy, not baseline, number


# --- single trials ------------------------------------------------------------------------------


def complete(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.state == "COMPLETE" and not math.isnan(r.gap)]


def baseline_row(rows: list[TrialRow]) -> TrialRow | None:
    return next((r for r in complete(rows) if r.baseline), None)


def tie_margin(best: TrialRow) -> float:
    """How far below the most accurate trial another still counts as tied: one standard error."""
    return binomial_se(best.val_accuracy, best.val_images)


def in_rule_order(rows: list[TrialRow], epsilon: float) -> list[TrialRow]:
    """COMPLETE trials, the recommendation first: the trials tied with the most accurate one in
    order of preference, then the rest by val_accuracy (then the smaller gap)."""
    done = complete(rows)
    if not done:
        return []
    best = max(done, key=lambda r: (r.val_accuracy, -r.gap))
    floor = best.val_accuracy - tie_margin(best)
    tied = [r for r in done if r.val_accuracy >= floor]
    rest = [r for r in done if r.val_accuracy < floor]
    return (sorted(tied, key=lambda r: preference(r.gap, r.val_accuracy, epsilon, r.baseline, r.number))
            + sorted(rest, key=lambda r: (-r.val_accuracy, r.gap, r.number)))


def recommend(rows: list[TrialRow], epsilon: float) -> TrialRow | None:
    """The trial the rule picks among single runs (see the module docstring)."""
    ordered = in_rule_order(rows, epsilon)
    return ordered[0] if ordered else None


def trade_off(rows: list[TrialRow], chosen: TrialRow | None, epsilon: float) -> TrialRow | None:
    """When the recommendation's gap exceeds ε: the most accurate trial that meets ε, which
    costs val_accuracy beyond noise (else it would be tied and chosen). Shown, never recommended."""
    if chosen is None or chosen.gap <= epsilon:
        return None
    meeting = [r for r in complete(rows) if r.gap <= epsilon]
    return max(meeting, key=lambda r: (r.val_accuracy, -r.gap)) if meeting else None


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Non-dominated COMPLETE trials in (max val_accuracy, min gap), by increasing gap."""
    done = complete(rows)

    def dominated(r: TrialRow) -> bool:
        return any(
            o.val_accuracy >= r.val_accuracy and o.gap <= r.gap and (o.val_accuracy > r.val_accuracy or o.gap < r.gap)
            for o in done
        )

    return sorted((r for r in done if not dominated(r)), key=lambda r: (r.gap, -r.val_accuracy))


def leads(rows: list[TrialRow], finished: TrialRow) -> bool:
    """Whether a just-finished trial is on the front among `rows` and itself.

    A trial the rule finally recommends is dominated by no trial (a dominating one would be
    tied with it and preferred), so it was on the front when it ended: with
    tracking.artifacts=best every trial that can become the recommendation has its plots and model.
    """
    rows = [r for r in rows if r.number != finished.number] + [finished]
    return any(row.number == finished.number for row in pareto_front(rows))


def candidates(rows: list[TrialRow], epsilon: float, top_k: int) -> list[TrialRow]:
    """What to re-evaluate beside the baseline: the first top_k trials in rule order, the
    baseline trial left out (it is re-evaluated as the baseline)."""
    return [r for r in in_rule_order(rows, epsilon) if not r.baseline][:top_k]


def caveats(rows: list[TrialRow], chosen: TrialRow | None, epsilon: float) -> list[str]:
    """Plain warnings about a single-trial recommendation."""
    if chosen is None or chosen.gap <= epsilon:
        return []
    note = (f"No trial within noise of the best val_accuracy has gap <= {epsilon:g}: trial #{chosen.number} "
            f"has the smallest gap among them ({chosen.gap:.4f}).")
    other = trade_off(rows, chosen, epsilon)
    if other is not None:
        note += (f" Trial #{other.number} meets it (gap {other.gap:.4f}) at val_accuracy {other.val_accuracy:.4f}, "
                 f"{chosen.val_accuracy - other.val_accuracy:.4f} lower: a trade-off, not recommended.")
    return [note]


def failures_by_reason(rows: list[TrialRow]) -> list[tuple[str, list[int]]]:
    """FAIL trials grouped by their reason (exception type and message), most frequent first."""
    groups: dict[str, list[int]] = {}
    for row in rows:
        if row.state == "FAIL":
            groups.setdefault(redact(row.fail_reason or "unknown (no reason was recorded)"), []).append(row.number)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0]))


def pruned_by_level(rows: list[TrialRow], key: str) -> list[tuple[str, int, int]]:
    """(knob level, complete, pruned) for one knob: whether pruning fell on some levels more.

    Up to six distinct values are levels of their own; more are cut into three bins with
    equally many trials.
    """
    finished = [r for r in rows if r.state in ("COMPLETE", "PRUNED") and key in r.params]
    values = sorted({r.params[key] for r in finished}, key=lambda v: (isinstance(v, str), v))
    if len(values) <= 6:
        levels = [(f"{v:g}" if isinstance(v, float) else str(v), lambda x, v=v: x == v) for v in values]
    else:
        edges = [values[len(values) * i // 3] for i in (1, 2)]
        levels = [(f"< {edges[0]:.3g}", lambda x: x < edges[0]),
                  (f"{edges[0]:.3g} – {edges[1]:.3g}", lambda x: edges[0] <= x < edges[1]),
                  (f">= {edges[1]:.3g}", lambda x: x >= edges[1])]
    return [(label, sum(r.state == "COMPLETE" and inside(r.params[key]) for r in finished),
             sum(r.state == "PRUNED" and inside(r.params[key]) for r in finished)) for label, inside in levels]


# --- across seeds -------------------------------------------------------------------------------


@dataclass
class Summary:
    """One re-evaluated setting: its runs, one per seed, as logged.

    A run holds its metrics and, where logged, `train_correct`, `validation_correct` and
    `test_correct`: one character per image, "1" where the prediction was right, in file order.
    """

    label: str  # BASELINE, or "#<trial number>"
    runs: list[dict]  # one dict per seed (with its "seed"), by seed

    def mean(self, metric: str) -> float:
        return statistics.fmean(run[metric] for run in self.runs)

    def std(self, metric: str) -> float:
        values = [run[metric] for run in self.runs]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def pm(self, metric: str, digits: int = 2) -> str:
        return f"{self.mean(metric):.{digits}f} ± {self.std(metric):.{digits}f}"


# The images behind each metric: a gap holds the training images' accuracy and a held-out one's.
SPLITS_OF = {"val_accuracy": ("validation",), "test_accuracy": ("test",), "gap": ("train", "validation"),
             "test_gap": ("train", "test")}
ACCURACY = {"train": "train_accuracy", "validation": "val_accuracy", "test": "test_accuracy"}
IMAGE_COUNT = {"train": "train_images", "validation": "val_images", "test": "test_images"}


@dataclass
class Difference:
    """b − a on one metric, seed by seed: the mean, and the variance from each noise source."""

    mean: float
    seed_variance: float  # of one seed's difference: its share of the error shrinks with more seeds
    image_variance: float  # of the mean difference over the split's images: more seeds do not shrink it
    seeds: int

    @property
    def se(self) -> float:
        return math.sqrt(self.seed_variance / max(self.seeds, 1) + self.image_variance)

    @property
    def beyond_noise(self) -> bool:
        return abs(self.mean) > Z * self.se

    def seeds_to_settle(self) -> int | None:
        """Seeds that would make a difference of this size clear noise; None when the split's
        size alone keeps it within noise (then a larger split would, not more seeds)."""
        room = (abs(self.mean) / Z) ** 2 - self.image_variance
        if room <= 0:
            return None
        return max(self.seeds + 1, math.ceil(self.seed_variance / room))


def paired(a: Summary, b: Summary) -> list[tuple[dict, dict]]:
    """(a's run, b's run) for each seed both ran. Every setting is re-trained with the same seeds
    (the same head initialisation, shuffling and augmentation draws), so comparing seed by seed
    removes the noise the two share."""
    by_seed = {run["seed"]: run for run in a.runs}
    return [(by_seed[run["seed"]], run) for run in b.runs if run["seed"] in by_seed]


def difference(a: Summary, b: Summary, metric: str) -> Difference:
    """b − a on `metric`, with its noise (see the module docstring)."""
    pairs = paired(a, b)
    if not pairs:  # no seed in common: unpaired, from the two spreads
        return Difference(b.mean(metric) - a.mean(metric), a.std(metric) ** 2 + b.std(metric) ** 2, 0.0, 1)
    per_seed = [run_b[metric] - run_a[metric] for run_a, run_b in pairs]
    seed_variance = statistics.variance(per_seed) if len(per_seed) > 1 else 0.0
    image_variance = sum(_image_variance(pairs, split) for split in SPLITS_OF[metric])
    return Difference(statistics.fmean(per_seed), seed_variance, image_variance, len(pairs))


def _image_variance(pairs: list[tuple[dict, dict]], split: str) -> float:
    """The variance, over the split's images, of the mean per-image difference (paired images).

    Without per-image results (runs logged before they were recorded): the two accuracies'
    binomial variances, as if the two settings erred independently, an upper bound; 0 when
    not even the image count was logged.
    """
    key = f"{split}_correct"
    vectors = [(run_a.get(key), run_b.get(key)) for run_a, run_b in pairs]
    if all(a and b and len(a) == len(b) == len(vectors[0][0]) for a, b in vectors):
        images = len(vectors[0][0])
        per_image = [statistics.fmean(int(b[i]) - int(a[i]) for a, b in vectors) for i in range(images)]
        return statistics.pvariance(per_image) / images if images > 1 else 0.0
    images = pairs[0][0].get(IMAGE_COUNT[split], 0)
    if not images:
        return 0.0
    a_accuracy = statistics.fmean(run_a[ACCURACY[split]] for run_a, _ in pairs)
    b_accuracy = statistics.fmean(run_b[ACCURACY[split]] for _, run_b in pairs)
    return binomial_se(a_accuracy, images) ** 2 + binomial_se(b_accuracy, images) ** 2


def representative_run(summary: Summary) -> dict:
    """The one seed's run that stands for a setting in the Model Registry: the most accurate on
    validation (the earlier seed on a tie). The test split picks nothing."""
    return max(summary.runs, key=lambda run: (run["val_accuracy"], -run["seed"]))


def stable_choice(summaries: list[Summary], epsilon: float) -> Summary | None:
    """The rule on re-evaluated settings, the baseline among them: the settings whose mean
    val_accuracy is within one standard error (seeds and images) of the most accurate are tied;
    among them gap ≤ ε first, then the smallest mean gap. Test accuracy is never used."""
    if not summaries:
        return None
    best = max(summaries, key=lambda s: (s.mean("val_accuracy"), -s.mean("gap")))
    tied = [s for s in summaries
            if s is best or s.mean("val_accuracy") >= best.mean("val_accuracy") - difference(s, best, "val_accuracy").se]
    return min(tied, key=lambda s: preference(s.mean("gap"), s.mean("val_accuracy"), epsilon, s.label == BASELINE,
                                              _number(s.label)))


def _number(label: str) -> int:
    return int(label[1:]) if label[1:].isdigit() else -1


@dataclass
class Verdict:
    """The chosen setting against the baseline on the test split."""

    case: str  # BETTER, LESS_OVERFIT, TRADE_OFF or NO_EFFECT
    accuracy: Difference  # test_accuracy, chosen − baseline
    gap: Difference  # test_gap, chosen − baseline
    sentence: str
    settle: str  # what would settle a "within noise" answer ("" when nothing is within noise)

    @property
    def adopt(self) -> bool:
        return self.case in (BETTER, LESS_OVERFIT)


def verdict(baseline: Summary, chosen: Summary) -> Verdict:
    """Exactly one of four cases, accuracy first:
    better (test accuracy up beyond noise); same accuracy, smaller gap (accuracy within noise,
    gap down beyond it); trade-off (accuracy down beyond noise: not recommended); no effect."""
    accuracy = difference(baseline, chosen, "test_accuracy")
    gap = difference(baseline, chosen, "test_gap")
    n = len(chosen.runs)
    moves = (f"test accuracy {baseline.pm('test_accuracy')} → {chosen.pm('test_accuracy')}, "
             f"test gap {baseline.pm('test_gap')} → {chosen.pm('test_gap')}, {n} seed{'s' * (n != 1)} each")
    if chosen.label == BASELINE:
        return Verdict(NO_EFFECT, accuracy, gap, "No searched setting matched the baseline's validation accuracy "
                       f"while overfitting less (the baseline: test accuracy {baseline.pm('test_accuracy')}, test gap "
                       f"{baseline.pm('test_gap')}, {n} seed{'s' * (n != 1)}).", "")
    if accuracy.beyond_noise and accuracy.mean > 0:
        case, sentence = BETTER, f"Better: held-out accuracy rises beyond noise ({moves})."
    elif accuracy.beyond_noise:
        shrinks = "the gap shrinks but " if gap.mean < 0 else ""
        case, sentence = TRADE_OFF, (f"Trade-off: {shrinks}test accuracy falls beyond noise ({moves}); "
                                     "not recommended.")
    elif gap.beyond_noise and gap.mean < 0:
        case, sentence = LESS_OVERFIT, (f"Same accuracy, smaller gap: a less overfit model at no measured cost "
                                        f"in accuracy ({moves}).")
    else:
        case, sentence = NO_EFFECT, f"No effect beyond noise ({moves})."
    return Verdict(case, accuracy, gap, sentence, _settle(accuracy, gap, case))


def _settle(accuracy: Difference, gap: Difference, case: str) -> str:
    """How many seeds would settle what is still within noise, or that seeds cannot."""
    open_questions = [("accuracy", accuracy)] if not accuracy.beyond_noise else []
    if case == NO_EFFECT and not gap.beyond_noise:
        open_questions.append(("gap", gap))
    open_questions = [(name, diff) for name, diff in open_questions if abs(diff.mean) >= 0.005]  # worth settling
    by_seeds = [(name, diff, diff.seeds_to_settle()) for name, diff in open_questions]
    parts = [f"the test {name} difference ({diff.mean:+.3f}) is within the test split's own noise "
             f"(±{Z * math.sqrt(diff.image_variance):.3f}) however many seeds: only a larger test split would settle it"
             for name, diff, seeds in by_seeds if seeds is None]
    settled = [(name, diff, seeds) for name, diff, seeds in by_seeds if seeds is not None]
    if settled:
        differences = " and ".join(f"{name} ({diff.mean:+.3f})" for name, diff, _ in settled)
        plural = "s are" if len(settled) > 1 else " is"
        parts.append(f"about {max(seeds for *_, seeds in settled)} seeds (sweep.reevaluate.seeds) would show whether "
                     f"the test {differences} difference{plural} real")
    return "; ".join(parts)


def disagreement(baseline: Summary) -> str:
    """A warning when the baseline's validation and test accuracies differ beyond noise: then
    the split the search optimizes does not represent the test images."""
    per_seed = [run["val_accuracy"] - run["test_accuracy"] for run in baseline.runs]
    seed_variance = statistics.variance(per_seed) / len(per_seed) if len(per_seed) > 1 else 0.0
    image_variance = sum(binomial_se(baseline.mean(ACCURACY[split]), baseline.runs[0].get(IMAGE_COUNT[split], 0)) ** 2
                         for split in ("validation", "test"))
    mean = statistics.fmean(per_seed)
    if abs(mean) <= Z * math.sqrt(seed_variance + image_variance):
        return ""
    return (f"Validation and test disagree on the baseline: val_accuracy {baseline.pm('val_accuracy')} against "
            f"test_accuracy {baseline.pm('test_accuracy')}, beyond noise. The validation split the search "
            "optimizes does not represent the test images: check that both come from the same source "
            "(camera, lighting, people, time) and are split at random.")


# --- would more data help? ----------------------------------------------------------------------


@dataclass
class CurvePoint:
    """One setting trained on part of the training images: mean val_accuracy over seeds."""

    train_images: int
    val_accuracy: float
    std: float


def doubling_gain(points: list[CurvePoint]) -> float:
    """The validation accuracy that doubling the training images would likely add.

    Error falls roughly as a power of the training-set size (error ≈ a·n^−b; Hestness et al.,
    "Deep learning scaling is predictable, empirically", 2017): b is the least-squares slope of
    log error against log n over the curve's points, and doubling the largest set multiplies
    its error by 2^−b. The power law flattens by itself, so the guess does not run past 1.0.
    """
    if len({p.train_images for p in points}) < 2:
        return math.nan
    xs = [math.log(p.train_images) for p in points]
    ys = [math.log(max(1.0 - p.val_accuracy, 1e-3)) for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    b = -sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    last = max(points, key=lambda p: p.train_images)
    return (1.0 - last.val_accuracy) * (1.0 - 2.0 ** -max(b, 0.0))


def more_data_sentence(points: list[CurvePoint], setting_gain: float, label: str) -> str:
    """One sentence comparing what more images would likely add with what the settings added."""
    expected = doubling_gain(points)
    if math.isnan(expected):
        return ""
    points = sorted(points, key=lambda p: p.train_images)
    curve = ", ".join(f"{p.val_accuracy:.2f} at {p.train_images}" for p in points)
    found = f"{setting_gain:+.2f}" if not math.isnan(setting_gain) else "+0.00"
    if expected < 0.01:
        return (f"More images of the same kind would likely add little: {label}'s validation accuracy has flattened "
                f"({curve} training images); better-matched or cleaner data, or another backbone, may help more.")
    if expected > setting_gain + 0.01:
        compared = "more than any setting found"
    elif expected < setting_gain - 0.01:
        compared = "less than the setting found"
    else:
        compared = "about as much as the setting found"
    return (f"Doubling the training images would likely add about +{expected:.2f} validation accuracy, {compared} "
            f"({found}); {label}'s learning curve: {curve} training images.")


# --- the answer ---------------------------------------------------------------------------------


@dataclass
class Answer:
    """What the user should do, and the evidence: the first lines of every report."""

    label: str  # BASELINE, or "#<trial number>"
    row: TrialRow | None  # the trial behind it (the baseline trial for BASELINE, when there is one)
    verdict: Verdict | None  # None until re-evaluated on a test split
    baseline: Summary | None = None
    chosen: Summary | None = None  # the setting the rule chose across seeds, adopted or not
    warnings: list[str] = field(default_factory=list)
    more_data: str = ""

    @property
    def keep_baseline(self) -> bool:
        return self.label == BASELINE


def answer(rows: list[TrialRow], summaries: list[Summary], epsilon: float,
           curves: dict[str, list[CurvePoint]] | None = None, shared_images: int = 0) -> Answer | None:
    """The rule, the verdict and the checks, together. Before a re-evaluation (or without a test
    split) the single-trial choice stands, with a warning that it is unconfirmed."""
    warnings = []
    if shared_images:
        warnings.append(f"{shared_images} image(s) appear in more than one split (same content): held-out scores "
                        "are inflated by images the model trained on; remove the copies (listed below).")
    baseline = next((s for s in summaries if s.label == BASELINE), None)
    chosen = stable_choice(summaries, epsilon) if baseline is not None else None
    if chosen is None:
        row = recommend(rows, epsilon)
        if row is None:
            return None
        label = BASELINE if row.baseline else f"#{row.number}"
        warnings += caveats(rows, row, epsilon)
        warnings.append("Chosen on validation accuracy from single runs: not yet confirmed on a test split against "
                        "the baseline (give a test split and run `regsweep report --reevaluate`).")
        return Answer(label, row, None, warnings=warnings)
    judged = verdict(baseline, chosen)
    label = chosen.label if judged.adopt else BASELINE
    by_label = {f"#{r.number}": r for r in complete(rows)}
    row = by_label.get(label) if label != BASELINE else baseline_row(rows)
    if baseline_disagrees := disagreement(baseline):
        warnings.append(baseline_disagrees)
    if len(chosen.runs) < 2:
        warnings.append("One seed per setting: the seed-to-seed noise is not measured, so \"beyond noise\" counts the "
                        "test images only; re-evaluate with sweep.reevaluate.seeds=3 or more.")
    if chosen.mean("gap") > epsilon and judged.adopt:
        warnings.append(f"Its mean gap {chosen.mean('gap'):.2f} is still above ε = {epsilon:g}: less overfit, not cured.")
    more_data = ""
    curve = (curves or {}).get(label)
    if curve:
        gain = chosen.mean("val_accuracy") - baseline.mean("val_accuracy") if label != BASELINE else 0.0
        more_data = more_data_sentence(curve, gain, "the baseline" if label == BASELINE else f"trial {label}")
    elif label == BASELINE:
        more_data = ("More training images, validation and test images like the ones the model will meet, or another "
                     "backbone; the learning curve (sweep.reevaluate.curve) measures the first.")
    return Answer(label, row, judged, baseline, chosen, warnings, more_data)
