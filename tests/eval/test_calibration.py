"""Learn-then-Test threshold selection: the contract, the scan, and the guarantee itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from eval.calibration import (
    CostBudget,
    LearnThenTest,
    TargetDeferral,
    binomial_p_values,
    candidate_counts,
    expected_calibration_error,
    hoeffding_bentkus_p_values,
)


def test_unfitted_estimator_refuses_to_route():
    with pytest.raises(RuntimeError, match="not fitted"):
        LearnThenTest().accept(np.array([0.5]))


def test_settings_are_checked():
    with pytest.raises(ValueError):
        LearnThenTest(alpha=0.0)
    with pytest.raises(ValueError):
        LearnThenTest(delta=1.5)


def test_fit_returns_self_and_learns_a_threshold():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=400)
    disagree = rng.uniform(size=400) < (1 - scores) * 0.5
    ltt = LearnThenTest(alpha=0.1, delta=0.1)
    assert ltt.fit(scores, disagree) is ltt
    assert math.isfinite(ltt.threshold_)
    assert ltt.threshold_ in set(scores)
    accepted = ltt.accept(scores)
    assert accepted.sum() == round((1 - ltt.calib_deferral_rate_) * 400)
    assert ltt.calib_risk_ == pytest.approx((accepted & disagree).sum() / 400)


def test_a_student_that_always_departs_answers_at_most_alpha_of_traffic():
    # every answer departs from the teacher, so the student may take at most ~α of requests
    scores = np.linspace(0, 1, 1000)
    ltt = LearnThenTest(alpha=0.05, delta=0.1).fit(scores, np.ones(1000, dtype=bool))
    assert 0 < ltt.accept(scores).mean() <= 0.05
    # with too few calibration rows, not even one request can be certified: defer everything
    few = LearnThenTest(alpha=0.05, delta=0.1).fit(scores[:20], np.ones(20, dtype=bool))
    assert few.threshold_ == math.inf
    assert not few.accept(scores).any()
    assert few.calib_deferral_rate_ == 1.0


def test_a_perfect_student_answers_everything():
    scores = np.linspace(0, 1, 300)
    ltt = LearnThenTest(alpha=0.1, delta=0.1).fit(scores, np.zeros(300, dtype=bool))
    assert ltt.threshold_ == scores.min()
    assert ltt.accept(scores).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=200),
    st.floats(0.01, 0.5),
    st.floats(0.01, 0.5),
)
def test_scan_properties(rows, alpha, delta):
    scores = np.array([r[0] for r in rows])
    disagree = np.array([r[1] for r in rows])
    ltt = LearnThenTest(alpha, delta).fit(scores, disagree)
    scan = ltt.scan_
    # strict to loose: thresholds fall, accepted and disagreeing counts and p-values rise
    assert np.all(np.diff(scan.thresholds) < 0)
    assert np.all(np.diff(scan.n_accepted) > 0)
    assert np.all(np.diff(scan.n_disagree) >= 0)
    assert np.all(np.diff(scan.p_values) >= -1e-12)
    # every τ before the stop was rejected, the stop itself was not (unless all were)
    assert scan.rejected[:-1].all()
    all_rejected = len(scan.thresholds) == len(np.unique(scores)) and scan.rejected[-1]
    assert all_rejected or not scan.rejected[-1]
    if math.isfinite(ltt.threshold_):
        k = int(((scores >= ltt.threshold_) & disagree).sum())
        assert binom.cdf(k, len(scores), alpha) <= delta


def test_candidate_counts_match_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 10, size=100) / 10  # many ties
    disagree = rng.uniform(size=100) < 0.3
    thresholds, n_accepted, n_disagree = candidate_counts(scores, disagree)
    for t, a, d in zip(thresholds, n_accepted, n_disagree, strict=True):
        assert a == (scores >= t).sum()
        assert d == ((scores >= t) & disagree).sum()


def _true_risk(tau: float) -> float:
    """Population: s ~ U(0, 1), P(disagree | s) = 0.6 (1 - s)^2, so R(τ) = 0.2 (1 - τ)^3."""
    if not math.isfinite(tau):
        return 0.0
    return 0.2 * (1 - tau) ** 3


@pytest.mark.parametrize("p_value", ["binomial", "hoeffding_bentkus"])
def test_guarantee_holds_over_resampled_calibration_sets(p_value):
    """P(R(τ̂) > α) <= δ, checked over many calibration draws from a known population."""
    alpha, delta, n, trials = 0.1, 0.1, 500, 500
    rng = np.random.default_rng(2026)
    risks = []
    for _ in range(trials):
        scores = rng.uniform(size=n)
        disagree = rng.uniform(size=n) < 0.6 * (1 - scores) ** 2
        fitted = LearnThenTest(alpha, delta, p_value).fit(scores, disagree)
        risks.append(_true_risk(fitted.threshold_))
    risks = np.array(risks)
    violations = int((risks > alpha).sum())
    # violations ~ Bin(trials, p) with p <= δ: allow the 99.9% binomial quantile as slack
    assert violations <= binom.ppf(0.999, trials, delta)
    # and the threshold is useful, not trivially strict: the realised risk gets near α
    assert np.median(risks) > alpha / 2


def test_hoeffding_bentkus_is_valid_and_never_below_the_exact_binomial():
    k = np.arange(0, 201)
    hb = hoeffding_bentkus_p_values(k, 200, 0.1)
    exact = binomial_p_values(k, 200, 0.1)
    assert np.all(hb >= exact - 1e-12) and np.all(hb <= 1.0)
    assert np.all(hb[k >= 20] == 1.0)  # R̂ >= α: nothing to reject
    assert np.all(np.diff(hb) >= -1e-12)  # more disagreements, less evidence
    assert hb[0] < 1e-4  # no disagreement in 200 rows is strong evidence that R <= 0.1
    with pytest.raises(ValueError, match="p_value"):
        LearnThenTest(p_value="wald")


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.33, 0.5, 1.0])
def test_target_deferral_defers_the_share_asked_for(rate):
    scores = np.random.default_rng(1).uniform(size=300)
    fitted = TargetDeferral(rate).fit(scores)
    assert fitted.calib_deferral_rate_ == pytest.approx(math.ceil(rate * 300 - 1e-9) / 300)
    assert (~fitted.accept(scores)).mean() == pytest.approx(fitted.calib_deferral_rate_)


def test_target_deferral_keeps_tied_scores_together():
    scores = np.array([0.1, 0.5, 0.5, 0.5, 0.9])
    fitted = TargetDeferral(0.4).fit(scores)  # 2 of 5, but the second ties with two more
    assert fitted.threshold_ == 0.9 and fitted.calib_deferral_rate_ == 0.8


def test_cost_budget_spends_at_most_the_budget_and_more_buys_more_deferral():
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=400)
    student = np.full(400, 0.0001)
    teacher = rng.uniform(0.001, 0.003, size=400)
    floor = student.sum() / 400 * 1000  # every request pays the student
    previous = -1.0
    for budget in (floor / 2, floor, 0.3, 0.8, 1.5, 10.0):
        fitted = CostBudget(budget).fit(scores, student, teacher)
        spent = (student.sum() + teacher[~fitted.accept(scores)].sum()) / 400 * 1000
        assert spent == pytest.approx(fitted.calib_usd_per_1000_)
        if budget >= floor:
            assert spent <= budget + 1e-9
        assert fitted.calib_deferral_rate_ >= previous
        previous = fitted.calib_deferral_rate_
    assert CostBudget(floor / 2).fit(scores, student, teacher).calib_deferral_rate_ == 0.0
    assert CostBudget(10.0).fit(scores, student, teacher).threshold_ == math.inf


def test_expected_calibration_error():
    rng = np.random.default_rng(4)
    confidence = rng.uniform(size=20000)
    calibrated = rng.uniform(size=20000) < confidence
    ece, table = expected_calibration_error(confidence, calibrated)
    assert ece < 0.02 and sum(row["n"] for row in table) == 20000
    overconfident, _ = expected_calibration_error(np.full(100, 0.9), np.arange(100) < 60)
    assert overconfident == pytest.approx(0.3)


def test_temperature_scaling_recovers_an_overconfident_student():
    from eval.calibration import TemperatureScaling, apply_temperature

    rng = np.random.default_rng(5)
    n, k = 4000, 5
    true_logits = rng.normal(size=(n, k)) * 1.5
    true_probs = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(k, p=p) for p in true_probs])
    overconfident = apply_temperature(true_probs, 1 / 3)  # logits x3
    fitted = TemperatureScaling().fit(overconfident, targets)
    assert fitted.temperature_ == pytest.approx(3.0, rel=0.1)
    assert fitted.nll_after_ < fitted.nll_before_
    scaled = fitted.transform(overconfident)
    assert (scaled.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    agree = overconfident.argmax(axis=1) == targets
    before, _ = expected_calibration_error(overconfident.max(axis=1), agree)
    after, _ = expected_calibration_error(scaled.max(axis=1), agree)
    assert after < before / 2
