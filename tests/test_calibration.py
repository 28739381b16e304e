"""The verdict's error rates, measured on a small simulation with fixed seeds (the full tables:
benchmarks/verdict_calibration.py). A change to the rule that claims more than it may, or finds
less than it should, fails here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import verdict_calibration as calibration
from regsweep.results import Design


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2026)


def test_an_a_a_comparison_at_3_seeds_rarely_claims_and_its_intervals_cover(rng):
    # Two identical settings, 3 paired seeds, a seed-to-seed spread of 0.05, 576 test images.
    rates = calibration.one_verdict(calibration.World(seed_spread=0.05, images=576), 3, (0.0, 0.0), 1000, rng)
    assert rates["adopt"] <= 0.025 and rates["claim"] <= 0.05
    assert rates["cover95"] >= 0.93  # the plain 95 % interval


def test_the_interval_keeps_its_coverage_at_2_seeds_on_100_images(rng):
    rates = calibration.one_verdict(calibration.World(seed_spread=0.10, images=100), 2, (0.0, 0.0), 1000, rng)
    assert rates["cover95"] >= 0.93 and rates["claim"] <= 0.05


def test_a_planted_effect_is_found_and_covered(rng):
    rates = calibration.one_verdict(
        calibration.World(seed_spread=0.02, images=576, pairing=0.5), 5, (0.10, 0.0), 300, rng
    )
    assert rates["detect"] >= 0.9 and rates["cover95"] >= 0.93


def test_the_whole_re_evaluation_with_its_candidates_and_rounds_holds_its_error_rate(rng):
    design = Design(seeds=3, max_seeds=12)
    world = calibration.World(seed_spread=0.05, images=576, pairing=0.5)
    null = calibration.whole_decision(world, design, [0.0, 0.0, 0.0], 200, rng)
    assert null["adopt"] <= 0.025 and null["claim"] <= 0.05
    planted = calibration.whole_decision(world, design, [0.10, 0.0, 0.0], 100, rng)
    assert planted["detect"] >= 0.9 and planted["wrong"] == 0
