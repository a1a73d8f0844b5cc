"""Per-label thresholds, tiers and the learned score: their contracts, and the guarantee of
each guaranteed mode checked over 500 calibration sets drawn from a synthetic population."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from eval.calibration import OTHER_GROUP, PerLabelLearnThenTest, per_label_thresholds
from eval.curves import point_from_accepted, random_summary
from eval.learned import LearnedDeferral, auroc, oov_rate, vocabulary
from eval.tiers import ParetoTesting, evaluate_tiers, outcome, pareto_front, route

TRIALS = 500


def _slack(trials: int, delta: float) -> float:
    """Violations ~ Bin(trials, p) with p <= δ: the 99.9% quantile as the allowed count."""
    return binom.ppf(0.999, trials, delta)


# ── per-label thresholds ────────────────────────────────────────────────────────────────
def _label_population(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = rng.choice(["a", "b", "c", "rare1", "rare2"], size=n, p=[0.4, 0.3, 0.2, 0.05, 0.05])
    scores = rng.uniform(size=n)
    hardness = {"a": 0.3, "b": 0.6, "c": 0.9, "rare1": 0.8, "rare2": 0.5}
    base = np.array([hardness[label] for label in labels])
    disagree = rng.uniform(size=n) < base * (1 - scores) ** 1.5
    return scores, disagree, labels


def test_per_label_groups_rare_labels_and_splits_delta():
    rng = np.random.default_rng(0)
    scores, disagree, labels = _label_population(2000, rng)
    fitted = PerLabelLearnThenTest(0.1, 0.1, min_examples=200).fit(scores, disagree, labels)
    assert fitted.groups_ == {"a": "a", "b": "b", "c": "c",
                              "rare1": OTHER_GROUP, "rare2": OTHER_GROUP}  # fmt: skip
    assert set(fitted.thresholds_) == {"a", "b", "c", OTHER_GROUP}
    assert fitted.delta_per_group_ == pytest.approx(0.1 / 4)
    # the easy label may answer more than the hard one
    assert fitted.thresholds_["a"] <= fitted.thresholds_["c"]
    # a label never seen on calib faces the pooled threshold
    unseen = fitted.threshold_for(np.array(["zzz"]))
    assert unseen[0] == fitted.thresholds_[OTHER_GROUP]
    # the helper used at evaluation time gives the same thresholds from plain JSON values
    as_json = {g: (None if math.isinf(t) else t) for g, t in fitted.thresholds_.items()}
    assert np.array_equal(
        per_label_thresholds(labels, fitted.groups_, as_json), fitted.threshold_for(labels)
    )


def test_per_label_refuses_bad_settings_and_unfitted_use():
    with pytest.raises(ValueError):
        PerLabelLearnThenTest(min_examples=0)
    with pytest.raises(ValueError):
        PerLabelLearnThenTest(alpha=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        PerLabelLearnThenTest().accept(np.array([0.5]), np.array(["a"]))


def test_per_label_guarantee_holds_for_every_label_at_once():
    """With probability >= 1 - δ, every label's risk is <= α simultaneously."""
    alpha, delta = 0.1, 0.1
    rng = np.random.default_rng(7)
    population = _label_population(200_000, rng)
    scores, disagree, labels = population
    masks = {label: labels == label for label in np.unique(labels)}
    worst = []
    for _ in range(TRIALS):
        idx = rng.choice(len(scores), 1500, replace=False)
        fitted = PerLabelLearnThenTest(alpha, delta, min_examples=150).fit(
            scores[idx], disagree[idx], labels[idx]
        )
        accepted = fitted.accept(scores, labels)
        worst.append(max(np.mean(accepted[m] & disagree[m]) for m in masks.values()))
    worst = np.array(worst)
    violations = int((worst > alpha).sum())
    assert violations <= _slack(TRIALS, delta)
    assert np.median(worst) > alpha / 3  # useful, not trivially strict


# ── tiers ───────────────────────────────────────────────────────────────────────────────
def test_route_and_outcome_match_a_request_by_request_walk():
    rng = np.random.default_rng(1)
    n = 50
    scores = [rng.uniform(size=n), rng.uniform(size=n)]
    disagree = [rng.uniform(size=n) < 0.3, rng.uniform(size=n) < 0.2]
    costs = [np.full(n, 1.0), np.full(n, 10.0)]
    teacher = np.full(n, 100.0)
    thresholds = (0.6, 0.3)
    answered_by = route(scores, thresholds)
    departs, cost = outcome(answered_by, disagree, costs, teacher)
    for i in range(n):
        paid, who = 0.0, 2
        for k in range(2):
            paid += costs[k][i]
            if scores[k][i] >= thresholds[k]:
                who = k
                break
        else:
            paid += teacher[i]
        assert answered_by[i] == who
        assert cost[i] == paid
        assert departs[i] == (who < 2 and disagree[who][i])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=40))
def test_pareto_front_is_exactly_the_non_dominated_points(points):
    risk = np.array([p[0] for p in points], dtype=float)
    cost = np.array([p[1] for p in points], dtype=float)
    front = pareto_front(risk, cost)
    assert list(risk[front]) == sorted(risk[front])  # ordered from least risky
    for i in range(len(points)):
        dominated = any(
            risk[j] <= risk[i] and cost[j] <= cost[i] and (risk[j] < risk[i] or cost[j] < cost[i])
            for j in range(len(points))
        )
        on_front = i in set(front.tolist())
        if dominated:
            assert not on_front
    # one representative of every non-dominated (risk, cost) pair
    undominated = {
        (risk[i], cost[i]) for i in range(len(points))
        if not any(risk[j] <= risk[i] and cost[j] <= cost[i]
                   and (risk[j] < risk[i] or cost[j] < cost[i]) for j in range(len(points)))
    }  # fmt: skip
    assert {(risk[i], cost[i]) for i in front} == undominated


def _tier_population(n: int, rng):
    """A cheap weak student and a dearer, better one; scores carry real signal."""
    s1 = rng.uniform(size=n)
    d1 = rng.uniform(size=n) < 0.7 * (1 - s1) ** 1.2
    s2 = np.clip(0.4 * s1 + 0.6 * rng.uniform(size=n), 0, 1)
    d2 = rng.uniform(size=n) < 0.4 * (1 - s2) ** 1.5
    costs = [np.full(n, 0.001), np.full(n, 0.01)]
    return [s1, s2], [d1, d2], costs, np.full(n, 0.1)


def test_pareto_testing_guarantee_holds_end_to_end():
    alpha, delta = 0.1, 0.1
    rng = np.random.default_rng(11)
    scores, disagree, costs, teacher = _tier_population(100_000, rng)
    risks, savings, middle = [], [], []
    for trial in range(TRIALS):
        idx = rng.choice(len(teacher), 600, replace=False)
        fitted = ParetoTesting(alpha, delta, grid=10, seed=trial).fit(
            [s[idx] for s in scores], [d[idx] for d in disagree],
            [c[idx] for c in costs], teacher[idx],
        )  # fmt: skip
        answered_by = fitted.route(scores)
        departs, cost = outcome(answered_by, disagree, costs, teacher)
        risks.append(departs.mean())
        savings.append(1 - cost.mean() / teacher.mean())
        middle.append(np.mean(answered_by == 1))
    risks = np.array(risks)
    assert int((risks > alpha).sum()) <= _slack(TRIALS, delta)
    assert np.median(savings) > 0.3  # it saves, not just defers everything
    assert np.median(middle) > 0.05  # and the middle tier earns its place


def test_pareto_testing_defers_everything_when_nothing_can_be_certified():
    n = 40
    scores = [np.linspace(0, 1, n), np.linspace(0, 1, n)]
    always_wrong = [np.ones(n, dtype=bool), np.ones(n, dtype=bool)]
    costs = [np.full(n, 0.001), np.full(n, 0.01)]
    fitted = ParetoTesting(0.01, 0.05, grid=5).fit(scores, always_wrong, costs, np.full(n, 0.1))
    assert fitted.thresholds_ == (math.inf, math.inf)
    assert fitted.calib_share_[-1] == 1.0  # the teacher answers everything
    with pytest.raises(ValueError):
        ParetoTesting().fit(scores[:1], always_wrong, costs, np.full(n, 0.1))


def test_evaluate_tiers_reports_shares_cost_and_accuracy():
    student = np.array(["a", "b", "a", "b"], dtype=object)
    middle = np.array(["a", "a", "b", "b"], dtype=object)
    teacher = np.array(["a", "a", "a", "b"], dtype=object)
    gold = np.array(["a", "a", "a", "a"], dtype=object)
    scores = [np.array([0.9, 0.1, 0.1, 0.1]), np.array([0.0, 0.8, 0.1, 0.1])]
    costs = [np.full(4, 1.0), np.full(4, 2.0)]
    result = evaluate_tiers(["s", "m"], [0.5, 0.5], scores, [student, middle], teacher,
                            costs, np.full(4, 10.0), gold)  # fmt: skip
    assert result["share_answered"] == {"s": 0.25, "m": 0.25, "teacher": 0.5}
    assert result["risk"] == 0.0 and result["agreement"] == 1.0
    assert result["accuracy"] == 0.75  # the teacher's "b" on the last row is wrong
    assert result["cost_usd_per_request"] == pytest.approx((1 + 3 + 13 + 13) / 4)
    assert result["savings_rate"] == pytest.approx(1 - 7.5 / 10)


# ── the learned score ───────────────────────────────────────────────────────────────────
def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    positive = rng.uniform(size=60) < 0.4
    pairs = [
        1.0 if p > q else 0.5 if p == q else 0.0
        for p, q in product(scores[positive], scores[~positive])
    ]
    assert auroc(scores, positive) == pytest.approx(np.mean(pairs))
    assert auroc(scores, np.ones(60, dtype=bool)) == 0.5


def test_oov_rate_counts_words_missing_from_the_train_vocabulary():
    vocab = vocabulary(["My card was declined", "card blocked!"])
    assert vocab == {"my", "card", "was", "declined", "blocked"}
    rates = oov_rate(["CARD declined today", "", "zzz"], vocab)
    assert rates.tolist() == pytest.approx([1 / 3, 0.0, 1.0])


def test_learned_score_finds_the_signal_and_ignores_noise():
    rng = np.random.default_rng(5)
    n = 4000
    signal, noise, length = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    # agreement depends on the signal and, negatively, on length; not on noise
    agree = rng.uniform(size=n) < 1 / (1 + np.exp(-(2 * signal - 1 * length)))
    x = np.c_[signal, noise, length]
    model = LearnedDeferral(feature_names=["signal", "noise", "length"]).fit(x[:2000], agree[:2000])
    assert model.coef_[0] > 1 and model.coef_[2] < -0.5 and abs(model.coef_[1]) < 0.2
    held = slice(2000, None)
    assert auroc(model.predict(x[held]), agree[held]) > auroc(signal[held], agree[held]) + 0.03
    again = LearnedDeferral.from_dict(model.to_dict())
    assert np.allclose(again.predict(x), model.predict(x))
    assert model.l2_ in LearnedDeferral.L2_GRID


def test_learned_score_guarantee_holds_with_its_own_fit_share():
    """The scorer is fitted on one half of each calibration draw and Learn-then-Test runs on
    the other: the guarantee must still hold."""
    from eval.calibration import LearnThenTest

    alpha, delta = 0.1, 0.1
    rng = np.random.default_rng(13)
    n_pop = 100_000
    s, length = rng.uniform(size=n_pop), rng.normal(size=n_pop)
    disagree = rng.uniform(size=n_pop) < 0.8 / (1 + np.exp(6 * s - 2 - 1.5 * length))
    x = np.c_[s, length]
    risks = []
    for _ in range(TRIALS):
        idx = rng.choice(n_pop, 800, replace=False)
        fit, test = idx[:400], idx[400:]
        model = LearnedDeferral(1.0).fit(x[fit], ~disagree[fit])
        ltt = LearnThenTest(alpha, delta).fit(model.predict(x[test]), disagree[test])
        accepted = model.predict(x) >= ltt.threshold_
        risks.append(np.mean(accepted & disagree))
    risks = np.array(risks)
    assert int((risks > alpha).sum()) <= _slack(TRIALS, delta)
    assert np.median(risks) > alpha / 3


# ── the evaluation helpers ──────────────────────────────────────────────────────────────
def test_point_from_accepted_and_random_summary():
    student = np.array(["a", "b", "c", "d"], dtype=object)
    teacher = np.array(["a", "x", "c", "d"], dtype=object)
    point = point_from_accepted(np.array([True, True, False, False]), student, teacher,
                                np.full(4, 1.0), np.full(4, 9.0), None, 0.5)  # fmt: skip
    assert point.deferral_rate == 0.5 and point.risk == 0.25 and point.agreement == 0.75
    assert point.cost_usd == pytest.approx(5.5)
    assert point.savings_rate == pytest.approx(1 - 5.5 / 9)
    rand = random_summary("accuracy", 0.7, 0.8, 0.0, 1.0, (0.5, 0.8), tolerance=0.01)
    assert rand.apgr == 0.5 and rand.cpt == {"0.5": 0.5, "0.8": 0.8}
    assert rand.auc == pytest.approx(0.75)
    assert rand.matched_deferral_rate == pytest.approx(0.9)
    assert rand.savings_at_matched_quality == pytest.approx(0.1)
