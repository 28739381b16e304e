"""The decision rules on constructed trials and re-evaluations: held-out accuracy first, the gap
second, the four verdict cases, and noise from both the seeds and the finite test set."""

from __future__ import annotations

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
        runs.append({"seed": seed, "train_accuracy": train, "test_accuracy": t / images, "val_accuracy": v / val_images,
                     "test_gap": train - t / images, "gap": train - v / val_images, "train_images": train_images,
                     "val_images": val_images, "test_images": images, "train_correct": correct(train_images, train_right),
                     "validation_correct": correct(val_images, v), "test_correct": correct(images, t)})
    return Summary(label, runs)


# --- the rule on single trials ---------------------------------------------------------------------


def test_a_smaller_gap_bought_with_accuracy_is_a_trade_off_never_the_recommendation():
    rows = [row(0, 0.90, 0.10, baseline=True), row(1, 0.80, 0.02), row(2, 0.895, 0.06), row(3, 0.0, 0.0, state="PRUNED")]
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
    rows = [row(0, 0.80, 0.20, baseline=True), row(1, 0.95, 0.15), row(2, 0.945, 0.05), row(3, 0.70, 0.0), row(4, 0.90, 0.1)]
    assert [r.number for r in results.in_rule_order(rows, 0.1)] == [2, 1, 4, 0, 3]
    assert [r.number for r in results.candidates(rows, 0.1, top_k=2)] == [2, 1]


def test_a_trial_that_could_become_the_recommendation_is_on_the_front():
    rows = [row(0, 0.80, 0.05), row(1, 0.90, 0.20)]
    assert results.leads(rows, row(2, 0.95, 0.15))
    assert not results.leads(rows, row(2, 0.79, 0.06))


def test_pruned_trials_are_counted_by_knob_level():
    rows = [TrialRow(0, "COMPLETE", {"s": 0.0}), TrialRow(1, "PRUNED", {"s": 0.5}), TrialRow(2, "PRUNED", {"s": 0.5}),
            TrialRow(3, "COMPLETE", {"s": 0.5}), TrialRow(4, "FAIL", {"s": 1.0})]
    assert results.pruned_by_level(rows, "s") == [("0", 1, 0), ("0.5", 1, 2)]
    many = [TrialRow(i, "PRUNED" if i >= 6 else "COMPLETE", {"lr": 10.0 ** -(i / 3)}) for i in range(9)]
    assert [(done, pruned) for _, done, pruned in results.pruned_by_level(many, "lr")] == [(0, 3), (3, 0), (3, 0)]


# --- the verdict, after re-evaluation on the test split --------------------------------------------


BASE = setting(BASELINE, [400, 405, 395], train=1.0)  # test 0.80 ± 0.01, test gap 0.20


@pytest.mark.parametrize("chosen, case, adopt", [
    (setting("#1", [440, 445, 438], train=1.0), results.BETTER, True),
    (setting("#2", [401, 404, 396], train=0.90), results.LESS_OVERFIT, True),  # same accuracy, gap 0.20 → 0.10
    (setting("#3", [350, 352, 348], train=0.75), results.TRADE_OFF, False),  # the gap shrinks by losing accuracy
    (setting("#4", [402, 403, 396], train=0.99), results.NO_EFFECT, False),
])
def test_the_verdict_is_one_of_four_cases_accuracy_first(chosen, case, adopt):
    judged = results.verdict(BASE, chosen)
    assert judged.case == case and judged.adopt == adopt
    assert judged.sentence.startswith(case[0].upper() + case[1:])


def test_the_noise_covers_the_finite_test_set_not_only_the_seeds():
    # Every seed 2 points better, on 100 test images: the seeds agree perfectly, but 100 images
    # cannot tell 2 points apart, and no number of seeds changes that.
    base = setting(BASELINE, [70, 70, 70], images=100)
    chosen = setting("#1", [72, 72, 72], images=100)
    accuracy = results.difference(base, chosen, "test_accuracy")
    assert accuracy.mean == pytest.approx(0.02) and accuracy.seed_variance == 0
    assert not accuracy.beyond_noise and accuracy.seeds_to_settle() is None
    assert "only a larger test split would settle it" in results.verdict(base, chosen).settle
    # The same 2 points on 10,000 images are beyond noise.
    assert results.difference(setting(BASELINE, [7000] * 3, images=10000), setting("#1", [7200] * 3, images=10000),
                              "test_accuracy").beyond_noise


def test_a_within_noise_answer_says_how_many_seeds_would_settle_it():
    base = setting(BASELINE, [7000, 7300, 6900], images=10000)
    chosen = setting("#1", [7200, 7250, 7150], images=10000)  # +0.013 on average, seeds disagree
    judged = results.verdict(base, chosen)
    assert judged.case == results.NO_EFFECT
    seeds = results.difference(base, chosen, "test_accuracy").seeds_to_settle()
    assert seeds is not None and seeds > 3 and f"about {seeds} seeds (sweep.reevaluate.seeds) would show" in judged.settle


def test_the_stable_choice_applies_the_rule_across_seeds_and_can_be_the_baseline():
    lucky = setting("#1", [400] * 3, val_right=[475, 300, 310])  # one lucky seed
    steady = setting("#2", [400] * 3, val_right=[440, 445, 442], train=0.95)
    assert results.stable_choice([setting(BASELINE, [400] * 3, val_right=[445, 440, 443]), lucky, steady], 0.1).label == "#2"
    # Equally accurate and equally overfit: doing nothing wins the tie.
    assert results.stable_choice([setting(BASELINE, [400] * 3, val_right=[440] * 3), setting("#5", [400] * 3, val_right=[440] * 3)],
                                 0.1).label == BASELINE


def test_validation_and_test_that_disagree_on_the_baseline_are_flagged():
    agree = setting(BASELINE, [450, 452, 448], val_right=[455, 450, 452])
    assert results.disagreement(agree) == ""
    darker_test = setting(BASELINE, [350, 352, 348], val_right=[455, 450, 452])
    assert "Validation and test disagree on the baseline: val_accuracy 0.90 ± 0.01 against test_accuracy 0.70 ± 0.00" \
        in results.disagreement(darker_test)


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
    assert answer.more_data == ("Doubling the training images would likely add about +0.05 validation accuracy, "
                                "more than any setting found (+0.02); trial #1's learning curve: 0.60 at 6, 0.75 at 13, "
                                "0.88 at 25 training images.")
    assert any("2 image(s) appear in more than one split" in w for w in answer.warnings)


def test_a_flat_learning_curve_says_more_of_the_same_images_would_add_little():
    flat = [CurvePoint(6, 0.90, 0.01), CurvePoint(13, 0.905, 0.01), CurvePoint(25, 0.90, 0.01)]
    assert results.more_data_sentence(flat, 0.0, "the baseline").startswith("More images of the same kind would likely add little")


def test_before_re_evaluation_the_single_trial_choice_is_the_answer_and_says_it_is_unconfirmed():
    rows = [row(0, 0.90, 0.10, baseline=True), row(2, 0.895, 0.06)]
    answer = results.answer(rows, [], epsilon=0.1)
    assert answer.label == "#2" and answer.verdict is None
    assert any("not yet confirmed on a test split" in w for w in answer.warnings)
