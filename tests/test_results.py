"""The decision rules on constructed trials and re-evaluations: held-out accuracy first, the gap
second, the five verdict cases, intervals from both the seeds and the finite test set, and the
rounds that spend seeds where they decide."""

from __future__ import annotations

import math

import pytest

from regsweep import results
from regsweep.results import BASELINE, CurvePoint, Summary, TrialRow


def row(number, val, gap, images=500, baseline=False, state="COMPLETE", **params):
    return TrialRow(number, state, params, val_accuracy=val, gap=gap, val_images=images, baseline=baseline)


def correct(images: int, right: int) -> str:
    """Per-image results: the first `right` images right. Two settings built this way disagree
    only on the images between their counts, as two similar models do."""
    return "1" * right + "0" * (images - right)


def setting(label, test_right, train=1.0, val_right=None, images=500, val_images=500, train_images=100):
    """A re-evaluated setting: one run per entry of test_right (images right on the test split)."""
    val_right = val_right or test_right
    train_right = round(train * train_images)
    runs = []
    for seed, (t, v) in enumerate(zip(test_right, val_right), start=1):
        runs.append(
            {
                "seed": seed,
                "train_accuracy": train,
                "test_accuracy": t / images,
                "val_accuracy": v / val_images,
                "test_gap": train - t / images,
                "gap": train - v / val_images,
                "train_images": train_images,
                "val_images": val_images,
                "test_images": images,
                "train_correct": correct(train_images, train_right),
                "validation_correct": correct(val_images, v),
                "test_correct": correct(images, t),
            }
        )
    return Summary(label, runs)


# --- the rule on single trials ---------------------------------------------------------------------


def test_a_smaller_gap_bought_with_accuracy_is_a_trade_off_never_the_recommendation():
    rows = [
        row(0, 0.90, 0.10, baseline=True),
        row(1, 0.80, 0.02),
        row(2, 0.895, 0.06),
        row(3, 0.0, 0.0, state="PRUNED"),
    ]
    # 0.895 is within one standard error (0.013 on 500 images) of 0.90: tied, and its gap is smaller.
    assert results.recommend(rows, epsilon=0.1).number == 2
    # With ε = 0.05 no tied trial meets it: still the accurate one, and the gap-meeting #1 is shown as a trade-off.
    assert results.recommend(rows, epsilon=0.05).number == 2
    assert results.trade_off(rows, results.recommend(rows, 0.05), 0.05).number == 1
    [note] = results.caveats(rows, results.recommend(rows, 0.05), 0.05)
    assert "Trial #1 meets it (gap 0.0200) at val_accuracy 0.8000, 0.0950 lower: a trade-off, not recommended." in note


def test_the_baseline_is_a_candidate_like_any_other():
    rows = [row(0, 0.90, 0.05, baseline=True), row(1, 0.80, 0.0), row(2, 0.70, 0.01)]
    assert results.recommend(rows, epsilon=0.1).baseline
    assert results.candidates(rows, epsilon=0.1, top_k=3) == [rows[1], rows[2]]  # re-evaluated as the baseline instead


def test_what_counts_as_a_tie_shrinks_with_a_larger_validation_set():
    small = [row(0, 0.90, 0.10, images=500, baseline=True), row(1, 0.89, 0.03, images=500)]
    large = [row(0, 0.90, 0.10, images=20000, baseline=True), row(1, 0.89, 0.03, images=20000)]
    assert results.recommend(small, 0.1).number == 1  # 0.01 is noise on 500 images
    assert results.recommend(large, 0.1).number == 0  # and a real loss on 20,000


def test_rule_order_puts_the_tied_trials_first_then_the_most_accurate():
    rows = [
        row(0, 0.80, 0.20, baseline=True),
        row(1, 0.95, 0.15),
        row(2, 0.945, 0.05),
        row(3, 0.70, 0.0),
        row(4, 0.90, 0.1),
    ]
    assert [r.number for r in results.in_rule_order(rows, 0.1)] == [2, 1, 4, 0, 3]
    assert [r.number for r in results.candidates(rows, 0.1, top_k=2)] == [2, 1]


def test_a_trial_that_could_become_the_recommendation_is_on_the_front():
    rows = [row(0, 0.80, 0.05), row(1, 0.90, 0.20)]
    assert results.leads(rows, row(2, 0.95, 0.15))
    assert not results.leads(rows, row(2, 0.79, 0.06))


def test_pruned_trials_are_counted_by_knob_level():
    rows = [
        TrialRow(0, "COMPLETE", {"s": 0.0}),
        TrialRow(1, "PRUNED", {"s": 0.5}),
        TrialRow(2, "PRUNED", {"s": 0.5}),
        TrialRow(3, "COMPLETE", {"s": 0.5}),
        TrialRow(4, "FAIL", {"s": 1.0}),
    ]
    assert results.pruned_by_level(rows, "s") == [("0", 1, 0), ("0.5", 1, 2)]
    many = [TrialRow(i, "PRUNED" if i >= 6 else "COMPLETE", {"lr": 10.0 ** -(i / 3)}) for i in range(9)]
    assert [(done, pruned) for _, done, pruned in results.pruned_by_level(many, "lr")] == [(0, 3), (3, 0), (3, 0)]


# --- the verdict, after re-evaluation on the test split --------------------------------------------


BASE = setting(BASELINE, [400, 405, 395], train=1.0)  # test 0.80 ± 0.01, test gap 0.20


@pytest.mark.parametrize(
    "chosen, case, adopt",
    [
        (setting("#1", [440, 445, 438], train=1.0), results.BETTER, True),
        (setting("#2", [401, 404, 396], train=0.90), results.LESS_OVERFIT, True),  # same accuracy, gap 0.20 → 0.10
        (setting("#3", [350, 352, 348], train=0.75), results.TRADE_OFF, False),  # the gap shrinks by losing accuracy
        (setting("#4", [402, 403, 396], train=0.99), results.NO_EFFECT, False),  # within ±0.02, one training image
        (
            setting("#5", [430, 380, 410], train=1.0),
            results.CANT_TELL,
            False,
        ),  # the seeds disagree: +0.06, −0.05, +0.03
    ],
)
def test_the_verdict_is_one_of_five_cases_accuracy_first(chosen, case, adopt):
    judged = results.verdict(BASE, chosen)
    assert judged.case == case and judged.adopt == adopt
    assert judged.sentence.startswith(case[0].upper() + case[1:])
    assert bool(judged.settle) == (case == results.CANT_TELL)


def test_the_verdict_reads_each_difference_as_an_interval():
    judged = results.verdict(BASE, setting("#1", [440, 445, 438]))
    low, high = judged.accuracy_interval
    assert judged.accuracy.mean == pytest.approx(0.082) and 0 < low < judged.accuracy.mean < high
    assert f"test accuracy +0.082 [+{low:.3f}, +{high:.3f}]" in judged.sentence  # 3 digits: narrower than 0.05
    # A negative bound is written with a real minus sign, as intervals are read.
    assert "[−" in results.verdict(BASE, setting("#5", [430, 380, 410])).sentence


def test_the_noise_covers_the_finite_test_set_not_only_the_seeds():
    # Every seed 2 points better, on 100 test images: the seeds agree perfectly, but 100 images
    # cannot tell 2 points apart, and no number of seeds changes that.
    base = setting(BASELINE, [70, 70, 70], images=100)
    chosen = setting("#1", [72, 72, 72], images=100)
    judged = results.verdict(base, chosen)
    assert judged.accuracy.mean == pytest.approx(0.02) and judged.accuracy.seed_variance == 0
    assert judged.case == results.CANT_TELL and judged.only_images_settle and judged.seeds_needed is None
    assert "only a larger test split would" in judged.settle and "test images (now 100)" in judged.settle
    # The same 2 points on 10,000 images are beyond noise.
    assert (
        results.verdict(setting(BASELINE, [7000] * 3, images=10000), setting("#1", [7200] * 3, images=10000)).case
        == results.BETTER
    )


def test_an_open_verdict_says_how_many_seeds_would_settle_it():
    base = setting(BASELINE, [7000, 7300, 6900], images=10000)
    chosen = setting("#1", [7200, 7250, 7150], images=10000)  # +0.013 on average, seeds disagree
    judged = results.verdict(base, chosen)
    assert judged.case == results.CANT_TELL and not judged.only_images_settle
    assert judged.seeds_needed is not None and judged.seeds_needed > 3
    assert f"about {judged.seeds_needed} seeds each for trial #1 and the baseline (now 3)" in judged.settle
    # That many seeds at today's spreads would decide it.
    spread = results.Difference(
        judged.accuracy.mean, judged.accuracy.seed_variance, judged.seeds_needed, judged.accuracy.image_parts
    )
    low, high = spread.interval(judged.alpha)
    assert low > 0 or high < 0 or -judged.margin <= low <= high <= judged.margin


def test_one_seed_cannot_tell_how_much_a_re_run_would_move():
    judged = results.verdict(setting(BASELINE, [400]), setting("#1", [460]))
    assert judged.case == results.CANT_TELL and judged.accuracy_interval == (-math.inf, math.inf)
    assert "3 or more seeds" in judged.settle


def test_candidates_judged_on_the_seeds_that_chose_them_widen_the_interval():
    chosen = setting("#1", [430, 436, 425])
    alone = results.verdict(BASE, chosen)
    assert alone.alpha == pytest.approx(0.045) and alone.gap_alpha == pytest.approx(0.005)  # 90 % / 10 % of 5 %
    corrected = results.verdict(BASE, chosen, results.Design(seeds=3, max_seeds=3, candidates=3))
    assert corrected.alpha == pytest.approx(0.045 / 3)  # fixed_rounds: the choice saw these seeds
    assert corrected.accuracy_interval[0] < alone.accuracy_interval[0]


def test_looks_spend_alpha_as_o_brien_fleming_so_the_last_look_keeps_nearly_all_of_it():
    # Lan–DeMets O'Brien–Fleming-type boundaries for 4 even looks at 5 %, as published (Jennison and
    # Turnbull 2000, table 7.6; gsDesign): 4.33, 2.96, 2.36 and 2.01 standard errors.
    assert results.sequential_boundaries((0.25, 0.5, 0.75, 1.0), 0.05) == pytest.approx(
        (4.333, 2.963, 2.359, 2.014), abs=0.002
    )
    design = results.Design(seeds=3, max_seeds=12)
    levels = [design.alpha_at(look, results.ACCURACY_SHARE) for look in range(4)]
    assert levels == sorted(levels) and levels[0] < 1e-4
    assert 0.039 < levels[-1] < 0.045  # an even split over 4 looks would leave 0.011
    # An early look is stricter: the same runs can be "better" at the last look and open at the first.
    chosen = setting("#1", [440, 445, 438])
    assert results.verdict(BASE, chosen, design, look=0).case == results.CANT_TELL
    assert results.verdict(BASE, chosen, design).case == results.BETTER


def test_the_stable_choice_applies_the_rule_across_seeds_among_the_candidates():
    lucky = setting("#1", [400] * 3, val_right=[475, 300, 310])  # one lucky seed
    steady = setting("#2", [400] * 3, val_right=[440, 445, 442], train=0.95)
    baseline = setting(BASELINE, [400] * 3, val_right=[460, 455, 458])
    # The baseline is what the choice must beat on the test split, not one of the candidates.
    assert results.stable_choice([baseline, lucky, steady], 0.1).label == "#2"
    assert results.stable_choice([baseline], 0.1) is None
    # Equally accurate and equally overfit: the earlier trial.
    assert (
        results.stable_choice(
            [setting("#5", [400] * 3, val_right=[440] * 3), setting("#3", [400] * 3, val_right=[440] * 3)], 0.1
        ).label
        == "#3"
    )


def test_validation_and_test_that_disagree_on_the_baseline_are_flagged():
    agree = setting(BASELINE, [450, 452, 448], val_right=[455, 450, 452])
    assert results.disagreement(agree) == ""
    darker_test = setting(BASELINE, [350, 352, 348], val_right=[455, 450, 452])
    assert (
        "Validation and test disagree on the baseline: val_accuracy 0.90 ± 0.01 against test_accuracy 0.70 ± 0.00"
        in results.disagreement(darker_test)
    )


# --- the answer --------------------------------------------------------------------------------


def test_the_answer_keeps_the_baseline_when_the_choice_loses_test_accuracy():
    rows = [row(0, 0.81, 0.19, baseline=True), row(3, 0.80, 0.05)]
    chosen = setting("#3", [350, 352, 348], train=0.75, val_right=[405, 404, 400])
    baseline = setting(BASELINE, [400, 405, 395], val_right=[405, 400, 402])
    answer = results.answer(rows, [baseline, chosen], epsilon=0.1)
    assert answer.keep_baseline and answer.verdict.case == results.TRADE_OFF and answer.row is rows[0]


def test_the_answer_adopts_a_better_setting_and_says_what_more_data_would_add():
    rows = [row(0, 0.80, 0.20, baseline=True), row(1, 0.88, 0.10)]
    chosen = setting("#1", [440, 445, 438], val_right=[440, 442, 445])
    baseline = setting(BASELINE, [400, 405, 395], val_right=[432, 430, 428])
    # Error 0.40 → 0.25 → 0.116 as the images double: error ≈ n^-0.87, so doubling 25 images
    # takes 0.116 to about 0.064.
    curve = [CurvePoint(6, 0.60, 0.02), CurvePoint(13, 0.75, 0.02), CurvePoint(25, 0.884, 0.01)]
    answer = results.answer(rows, [baseline, chosen], 0.1, curves={"#1": curve}, shared_images=2)
    assert answer.label == "#1" and answer.verdict.case == results.BETTER and answer.row is rows[1]
    assert answer.more_data == (
        "Doubling the training images would likely add about +0.05 validation accuracy, "
        "more than the setting found (+0.02); trial #1's learning curve: 0.60 at 6, 0.75 at 13, "
        "0.88 at 25 training images."
    )
    assert any("2 image(s) appear in more than one split" in w for w in answer.warnings)


def test_when_the_baseline_stays_the_learning_curve_is_not_compared_with_a_gain_nobody_confirmed():
    curve = [CurvePoint(6, 0.60, 0.02), CurvePoint(13, 0.75, 0.02), CurvePoint(25, 0.884, 0.01)]
    sentence = results.more_data_sentence(curve, None, "the baseline")
    assert "while no setting was confirmed better than the baseline on the test split" in sentence
    assert "+0.00" not in sentence and "any setting" not in sentence


def test_a_flat_learning_curve_says_more_of_the_same_images_would_add_little():
    flat = [CurvePoint(6, 0.90, 0.01), CurvePoint(13, 0.905, 0.01), CurvePoint(25, 0.90, 0.01)]
    assert results.more_data_sentence(flat, 0.0, "the baseline").startswith(
        "More images of the same kind would likely add little"
    )


def test_before_re_evaluation_the_single_trial_choice_is_the_answer_and_says_it_is_unconfirmed():
    rows = [row(0, 0.90, 0.10, baseline=True), row(2, 0.895, 0.06)]
    answer = results.answer(rows, [], epsilon=0.1)
    assert answer.label == "#2" and answer.verdict is None
    assert any("not yet confirmed on a test split" in w and "give a test split" in w for w in answer.warnings)
    with_test = results.answer(rows, [], epsilon=0.1, test_split=True)  # re-evaluation was off (seeds=0)
    assert any("--reevaluate" in w and "give a test split" not in w for w in with_test.warnings)


# --- the rounds: seeds where they decide ------------------------------------------------------------


def seeds_of(summary: Summary, seeds: list[int]) -> Summary:
    return Summary(summary.label, [{**run, "seed": seed} for run, seed in zip(summary.runs, seeds)])


def confirmation(summary: Summary, design: results.Design) -> Summary:
    """The runs as the confirmation's seeds (the race's are 1, 2, …)."""
    return seeds_of(summary, design.confirmation_seeds(len(summary.runs)))


def test_the_race_chooses_on_validation_then_the_confirmation_adds_fresh_seeds_until_decided():
    design = results.Design(seeds=3, max_seeds=9)
    labels = [BASELINE, "#1", "#2"]
    # The race asks for 3 seeds of every candidate, validation only; the baseline does not race.
    first = results.rounds(labels, [], design, 0.1)
    assert first.todo == {"#1": [1, 2, 3], "#2": [1, 2, 3]} and first.verdict is None and not first.race
    # #2 trails #1 on validation beyond noise: it leaves the race, which ends with #1 as the choice.
    raced = [setting("#1", [480, 300, 300], val_right=[440, 442, 445]), setting("#2", [480] * 3, val_right=[300] * 3)]
    # Killed in the race's first round: only the missing run is asked for.
    assert results.rounds(labels, [raced[0], first3(raced[1]).with_seeds([1, 2])], design, 0.1).todo == {"#2": [3]}
    state = results.rounds(labels, raced, design, 0.1)
    assert [e.label for e in state.race] == ["#1", "#2"] and state.race[1].left.startswith("out of the race after 3")
    # The confirmation: the choice and the baseline on seeds the race never used (its test scores above
    # count for nothing), the same values for both.
    assert state.todo == {BASELINE: [1001, 1002, 1003], "#1": [1001, 1002, 1003]} and state.verdict is None
    baseline = confirmation(setting(BASELINE, [400, 405, 395, 398, 402, 401, 399, 404, 396]), design)
    leader = confirmation(setting("#1", [430, 415, 420, 428, 428, 426, 429, 427, 428]), design)
    at = {"#1": Summary("#1", raced[0].runs + leader.runs[:3]), "#2": raced[1]}
    state = results.rounds(labels, [Summary(BASELINE, baseline.runs[:3]), *at.values()], design, 0.1)
    # At the first look the spending leaves a strict level: +0.04 on 3 seeds can't tell yet.
    assert state.verdict.case == results.CANT_TELL and state.chosen.label == "#1" and state.looks == 1
    assert state.todo == {BASELINE: [1004, 1005, 1006], "#1": [1004, 1005, 1006]}
    # Killed half-way through the round: only what is missing is asked for, and the verdict stays the last look's.
    partial = results.rounds(labels, [Summary(BASELINE, baseline.runs[:5]), *at.values()], design, 0.1)
    assert partial.todo == {BASELINE: [1006], "#1": [1004, 1005, 1006]} and partial.verdict.case == results.CANT_TELL
    # With 6 each the verdict is decided, and the rounds stop there.
    at["#1"] = Summary("#1", raced[0].runs + leader.runs[:6])
    done = results.rounds(labels, [Summary(BASELINE, baseline.runs[:6]), *at.values()], design, 0.1)
    assert done.todo == {} and done.reason == results.DECIDED and done.verdict.case == results.BETTER
    assert done.looks == 2 and [len(s.runs) for s in done.summaries] == [6, 6]
    # Runs past the look the rounds stopped at (say, trained by hand) do not change its verdict.
    again = results.rounds(labels, [baseline, Summary("#1", raced[0].runs + leader.runs), raced[1]], design, 0.1)
    assert again.verdict.sentence == done.verdict.sentence


def test_a_candidate_behind_but_within_noise_stays_in_the_race_and_can_win_it():
    design = results.Design(seeds=3, max_seeds=6, race_seeds=6)
    labels = [BASELINE, "#1", "#2"]
    # #1 leads after 3 seeds on one lucky seed; #2 is behind but within noise, so both race on.
    lucky = setting("#1", [400] * 6, val_right=[480, 430, 443, 400, 401, 402])
    steady = setting("#2", [400] * 6, val_right=[440, 441, 439, 441, 440, 442])
    state = results.rounds(labels, [first3(lucky), first3(steady)], design, 0.1)
    assert state.todo == {"#1": [4, 5, 6], "#2": [4, 5, 6]} and not state.race
    # After 6 seeds #2 leads; the race ends at max_seeds and the rule chooses #2.
    state = results.rounds(labels, [lucky, steady], design, 0.1)
    assert [e.label for e in state.race] == ["#2", "#1"]
    assert state.race[1].left == "behind trial #2 on validation after 6 seeds, within noise"
    assert state.todo == {BASELINE: [1001, 1002, 1003], "#2": [1001, 1002, 1003]}


def test_the_screening_takes_the_next_trials_in_rule_order_beside_the_top_k():
    rows = [row(0, 0.80, 0.20, baseline=True), *(row(n, 0.90 - n / 100, 0.10) for n in range(1, 8))]
    assert [r.number for r in results.candidates(rows, 0.1, top_k=2)] == [1, 2]
    assert [r.number for r in results.candidates(rows, 0.1, top_k=2, screen=5)] == [1, 2, 3, 4, 5]
    assert [r.number for r in results.candidates(rows, 0.1, top_k=3, screen=2)] == [1, 2, 3]  # screen <= top_k: none
    assert [r.number for r in results.candidates(rows[:3], 0.1, top_k=1, screen=6)] == [1, 2]  # as many as there are


def test_the_screening_gives_one_seed_each_and_the_best_over_two_runs_race_keeping_that_seed():
    design = results.Design(seeds=3, max_seeds=6, race_seeds=6, entrants=2)
    labels = [BASELINE, "#1", "#2", "#3"]
    searched = {"#1": 0.90, "#2": 0.89, "#3": 0.88}  # the search's single runs, #1 first
    first = results.rounds(labels, [], design, 0.1, searched)
    assert first.todo == {"#1": [1], "#2": [1], "#3": [1]} and first.stage == results.SCREENING
    # #1's search run was lucky: its second run is poor; #2 and #3 hold up.
    one = [
        setting("#1", [400], val_right=[400]),  # over two runs (0.90 + 0.80) / 2 = 0.85
        setting("#2", [400], val_right=[445]),  # 0.89 + 0.89: 0.89
        setting("#3", [400], val_right=[440]),  # 0.88 + 0.88: 0.88
    ]
    # Killed during the screening: only the missing runs are asked for, and nothing races yet.
    partial = results.rounds(labels, one[:2], design, 0.1, searched)
    assert partial.todo == {"#3": [1]} and partial.stage == results.SCREENING and not partial.race
    state = results.rounds(labels, one, design, 0.1, searched)
    # #2 and #3 race, keeping seed 1 as their first race seed; #1 is out with its two runs' mean.
    assert state.todo == {"#2": [2, 3], "#3": [2, 3]} and state.stage == results.RACE
    raced = [
        setting("#2", [420] * 3, val_right=[445, 446, 444]),
        setting("#3", [400] * 3, val_right=[440, 300, 300]),
    ]
    state = results.rounds(labels, [one[0], *raced], design, 0.1, searched)
    assert [e.label for e in state.race] == ["#2", "#3", "#1"]
    assert state.race[1].left.startswith("out of the race after 3 seeds")
    assert state.race[2].left == (
        "screened out: val_accuracy 0.8500 over its search run and one seed, below the 2 that raced (the last 0.8800)"
    )
    assert len(state.race[2].runs.runs) == 1
    assert (
        state.todo == {BASELINE: [1001, 1002, 1003], "#2": [1001, 1002, 1003]} and state.stage == results.CONFIRMATION
    )
    # A tie with the last that raced is said as one, not as "0.8800, below 0.8800".
    tied = setting("#1", [400], val_right=[430])  # (0.90 + 0.86) / 2 = 0.88, as #3, whose gap is smaller
    state = results.rounds(labels, [tied, *raced], design, 0.1, searched)
    assert state.race[2].label == "#1" and state.race[2].left.endswith(
        "tied with the last of the 2 that raced, which was ahead on gap or rule order"
    )
    # No more candidates than entrants: no screening, the race starts at once.
    assert results.rounds(labels[:3], [], design, 0.1, searched).todo == {"#1": [1, 2, 3], "#2": [1, 2, 3]}


def test_one_candidate_needs_no_race():
    design = results.Design(seeds=3, max_seeds=6)
    assert results.rounds([BASELINE, "#4"], [], design, 0.1).todo == {
        BASELINE: [1001, 1002, 1003],
        "#4": [1001, 1002, 1003],
    }


def first3(summary: Summary) -> Summary:
    return Summary(summary.label, summary.runs[:3])


def test_rounds_stop_when_only_a_larger_test_split_would_settle_it():
    design = results.Design(seeds=3, max_seeds=12)
    base = confirmation(setting(BASELINE, [70, 70, 70], images=100), design)
    chosen = confirmation(setting("#1", [72, 72, 72], images=100), design)
    state = results.rounds([BASELINE, "#1"], [base, chosen], design, 0.1)
    assert state.todo == {} and state.reason == results.ONLY_IMAGES and state.verdict.case == results.CANT_TELL


def test_a_fixed_design_looks_once():
    assert results.Design(seeds=3, max_seeds=3).looks() == [3]
    assert results.Design(seeds=3, max_seeds=12).looks() == [3, 6, 9, 12]
    assert results.Design(seeds=3, max_seeds=10).looks() == [3, 6, 9, 10]


def test_the_t_quantile_is_scipys_own_at_every_degree_of_freedom():
    from scipy import stats

    for df in (1, 1.5, 2, 7.3, 30, 1234.5, math.inf):
        for alpha in (0.05, 0.045, 0.2):
            assert results.two_sided_t(alpha, df) == float(stats.t.ppf(1 - alpha / 2, df))
