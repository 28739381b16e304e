"""The decisions: which setting to recommend, whether it beats doing nothing, how sure that is,
and what else would help.

Plain data in, plain data out: no MLflow, no Optuna, no TensorFlow, no rendering (SciPy for its
t quantiles). One rule drives the progress line, the report, the re-evaluation, the
best-settings file and the answer, so it lives here once, testable in milliseconds.

The rule: held-out accuracy first, the gap second.

- Single trials: a trial is *tied* with the most accurate one when its val_accuracy is within
  one standard error of it, the binomial error of the best trial's accuracy on a validation
  set of that size (the "one-standard-error rule" of model selection). Among tied trials the
  ones with gap ≤ ε come first, then the smallest gap, then the higher val_accuracy, then the
  unregularized baseline, then the earlier trial. The baseline trial competes like any other.
- Across seeds, after re-evaluation: the same rule on the mean val_accuracy of the re-trained
  candidates (`stable_choice`), with the standard error of the difference measured over seeds
  and validation images (`difference`).
- Adopting it: the choice is compared with the baseline on the untouched test split
  (`verdict`), by confidence intervals of the paired differences in test accuracy and test
  gap, in one of five cases. Test accuracy never picks among settings; it only decides whether
  the choice is worth adopting: when it is better, or as accurate (within ±margin) and less
  overfit. Otherwise the baseline stays, and the verdict says whether that is because the
  knobs don't help (no effect), cost accuracy (trade-off) or can't be told apart yet.
- Seeds where they decide (`rounds`): while the verdict can't tell, the choice and the baseline
  get more seeds, in rounds, every look corrected for; the other candidates get none.

How sure: every interval of a verdict is drawn so that all of them hold together at least
1 − ALPHA of the time, corrected for the two metrics, the candidates and the looks (`Design`).
benchmarks/verdict_calibration.py measures that, on A/A comparisons and planted effects.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats as scipy_stats

from regsweep.config import redact
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

BASELINE = "baseline"  # the re-evaluation label of the unregularized reference
ALPHA = 0.05  # how often, at most, any interval of one verdict misses: 95 % for all of them together
# Differences in test accuracy smaller than this count as "no effect": about one image in fifty,
# less than a user would change settings for, and still within reach: when two models disagree
# on 3–5 % of the images, the test images' own noise (at the verdict's corrected level) fits
# inside ±0.02 from about 700–1,200 test images. A smaller margin needs far larger test splits.
MARGIN = 0.02

# Verdict cases, after re-evaluation on the test split.
BETTER = "better"
LESS_OVERFIT = "same accuracy, smaller gap"
TRADE_OFF = "trade-off"
NO_EFFECT = "no effect"
CANT_TELL = "can't tell yet"
CASES = (BETTER, LESS_OVERFIT, TRADE_OFF, NO_EFFECT, CANT_TELL)


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
    return sorted(tied, key=lambda r: preference(r.gap, r.val_accuracy, epsilon, r.baseline, r.number)) + sorted(
        rest, key=lambda r: (-r.val_accuracy, r.gap, r.number)
    )


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
    note = (
        f"No trial within noise of the best val_accuracy has gap <= {epsilon:g}: trial #{chosen.number} "
        f"has the smallest gap among them ({chosen.gap:.4f})."
    )
    other = trade_off(rows, chosen, epsilon)
    if other is not None:
        note += (
            f" Trial #{other.number} meets it (gap {other.gap:.4f}) at val_accuracy {other.val_accuracy:.4f}, "
            f"{chosen.val_accuracy - other.val_accuracy:.4f} lower: a trade-off, not recommended."
        )
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
        levels = [
            (f"< {edges[0]:.3g}", lambda x: x < edges[0]),
            (f"{edges[0]:.3g} – {edges[1]:.3g}", lambda x: edges[0] <= x < edges[1]),
            (f">= {edges[1]:.3g}", lambda x: x >= edges[1]),
        ]
    return [
        (
            label,
            sum(r.state == "COMPLETE" and inside(r.params[key]) for r in finished),
            sum(r.state == "PRUNED" and inside(r.params[key]) for r in finished),
        )
        for label, inside in levels
    ]


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

    def with_seeds(self, seeds: list[int]) -> Summary:
        """Only the runs of these seeds: the setting as it stood at one look of the re-evaluation."""
        wanted = set(seeds)
        return Summary(self.label, [run for run in self.runs if run["seed"] in wanted])


# The images behind each metric: a gap holds the training images' accuracy and a held-out one's.
SPLITS_OF = {
    VAL_ACCURACY: ("validation",),
    TEST_ACCURACY: ("test",),
    GAP: ("train", "validation"),
    TEST_GAP: ("train", "test"),
}
ACCURACY = {"train": TRAIN_ACCURACY, "validation": VAL_ACCURACY, "test": TEST_ACCURACY}
IMAGE_COUNT = {"train": TRAIN_IMAGES, "validation": VAL_IMAGES, "test": TEST_IMAGES}


@dataclass
class Difference:
    """b − a on one metric, paired by seed and by image: the mean, and the variance of that mean
    from each source of noise, with the degrees of freedom of each estimate.

    Two settings re-trained with the same seeds and scored on the same images differ by
    D[seed, image] ∈ {−1, 0, 1}. The mean of D varies with the seeds drawn and with the images
    drawn, a two-way crossed design (seeds × images, one observation per cell). Its variance is
    σ²_seed/S + σ²_image/N + σ²_interaction/(S·N), estimated from the ANOVA mean squares:
    the variance of the per-seed differences over S (`seed_part`, S − 1 degrees of freedom),
    plus, per split, the variance of the per-image differences over N (`image_part`, N − 1),
    minus the interaction that both of those hold once (`interaction`, (S − 1)(N − 1)).
    More seeds shrink the first; only a larger split shrinks the second.
    """

    mean: float
    seed_variance: float  # of one seed's difference (ddof 1); nan when fewer than two seeds measured it
    seeds: int
    image_parts: list[tuple[float, float, int]] = field(
        default_factory=list
    )  # (image_part, interaction, images) per split

    @property
    def seed_part(self) -> float:
        return self.seed_variance / self.seeds if self.seeds > 1 else 0.0

    @property
    def image_variance(self) -> float:
        """The split's own noise: what no number of seeds removes."""
        return sum(part for part, _, _ in self.image_parts)

    @property
    def variance(self) -> float:
        """The variance of the mean difference. Never below either estimate on its own (each is,
        in expectation, a part of the whole): the interaction's correction can overshoot."""
        net = self.seed_part + sum(part - interaction for part, interaction, _ in self.image_parts)
        return max(net, self.seed_part, self.image_variance)

    @property
    def se(self) -> float:
        """The measured standard error (the seed part counts as 0 until two seeds measure it)."""
        return math.sqrt(self.variance)

    @property
    def df(self) -> float:
        """Welch–Satterthwaite degrees of freedom of `variance`: near S − 1 when the seeds
        dominate, near N − 1 when the images do."""
        terms = [(self.seed_part, self.seeds - 1)] if self.seeds > 1 else []
        for part, interaction, images in self.image_parts:
            terms += [(part, images - 1), (interaction, (self.seeds - 1) * (images - 1))]
        denominator = sum(value**2 / df for value, df in terms if df > 0 and value > 0)
        return self.variance**2 / denominator if denominator > 0 else math.inf

    def half_width(self, alpha: float) -> float:
        """Half the (1 − alpha) interval: a t interval with Welch–Satterthwaite degrees of
        freedom, and never narrower than the paired t interval over the seeds alone.

        Why both (benchmarks/verdict_calibration.py): Welch–Satterthwaite alone covered only
        90–92 % at 2 seeds, where the seed part rests on one degree of freedom and the
        approximation's tails are too light; the paired t over seeds is exact when the images
        hold no effect of their own (an A/A), but misses the test images' own noise when they
        do. Together they covered 93–99 % from 2 to 10 seeds and 100 to 5,000 images (A/A and
        planted effects), with intervals at most a few per cent wider than Welch–Satterthwaite's
        from 3 seeds on.
        """
        if self.seeds < 2:
            return math.inf
        if self.variance <= 0:
            return 0.0
        overall = float(scipy_stats.t.ppf(1 - alpha / 2, self.df)) * self.se
        over_seeds = float(scipy_stats.t.ppf(1 - alpha / 2, self.seeds - 1)) * math.sqrt(self.seed_part)
        return max(overall, over_seeds)

    def interval(self, alpha: float = ALPHA) -> tuple[float, float]:
        """The (1 − alpha) confidence interval of the difference (see `half_width`); unbounded
        until two seeds measure the seed-to-seed spread: one seed says nothing about how much a
        re-run would move."""
        half = self.half_width(alpha)
        return self.mean - half, self.mean + half

    def images_only_half_width(self, alpha: float) -> float:
        """The interval's half-width with infinitely many seeds: the test images' own noise."""
        if not self.image_parts:
            return 0.0
        df = max(1, min(images for _, _, images in self.image_parts) - 1)
        return float(scipy_stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(self.image_variance)


def paired(a: Summary, b: Summary) -> list[tuple[dict, dict]]:
    """(a's run, b's run) for each seed both ran. Every setting is re-trained with the same seeds
    (the same head initialisation, shuffling and augmentation draws), so comparing seed by seed
    removes the noise the two share."""
    by_seed = {run["seed"]: run for run in a.runs}
    return [(by_seed[run["seed"]], run) for run in b.runs if run["seed"] in by_seed]


def difference(a: Summary, b: Summary, metric: str) -> Difference:
    """b − a on `metric`, with its noise (see `Difference`)."""
    pairs = paired(a, b)
    if not pairs:  # no seed in common: unpaired, from the two spreads (and unbounded: see `interval`)
        return Difference(b.mean(metric) - a.mean(metric), a.std(metric) ** 2 + b.std(metric) ** 2, 1)
    per_seed = [run_b[metric] - run_a[metric] for run_a, run_b in pairs]
    seed_variance = statistics.variance(per_seed) if len(per_seed) > 1 else math.nan
    parts = [_image_part(pairs, split) for split in SPLITS_OF[metric]]
    return Difference(statistics.fmean(per_seed), seed_variance, len(pairs), [part for part in parts if part])


def _image_part(pairs: list[tuple[dict, dict]], split: str) -> tuple[float, float, int] | None:
    """(image_part, interaction, images) of one split, from the per-image results.

    Without them (runs logged before they were recorded): the two accuracies' binomial
    variances, as if the two settings erred independently, an upper bound; None when not even
    the image count was logged.
    """
    key = f"{split}_correct"
    vectors = [(run_a.get(key), run_b.get(key)) for run_a, run_b in pairs]
    if all(a and b and len(a) == len(b) == len(vectors[0][0]) for a, b in vectors):
        table = np.array([_bits(b) - _bits(a) for a, b in vectors], dtype=np.float64)  # seeds × images
        seeds, images = table.shape
        if images < 2:
            return None
        image_part = float(table.mean(axis=0).var(ddof=1)) / images
        interaction = 0.0
        if seeds > 1:
            residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + table.mean()
            interaction = float((residual**2).sum()) / ((seeds - 1) * (images - 1)) / (seeds * images)
        return image_part, interaction, images
    images = pairs[0][0].get(IMAGE_COUNT[split], 0)
    if not images:
        return None
    a_accuracy = statistics.fmean(run_a[ACCURACY[split]] for run_a, _ in pairs)
    b_accuracy = statistics.fmean(run_b[ACCURACY[split]] for _, run_b in pairs)
    return binomial_se(a_accuracy, images) ** 2 + binomial_se(b_accuracy, images) ** 2, 0.0, images


def _bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int8) - ord("0")


def representative_run(summary: Summary) -> dict:
    """The one seed's run that stands for a setting in the Model Registry: the most accurate on
    validation (the earlier seed on a tie). The test split picks nothing."""
    return max(summary.runs, key=lambda run: (run[VAL_ACCURACY], -run["seed"]))


def stable_choice(summaries: list[Summary], epsilon: float) -> Summary | None:
    """The rule on re-evaluated settings other than the baseline: the settings whose mean
    val_accuracy is within one standard error (seeds and images) of the most accurate are tied;
    among them gap ≤ ε first, then the smallest mean gap. Test accuracy is never used.

    The baseline is not among them: it is what the choice must beat, on the test split
    (`verdict`), which keeps it whenever the choice is not better.
    """
    contenders = [s for s in summaries if s.label != BASELINE and s.runs]
    if not contenders:
        return None
    best = max(contenders, key=lambda s: (s.mean(VAL_ACCURACY), -s.mean(GAP)))
    tied = [
        s
        for s in contenders
        if s is best or s.mean(VAL_ACCURACY) >= best.mean(VAL_ACCURACY) - difference(s, best, VAL_ACCURACY).se
    ]
    return min(tied, key=lambda s: preference(s.mean(GAP), s.mean(VAL_ACCURACY), epsilon, False, _number(s.label)))


def _number(label: str) -> int:
    return int(label[1:]) if label[1:].isdigit() else -1


# --- the verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """How the re-evaluation spends seeds, and so how many comparisons its claims answer for.

    Every setting gets `seeds` seeds; while the verdict is "can't tell yet", the setting chosen at
    that look and the baseline get `seeds` more per round (paired: the same seed values), up to
    `max_seeds`: a race in the manner of F-Race, where the other candidates keep the seeds they
    have, and one the choice falls on later catches up. Each round's verdict is a look at the data, and each
    look, each candidate the choice could have fallen on and each of the two metrics is one
    more chance to be fooled by noise. So each interval is drawn at ALPHA / (2 · candidates ·
    looks) (Bonferroni): whatever the rounds and the choice did, the verdict's intervals all
    hold together at least 1 − ALPHA of the time. benchmarks/verdict_calibration.py measures it.
    """

    seeds: int = 3
    max_seeds: int = 3
    candidates: int = 1  # the settings the choice across seeds could fall on (top_k)
    margin: float = MARGIN  # δ: differences in accuracy smaller than this are "no effect"
    first_seed: int = 1  # the seeds are first_seed, first_seed + 1, …: no trial used them

    def looks(self) -> list[int]:
        """The seed counts at which the verdict is read: `seeds`, then `seeds` more each round."""
        step = max(self.seeds, 1)
        return [*list(range(step, max(self.max_seeds, step), step)), max(self.max_seeds, step)]

    @property
    def alpha(self) -> float:
        """Each interval's share of ALPHA."""
        return ALPHA / (len(TESTED) * max(self.candidates, 1) * len(self.looks()))

    def seed_values(self, count: int) -> list[int]:
        return [self.first_seed + i for i in range(count)]


TESTED = (TEST_ACCURACY, TEST_GAP)  # the two metrics a verdict makes claims on


@dataclass
class Verdict:
    """The chosen setting against the baseline on the test split."""

    case: str  # BETTER, LESS_OVERFIT, TRADE_OFF, NO_EFFECT or CANT_TELL
    accuracy: Difference  # test_accuracy, chosen − baseline
    gap: Difference  # test_gap, chosen − baseline
    sentence: str
    settle: str  # for CANT_TELL: what would settle it ("" otherwise)
    alpha: float = ALPHA  # each interval's level is 1 − alpha
    margin: float = MARGIN
    only_images_settle: bool = False  # the test split's own noise keeps it open, whatever the seeds
    seeds_needed: int | None = None  # for CANT_TELL: about how many seeds each would settle it

    @property
    def adopt(self) -> bool:
        return self.case in (BETTER, LESS_OVERFIT)

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        return self.accuracy.interval(self.alpha)

    @property
    def gap_interval(self) -> tuple[float, float]:
        return self.gap.interval(self.alpha)


def signed(value: float, digits: int = 2) -> str:
    """+0.03 / −0.02: with a real minus sign, as intervals are read."""
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    text = f"{value:+.{digits}f}"
    return text.replace("-", "−")


def with_interval(difference: Difference, alpha: float) -> str:
    """`+0.03 [−0.02, +0.08]`: the mean difference and its interval."""
    low, high = difference.interval(alpha)
    digits = 3 if high - low < 0.05 else 2
    return f"{signed(difference.mean, digits)} [{signed(low, digits)}, {signed(high, digits)}]"


def classify(accuracy: tuple[float, float], gap: tuple[float, float], margin: float) -> str:
    """The five cases from the two intervals, accuracy first."""
    low, high = accuracy
    if low > 0:
        return BETTER
    if high < 0:
        return TRADE_OFF
    if -margin <= low and high <= margin:
        return LESS_OVERFIT if gap[1] < 0 else NO_EFFECT
    return CANT_TELL


def verdict(baseline: Summary, chosen: Summary, design: Design = Design()) -> Verdict:
    """Exactly one of five cases, decided from the intervals of the paired differences, accuracy
    first (see `classify`): better; same accuracy, smaller gap; trade-off (not recommended); no
    effect (the accuracy interval within ±margin, the gap not shrinking beyond noise); can't tell
    yet (anything else: the interval reaches past ±margin)."""
    accuracy = difference(baseline, chosen, TEST_ACCURACY)
    gap = difference(baseline, chosen, TEST_GAP)
    alpha, margin = design.alpha, design.margin
    case = classify(accuracy.interval(alpha), gap.interval(alpha), margin)
    n = min(len(chosen.runs), len(baseline.runs))
    acc_text, gap_text = with_interval(accuracy, alpha), with_interval(gap, alpha)
    evidence = f"{setting_name(chosen.label)} against the baseline, {n} seed{'s' * (n != 1)} each"
    if case == BETTER:
        sentence = f"Better: test accuracy {acc_text}, test gap {gap_text} ({evidence})."
    elif case == LESS_OVERFIT:
        sentence = (
            f"Same accuracy, smaller gap: test accuracy {acc_text} lies within ±{margin:g}, and the test gap "
            f"{gap_text} shrinks: a less overfit model at no measured cost ({evidence})."
        )
    elif case == TRADE_OFF:
        shrinks = (
            f", though the test gap {gap_text} shrinks" if gap.interval(alpha)[1] < 0 else f", test gap {gap_text}"
        )
        sentence = f"Trade-off: test accuracy {acc_text} falls{shrinks} ({evidence}): not recommended."
    elif case == NO_EFFECT:
        sentence = (
            f"No effect: test accuracy {acc_text} lies within ±{margin:g}, and the test gap {gap_text} does not "
            f"shrink beyond noise ({evidence})."
        )
    else:
        sentence = (
            f"Can't tell yet: test accuracy {acc_text} reaches past ±{margin:g} and the interval holds 0, "
            f"test gap {gap_text} ({evidence})."
        )
    only_images = case == CANT_TELL and n > 1 and only_images_settle(accuracy, alpha, margin)
    needed = seeds_to_decide(accuracy, alpha, margin) if case == CANT_TELL and n > 1 else None
    settle = _settle(accuracy, chosen.label, n, alpha, margin, needed) if case == CANT_TELL else ""
    return Verdict(case, accuracy, gap, sentence, settle, alpha, margin, only_images, needed)


def setting_name(label: str) -> str:
    """`the baseline`, or `trial #7`: how a re-evaluated setting is named in sentences."""
    return "the baseline" if label == BASELINE else f"trial {label}"


def _decisive_half_width(difference: Difference, margin: float) -> float:
    """How narrow the interval must become, around today's mean, to decide: short of 0 on one
    side (better or trade-off), or inside ±margin (no effect or a smaller gap)."""
    mean = abs(difference.mean)
    return max(mean, margin - mean)


def only_images_settle(difference: Difference, alpha: float, margin: float) -> bool:
    """Whether the test images' own noise alone keeps the interval too wide to decide, around
    today's mean: then more seeds cannot settle it, only a larger test split."""
    return difference.images_only_half_width(alpha) >= _decisive_half_width(difference, margin)


def seeds_to_decide(difference: Difference, alpha: float, margin: float, most: int = 200) -> int | None:
    """The fewest seeds per setting at which an interval of today's mean and spreads would be
    decided; None when seeds cannot do it (see `only_images_settle`), or not within `most`."""
    if math.isnan(difference.seed_variance) or only_images_settle(difference, alpha, margin):
        return None
    target = _decisive_half_width(difference, margin)
    for seeds in range(difference.seeds + 1, most + 1):
        projected = Difference(difference.mean, difference.seed_variance, seeds, difference.image_parts)
        if projected.half_width(alpha) < target:
            return seeds
    return None


def images_to_decide(difference: Difference, alpha: float, margin: float) -> int:
    """About how many test images would let the interval decide, given seeds to spare: the
    images' part of the variance shrinks as 1/N. Two significant figures."""
    images = max((n for _, _, n in difference.image_parts), default=0)
    needed = images * (difference.images_only_half_width(alpha) / _decisive_half_width(difference, margin)) ** 2
    return int(float(f"{needed:.2g}")) if needed > 0 else 0


def _settle(accuracy: Difference, label: str, seeds: int, alpha: float, margin: float, needed: int | None) -> str:
    """One line: which setting needs how many seeds, or how many test images only would do."""
    if seeds < 2:
        return (
            f"the seed-to-seed spread is not measured with {seeds} seed: re-evaluate {setting_name(label)} and the "
            "baseline with 3 or more seeds (sweep.reevaluate.seeds)"
        )
    if only_images_settle(accuracy, alpha, margin):
        noise = accuracy.images_only_half_width(alpha)
        return (
            f"only a larger test split would: the test images' own noise alone is ±{noise:.3f}, however many seeds; "
            f"about {images_to_decide(accuracy, alpha, margin):,} test images (now "
            f"{max(n for _, _, n in accuracy.image_parts):,}) with seeds to spare"
        )
    if needed is None:
        return (
            f"more than 200 seeds each for {setting_name(label)} and the baseline at today's spread: a larger test "
            "split, or a setting further from the baseline, would settle it sooner"
        )
    return f"about {needed} seeds each for {setting_name(label)} and the baseline (now {seeds})"


# --- the rounds of the re-evaluation ----------------------------------------------------------------


@dataclass
class Rounds:
    """Where the re-evaluation stands, replayed from the runs logged so far: at each look the
    settings as they stood then, the choice and the verdict, until one round is incomplete (its
    runs are `todo`) or the rounds stop (`todo` empty, and `reason` says why)."""

    design: Design
    summaries: list[Summary]  # each setting's runs up to the last complete look
    chosen: Summary | None  # the choice across seeds at that look
    verdict: Verdict | None  # None until the first round is complete
    todo: dict[str, list[int]]  # label → seeds still to train for the next look
    reason: str  # why the rounds stopped (when todo is empty)
    looks: int = 0  # looks taken


DECIDED, AT_MAX_SEEDS, ONLY_IMAGES, NOTHING_TO_COMPARE = (
    "decided",
    "reached sweep.reevaluate.max_seeds",
    "only a larger test split would settle it",
    "nothing to compare",
)


def rounds(labels: list[str], summaries: list[Summary], design: Design, epsilon: float) -> Rounds:
    """Replays the rounds from the start: the same runs always lead to the same looks, the same
    choices and the same next runs, so a re-evaluation killed mid-round resumes where it was,
    training nothing twice, and a later report reads the verdict the rounds stopped on.

    `labels` are the planned settings, the baseline first; `summaries` the runs logged so far.
    """
    design = replace(design, candidates=max(1, len(labels) - 1))
    by_label = {s.label: s for s in summaries}
    looks = design.looks()
    wanted = dict.fromkeys(labels, looks[0])
    state = Rounds(design, [], None, None, {}, NOTHING_TO_COMPARE)
    for index, _look in enumerate(looks):
        now = {
            label: by_label.get(label, Summary(label, [])).with_seeds(design.seed_values(seeds))
            for label, seeds in wanted.items()
        }
        todo = {
            label: [seed for seed in design.seed_values(wanted[label]) if seed not in {r["seed"] for r in s.runs}]
            for label, s in now.items()
        }
        todo = {label: seeds for label, seeds in todo.items() if seeds}
        if todo:
            return replace(state, todo=todo, reason="")
        current = [now[label] for label in labels]
        chosen = stable_choice(current, epsilon)
        if chosen is None or BASELINE not in now:
            return replace(state, summaries=current, reason=NOTHING_TO_COMPARE, looks=index + 1)
        judged = verdict(now[BASELINE], chosen, design)
        state = Rounds(design, current, chosen, judged, {}, "", index + 1)
        if judged.case != CANT_TELL:
            return replace(state, reason=DECIDED)
        if index == len(looks) - 1:
            return replace(state, reason=AT_MAX_SEEDS)
        if judged.only_images_settle:
            return replace(state, reason=ONLY_IMAGES)
        wanted[BASELINE] = wanted[chosen.label] = looks[index + 1]
    return state


def disagreement(baseline: Summary) -> str:
    """A warning when the baseline's validation and test accuracies differ beyond noise (a 95 %
    interval of their difference, over seeds and both splits' images, excludes 0): then the
    split the search optimizes does not represent the test images."""
    per_seed = [run[VAL_ACCURACY] - run[TEST_ACCURACY] for run in baseline.runs]
    images = [
        (
            binomial_se(baseline.mean(ACCURACY[split]), baseline.runs[0].get(IMAGE_COUNT[split], 0)) ** 2,
            0.0,
            baseline.runs[0].get(IMAGE_COUNT[split], 0),
        )
        for split in ("validation", "test")
    ]
    spread = statistics.variance(per_seed) if len(per_seed) > 1 else math.nan
    low, high = Difference(statistics.fmean(per_seed), spread, len(per_seed), [p for p in images if p[2]]).interval()
    if low <= 0 <= high:
        return ""
    return (
        f"Validation and test disagree on the baseline: val_accuracy {baseline.pm(VAL_ACCURACY)} against "
        f"test_accuracy {baseline.pm(TEST_ACCURACY)}, beyond noise. The validation split the search "
        "optimizes does not represent the test images: check that both come from the same source "
        "(camera, lighting, people, time) and are split at random."
    )


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
        return (
            f"More images of the same kind would likely add little: {label}'s validation accuracy has flattened "
            f"({curve} training images); better-matched or cleaner data, or another backbone, may help more."
        )
    if expected > setting_gain + 0.01:
        compared = "more than any setting found"
    elif expected < setting_gain - 0.01:
        compared = "less than the setting found"
    else:
        compared = "about as much as the setting found"
    return (
        f"Doubling the training images would likely add about +{expected:.2f} validation accuracy, {compared} "
        f"({found}); {label}'s learning curve: {curve} training images."
    )


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
    rounds: Rounds | None = None  # how the re-evaluation spent its seeds, and why it stopped

    @property
    def keep_baseline(self) -> bool:
        return self.label == BASELINE


def fixed_rounds(summaries: list[Summary], epsilon: float) -> Rounds:
    """The re-evaluation as one look at the runs there are: a fixed design, for settings
    re-trained outside the rounds (and the tests)."""
    if not summaries or not all(s.runs for s in summaries):
        return Rounds(Design(), summaries, None, None, {}, NOTHING_TO_COMPARE)
    seeds = min(len(s.runs) for s in summaries)
    first = min(run["seed"] for s in summaries for run in s.runs)
    labels = [BASELINE] + [s.label for s in summaries if s.label != BASELINE]
    return rounds(labels, summaries, Design(seeds=seeds, max_seeds=seeds, first_seed=first), epsilon)


def answer(
    rows: list[TrialRow],
    reevaluated: Rounds | list[Summary],
    epsilon: float,
    curves: dict[str, list[CurvePoint]] | None = None,
    shared_images: int = 0,
    test_split: bool = False,
) -> Answer | None:
    """The rule, the verdict and the checks, together. Before a re-evaluation (or without a test
    split) the single-trial choice stands, with a warning that it is unconfirmed and how to
    confirm it (`test_split`: the study has one)."""
    state = reevaluated if isinstance(reevaluated, Rounds) else fixed_rounds(reevaluated, epsilon)
    warnings = []
    if shared_images:
        warnings.append(
            f"{shared_images} image(s) appear in more than one split (same content): held-out scores "
            "are inflated by images the model trained on; remove the copies (listed below)."
        )
    if state.verdict is None:
        row = recommend(rows, epsilon)
        if row is None:
            return None
        label = BASELINE if row.baseline else f"#{row.number}"
        warnings += caveats(rows, row, epsilon)
        if state.todo:
            warnings.append(
                f"Chosen on validation accuracy from single runs: the re-evaluation on the test split is "
                f"unfinished ({sum(map(len, state.todo.values()))} runs to go); re-run the same command "
                "to finish it."
            )
        elif test_split:
            warnings.append(
                "Chosen on validation accuracy from single runs: not yet confirmed on the test split against "
                "the baseline (run `regsweep report --reevaluate` with sweep.reevaluate.seeds of at least 1)."
            )
        else:
            warnings.append(
                "Chosen on validation accuracy from single runs: not yet confirmed on a test split against "
                "the baseline (give a test split and run `regsweep report --reevaluate`)."
            )
        return Answer(label, row, None, warnings=warnings, rounds=state)
    judged, chosen = state.verdict, state.chosen
    baseline = next(s for s in state.summaries if s.label == BASELINE)
    label = chosen.label if judged.adopt else BASELINE
    by_label = {f"#{r.number}": r for r in complete(rows)}
    row = by_label.get(label) if label != BASELINE else baseline_row(rows)
    if baseline_disagrees := disagreement(baseline):
        warnings.append(baseline_disagrees)
    if state.todo:
        warnings.append(
            f"This verdict is from {len(chosen.runs)} seeds: a further round of the re-evaluation is "
            f"unfinished ({sum(map(len, state.todo.values()))} runs to go); re-run the same command to "
            "finish it."
        )
    if chosen.mean(GAP) > epsilon and judged.adopt:
        warnings.append(f"Its mean gap {chosen.mean(GAP):.2f} is still above ε = {epsilon:g}: less overfit, not cured.")
    more_data = ""
    curve = (curves or {}).get(label)
    if curve:
        gain = chosen.mean(VAL_ACCURACY) - baseline.mean(VAL_ACCURACY) if label != BASELINE else 0.0
        more_data = more_data_sentence(curve, gain, "the baseline" if label == BASELINE else f"trial {label}")
    elif label == BASELINE:
        more_data = (
            "More training images, validation and test images like the ones the model will meet, or another "
            "backbone; the learning curve (sweep.reevaluate.curve) measures the first."
        )
    return Answer(label, row, judged, baseline, chosen, warnings, more_data, state)
