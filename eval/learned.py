"""A learned deferral score: P(student agrees with the teacher | the student's scores, input).

In the spirit of FrugalGPT's scorer (Chen et al., 2023): a small model fitted on calibration
rows that predicts whether the student's answer will match the teacher's from the student's
own confidence scores and simple input features (length, out-of-vocabulary rate). Its output
is a score like any other: the threshold is then chosen on calibration rows the scorer never
saw, so Learn-then-Test's guarantee still holds.

`LearnedDeferral` is an L2-regularised logistic regression on standardised features, fitted
with L-BFGS. Pure numpy/scipy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word of the texts, lower-cased."""
    seen: set[str] = set()
    for text in texts:
        seen.update(words(text))
    return seen


def oov_rate(texts: Sequence[str], vocab: set[str]) -> np.ndarray:
    """(n,) share of each text's words missing from `vocab` (0 for a text without words)."""
    rates = np.zeros(len(texts))
    for i, text in enumerate(texts):
        found = words(text)
        if found:
            rates[i] = sum(word not in vocab for word in found) / len(found)
    return rates


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the boolean `positive` (ties count half);
    0.5 when one class is absent."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


LOGPROB_FLOOR = -30.0  # clip token log-probs: the invalid-output penalty is its own feature


def deferral_features(
    table: dict[str, np.ndarray], kind: str, oov: np.ndarray, catch_all: bool = False
) -> tuple[np.ndarray, list[str]]:
    """(n, d) features of each row of a score table and their names: the student's scores,
    its distance to its training rows (classification), the input's length in student
    tokens and its out-of-vocabulary rate `oov`. With a catch-all label, answers of that
    label and answers of the others get separate weights for every feature (whether an input
    is "none of the others" and whether one of the others is right are different
    questions), plus an indicator of the catch-all answer."""
    columns: dict[str, np.ndarray] = {}
    if kind == "classification":
        for name in ("max_prob", "margin", "neg_entropy"):
            columns[name] = np.asarray(table[f"score_{name}"], dtype=float)
        top = np.clip(columns["max_prob"], 1e-6, 1 - 1e-6)
        columns["logit_max_prob"] = np.log(top / (1 - top))  # spreads the crowd near 1
        columns["knn_distance"] = np.asarray(table["knn_distance"], dtype=float)
    else:
        mean, low = (
            np.asarray(table[f"score_{n}"], dtype=float) for n in ("mean_logprob", "min_logprob")
        )
        columns["invalid_output"] = (mean < -500).astype(float)
        columns["mean_logprob"] = np.clip(np.where(mean < -500, mean + 1000, mean),
                                          LOGPROB_FLOOR, 0)  # fmt: skip
        columns["min_logprob"] = np.clip(np.where(low < -500, low + 1000, low), LOGPROB_FLOOR, 0)
        columns["log_output_tokens"] = np.log1p(
            np.asarray(table["student_output_tokens"], dtype=float)
        )
    columns["log_input_tokens"] = np.log1p(np.asarray(table["student_input_tokens"], dtype=float))
    columns["oov_rate"] = np.asarray(oov, dtype=float)
    if catch_all:
        flag = np.asarray(table["catch_all_answer"], dtype=bool).astype(float)
        split = {"catch_all_answer": flag}
        for name, values in columns.items():
            split[f"{name}|catch_all"] = values * flag
            split[f"{name}|other"] = values * (1.0 - flag)
        columns = split
    return np.column_stack(list(columns.values())), list(columns)


class LearnedDeferral:
    """Logistic regression from features to the chance that the student agrees with the
    teacher. scikit-learn's contract: settings in __init__, `fit` returns self, learned state
    ends in `_`; `predict` gives the score (a probability, higher is surer)."""

    def __init__(self, l2: float | None = None, feature_names: Sequence[str] | None = None) -> None:
        """`l2`: the penalty on the weights; None chooses it by 5-fold cross-validated
        log-loss on the fitting rows from L2_GRID."""
        if l2 is not None and l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = l2
        self.feature_names = list(feature_names) if feature_names is not None else None

    L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)

    def _choose_l2(self, x: np.ndarray, y: np.ndarray) -> float:
        folds = np.arange(len(y)) % 5
        np.random.default_rng(0).shuffle(folds)
        losses = []
        for l2 in self.L2_GRID:
            total = 0.0
            for fold in range(5):
                held = folds == fold
                if held.all() or not held.any() or len(set(y[~held].tolist())) < 2:
                    continue
                p = LearnedDeferral(l2).fit(x[~held], y[~held]).predict(x[held])
                p = np.clip(p, 1e-9, 1 - 1e-9)
                total -= float(np.sum(y[held] * np.log(p) + (1 - y[held]) * np.log(1 - p)))
            losses.append(total)
        return float(self.L2_GRID[int(np.argmin(losses))])

    def fit(self, features: np.ndarray, agree: np.ndarray) -> LearnedDeferral:
        from scipy.optimize import minimize

        x = np.asarray(features, dtype=float)
        y = np.asarray(agree, dtype=float)
        if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError("features must be (n, d) and agree (n,), n > 0")
        if not np.all(np.isfinite(x)):
            raise ValueError("features must be finite")
        self.l2_ = self.l2 if self.l2 is not None else self._choose_l2(x, y)
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
        z = np.c_[(x - self.mean_) / self.scale_, np.ones(len(x))]
        n = len(y)

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            logits = z @ w
            # log(1 + e^t) - y t, stably; the intercept is not penalised
            value = np.sum(np.logaddexp(0.0, logits) - y * logits) / n
            value += 0.5 * self.l2_ * np.sum(w[:-1] ** 2) / n
            grad = z.T @ (1.0 / (1.0 + np.exp(-logits)) - y) / n
            grad[:-1] += self.l2_ * w[:-1] / n
            return float(value), grad

        result = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B")
        self.coef_ = result.x[:-1]
        self.intercept_ = float(result.x[-1])
        self.n_fit_ = n
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n,) P(agree) for each row."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("this LearnedDeferral is not fitted yet: call fit(features, y)")
        x = np.asarray(features, dtype=float)
        logits = ((x - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-logits))

    def to_dict(self) -> dict:
        """The fitted model as plain JSON types (for cascade.json)."""
        return {
            "features": self.feature_names,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
            "l2": self.l2_,
            "n_fit": self.n_fit_,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LearnedDeferral:
        model = cls(l2=data["l2"], feature_names=data["features"])
        model.l2_ = float(data["l2"])
        model.mean_ = np.asarray(data["mean"], dtype=float)
        model.scale_ = np.asarray(data["scale"], dtype=float)
        model.coef_ = np.asarray(data["coef"], dtype=float)
        model.intercept_ = float(data["intercept"])
        model.n_fit_ = int(data["n_fit"])
        return model


__all__ = ["LearnedDeferral", "auroc", "deferral_features", "oov_rate", "vocabulary", "words"]
