"""Re-evaluation: an untouched test split, fresh seeds for the top settings and a baseline, and a
verdict that says "within noise" when it is."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest

from regsweep import data, report, results, sweep
from regsweep.results import Summary, TrialRow

TINY = ["train.epochs=3", "train.fine_tune_epochs=1", "tracking.artifacts=none", "sweep.trials_per_worker=0"]


def summary(label: str, **series: list[float]) -> Summary:
    n = len(next(iter(series.values())))
    runs = [{"seed": i + 1, "train_accuracy": 1.0, **{k: v[i] for k, v in series.items()}} for i in range(n)]
    for run in runs:
        run.setdefault("gap", 1.0 - run["val_accuracy"])
    return Summary(label, runs)


def test_the_verdict_says_within_noise_when_the_difference_is_smaller_than_the_seed_spread():
    baseline = summary("baseline", test_accuracy=[0.70, 0.78, 0.74], test_gap=[0.20, 0.12, 0.16], val_accuracy=[0.7, 0.8, 0.75])
    noisy = summary("#3", test_accuracy=[0.80, 0.70, 0.75], test_gap=[0.10, 0.22, 0.14], val_accuracy=[0.8, 0.7, 0.75])
    assert results.verdict(baseline, noisy).startswith("Within noise: the recommended settings' test gap 0.15 ± 0.06")
    # Seed by seed: the same spread, but every seed moves the same way, is not noise.
    consistent = summary("#5", test_accuracy=[0.70, 0.78, 0.74], test_gap=[0.15, 0.07, 0.11], val_accuracy=[0.7, 0.8, 0.75])
    assert results.verdict(baseline, consistent).startswith(
        "Recommended settings shrink the test gap from 0.16 ± 0.04 to 0.11 ± 0.04 while test accuracy moves "
        "from 0.74 ± 0.04 to 0.74 ± 0.04 (within noise)")

    clear = summary("#4", test_accuracy=[0.76, 0.77, 0.76], test_gap=[0.06, 0.07, 0.08], val_accuracy=[0.8, 0.8, 0.8])
    assert results.verdict(baseline, clear) == (
        "Recommended settings shrink the test gap from 0.16 ± 0.04 to 0.07 ± 0.01 while test accuracy moves "
        "from 0.74 ± 0.04 to 0.76 ± 0.01 (within noise).")
    reduction, spread = results.gap_reduction(baseline, clear)
    assert reduction == pytest.approx(((0.14 + 0.05 + 0.08) / 3) / 0.16)
    assert spread > 0


def test_the_stable_choice_prefers_good_across_seeds_over_one_lucky_seed():
    lucky = summary("#1", val_accuracy=[0.95, 0.60, 0.62], test_accuracy=[0.9, 0.6, 0.6], test_gap=[0, 0, 0])
    steady = summary("#2", val_accuracy=[0.78, 0.77, 0.79], test_accuracy=[0.7] * 3, test_gap=[0, 0, 0])
    overfit = summary("#3", val_accuracy=[0.9, 0.9, 0.9], test_accuracy=[0.7] * 3, test_gap=[0, 0, 0])
    for run in overfit.runs:
        run["gap"] = 0.3  # beyond epsilon
    base = summary("baseline", val_accuracy=[0.99] * 3, test_accuracy=[0.7] * 3, test_gap=[0, 0, 0])
    assert results.stable_choice([base, lucky, steady, overfit], epsilon=0.25).label == "#2"


def test_candidates_start_with_the_single_trial_recommendation_then_the_front():
    rows = [TrialRow(0, "COMPLETE", {}, 0.70, gap=0.30), TrialRow(1, "COMPLETE", {}, 0.80, gap=0.20),
            TrialRow(2, "COMPLETE", {}, 0.75, gap=0.05), TrialRow(3, "COMPLETE", {}, 0.60, gap=0.01)]
    assert [r.number for r in results.candidates(rows, epsilon=0.1, top_k=3)] == [2, 3, 1]
    # No trial within epsilon: the recommendation is the smallest gap, and it is still first.
    assert [r.number for r in results.candidates(rows, epsilon=0.001, top_k=2)] == [3, 1]
    # One trial dominates all: the next front tops the list up to k.
    best = TrialRow(4, "COMPLETE", {}, 0.90, gap=0.0)
    assert [r.number for r in results.candidates([*rows, best], epsilon=0.1, top_k=3)] == [4, 2, 3]


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.open, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:  # <img ... />
            return
        if not self.open or self.open.pop() != tag:
            self.errors.append(tag)


def test_the_html_report_is_well_formed_and_embeds_its_plots(tmp_path):
    import matplotlib.pyplot as plt

    for name in ("front.png", "effects.png"):
        figure, axis = plt.subplots()
        axis.plot([0, 1], [1, 0])
        figure.savefig(tmp_path / name)
    plt.close("all")
    text = "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![front](front.png)\n\n![effects](effects.png)\n\n**Verdict:** x < y\n"
    page = report.html_report(text, tmp_path, "regsweep <study>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>") and not checker.errors and checker.open == []
    assert len(checker.images) == 2 and all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "<table>" in page and "x &lt; y" in page and "regsweep &lt;study&gt;" in page


@pytest.mark.slow
def test_a_sweep_never_touches_the_test_split_and_reevaluation_is_nested_tagged_and_reported(store, monkeypatch):
    loaded = []
    real_load = data.load_images

    def spy(folder, *args, **kwargs):
        loaded.append(Path(folder).name)
        return real_load(folder, *args, **kwargs)

    monkeypatch.setattr(data, "load_images", spy)
    args = [f"paths.store={store}", *TINY, "sweep.study=reeval", "sweep.n_trials=3", "sweep.reevaluate.seeds=0"]
    study = sweep.run_study(args)
    assert "test" not in loaded  # no trial decoded a test image
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("regsweep").experiment_id
    trial_runs = client.search_runs([experiment], "tags.`regsweep.study` = 'reeval'")
    assert len(trial_runs) == 4  # parent + 3 trials
    assert not any(name.startswith("test_") for r in trial_runs for name in r.data.metrics)
    assert len({r.data.params.get("data.test_fingerprint") for r in trial_runs if "data.test_fingerprint" in r.data.params}) == 1

    # The demo's test split is disjoint from train and validation, by name and by content.
    splits = data.resolve_splits(sweep.prepare(args).base.data, 32, store)
    contents = {name: {p.read_bytes() for p in getattr(splits, name).rglob("*.png")} for name in ("train", "val", "test")}
    assert contents["test"] and not (contents["test"] & contents["train"] or contents["test"] & contents["val"])

    path = report.report_stored_study("reeval", [f"paths.store={store}", *TINY, "sweep.reevaluate.seeds=2",
                                                 "sweep.reevaluate.top_k=2"], reevaluate_first=True)
    parent = study.user_attrs["mlflow_parent_run_id"]
    reeval_runs = client.search_runs([experiment], "tags.`regsweep.role` = 'reeval'")
    assert len(reeval_runs) == 6  # (baseline + 2 settings) x 2 seeds
    assert {r.data.tags["mlflow.parentRunId"] for r in reeval_runs} == {parent}
    assert {r.data.params["train.seed"] for r in reeval_runs} == {"1", "2"}  # seeds no trial used
    baseline_runs = [r for r in reeval_runs if r.data.tags["reeval"] == "baseline"]
    assert {(r.data.params["model.dropout"], r.data.params["augment.strength"], r.data.params["model.unfrozen_blocks"])
            for r in baseline_runs} == {("0.0", "0.0", "0")}

    # The report's means and stds are those of the logged runs.
    text = path.read_text()
    for label in {r.data.tags["reeval"] for r in reeval_runs}:
        values = [r.data.metrics["test_accuracy"] for r in reeval_runs if r.data.tags["reeval"] == label]
        mean = sum(values) / 2
        std = abs(values[0] - values[1]) / 2 ** 0.5
        row = next(line for line in text.splitlines() if line.startswith(f"| {'baseline' if label == 'baseline' else 'trial ' + label}"))
        assert f"| {mean:.4f} ± {std:.4f} |" in row
    assert "**Verdict:**" in text
    html = path.with_name("report.html").read_text()
    assert "data:image/png;base64," in html and "Verdict:" in html
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.html" in artifacts

    # Again: nothing new is trained, the same numbers come back.
    again = report.report_stored_study("reeval", [f"paths.store={store}", *TINY, "sweep.reevaluate.seeds=2",
                                                  "sweep.reevaluate.top_k=2"], reevaluate_first=True)
    assert len(client.search_runs([experiment], "tags.`regsweep.role` = 'reeval'")) == 6
    assert re.findall(r"± [0-9.]+", again.read_text()) == re.findall(r"± [0-9.]+", text)


def test_open_shows_the_html_report_in_a_browser_or_says_where_it_is(tmp_path, monkeypatch, capsys):
    import webbrowser

    page = tmp_path / "report.html"
    page.write_text("<!DOCTYPE html><html></html>")

    def no_browser(*args):
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", no_browser)
    report.open_in_browser(page)
    assert f"No browser found here; open {page}" in capsys.readouterr().out

    opened = []
    monkeypatch.setattr(webbrowser, "get", lambda *args: object())
    monkeypatch.setattr(webbrowser, "open", opened.append)
    report.open_in_browser(page)
    assert opened == [page.resolve().as_uri()]
