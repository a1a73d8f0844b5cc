"""The drift audit: false alarms under H0 read after every observation, power, anytime
coverage of the bounds, the estimator's contract, and the threshold raise after an alarm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from eval.drift import DriftAudit, audit_path, raised_threshold


def allowed_count(trials: int, delta: float) -> int:
    """Streams allowed to fail when each fails with probability <= δ: Bin's 99.9% quantile."""
    return int(binom.ppf(0.999, trials, delta))


# --- anytime validity ------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.08, 0.1])
def test_false_alarms_stay_below_delta_when_read_after_every_observation(p):
    limit, delta, trials, length = 0.1, 0.1, 300, 2000
    rng = np.random.default_rng(int(p * 1000))
    streams = rng.random((trials, length)) < p
    alarmed = 0
    for stream in streams:
        audit = DriftAudit(limit, delta)
        for departed in stream.tolist():
            audit.update(departed)
            if audit.alarm:  # read after every observation: once on, it stays on
                alarmed += 1
                break
    # measured: 3 / 300 streams at p = 0.08, 14 / 300 at p = limit; 47 allowed (δ = 10%)
    assert alarmed <= allowed_count(trials, delta)


def test_alarm_trips_soon_when_the_rate_doubles():
    limit, delta, trials, length = 0.05, 0.05, 300, 2000
    rng = np.random.default_rng(1)
    alarm_at = []
    for stream in rng.random((trials, length)) < 2 * limit:
        audit = DriftAudit(limit, delta)
        audit.update_many(stream)
        alarm_at.append(audit.alarm_at if audit.alarm else math.inf)
    alarm_at = np.array(alarm_at)
    assert np.isfinite(alarm_at).mean() >= 0.99
    assert np.all(alarm_at >= 20)  # min_samples
    assert np.median(alarm_at) < 400  # measured: median 174, slowest 990 observations


def test_bounds_cover_the_rate_at_all_times():
    limit, delta, trials, length, p = 0.1, 0.1, 150, 1000, 0.1
    rng = np.random.default_rng(2)
    upper_misses = lower_misses = 0
    for stream in rng.random((trials, length)) < p:
        path = audit_path(stream, limit, delta)
        assert np.all((path.lower_bound >= 0) & (path.upper_bound <= 1))
        assert np.all((path.lower_bound <= path.rate) & (path.rate <= path.upper_bound))
        upper_misses += bool(np.any(path.upper_bound < p))
        lower_misses += bool(np.any(path.lower_bound > p))
    # measured: 6 / 150 streams above the upper bound, 9 / 150 below the lower; 27 allowed
    assert upper_misses <= allowed_count(trials, delta)
    assert lower_misses <= allowed_count(trials, delta)
    assert path.upper_bound[-1] - path.lower_bound[-1] < 0.1  # and they do narrow


def test_bounds_narrow_around_a_small_rate():
    rng = np.random.default_rng(3)
    audit = DriftAudit(limit=0.1)
    audit.update_many(rng.random(20_000) < 0.02)
    assert audit.lower_bound <= 0.02 <= audit.upper_bound
    assert audit.upper_bound < 0.03
    assert not audit.alarm


# --- the alarm and the bounds agree; the replay is the audit ------------------------------


def test_the_alarm_trips_when_the_lower_bound_reaches_the_limit():
    limit = 0.1
    rng = np.random.default_rng(4)
    for _ in range(20):
        path = audit_path(rng.random(600) < 0.2, limit, delta=0.05, min_samples=20)
        assert path.alarm_at is not None
        reached = (path.lower_bound >= limit) & (np.arange(1, 601) >= 20)
        assert path.alarm_at == int(np.argmax(reached)) + 1
        assert np.array_equal(path.alarm, np.arange(1, 601) >= path.alarm_at)


def test_the_replay_shows_what_the_audit_shows_after_each_observation():
    rng = np.random.default_rng(5)
    stream = rng.random(300) < 0.15
    path = audit_path(stream, limit=0.1, delta=0.1)
    audit = DriftAudit(limit=0.1, delta=0.1)
    for t, departed in enumerate(stream):
        audit.update(departed)
        assert audit.n == t + 1
        assert audit.rate == pytest.approx(path.rate[t])
        assert audit.lower_bound == path.lower_bound[t]
        assert audit.upper_bound == path.upper_bound[t]
        assert audit.log_capital == pytest.approx(path.log_capital[t], abs=1e-9)
        assert audit.alarm == path.alarm[t]


def test_update_many_is_repeated_update():
    rng = np.random.default_rng(6)
    stream = rng.random(5000) < 0.13
    one_by_one, in_chunks = DriftAudit(0.1, 0.1), DriftAudit(0.1, 0.1)
    for departed in stream:
        one_by_one.update(bool(departed))
    for chunk in np.array_split(stream, [1, 7, 400, 401, 3000]):
        in_chunks.update_many(chunk)
    assert in_chunks.n == one_by_one.n == 5000
    assert in_chunks.rate == one_by_one.rate
    assert in_chunks.alarm_at == one_by_one.alarm_at is not None
    assert in_chunks.log_capital == pytest.approx(one_by_one.log_capital, abs=1e-9)
    assert in_chunks.lower_bound == one_by_one.lower_bound
    assert in_chunks.upper_bound == one_by_one.upper_bound
    in_chunks.update_many(np.array([], dtype=bool))
    assert in_chunks.n == 5000


# --- the contract -------------------------------------------------------------------------


def test_min_samples_holds_the_alarm_back():
    for min_samples in (0, 50):
        audit = DriftAudit(limit=0.1, delta=0.05, min_samples=min_samples)
        for t in range(1, 101):
            audit.update(True)  # every answer departs: p = 1
            if t < min_samples:
                assert not audit.alarm
        assert audit.alarm
        if min_samples == 0:
            assert audit.alarm_at < 50  # it would have tripped early...
        else:
            assert audit.alarm_at == 50  # ...but waits for min_samples


def test_reset_starts_a_new_stream():
    rng = np.random.default_rng(7)
    after = rng.random(500) < 0.05
    audit = DriftAudit(limit=0.1)
    audit.update_many(np.ones(100, dtype=bool))
    assert audit.alarm
    audit.reset()
    assert (audit.n, audit.alarm, audit.alarm_at, audit.log_capital) == (0, False, None, 0.0)
    assert math.isnan(audit.rate)
    assert (audit.lower_bound, audit.upper_bound) == (0.0, 1.0)
    audit.update_many(after)
    fresh = DriftAudit(limit=0.1)
    fresh.update_many(after)
    assert (audit.n, audit.rate, audit.alarm) == (fresh.n, fresh.rate, fresh.alarm)
    assert (audit.lower_bound, audit.upper_bound) == (fresh.lower_bound, fresh.upper_bound)


@pytest.mark.parametrize(
    "settings_",
    [
        {"limit": 0.0},
        {"limit": 1.0},
        {"limit": -0.1},
        {"limit": 1.5},
        {"limit": 0.1, "delta": 0.0},
        {"limit": 0.1, "delta": 1.0},
        {"limit": 0.1, "min_samples": -1},
        {"limit": 0.1, "min_samples": 2.5},
    ],
)
def test_settings_are_checked(settings_):
    with pytest.raises(ValueError):
        DriftAudit(**settings_)


def test_observations_are_checked():
    audit = DriftAudit(limit=0.1)
    for bad in (2, 0.5, None, float("nan")):
        with pytest.raises(ValueError):
            audit.update(bad)
    with pytest.raises(ValueError):
        audit.update_many(np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        audit.update_many(np.zeros((2, 2), dtype=bool))
    assert audit.n == 0
    audit.update_many([1, 0, True, False])  # 0/1 and bools both count
    assert (audit.n, audit.rate) == (4, 0.5)


# --- raising the threshold after an alarm -------------------------------------------------


def test_raised_threshold_defers_the_least_confident_share_of_the_accepted():
    rng = np.random.default_rng(8)
    scores = rng.uniform(0, 1, 10_000)
    raised = raised_threshold(0.5, scores, step_quantile=0.2)
    assert raised > 0.5
    accepted = scores[scores >= 0.5]
    assert np.mean(accepted < raised) == pytest.approx(0.2, abs=0.01)


def test_raised_threshold_without_accepted_scores_keeps_the_current_one():
    assert raised_threshold(0.7, np.array([])) == 0.7
    assert raised_threshold(0.7, np.array([0.1, 0.69])) == 0.7
    assert raised_threshold(math.inf, np.array([0.9, 1.0])) == math.inf


def test_raised_threshold_moves_past_ties_at_the_current_one():
    scores = np.array([0.6] * 8 + [0.8, 0.9])
    assert raised_threshold(0.6, scores) == 0.8
    assert raised_threshold(0.9, np.array([0.9, 0.9])) == 0.9  # nothing above: no move


def test_raised_threshold_checks_its_inputs():
    with pytest.raises(ValueError):
        raised_threshold(0.5, np.array([0.6]), step_quantile=0.0)
    with pytest.raises(ValueError):
        raised_threshold(0.5, np.array([0.6]), step_quantile=1.0)
    with pytest.raises(ValueError):
        raised_threshold(0.5, np.array([0.6, np.nan]))
    with pytest.raises(ValueError):
        raised_threshold(float("nan"), np.array([0.6]))


@settings(max_examples=200, deadline=None)
@given(
    current=st.floats(-2, 2),
    scores=st.lists(st.floats(-2, 2), max_size=50),
    step_quantile=st.floats(0.01, 0.99),
)
def test_raised_threshold_never_lowers_and_stays_among_the_seen(current, scores, step_quantile):
    raised = raised_threshold(current, np.array(scores), step_quantile)
    assert raised >= current
    accepted = [s for s in scores if s >= current]
    if raised > current:
        assert min(accepted) <= raised <= max(accepted)
