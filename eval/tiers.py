"""Cascades of several student tiers in front of the teacher, with one end-to-end guarantee.

A request goes to tier 0; tier k answers when its score s_k >= τ_k, else the request moves on
to tier k + 1; after the last student tier it goes to the teacher. Each tier that sees a
request is paid for. The end-to-end risk R(τ_0, ..., τ_{K-1}) is the share of traffic whose
final answer departs from the teacher's.

`ParetoTesting` picks the thresholds jointly (Laufer-Goldshtein et al., 2023, "Efficiently
controlling multiple risk control problems with Pareto testing"): the calibration rows are
split in two. On the first part, every threshold combination on a grid is scored for risk
and cost and the Pareto front is kept, ordered from least to most risky. On the second part,
the front is tested in that fixed order (Learn-then-Test) and the test stops at the first
combination it cannot certify. Every certified combination has risk <= α with probability
>= 1 - δ jointly, so the cheapest of them is returned.

Pure numpy/scipy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from eval.calibration import P_VALUES, LearnThenTest
from eval.curves import accuracy_on_gold


def route(scores: Sequence[np.ndarray], thresholds: Sequence[float]) -> np.ndarray:
    """(n,) the tier that answers each request: the first k with s_k >= τ_k, else K (teacher)."""
    n_tiers = len(thresholds)
    answered_by = np.full(len(scores[0]), n_tiers, dtype=int)
    for k in reversed(range(n_tiers)):
        answered_by[np.asarray(scores[k], dtype=float) >= thresholds[k]] = k
    return answered_by


def outcome(
    answered_by: np.ndarray,
    disagree: Sequence[np.ndarray],
    costs: Sequence[np.ndarray],
    teacher_cost: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(n,) whether each final answer departs from the teacher, and (n,) what it cost."""
    n_tiers = len(costs)
    departs = np.zeros(len(answered_by), dtype=bool)
    cost = np.zeros(len(answered_by))
    for k in range(n_tiers):
        departs |= (answered_by == k) & np.asarray(disagree[k], dtype=bool)
        cost += np.where(answered_by >= k, np.asarray(costs[k], dtype=float), 0.0)
    cost += np.where(answered_by == n_tiers, np.asarray(teacher_cost, dtype=float), 0.0)
    return departs, cost


def pareto_front(risk: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (no other has risk and cost both <=, one <),
    ordered by risk ascending."""
    order = np.lexsort((cost, risk))  # risk ascending, then cost ascending
    front, best_cost = [], np.inf
    for i in order:
        if cost[i] < best_cost - 1e-15:
            front.append(int(i))
            best_cost = cost[i]
    return np.array(front, dtype=int)


class ParetoTesting:
    """Joint thresholds for student tiers -> teacher: end-to-end risk <= α w.p. >= 1 - δ.

    `fit(scores, disagree, costs, teacher_cost)` takes per-tier lists of (n,) arrays on the
    calibration rows. `thresholds_` is one τ per tier (+inf: the tier never answers)."""

    def __init__(
        self,
        alpha: float = 0.1,
        delta: float = 0.1,
        p_value: str = "binomial",
        grid: int = 20,
        split: float = 0.5,
        seed: int = 0,
    ) -> None:
        LearnThenTest(alpha, delta, p_value)  # validates the shared settings
        if grid < 1 or not 0 < split < 1:
            raise ValueError("grid must be >= 1 and split in (0, 1)")
        self.alpha, self.delta, self.p_value = alpha, delta, p_value
        self.grid, self.split, self.seed = grid, split, seed

    def fit(
        self,
        scores: Sequence[np.ndarray],
        disagree: Sequence[np.ndarray],
        costs: Sequence[np.ndarray],
        teacher_cost: np.ndarray,
    ) -> ParetoTesting:
        scores = [np.asarray(s, dtype=float) for s in scores]
        n_tiers, n = len(scores), len(teacher_cost)
        if n_tiers == 0 or not (len(disagree) == len(costs) == n_tiers):
            raise ValueError("scores, disagree and costs need one array per student tier")
        if any(len(a) != n for a in [*scores, *disagree, *costs]):
            raise ValueError("every array must have one entry per calibration row")
        if n < 4:
            raise ValueError(f"need at least 4 calibration rows, got {n}")
        permutation = np.random.default_rng(self.seed).permutation(n)
        n_opt = min(max(round(self.split * n), 2), n - 2)
        opt, test = permutation[:n_opt], permutation[n_opt:]

        def at(rows: np.ndarray, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            return [np.asarray(a)[rows] for a in arrays]

        levels = np.linspace(0.0, 1.0, self.grid + 1)
        candidates = [
            np.unique(np.r_[np.quantile(s[opt], levels), np.inf]) for s in scores
        ]  # per tier, ascending; +inf = the tier never answers
        combos = np.array(list(itertools.product(*candidates)), dtype=float)
        teacher_cost = np.asarray(teacher_cost, dtype=float)
        risk_opt, cost_opt = self._evaluate(
            combos, at(opt, scores), at(opt, disagree), at(opt, costs), teacher_cost[opt]
        )
        front = pareto_front(risk_opt, cost_opt)
        risk_test, _ = self._evaluate(
            combos[front],
            at(test, scores),
            at(test, disagree),
            at(test, costs),
            teacher_cost[test],
        )
        n_test = len(test)
        p_values = P_VALUES[self.p_value](np.round(risk_test * n_test), n_test, self.alpha)
        rejected = p_values <= self.delta
        stop = int(np.argmin(rejected)) if not rejected.all() else len(rejected)
        certified = front[:stop]
        if len(certified):  # every certified combination is safe: take the cheapest on calib
            _, cost_all = self._evaluate(combos[certified], scores, disagree, costs, teacher_cost)
            best = certified[np.argmin(cost_all)]
            self.thresholds_ = tuple(float(t) for t in combos[best])
        else:
            best = None
            self.thresholds_ = tuple(float("inf") for _ in range(n_tiers))
        answered_by = route(scores, self.thresholds_)
        departs, cost = outcome(answered_by, disagree, costs, teacher_cost)
        self.calib_risk_ = float(departs.mean())
        self.calib_cost_usd_ = float(cost.mean())
        self.calib_share_ = [float(np.mean(answered_by == k)) for k in range(n_tiers + 1)]
        self.n_calib_, self.n_opt_, self.n_test_ = n, n_opt, n_test
        self.front_ = [
            {
                "thresholds": [float(t) for t in combos[i]],
                "risk_opt": float(risk_opt[i]),
                "cost_usd_opt": float(cost_opt[i]),
                "risk_test": float(r),
                "p_value": float(p),
                "certified": bool(j < stop),
                "chosen": best is not None and int(i) == int(best),
            }
            for j, (i, r, p) in enumerate(zip(front, risk_test, p_values, strict=True))
        ]
        return self

    @staticmethod
    def _evaluate(combos, scores, disagree, costs, teacher_cost) -> tuple[np.ndarray, np.ndarray]:
        risk, cost = np.empty(len(combos)), np.empty(len(combos))
        for i, thresholds in enumerate(combos):
            departs, paid = outcome(route(scores, thresholds), disagree, costs, teacher_cost)
            risk[i], cost[i] = departs.mean(), paid.mean()
        return risk, cost

    def route(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        if not hasattr(self, "thresholds_"):
            raise RuntimeError("this ParetoTesting is not fitted yet: call fit(...)")
        return route(scores, self.thresholds_)


def evaluate_tiers(
    names: Sequence[str],
    thresholds: Sequence[float],
    scores: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    teacher_pred: np.ndarray,
    costs: Sequence[np.ndarray],
    teacher_cost: np.ndarray,
    gold: np.ndarray | None = None,
) -> dict:
    """The tiered cascade at `thresholds` on test rows: who answers how much, end-to-end risk,
    agreement, accuracy against gold (where given), cost and savings vs the teacher alone."""
    teacher_pred = np.asarray(teacher_pred, dtype=object)
    disagree = [np.asarray(p, dtype=object) != teacher_pred for p in preds]
    answered_by = route(scores, thresholds)
    departs, cost = outcome(answered_by, disagree, costs, teacher_cost)
    final = teacher_pred.copy()
    for k, p in enumerate(preds):
        final = np.where(answered_by == k, np.asarray(p, dtype=object), final)
    accuracy = accuracy_on_gold(final, gold)
    teacher_only = float(np.mean(teacher_cost))
    mean_cost = float(cost.mean())
    return {
        "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds],
        "share_answered": {
            name: float(np.mean(answered_by == k)) for k, name in enumerate([*names, "teacher"])
        },
        "risk": float(departs.mean()),
        "agreement": float(np.mean(final == teacher_pred)),
        "accuracy": accuracy,
        "cost_usd_per_request": mean_cost,
        "savings_rate": 0.0 if teacher_only <= 0 else 1.0 - mean_cost / teacher_only,
    }


__all__ = ["ParetoTesting", "evaluate_tiers", "outcome", "pareto_front", "route"]
