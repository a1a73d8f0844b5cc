"""Every guaranteed mode on real scored runs: 500 calibration sets drawn from the scored
calib + test rows of the quickstart (MiniLM and SmolLM2 students of the Qwen teacher) and of
BBC News (MiniLM student, the recorded topic as teacher); the share of draws whose true risk
exceeds α stays within δ plus binomial slack. The populations are exported by
scripts/export_scored_population.py; scripts/guarantee_rates.py prints the rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.real_checks import check_learned, check_ltt, check_per_label, check_tiers, read_population

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def quickstart():
    return read_population(DATA / "quickstart_scored.csv")


@pytest.fixture(scope="module")
def bbc():
    return read_population(DATA / "bbc_scored.csv")


def _assert_holds(check):
    assert check.holds, check
    assert check.median_risk > 0  # the threshold lets the student answer, not defer it all


@pytest.mark.parametrize("p_value", ["binomial", "hoeffding_bentkus"])
def test_learn_then_test_on_the_quickstart(quickstart, p_value):
    _assert_holds(check_ltt(quickstart, "minilm", 0.1, 0.1, p_value, n=275))


@pytest.mark.parametrize("p_value", ["binomial", "hoeffding_bentkus"])
def test_learn_then_test_on_bbc(bbc, p_value):
    _assert_holds(check_ltt(bbc, "minilm", 0.02, 0.05, p_value, n=780))


def test_per_label_on_bbc(bbc):
    _assert_holds(check_per_label(bbc, "minilm", 0.05, 0.1, n=780, min_examples=100))


def test_learned_score_on_bbc_and_the_quickstart(bbc, quickstart):
    _assert_holds(check_learned(bbc, "minilm", 0.02, 0.05, n=780))
    _assert_holds(check_learned(quickstart, "minilm", 0.1, 0.1, n=275))


def test_tiers_on_the_quickstart(quickstart):
    check = check_tiers(quickstart, ["minilm", "smollm2"], [0.01, 0.05], 2.5, 0.1, 0.1, n=275)
    _assert_holds(check)
