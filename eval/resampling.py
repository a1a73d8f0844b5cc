"""Check a guarantee empirically: draw many calibration sets from a fixed population, fit on
each, and count how often the true risk (on the whole population) exceeds α.

For a mode that guarantees P(R > α) <= δ, the count of violations over `trials` independent
draws is Binomial(trials, p) with p <= δ, so it should stay below that law's 99.9% quantile
(`allowed_violations`). Calibration sets are drawn with replacement: i.i.d. draws from the
population's empirical distribution, under which the population share is the true risk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom


@dataclass(frozen=True)
class GuaranteeCheck:
    trials: int
    n_calib: int
    alpha: float
    delta: float
    violations: int
    allowed_violations: int
    median_risk: float

    @property
    def violation_rate(self) -> float:
        return self.violations / self.trials

    @property
    def holds(self) -> bool:
        return self.violations <= self.allowed_violations


def allowed_violations(trials: int, delta: float, quantile: float = 0.999) -> int:
    return int(binom.ppf(quantile, trials, delta))


def check_guarantee(
    fit_and_risk: Callable[[np.ndarray, int], float],
    population_size: int,
    n_calib: int,
    alpha: float,
    delta: float,
    trials: int = 500,
    seed: int = 0,
) -> GuaranteeCheck:
    """`fit_and_risk(rows, trial)` fits on the population rows `rows` (indices, with
    repeats) and returns the fitted cascade's true risk on the whole population."""
    rng = np.random.default_rng(seed)
    risks = np.array(
        [fit_and_risk(rng.integers(0, population_size, n_calib), t) for t in range(trials)]
    )
    return GuaranteeCheck(
        trials=trials,
        n_calib=n_calib,
        alpha=alpha,
        delta=delta,
        violations=int((risks > alpha + 1e-12).sum()),
        allowed_violations=allowed_violations(trials, delta),
        median_risk=float(np.median(risks)),
    )


__all__ = ["GuaranteeCheck", "allowed_violations", "check_guarantee"]
