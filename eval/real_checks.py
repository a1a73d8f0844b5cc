"""The guaranteed modes checked on populations of real scored rows (exported from finished
runs by scripts/export_scored_population.py): Learn-then-Test with both p-values, per-label
thresholds, the learned score and tiers. Used by tests/eval/test_guarantees_real.py and
printed by scripts/guarantee_rates.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from eval.calibration import LearnThenTest, PerLabelLearnThenTest
from eval.learned import LearnedDeferral, deferral_features
from eval.resampling import GuaranteeCheck, check_guarantee
from eval.tiers import ParetoTesting, outcome

SCORES = ("score_max_prob", "score_margin", "score_neg_entropy")


def read_population(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    for key, values in columns.items():
        if key.endswith(("score_max_prob", "score_margin", "score_neg_entropy", "_tokens")):
            columns[key] = values.astype(float)
    return columns


def _disagree(pop: dict, name: str) -> np.ndarray:
    return pop[f"{name}_student_label"] != pop["teacher_label"]


def check_ltt(
    pop: dict, name: str, alpha: float, delta: float, p_value: str, n: int, trials: int = 500
) -> GuaranteeCheck:
    scores, disagree = pop[f"{name}_score_max_prob"], _disagree(pop, name)

    def fit(rows: np.ndarray, _: int) -> float:
        tau = LearnThenTest(alpha, delta, p_value).fit(scores[rows], disagree[rows]).threshold_
        return float(np.mean((scores >= tau) & disagree))

    return check_guarantee(fit, len(scores), n, alpha, delta, trials, seed=1)


def check_per_label(
    pop: dict, name: str, alpha: float, delta: float, n: int, min_examples: int, trials: int = 500
) -> GuaranteeCheck:
    """Violation: any label's risk (within that predicted label's traffic) above α."""
    scores, disagree = pop[f"{name}_score_max_prob"], _disagree(pop, name)
    labels = pop[f"{name}_student_label"]
    masks = [labels == label for label in np.unique(labels)]

    def fit(rows: np.ndarray, _: int) -> float:
        per = PerLabelLearnThenTest(alpha, delta, min_examples=min_examples)
        accepted = per.fit(scores[rows], disagree[rows], labels[rows]).accept(scores, labels)
        return max(float(np.mean(accepted[m] & disagree[m])) for m in masks)

    return check_guarantee(fit, len(scores), n, alpha, delta, trials, seed=2)


def learned_features(pop: dict, name: str) -> np.ndarray:
    return np.column_stack(
        [pop[f"{name}_{s}"] for s in SCORES] + [np.log1p(pop[f"{name}_student_input_tokens"])]
    )


def check_learned(
    pop: dict, name: str, alpha: float, delta: float, n: int, trials: int = 500
) -> GuaranteeCheck:
    """The scorer fits on half of each draw, Learn-then-Test runs on the other half."""
    x, disagree = learned_features(pop, name), _disagree(pop, name)

    def fit(rows: np.ndarray, _: int) -> float:
        half = len(rows) // 2
        model = LearnedDeferral(1.0).fit(x[rows[:half]], ~disagree[rows[:half]])
        test = rows[half:]
        tau = LearnThenTest(alpha, delta).fit(model.predict(x[test]), disagree[test]).threshold_
        return float(np.mean((model.predict(x) >= tau) & disagree))

    return check_guarantee(fit, len(disagree), n, alpha, delta, trials, seed=3)


def check_learned_catch_all(
    pop: dict,
    name: str,
    alpha: float,
    delta: float,
    n: int,
    fit_fraction: float = 0.3,
    trials: int = 500,
) -> GuaranteeCheck:
    """The default classification score as calibrate builds it: every feature of
    `deferral_features` (scores, distance to the training rows, length, out-of-vocabulary
    rate) apart for catch-all answers and the others; the scorer fits on `fit_fraction` of
    each draw, Learn-then-Test runs on the rest."""
    columns = ("score_max_prob", "score_margin", "score_neg_entropy", "knn_distance",
               "student_input_tokens")  # fmt: skip
    table = {column: pop[f"{name}_{column}"].astype(float) for column in columns}
    table["catch_all_answer"] = pop[f"{name}_catch_all_answer"] == "True"
    x, _ = deferral_features(table, "classification", pop[f"{name}_oov_rate"].astype(float), True)
    disagree = _disagree(pop, name)

    def fit(rows: np.ndarray, _: int) -> float:
        k = int(len(rows) * fit_fraction)
        model = LearnedDeferral(1.0).fit(x[rows[:k]], ~disagree[rows[:k]])
        rest = rows[k:]
        tau = LearnThenTest(alpha, delta).fit(model.predict(x[rest]), disagree[rest]).threshold_
        return float(np.mean((model.predict(x) >= tau) & disagree))

    return check_guarantee(fit, len(disagree), n, alpha, delta, trials, seed=5)


def check_tiers(
    pop: dict,
    names: list[str],
    prices: list[float],
    teacher_price: float,
    alpha: float,
    delta: float,
    n: int,
    trials: int = 500,
) -> GuaranteeCheck:
    """End-to-end risk of student tiers -> teacher; costs from token counts and prices per
    million input tokens."""
    scores = [pop[f"{name}_score_max_prob"] for name in names]
    disagree = [_disagree(pop, name) for name in names]
    costs = [
        pop[f"{name}_student_input_tokens"] * p / 1e6 for name, p in zip(names, prices, strict=True)
    ]
    teacher = pop["teacher_input_tokens"] * teacher_price / 1e6

    def fit(rows: np.ndarray, trial: int) -> float:
        fitted = ParetoTesting(alpha, delta, grid=10, seed=trial).fit(
            [s[rows] for s in scores],
            [d[rows] for d in disagree],
            [c[rows] for c in costs],
            teacher[rows],
        )
        departs, _ = outcome(fitted.route(scores), disagree, costs, teacher)
        return float(departs.mean())

    return check_guarantee(fit, len(teacher), n, alpha, delta, trials, seed=4)
