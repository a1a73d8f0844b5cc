"""Learn-then-Test threshold selection: the contract, the scan, and the guarantee itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from eval.calibration import LearnThenTest, candidate_counts


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


def test_guarantee_holds_over_resampled_calibration_sets():
    """P(R(τ̂) > α) <= δ, checked over many calibration draws from a known population."""
    alpha, delta, n, trials = 0.1, 0.1, 500, 400
    rng = np.random.default_rng(2026)
    risks = []
    for _ in range(trials):
        scores = rng.uniform(size=n)
        disagree = rng.uniform(size=n) < 0.6 * (1 - scores) ** 2
        risks.append(_true_risk(LearnThenTest(alpha, delta).fit(scores, disagree).threshold_))
    risks = np.array(risks)
    violations = int((risks > alpha).sum())
    # violations ~ Bin(trials, p) with p <= δ: allow the 99.9% binomial quantile as slack
    assert violations <= binom.ppf(0.999, trials, delta)
    # and the threshold is useful, not trivially strict: the realised risk gets near α
    assert np.median(risks) > alpha / 2
