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
- Across seeds, after re-evaluation: the first trials in rule order get one seed each and the
  best over two runs race (`screening`); the candidates race on validation (`race`), those
  within noise of the leader getting more seeds, and the same rule on the mean val_accuracy
  chooses among those left (`stable_choice`), with the standard error of the difference
  measured over seeds and validation images (`difference`).
- Adopting it: the choice is compared with the baseline on the untouched test split, on seeds
  the race never used (`verdict`), by confidence intervals of the paired differences in test
  accuracy and test gap, in one of five cases. Test accuracy never picks among settings; it
  only decides whether the choice is worth adopting: when it is better, or as accurate (within
  ±margin) and less overfit. Otherwise the baseline stays, and the verdict says whether that is
  because the knobs don't help (no effect), cost accuracy (trade-off) or can't be told apart yet.
- Seeds where they decide (`rounds`): while the verdict can't tell, the choice and the baseline
  get more seeds, in rounds; the other candidates get none.

How sure: a verdict adopts a setting that is no better at most ALPHA / 2 of the time and claims
anything false at most ALPHA, whatever the number of candidates and looks (`Design` says how
the level is spent). benchmarks/verdict_calibration.py measures that, on A/A comparisons and
planted effects, and measures the power beside its limit, one pre-specified paired t test.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import special as scipy_special
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
ALPHA = 0.05  # how often, at most, one verdict claims anything false (better, smaller gap or trade-off)
ACCURACY_SHARE = 0.9  # of ALPHA, for test accuracy; the rest for the test gap (see `Design`)
# The race's elimination intervals: a candidate leaves when its validation accuracy falls short of
# the leader's beyond this two-sided level. A choice, not a claim: it costs the verdict no alpha.
RACE_ALPHA = 0.20
CONFIRMATION_OFFSET = 1000  # the confirmation's seeds start this far past the race's
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


def two_sided_t(alpha: float, df: float) -> float:
    """Student's t quantile for a two-sided (1 − alpha) interval. SciPy's own function under
    `scipy.stats.t.ppf`, called directly: the same number, about 100 times faster. ppf's argument
    handling cost 0.1 ms a call, and a verdict asks up to 400 (seeds_to_decide): 83 % of the
    calibration's time, in the tests and benchmarks/verdict_calibration.py."""
    return float(scipy_special.stdtrit(df, 1 - alpha / 2))


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


def candidates(rows: list[TrialRow], epsilon: float, top_k: int, screen: int = 0) -> list[TrialRow]:
    """What to re-evaluate beside the baseline: the first top_k trials in rule order, or, when
    `screen` is larger, the first `screen`, of which `screening` lets top_k race. The baseline
    trial is left out (it is re-evaluated as the baseline).

    Which single runs are "within noise" of the best cannot be told from single runs: the seed
    spread is unknown until a setting has two seeds (on 5 sign-digit photos a class it was 3x
    the validation images' binomial error, on the demo half of it). A window of the images'
    error alone let too few trials in to help; the next ones in rule order, whose single runs
    are the closest to the best, did (benchmarks/verdict_calibration.py, `search`)."""
    ordered = [r for r in in_rule_order(rows, epsilon) if not r.baseline]
    return ordered[: max(top_k, screen)]


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
        overall = two_sided_t(alpha, self.df) * self.se
        over_seeds = two_sided_t(alpha, self.seeds - 1) * math.sqrt(self.seed_part)
        return max(overall, over_seeds)

    def interval(self, alpha: float = ALPHA) -> tuple[float, float]:
        """The (1 − alpha) confidence interval of the difference (see `half_width`); unbounded
        until two seeds measure the seed-to-seed spread: one seed says nothing about how much a
        re-run would move."""
        half = self.half_width(alpha)
        if math.isinf(half):
            return -math.inf, math.inf
        return max(self.mean - half, -1.0), min(self.mean + half, 1.0)  # an accuracy moves by at most 1

    def images_only_half_width(self, alpha: float) -> float:
        """The interval's half-width with infinitely many seeds: the test images' own noise."""
        if not self.image_parts:
            return 0.0
        df = max(1, min(images for _, _, images in self.image_parts) - 1)
        return two_sided_t(alpha, df) * math.sqrt(self.image_variance)


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
    best = most_accurate(contenders)
    tied = [s for s in contenders if tied_with(s, best)]
    return min(tied, key=lambda s: preference(s.mean(GAP), s.mean(VAL_ACCURACY), epsilon, False, _number(s.label)))


def most_accurate(summaries: list[Summary]) -> Summary:
    """The highest mean val_accuracy, the smaller mean gap on a tie: the leader of the race and
    the reference of the rule's ties."""
    return max(summaries, key=lambda s: (s.mean(VAL_ACCURACY), -s.mean(GAP)))


def tied_with(summary: Summary, best: Summary) -> bool:
    """Within one standard error (seeds and images) of the most accurate setting's val_accuracy."""
    return (
        summary is best
        or summary.mean(VAL_ACCURACY) >= best.mean(VAL_ACCURACY) - difference(summary, best, VAL_ACCURACY).se
    )


def _number(label: str) -> int:
    return int(label[1:]) if label[1:].isdigit() else -1


# --- the verdict ----------------------------------------------------------------------------------


def obrien_fleming_spent(fraction: float, alpha: float) -> float:
    """Lan and DeMets's O'Brien–Fleming-type spending function, each side spending alpha / 2:
    the share of the two-sided `alpha` spent by the time `fraction` of the seeds are in. Almost
    nothing early, so the last look keeps nearly the whole level (4 even looks at 0.05: the
    boundaries are 4.33, 2.96, 2.36 and 2.01 standard errors, against 1.96 for one look)."""
    if fraction >= 1:
        return alpha
    side = alpha / 2
    return float(2 * (2 - 2 * scipy_stats.norm.cdf(scipy_stats.norm.ppf(1 - side / 2) / math.sqrt(fraction))))


@functools.cache
def sequential_boundaries(fractions: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    """Two-sided z boundaries c_1 … c_K for looks at these information fractions: under no
    difference, the standardized mean first reaches |Z_k| ≥ c_k at look k with exactly the
    probability that the spending function adds at k (Jennison and Turnbull, "Group sequential
    methods", 2000, ch. 7 and 9). Intervals drawn at look k at the nominal level 2(1 − Φ(c_k))
    are repeated confidence intervals: they hold at every look together with probability
    1 − alpha, so the rounds may stop at any look, for any reason.

    Computed by the usual recursive numerical integration of the sum's density over the
    continuation region (Armitage, McPherson and Rowe 1969), on a fixed grid: deterministic, so
    the same runs replay to the same verdict.
    """
    boundaries: list[float] = []
    grid, mass = np.zeros(1), np.ones(1)  # the sum's distribution at the previous look: all of it at 0
    previous, spent = 0.0, 0.0
    for fraction in fractions:
        step = fraction - previous
        increment = obrien_fleming_spent(fraction, alpha) - spent
        bound = _boundary(increment, fraction, step, grid, mass)
        boundaries.append(bound)
        edge = bound * math.sqrt(fraction)  # the boundary on the sum's scale
        new_grid = np.linspace(-edge, edge, 1201)
        weights = np.full(new_grid.size, new_grid[1] - new_grid[0])
        weights[[0, -1]] /= 2  # the trapezoid rule
        kernel = scipy_stats.norm.pdf((new_grid[:, None] - grid[None, :]) / math.sqrt(step)) / math.sqrt(step)
        grid, mass = new_grid, weights * (kernel @ mass)  # the density of the sum that has not crossed
        previous, spent = fraction, spent + increment
    return tuple(boundaries)


def _boundary(increment: float, fraction: float, step: float, grid: np.ndarray, mass: np.ndarray) -> float:
    """The z boundary at which a sum not yet stopped (`mass` on `grid`) crosses with
    probability `increment` over its next `step` of information (bisection, 6 decimals)."""
    if increment <= 1e-12:
        return 8.0

    def crossing(bound: float) -> float:
        edge, sd = bound * math.sqrt(fraction), math.sqrt(step)
        outside = scipy_stats.norm.cdf((-edge - grid) / sd) + scipy_stats.norm.sf((edge - grid) / sd)
        return float(np.sum(mass * outside))

    low, high = 0.0, 12.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if crossing(middle) > increment else (low, middle)
    return round((low + high) / 2, 6)


@dataclass(frozen=True)
class Design:
    """How the re-evaluation spends seeds, and at which level each of its looks claims.

    Two stages (see `rounds`), after an optional screening (more candidates than `entrants`:
    one seed each, the `entrants` best over two runs race). The race: every candidate gets
    `seeds` seeds scored on the validation split only; candidates still within noise of the
    leader get `seeds` more, up to `race_seeds`. The confirmation: the race's choice and the
    baseline get fresh seeds, the same values for both, `seeds` more a look, up to `max_seeds`,
    scored on the test split.

    Where alpha goes (benchmarks/verdict_calibration.py measured each choice):
    - Candidates: none. The choice never sees the seeds that confirm it, so the verdict is one
      pre-specified comparison, however many candidates raced (`candidates` > 1 only where the
      same seeds chose and judged, `fixed_rounds`: Bonferroni then).
    - Metrics: weighted Bonferroni, ACCURACY_SHARE of ALPHA to test accuracy, the rest to the
      test gap, which is read only when accuracy is within ±margin. Adopting needs "better"
      (one side of the accuracy interval) or "same accuracy, smaller gap" (one side of the gap
      interval), so a false adoption happens at most (0.045 + 0.005) / 2 = 2.5 % of the time,
      and any claim at most 0.045 + 0.0025. Testing both at full level in sequence, as a
      fixed-sequence procedure would, bounds false adoption only by 5 %.
    - Looks: Lan–DeMets O'Brien–Fleming-type spending over the confirmation's looks
      (`sequential_boundaries`) instead of an even split: at 4 looks the last one draws its
      accuracy interval at 96.02 %, where an even split would draw every look at 98.875 %.
    Measured at seed spread 0.05, 12 seeds, 1,000 test images: the whole re-evaluation finds a
    true +0.05 at 0.88x the power of one pre-specified paired t test of the best candidate, the
    single verdict at 0.94x (the Bonferroni design before it: 0.79x for one verdict).
    """

    seeds: int = 3
    max_seeds: int = 3
    candidates: int = 1  # settings whose choice used the very seeds that judge it (fixed_rounds only)
    margin: float = MARGIN  # δ: differences in accuracy smaller than this are "no effect"
    first_seed: int = 1  # the race's seeds are first_seed, first_seed + 1, …: no trial used them
    race_seeds: int = 0  # the most seeds a candidate gets in the race (at least `seeds`)
    entrants: int = 0  # how many candidates race; any more are screened first (`screening`); 0: all race

    def looks(self) -> list[int]:
        """The seed counts at which the verdict is read: `seeds`, then `seeds` more each round."""
        step = max(self.seeds, 1)
        return [*list(range(step, max(self.max_seeds, step), step)), max(self.max_seeds, step)]

    def race_looks(self) -> list[int]:
        """The seed counts at which the race is read: `seeds`, then `seeds` more, up to race_seeds."""
        return Design(seeds=self.seeds, max_seeds=max(self.race_seeds, self.seeds)).looks()

    def alpha_at(self, look: int, share: float = 1.0) -> float:
        """The two-sided level of the intervals at a look (0-based) for a metric given `share`
        of ALPHA: the nominal level of the group-sequential boundary there."""
        looks = self.looks()
        total = ALPHA * share / max(self.candidates, 1)
        if len(looks) == 1:
            return total
        bounds = sequential_boundaries(tuple(n / looks[-1] for n in looks), total)
        return float(2 * scipy_stats.norm.sf(bounds[min(look, len(looks) - 1)]))

    def selection_seeds(self, count: int) -> list[int]:
        """The race's seeds (validation only)."""
        return [self.first_seed + i for i in range(count)]

    def confirmation_seeds(self, count: int) -> list[int]:
        """The confirmation's seeds: values the race never used, whatever its length."""
        return [self.first_seed + CONFIRMATION_OFFSET + i for i in range(count)]


TESTED = (TEST_ACCURACY, TEST_GAP)  # the two metrics a verdict makes claims on


@dataclass
class Verdict:
    """The chosen setting against the baseline on the test split."""

    case: str  # BETTER, LESS_OVERFIT, TRADE_OFF, NO_EFFECT or CANT_TELL
    accuracy: Difference  # test_accuracy, chosen − baseline
    gap: Difference  # test_gap, chosen − baseline
    sentence: str
    settle: str  # for CANT_TELL: what would settle it ("" otherwise)
    alpha: float = ALPHA * ACCURACY_SHARE  # the accuracy interval's level is 1 − alpha
    margin: float = MARGIN
    only_images_settle: bool = False  # the test split's own noise keeps it open, whatever the seeds
    seeds_needed: int | None = None  # for CANT_TELL: about how many seeds each would settle it
    gap_alpha: float = ALPHA * (1 - ACCURACY_SHARE)  # the gap interval's level is 1 − gap_alpha

    @property
    def adopt(self) -> bool:
        return self.case in (BETTER, LESS_OVERFIT)

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        return self.accuracy.interval(self.alpha)

    @property
    def gap_interval(self) -> tuple[float, float]:
        return self.gap.interval(self.gap_alpha)


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


def verdict(baseline: Summary, chosen: Summary, design: Design = Design(), look: int | None = None) -> Verdict:
    """Exactly one of five cases, decided from the intervals of the paired differences, accuracy
    first (see `classify`): better; same accuracy, smaller gap; trade-off (not recommended); no
    effect (the accuracy interval within ±margin, the gap not shrinking beyond noise); can't tell
    yet (anything else: the interval reaches past ±margin). `look` (0-based) picks the level of
    that look of the design; the last one by default."""
    accuracy = difference(baseline, chosen, TEST_ACCURACY)
    gap = difference(baseline, chosen, TEST_GAP)
    look = len(design.looks()) - 1 if look is None else look
    alpha, gap_alpha = design.alpha_at(look, ACCURACY_SHARE), design.alpha_at(look, 1 - ACCURACY_SHARE)
    margin = design.margin
    case = classify(accuracy.interval(alpha), gap.interval(gap_alpha), margin)
    n = min(len(chosen.runs), len(baseline.runs))
    acc_text, gap_text = with_interval(accuracy, alpha), with_interval(gap, gap_alpha)
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
            f", though the test gap {gap_text} shrinks" if gap.interval(gap_alpha)[1] < 0 else f", test gap {gap_text}"
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
    # What more seeds could settle is judged at the last look's level, the widest any look allows.
    last = design.alpha_at(len(design.looks()) - 1, ACCURACY_SHARE)
    only_images = case == CANT_TELL and n > 1 and only_images_settle(accuracy, last, margin)
    needed = seeds_to_decide(accuracy, last, margin) if case == CANT_TELL and n > 1 else None
    settle = _settle(accuracy, chosen.label, n, last, margin, needed) if case == CANT_TELL else ""
    return Verdict(case, accuracy, gap, sentence, settle, alpha, margin, only_images, needed, gap_alpha)


def setting_name(label: str) -> str:
    """`the baseline`, or `trial #7`: how a re-evaluated setting is named in sentences."""
    return "the baseline" if label == BASELINE else f"trial {label}"


def _decisive_half_width(difference: Difference, margin: float) -> float:
    """How narrow the interval must become, around today's mean, to decide: short of 0 on one
    side (better or trade-off), or inside ±margin (no effect or a smaller gap)."""
    mean = abs(difference.mean)
    return max(mean, margin - mean)


def only_images_settle(difference: Difference, alpha: float, margin: float) -> bool:
    """Whether the test images' own noise alone would keep the interval too wide to decide for
    every mean the interval still allows: then more seeds cannot settle it, only a larger test
    split. Judged on the whole interval, not on today's mean alone: after 3 seeds a +0.05 gain
    can read +0.01, and stopping there for want of images cost a quarter of the power to find
    it (benchmarks/verdict_calibration.py)."""
    noise = difference.images_only_half_width(alpha)
    if difference.seeds < 2:
        return False
    # Where the mean over these test images could lie with seeds without end: today's mean, give or
    # take the seeds' part of the noise alone (the images' part stays, whatever the seeds).
    seeds_part = two_sided_t(alpha, difference.seeds - 1) * math.sqrt(difference.seed_part)
    low, high = difference.mean - seeds_part, difference.mean + seeds_part
    if high > noise or low < -noise:  # a difference beyond the images' noise is still possible
        return False
    closest = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
    return closest >= margin - noise  # and none within ±margin by more than that noise either


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
class Entrant:
    """One candidate of the race: its runs on the race's seeds, and why it is not the choice."""

    label: str
    runs: Summary  # its race runs (validation decides), up to the look it left at
    left: str = ""  # why it is not the choice; "" for the choice


@dataclass
class Rounds:
    """Where the re-evaluation stands, replayed from the runs logged so far: the race on
    validation and its choice, then the confirmation's looks on fresh seeds, until one round is
    incomplete (its runs are `todo`) or the rounds stop (`todo` empty, and `reason` says why)."""

    design: Design
    race: list[Entrant]  # the candidates, the choice first; empty until the race has ended
    baseline: Summary | None  # the baseline's confirmation runs up to the last complete look
    chosen: Summary | None  # the choice's confirmation runs up to that look
    verdict: Verdict | None  # None until the confirmation's first look is complete
    todo: dict[str, list[int]]  # label → seeds still to train for the next look
    reason: str  # why the rounds stopped (when todo is empty)
    looks: int = 0  # the confirmation's looks taken
    stage: str = ""  # what `todo` is for: SCREENING, RACE or CONFIRMATION

    @property
    def summaries(self) -> list[Summary]:
        """What the verdict compares, baseline first."""
        return [s for s in (self.baseline, self.chosen) if s is not None]


SCREENING, RACE, CONFIRMATION = "screening", "race", "confirmation"
DECIDED, AT_MAX_SEEDS, ONLY_IMAGES, NOTHING_TO_COMPARE = (
    "decided",
    "reached sweep.reevaluate.max_seeds",
    "only a larger test split would settle it",
    "nothing to compare",
)


def _missing(summaries: list[Summary], seeds: list[int]) -> dict[str, list[int]]:
    """label → the seeds among `seeds` that a setting has no run of yet."""
    todo = {s.label: [seed for seed in seeds if seed not in {run["seed"] for run in s.runs}] for s in summaries}
    return {label: missing for label, missing in todo.items() if missing}


def screening(
    labels: list[str], by_label: dict[str, Summary], design: Design, searched: dict[str, float]
) -> tuple[dict, list[str], list[Entrant]]:
    """Fewer, less noisy candidates for the race: each of `labels` gets the race's first seed,
    and the `entrants` with the best val_accuracy over two runs (the search's and that seed's;
    the smaller gap, then rule order, on a tie) race on. With one seed spreading about 0.03 on
    1,000 validation images, the order of single runs is mostly noise; a second run halves its
    variance, and the seed is not wasted: those who race keep it as their first race seed.
    (Measured in benchmarks/verdict_calibration.py, `search`.)

    Returns the runs still missing, or {}, the labels that race (in `labels` order) and those
    screened out, each with why. Without more candidates than `entrants`, all race.
    """
    if not design.entrants or len(labels) <= design.entrants:
        return {}, labels, []
    seeds = design.selection_seeds(1)
    now = [by_label.get(label, Summary(label, [])).with_seeds(seeds) for label in labels]
    if todo := _missing(now, seeds):
        return todo, [], []

    def two_runs(summary: Summary) -> float:
        return (searched.get(summary.label, summary.mean(VAL_ACCURACY)) + summary.mean(VAL_ACCURACY)) / 2

    def why(summary: Summary) -> str:
        mine = f"screened out: val_accuracy {two_runs(summary):.4f} over its search run and one seed"
        if two_runs(summary) < last - 1e-9:
            return f"{mine}, below the {design.entrants} that raced (the last {last:.4f})"
        return f"{mine}, tied with the last of the {design.entrants} that raced, which was ahead on gap or rule order"

    ranked = sorted(now, key=lambda s: (-two_runs(s), s.mean(GAP), labels.index(s.label)))
    racing, last = {s.label for s in ranked[: design.entrants]}, two_runs(ranked[design.entrants - 1])
    out = [Entrant(s.label, s, why(s)) for s in ranked[design.entrants :]]
    return {}, [label for label in labels if label in racing], out


def race(labels: list[str], by_label: dict[str, Summary], design: Design, epsilon: float) -> tuple[dict, list[Entrant]]:
    """The candidates race on validation accuracy, the only split a choice may read. Each gets
    `seeds` seeds; one whose interval against the leader lies wholly below 0 (at RACE_ALPHA)
    leaves; those still in get `seeds` more, up to race_seeds, until one is left or all are
    tied with the leader within ±margin. Then the rule (`stable_choice`) picks among them. So a
    candidate behind after 3 seeds but within noise keeps its chance, and one lucky seed does
    not decide (F-Race, Birattari et al. 2002; successive elimination, Even-Dar et al. 2006).

    Returns the race's missing runs (label → seeds) while it runs; then {} and the entrants,
    the choice first. One candidate needs no race.
    """
    if len(labels) == 1:  # with the screening's seed, if it had one
        only = by_label.get(labels[0], Summary(labels[0], []))
        return {}, [Entrant(labels[0], only.with_seeds(design.selection_seeds(1)))]
    entrants: dict[str, Entrant] = {}  # those out of the race, with their runs when they left
    running = list(labels)
    for count in design.race_looks():
        seeds = design.selection_seeds(count)
        now = [by_label.get(label, Summary(label, [])).with_seeds(seeds) for label in running]
        if todo := _missing(now, seeds):
            return todo, []
        leader = most_accurate(now)
        behind = {s.label: difference(leader, s, VAL_ACCURACY).interval(RACE_ALPHA) for s in now if s is not leader}
        for s in now:
            if s is not leader and behind[s.label][1] < 0:
                against = with_interval(difference(leader, s, VAL_ACCURACY), RACE_ALPHA)
                why = (
                    f"out of the race after {count} seeds: val_accuracy {against} against {setting_name(leader.label)}"
                )
                entrants[s.label] = Entrant(s.label, s, why)
        now = [s for s in now if s.label not in entrants]
        running = [s.label for s in now]
        tied = all(
            -design.margin <= behind[s.label][0] and behind[s.label][1] <= design.margin for s in now if s is not leader
        )
        if len(now) == 1 or tied:
            break
    choice, best = stable_choice(now, epsilon), most_accurate(now)
    for s in now:
        if s is not choice:
            why = (
                f"tied with {setting_name(choice.label)} on validation after {len(s.runs)} seeds; the rule "
                "prefers its smaller gap"
                if tied_with(s, best)
                else f"behind {setting_name(best.label)} on validation after {len(s.runs)} seeds, within noise"
            )
            entrants[s.label] = Entrant(s.label, s, why)
    return {}, [Entrant(choice.label, choice)] + [entrants[label] for label in labels if label != choice.label]


def rounds(
    labels: list[str],
    summaries: list[Summary],
    design: Design,
    epsilon: float,
    searched: dict[str, float] | None = None,
) -> Rounds:
    """Replays the re-evaluation from the start: the screening (`screening`, when there are more
    candidates than design.entrants), the race (`race`), then the confirmation. The
    same runs always lead to the same looks, the same choice and the same next runs, so a
    re-evaluation killed mid-round resumes where it was, training nothing twice, and a later
    report reads the verdict the rounds stopped on.

    The confirmation: the choice and the baseline on fresh seeds (`Design.confirmation_seeds`),
    paired, `seeds` more a look while the verdict can't tell, up to `max_seeds`. The choice never
    saw these seeds, so the verdict answers for one comparison, not for every candidate that
    raced; each look's level comes from the alpha-spending of `Design`.

    `labels` are the planned settings, the baseline first; `summaries` the runs logged so far;
    `searched` each candidate's val_accuracy in the search (its single run), for the screening.
    """
    state = Rounds(design, [], None, None, None, {}, NOTHING_TO_COMPARE)
    if len(labels) < 2:
        return state
    by_label = {s.label: s for s in summaries}
    todo, racing, screened_out = screening(labels[1:], by_label, design, searched or {})
    if todo:
        return replace(state, todo=todo, reason="", stage=SCREENING)
    todo, entrants = race(racing, by_label, design, epsilon)
    if todo:
        return replace(state, todo=todo, reason="", stage=RACE)
    state = replace(state, race=entrants + screened_out)
    looks = design.looks()
    for index, look in enumerate(looks):
        seeds = design.confirmation_seeds(look)
        baseline, chosen = (
            by_label.get(label, Summary(label, [])).with_seeds(seeds) for label in (labels[0], entrants[0].label)
        )
        if todo := _missing([baseline, chosen], seeds):
            return replace(state, todo=todo, reason="", stage=CONFIRMATION)
        judged = verdict(baseline, chosen, design, look=index)
        state = replace(state, baseline=baseline, chosen=chosen, verdict=judged, looks=index + 1)
        if judged.case != CANT_TELL:
            return replace(state, reason=DECIDED)
        if index == len(looks) - 1:
            return replace(state, reason=AT_MAX_SEEDS)
        if judged.only_images_settle:
            return replace(state, reason=ONLY_IMAGES)
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


def more_data_sentence(points: list[CurvePoint], setting_gain: float | None, label: str) -> str:
    """One sentence comparing what more images would likely add with what the adopted setting
    added on validation (`setting_gain`), or, when none was confirmed (None), saying so."""
    expected = doubling_gain(points)
    if math.isnan(expected):
        return ""
    points = sorted(points, key=lambda p: p.train_images)
    curve = ", ".join(f"{p.val_accuracy:.2f} at {p.train_images}" for p in points)
    if expected < 0.01:
        return (
            f"More images of the same kind would likely add little: {label}'s validation accuracy has flattened "
            f"({curve} training images); better-matched or cleaner data, or another backbone, may help more."
        )
    if setting_gain is None or math.isnan(setting_gain):
        compared = "while no setting was confirmed better than the baseline on the test split"
    elif expected > setting_gain + 0.01:
        compared = f"more than the setting found ({signed(setting_gain)})"
    elif expected < setting_gain - 0.01:
        compared = f"less than the setting found ({signed(setting_gain)})"
    else:
        compared = f"about as much as the setting found ({signed(setting_gain)})"
    return (
        f"Doubling the training images would likely add about +{expected:.2f} validation accuracy, {compared}; "
        f"{label}'s learning curve: {curve} training images."
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
    """The re-evaluation as one look at the runs there are, for settings re-trained outside the
    rounds (and the tests): the rule chooses on their validation accuracy and the verdict judges
    the choice on the same seeds' test accuracy, so its level answers for every setting the
    choice could have fallen on (Bonferroni), as the rounds' fresh seeds need not."""
    baseline = next((s for s in summaries if s.label == BASELINE and s.runs), None)
    others = [s for s in summaries if s.label != BASELINE and s.runs]
    if baseline is None or not others:
        return Rounds(Design(), [], baseline, None, None, {}, NOTHING_TO_COMPARE)
    chosen = stable_choice(others, epsilon)
    seeds = min(len(s.runs) for s in [baseline, *others])
    design = Design(seeds=seeds, max_seeds=seeds, candidates=len(others))
    judged = verdict(baseline, chosen, design)
    entrants = [Entrant(chosen.label, chosen)] + [
        Entrant(s.label, s, "not chosen on validation") for s in others if s is not chosen
    ]
    reason = DECIDED if judged.case != CANT_TELL else AT_MAX_SEEDS
    return Rounds(design, entrants, baseline, chosen, judged, {}, reason, 1)


def missing_baseline(rows: list[TrialRow]) -> str:
    """Why no answer stands yet though trials have completed: the study's baseline trial (the
    config as given) has not, and every answer is measured against it. "" when it has, or when
    the study has none (the config lies outside the searched ranges)."""
    baselines = [r for r in rows if r.baseline]
    if not baselines or any(r.state == "COMPLETE" for r in baselines):
        return ""
    last = baselines[-1]
    how = {"RUNNING": "is still running", "WAITING": "has not started yet", "PRUNED": "was pruned"}.get(
        last.state, f"failed ({last.fail_reason or 'no reason was recorded'})"
    )
    return (
        f"No answer yet: the baseline trial #{last.number} (your config as given) {how}, and every answer is "
        "measured against it; re-run the same command, which runs the baseline before any other trial."
    )


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
        if row is None or missing_baseline(rows):
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
    judged, chosen, baseline = state.verdict, state.chosen, state.baseline
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
        # What the adopted setting added on validation, paired over the confirmation's seeds (the
        # curve is on validation too); nothing when the baseline stays: no setting was confirmed.
        gain = difference(baseline, chosen, VAL_ACCURACY).mean if label != BASELINE else None
        more_data = more_data_sentence(curve, gain, "the baseline" if label == BASELINE else f"trial {label}")
    elif label == BASELINE:
        more_data = (
            "More training images, validation and test images like the ones the model will meet, or another "
            "backbone; the learning curve (sweep.reevaluate.curve) measures the first."
        )
    return Answer(label, row, judged, baseline, chosen, warnings, more_data, state)
