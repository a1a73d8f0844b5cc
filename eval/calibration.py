"""Threshold selection with a finite-sample guarantee (Learn-then-Test, fixed sequence).

The cascade lets the student answer when its score s >= τ and defers to the teacher otherwise.
Risk R(τ) = P(s >= τ and student != teacher): the share of all traffic on which the cascade
departs from the teacher. `LearnThenTest(alpha, delta).fit(scores, disagree)` scans τ from
strict to loose on the calibration split, tests H0: R(τ) > α at each τ with the exact binomial
p-value P(Bin(n, α) <= k), stops at the first τ it cannot reject at level δ, and keeps the
loosest rejected τ. Then P(R(τ̂) <= α) >= 1 - δ over draws of the calibration set.

Pure numpy/scipy: arrays in, a fitted estimator out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom


@dataclass(frozen=True)
class ThresholdScan:
    """The fixed-sequence test, one row per candidate τ (strict to loose) up to the stop."""

    thresholds: np.ndarray  # (m,) candidate τ, descending
    n_accepted: np.ndarray  # (m,) calib rows with s >= τ
    n_disagree: np.ndarray  # (m,) of those, rows where student != teacher (the k of the test)
    p_values: np.ndarray  # (m,) P(Bin(n, α) <= k)
    rejected: np.ndarray  # (m,) bool: H0 rejected at level δ


def binomial_p_values(n_disagree: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Exact p-values of H0: R > α given k disagreements among n calibration rows."""
    return binom.cdf(np.asarray(n_disagree), n, alpha)


def candidate_counts(
    scores: np.ndarray, disagree: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with, for each, the accepted and disagreeing counts."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    cum_disagree = np.cumsum(disagree[order])
    # the last index of each run of equal scores: everything up to it has s >= that score
    is_last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    thresholds = sorted_scores[is_last]
    n_accepted = np.nonzero(is_last)[0] + 1
    n_disagree = cum_disagree[is_last]
    return thresholds, n_accepted, n_disagree


class LearnThenTest:
    """Choose τ so that the share of traffic departing from the teacher is <= α w.p. 1 - δ.

    Follows scikit-learn's contract: settings in __init__, `fit` returns self, learned state
    ends in `_`. `threshold_` is +inf when no τ could be certified (then every request defers).
    """

    def __init__(self, alpha: float = 0.1, delta: float = 0.1) -> None:
        if not 0 < alpha < 1 or not 0 < delta < 1:
            raise ValueError(f"alpha and delta must be in (0, 1), got {alpha}, {delta}")
        self.alpha = alpha
        self.delta = delta

    def fit(self, scores: np.ndarray, disagree: np.ndarray) -> LearnThenTest:
        """Fit on calibration rows: student scores and whether the student departs (bool)."""
        scores = np.asarray(scores, dtype=float)
        disagree = np.asarray(disagree, dtype=bool)
        if scores.shape != disagree.shape or scores.ndim != 1:
            raise ValueError("scores and disagree must be 1-D arrays of the same length")
        if len(scores) == 0:
            raise ValueError("cannot calibrate on an empty calibration set")
        if not np.all(np.isfinite(scores)):
            raise ValueError("scores must be finite")
        n = len(scores)
        thresholds, n_accepted, n_disagree = candidate_counts(scores, disagree)
        p_values = binomial_p_values(n_disagree, n, self.alpha)
        rejected = p_values <= self.delta
        # fixed sequence: stop at the first τ whose null cannot be rejected
        stop = int(np.argmin(rejected)) if not rejected.all() else len(rejected)
        self.scan_ = ThresholdScan(
            thresholds=thresholds[: stop + 1],
            n_accepted=n_accepted[: stop + 1],
            n_disagree=n_disagree[: stop + 1],
            p_values=p_values[: stop + 1],
            rejected=rejected[: stop + 1],
        )
        self.n_calib_ = n
        if stop == 0:
            self.threshold_ = float("inf")
            self.calib_risk_ = 0.0
            self.calib_deferral_rate_ = 1.0
        else:
            self.threshold_ = float(thresholds[stop - 1])
            self.calib_risk_ = float(n_disagree[stop - 1]) / n
            self.calib_deferral_rate_ = 1.0 - float(n_accepted[stop - 1]) / n
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("this LearnThenTest is not fitted yet: call fit(scores, disagree)")

    def accept(self, scores: np.ndarray) -> np.ndarray:
        """True where the student answers (s >= τ), False where the request defers."""
        self._check_fitted()
        return np.asarray(scores, dtype=float) >= self.threshold_
