"""Threshold selection with a finite-sample guarantee (Learn-then-Test, fixed sequence).

The cascade lets the student answer when its score s >= τ and defers to the teacher otherwise.
Risk R(τ) = P(s >= τ and student != teacher): the share of all traffic on which the cascade
departs from the teacher. `LearnThenTest(alpha, delta).fit(scores, disagree)` scans τ from
strict to loose on the calibration split, tests H0: R(τ) > α at each τ with the exact binomial
p-value P(Bin(n, α) <= k), stops at the first τ it cannot reject at level δ, and keeps the
loosest rejected τ. Then P(R(τ̂) <= α) >= 1 - δ over draws of the calibration set.
`p_value="hoeffding_bentkus"` uses the Hoeffding–Bentkus p-value instead (Bates et al.,
2021): valid for any loss in [0, 1], never smaller than the exact binomial one here.

Without a guarantee: `TargetDeferral(rate)` defers the least confident `rate` of traffic (the
quantile rule) and `CostBudget(usd_per_1000)` defers as much as a budget pays for.

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


def hoeffding_bentkus_p_values(n_disagree: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """min(exp(-n h(R̂ ∧ α, α)), e · P(Bin(n, α) <= k)), with h the Bernoulli KL divergence
    and R̂ = k / n: the Hoeffding–Bentkus p-value of H0: R > α."""
    k = np.asarray(n_disagree, dtype=float)
    r = np.minimum(k / n, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(r > 0, r * np.log(r / alpha), 0.0) + (1 - r) * np.log((1 - r) / (1 - alpha))
    hoeffding = np.exp(-n * h)
    bentkus = np.e * binom.cdf(k, n, alpha)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


P_VALUES = {"binomial": binomial_p_values, "hoeffding_bentkus": hoeffding_bentkus_p_values}


class LearnThenTest:
    """Choose τ so that the share of traffic departing from the teacher is <= α w.p. 1 - δ.

    Follows scikit-learn's contract: settings in __init__, `fit` returns self, learned state
    ends in `_`. `threshold_` is +inf when no τ could be certified (then every request defers).
    """

    def __init__(self, alpha: float = 0.1, delta: float = 0.1, p_value: str = "binomial") -> None:
        if not 0 < alpha < 1 or not 0 < delta < 1:
            raise ValueError(f"alpha and delta must be in (0, 1), got {alpha}, {delta}")
        if p_value not in P_VALUES:
            raise ValueError(f"p_value must be one of {sorted(P_VALUES)}, got {p_value!r}")
        self.alpha = alpha
        self.delta = delta
        self.p_value = p_value

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
        p_values = P_VALUES[self.p_value](n_disagree, n, self.alpha)
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


OTHER_GROUP = "__other__"  # labels with too few calibration rows, pooled


class PerLabelLearnThenTest:
    """One Learn-then-Test threshold per predicted label, the guarantee holding for each.

    Rows are grouped by the student's predicted label (known when a request arrives). A label
    with at least `min_examples` calibration rows gets its own threshold; rarer labels share
    one pooled group. Each of the G groups is tested at level δ / G (Bonferroni), so with
    probability >= 1 - δ every group's risk, P(accepted and departing | group), is <= α at
    once; the overall risk, a mixture of the groups', is then <= α too.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        delta: float = 0.1,
        p_value: str = "binomial",
        min_examples: int = 100,
    ) -> None:
        LearnThenTest(alpha, delta, p_value)  # validates the settings
        if min_examples < 1:
            raise ValueError(f"min_examples must be >= 1, got {min_examples}")
        self.alpha = alpha
        self.delta = delta
        self.p_value = p_value
        self.min_examples = min_examples

    def fit(
        self, scores: np.ndarray, disagree: np.ndarray, labels: np.ndarray
    ) -> PerLabelLearnThenTest:
        scores = np.asarray(scores, dtype=float)
        disagree = np.asarray(disagree, dtype=bool)
        labels = np.asarray(labels, dtype=object)
        if not (scores.shape == disagree.shape == labels.shape) or scores.ndim != 1:
            raise ValueError("scores, disagree and labels must be 1-D of the same length")
        names, counts = np.unique(labels.astype(str), return_counts=True)
        own = sorted(str(n) for n, c in zip(names, counts, strict=True) if c >= self.min_examples)
        self.groups_ = {str(n): (str(n) if str(n) in own else OTHER_GROUP) for n in names}
        group_of = np.array([self.groups_[str(label)] for label in labels], dtype=object)
        fitted_groups = own + ([OTHER_GROUP] if (group_of == OTHER_GROUP).any() else [])
        self.delta_per_group_ = self.delta / max(len(fitted_groups), 1)
        self.fits_: dict[str, LearnThenTest] = {}
        for group in fitted_groups:
            mask = group_of == group
            self.fits_[group] = LearnThenTest(self.alpha, self.delta_per_group_, self.p_value).fit(
                scores[mask], disagree[mask]
            )
        self.thresholds_ = {group: fit.threshold_ for group, fit in self.fits_.items()}
        self.n_calib_ = len(scores)
        return self

    def threshold_for(self, labels: np.ndarray) -> np.ndarray:
        """(n,) the threshold each row faces; a label never seen on calib uses the pooled
        group's threshold, or defers when there is none."""
        if not hasattr(self, "thresholds_"):
            raise RuntimeError("this PerLabelLearnThenTest is not fitted yet: call fit(...)")
        return per_label_thresholds(labels, self.groups_, self.thresholds_)

    def accept(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=float) >= self.threshold_for(labels)


def per_label_thresholds(
    labels: np.ndarray, groups: dict[str, str], thresholds: dict[str, float | None]
) -> np.ndarray:
    """(n,) each row's threshold from a label -> group map and group -> τ (None: +inf)."""
    inf = float("inf")

    def tau(label) -> float:
        group = groups.get(str(label), OTHER_GROUP)
        value = thresholds.get(group)
        return inf if value is None else float(value)

    return np.array([tau(label) for label in np.asarray(labels, dtype=object)], dtype=float)


def _check_scores(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError("scores must be a non-empty 1-D array")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores


class TargetDeferral:
    """Defer the least confident share `rate` of calibration traffic (no risk guarantee).

    τ is the loosest calibration score that still defers at least `rate` of the rows, so
    the calib deferral rate is `rate` rounded up to whole rows (ties defer together)."""

    def __init__(self, rate: float = 0.3) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.rate = rate

    def fit(self, scores: np.ndarray) -> TargetDeferral:
        scores = np.sort(_check_scores(scores))
        n = len(scores)
        n_defer = int(np.ceil(self.rate * n - 1e-9))
        if n_defer >= n:
            self.threshold_ = float("inf")
        elif n_defer == 0:
            self.threshold_ = float(scores[0])
        else:  # answer from the (n_defer + 1)-th lowest score up, unless it ties with a deferral
            above = scores[n_defer:]
            candidates = above[above > scores[n_defer - 1]]
            self.threshold_ = float(candidates[0]) if len(candidates) else float("inf")
        self.n_calib_ = n
        self.calib_deferral_rate_ = float(np.mean(scores < self.threshold_))
        return self

    def accept(self, scores: np.ndarray) -> np.ndarray:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("this TargetDeferral is not fitted yet: call fit(scores)")
        return np.asarray(scores, dtype=float) >= self.threshold_


class CostBudget:
    """Defer as much traffic as a budget in USD per 1,000 requests pays for (no guarantee).

    Every request pays the student; a deferred one pays the teacher too. τ is the strictest
    calibration threshold whose mean cost on calib fits the budget (more deferral is closer
    to the teacher); when even answering everything overspends, nothing defers."""

    def __init__(self, usd_per_1000: float) -> None:
        if usd_per_1000 < 0:
            raise ValueError(f"the budget must be >= 0, got {usd_per_1000}")
        self.usd_per_1000 = usd_per_1000

    def fit(
        self, scores: np.ndarray, student_cost_usd: np.ndarray, teacher_cost_usd: np.ndarray
    ) -> CostBudget:
        scores = _check_scores(scores)
        student = np.asarray(student_cost_usd, dtype=float)
        teacher = np.asarray(teacher_cost_usd, dtype=float)
        if student.shape != scores.shape or teacher.shape != scores.shape:
            raise ValueError("scores and both cost arrays must have the same length")
        n = len(scores)
        order = np.argsort(scores, kind="stable")  # deferred first: the least confident
        deferred_teacher = np.r_[0.0, np.cumsum(teacher[order])]  # cost of deferring i rows
        per_1000 = (student.sum() + deferred_teacher) / n * 1000  # (n + 1,) for i = 0..n
        sorted_scores = scores[order]
        # i rows deferred is reachable with a threshold when it does not split tied scores
        reachable = np.r_[True, sorted_scores[1:] != sorted_scores[:-1], True]
        fits = (per_1000 <= self.usd_per_1000 + 1e-12) & reachable
        i = int(np.nonzero(fits)[0].max()) if fits.any() else 0
        self.threshold_ = float("inf") if i == n else float(sorted_scores[i])
        self.n_calib_ = n
        self.calib_deferral_rate_ = i / n
        self.calib_usd_per_1000_ = float(per_1000[i])
        return self

    def accept(self, scores: np.ndarray) -> np.ndarray:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("this CostBudget is not fitted yet: call fit(...)")
        return np.asarray(scores, dtype=float) >= self.threshold_


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """ECE over `bins` equal-width confidence bins, and the bins (for a reliability diagram):
    Σ_b (n_b / n) |accuracy_b − mean confidence_b|."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidence.shape != correct.shape or len(confidence) == 0:
        raise ValueError("confidence and correct must be non-empty and of the same length")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        if not mask.any():
            continue
        accuracy, mean_conf = float(correct[mask].mean()), float(confidence[mask].mean())
        ece += mask.mean() * abs(accuracy - mean_conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(mask.sum()),
                      "accuracy": accuracy, "confidence": mean_conf})  # fmt: skip
    return float(ece), table


class TemperatureScaling:
    """One temperature T fitted on calib: probabilities p become softmax(log p / T), chosen to
    minimise the negative log-likelihood of the reference labels (Guo et al., 2017). It keeps
    each row's argmax and makes max probability a better-calibrated confidence."""

    def fit(self, probs: np.ndarray, targets: np.ndarray) -> TemperatureScaling:
        from scipy.optimize import minimize_scalar

        logits = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0))
        targets = np.asarray(targets, dtype=int)
        if logits.ndim != 2 or len(logits) != len(targets) or len(targets) == 0:
            raise ValueError("probs must be (n, k) and targets (n,), n > 0")

        def nll(log_t: float) -> float:
            scaled = logits / np.exp(log_t)
            scaled = scaled - scaled.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(scaled).sum(axis=1))
            return float(np.mean(log_norm - scaled[np.arange(len(targets)), targets]))

        best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        self.temperature_ = float(np.exp(best.x))
        self.nll_before_, self.nll_after_ = nll(0.0), float(best.fun)
        return self

    def transform(self, probs: np.ndarray) -> np.ndarray:
        if not hasattr(self, "temperature_"):
            raise RuntimeError("this TemperatureScaling is not fitted yet: call fit(probs, y)")
        return apply_temperature(probs, self.temperature_)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)) / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)
