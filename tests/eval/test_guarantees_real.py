"""Every guaranteed mode on real scored runs: 500 calibration sets drawn from the scored
calib + test rows of the quickstart (MiniLM and SmolLM2 students of the Qwen teacher), of
BBC News (MiniLM student, the recorded topic as teacher) and of CLINC150 (the default mpnet
student with its catch-all rule, gold as teacher); the share of draws whose true risk
exceeds α stays within δ plus binomial slack. The populations are exported by
scripts/export_scored_population.py; scripts/guarantee_rates.py prints the rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.real_checks import (
    check_learned,
    check_learned_catch_all,
    check_ltt,
    check_per_label,
    check_tiers,
    read_population,
)

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


@pytest.fixture(scope="module")
def clinc():
    return read_population(DATA / "clinc150_scored.csv")


def test_learn_then_test_on_clinc150(clinc):
    _assert_holds(check_ltt(clinc, "mpnet", 0.02, 0.05, "binomial", n=2735))


def test_the_default_learned_score_with_a_catch_all_label_on_clinc150(clinc):
    """The default classification score: distance to the training rows, catch-all answers
    weighed apart, fitted on 30% of each draw; τ by Learn-then-Test on the other 70%."""
    _assert_holds(check_learned_catch_all(clinc, "mpnet", 0.02, 0.05, n=2735))
