"""Cost-versus-quality curves of a cascade on the test split, and their summaries.

For every threshold τ (every distinct score, plus +inf for "defer everything"), the student
answers when s >= τ and the teacher answers otherwise. The student always runs; the teacher's
cost is paid on deferred requests only. Quality is accuracy against gold where gold exists,
else agreement with the teacher. Summaries follow RouteLLM: PGR(τ) = (q(τ) - q_student) /
(q_teacher - q_student), APGR = mean PGR over a uniform deferral grid, CPT(x) = least deferral
rate with PGR >= x (linear between thresholds); plus the area under the curve and the saving
at matched quality.

Pure numpy: arrays in, frozen dataclasses out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

QualityName = Literal["accuracy", "agreement"]


@dataclass(frozen=True)
class CascadeCurve:
    """One point per threshold, from +inf (all deferred) down to the lowest score (none)."""

    thresholds: np.ndarray  # (m,) descending, thresholds[0] == +inf
    deferral_rate: np.ndarray  # (m,) share of requests sent to the teacher, increasing in τ
    cost_usd: np.ndarray  # (m,) mean USD per request: student always + teacher when deferred
    accuracy: np.ndarray | None  # (m,) against gold on rows with gold; None without gold
    agreement: np.ndarray  # (m,) share of answers equal to the teacher's
    risk: np.ndarray  # (m,) share of requests answered by the student AND departing from teacher

    def quality(self, name: QualityName) -> np.ndarray:
        if name == "accuracy":
            if self.accuracy is None:
                raise ValueError("no gold labels: accuracy is undefined, use agreement")
            return self.accuracy
        return self.agreement


@dataclass(frozen=True)
class OperatingPoint:
    """The cascade at one threshold."""

    threshold: float
    deferral_rate: float
    risk: float
    agreement: float
    accuracy: float | None
    cost_usd: float  # mean per request
    savings_rate: float  # 1 - cost / cost of sending everything to the teacher alone


@dataclass(frozen=True)
class CurveSummary:
    quality: QualityName
    quality_student: float  # student alone (nothing deferred)
    quality_teacher: float  # teacher alone (everything deferred)
    auc: float  # area under quality vs deferral rate, deferral in [0, 1]
    apgr: float | None  # None when teacher and student tie (PGR undefined)
    cpt: dict[str, float | None]  # "0.5" -> least deferral rate with PGR >= 0.5
    savings_at_matched_quality: float | None  # None when no τ is within ε of the teacher
    matched_threshold: float | None
    matched_deferral_rate: float | None


def _scores_order(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    is_last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return order, sorted_scores, is_last


def cascade_curve(
    scores: np.ndarray,
    student_pred: np.ndarray,
    teacher_pred: np.ndarray,
    student_cost_usd: np.ndarray,
    teacher_cost_usd: np.ndarray,
    gold: np.ndarray | None = None,
) -> CascadeCurve:
    """The cascade's curve over every distinct threshold of `scores`."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    if n == 0:
        raise ValueError("cannot draw a curve over an empty test set")
    student_pred = np.asarray(student_pred, dtype=object)
    teacher_pred = np.asarray(teacher_pred, dtype=object)
    student_cost_usd = np.asarray(student_cost_usd, dtype=float)
    teacher_cost_usd = np.asarray(teacher_cost_usd, dtype=float)
    order, sorted_scores, is_last = _scores_order(scores)

    def swept(student_value: np.ndarray, teacher_value: np.ndarray) -> np.ndarray:
        """Sum of teacher_value over all rows, swapped for student_value as rows are accepted."""
        gain = (student_value - teacher_value)[order]
        accepted_gain = np.cumsum(gain)[is_last]
        return np.r_[teacher_value.sum(), teacher_value.sum() + accepted_gain]

    n_accepted = np.r_[0, np.nonzero(is_last)[0] + 1]
    thresholds = np.r_[np.inf, sorted_scores[is_last]]
    agree_student = (student_pred == teacher_pred).astype(float)
    agreement = swept(agree_student, np.ones(n)) / n
    risk = swept(1.0 - agree_student, np.zeros(n)) / n
    cost = swept(student_cost_usd, student_cost_usd + teacher_cost_usd) / n
    curve_accuracy = None
    if gold is not None:
        gold = np.asarray(gold, dtype=object)
        has_gold = np.array([g is not None for g in gold])
        if has_gold.any():
            student_right = ((student_pred == gold) & has_gold).astype(float)
            teacher_right = ((teacher_pred == gold) & has_gold).astype(float)
            curve_accuracy = swept(student_right, teacher_right) / has_gold.sum()
    return CascadeCurve(
        thresholds=thresholds,
        deferral_rate=1.0 - n_accepted / n,
        cost_usd=cost,
        accuracy=curve_accuracy,
        agreement=agreement,
        risk=risk,
    )


def oracle_scores(
    student_pred: np.ndarray, teacher_pred: np.ndarray, gold: np.ndarray | None = None
) -> np.ndarray:
    """Scores of the oracle that defers exactly the student's errors, most useful first.

    Ordered by what deferring a request gains: 0 where the student is wrong and the teacher
    right (defer first), 0.5 where deferring changes nothing (both right, both wrong, no gold),
    1 where the student is right and the teacher wrong (defer last). Without gold, errors are
    departures from the teacher. No real score can draw a better curve.
    """
    student_pred = np.asarray(student_pred, dtype=object)
    teacher_pred = np.asarray(teacher_pred, dtype=object)
    if gold is None:
        return (student_pred == teacher_pred).astype(float)
    gold = np.asarray(gold, dtype=object)
    has_gold = np.array([g is not None for g in gold])
    student_right = ((student_pred == gold) & has_gold).astype(float)
    teacher_right = ((teacher_pred == gold) & has_gold).astype(float)
    return 0.5 + 0.5 * (student_right - teacher_right)


def operating_point(
    curve: CascadeCurve, threshold: float, teacher_only_cost_usd: float
) -> OperatingPoint:
    """The cascade at any threshold: the curve point accepting the same rows (s >= τ)."""
    index = int(np.nonzero(curve.thresholds >= threshold)[0][-1])
    return OperatingPoint(
        threshold=float(threshold),
        deferral_rate=float(curve.deferral_rate[index]),
        risk=float(curve.risk[index]),
        agreement=float(curve.agreement[index]),
        accuracy=None if curve.accuracy is None else float(curve.accuracy[index]),
        cost_usd=float(curve.cost_usd[index]),
        savings_rate=_savings(float(curve.cost_usd[index]), teacher_only_cost_usd),
    )


def accuracy_on_gold(final: np.ndarray, gold: np.ndarray | None) -> float | None:
    """Accuracy of the final answers on the rows with a gold answer; None without any."""
    if gold is None:
        return None
    gold = np.asarray(gold, dtype=object)
    has_gold = np.array([g is not None for g in gold])
    if not has_gold.any():
        return None
    return float(np.mean(np.asarray(final, dtype=object)[has_gold] == gold[has_gold]))


def point_from_accepted(
    accepted: np.ndarray,
    student_pred: np.ndarray,
    teacher_pred: np.ndarray,
    student_cost_usd: np.ndarray,
    teacher_cost_usd: np.ndarray,
    gold: np.ndarray | None,
    threshold: float,
) -> OperatingPoint:
    """The cascade when the student answers exactly the `accepted` rows (per-row thresholds,
    e.g. one per label); `threshold` is only recorded."""
    accepted = np.asarray(accepted, dtype=bool)
    student_pred = np.asarray(student_pred, dtype=object)
    teacher_pred = np.asarray(teacher_pred, dtype=object)
    final = np.where(accepted, student_pred, teacher_pred)
    cost = np.asarray(student_cost_usd, float) + np.where(~accepted, teacher_cost_usd, 0.0)
    accuracy = accuracy_on_gold(final, gold)
    teacher_only = float(np.mean(teacher_cost_usd))
    return OperatingPoint(
        threshold=float(threshold),
        deferral_rate=float(np.mean(~accepted)),
        risk=float(np.mean(accepted & (student_pred != teacher_pred))),
        agreement=float(np.mean(final == teacher_pred)),
        accuracy=accuracy,
        cost_usd=float(cost.mean()),
        savings_rate=_savings(float(cost.mean()), teacher_only),
    )


def random_summary(
    quality: QualityName,
    q_student: float,
    q_teacher: float,
    student_cost_usd: float,
    teacher_cost_usd: float,
    cpt_levels: tuple[float, ...] | list[float] = (0.5, 0.8, 0.95),
    tolerance: float = 0.01,
) -> CurveSummary:
    """The summaries of deferring a random share d of requests: quality is linear in d, from
    student-only to teacher-only, so AUC is their mean, APGR 0.5 and CPT(x) = x."""
    gap = q_teacher - q_student
    d_matched = 0.0 if gap <= tolerance else 1.0 - tolerance / gap
    cost = student_cost_usd + d_matched * teacher_cost_usd
    return CurveSummary(
        quality=quality,
        quality_student=q_student,
        quality_teacher=q_teacher,
        auc=random_baseline_auc(q_student, q_teacher),
        apgr=0.5 if abs(gap) > 1e-12 else None,
        cpt={f"{level:g}": (float(level) if abs(gap) > 1e-12 else None) for level in cpt_levels},
        savings_at_matched_quality=_savings(cost, teacher_cost_usd),
        matched_threshold=None,
        matched_deferral_rate=d_matched,
    )


def _savings(cost_usd: float, teacher_only_cost_usd: float) -> float:
    if teacher_only_cost_usd <= 0:
        return 0.0
    return 1.0 - cost_usd / teacher_only_cost_usd


def quality_at(curve: CascadeCurve, quality: QualityName, deferral_grid: np.ndarray) -> np.ndarray:
    """Quality interpolated linearly along the curve at the given deferral rates."""
    d = curve.deferral_rate[::-1]  # increasing
    q = curve.quality(quality)[::-1]
    return np.interp(deferral_grid, d, q)


def summarize_curve(
    curve: CascadeCurve,
    quality: QualityName,
    teacher_only_cost_usd: float,
    cpt_levels: tuple[float, ...] | list[float] = (0.5, 0.8, 0.95),
    tolerance: float = 0.01,
    grid_points: int = 101,
) -> CurveSummary:
    """AUC, APGR, CPT and the saving at matched quality of one curve."""
    q = curve.quality(quality)
    d = curve.deferral_rate
    q_student, q_teacher = float(q[-1]), float(q[0])
    grid = np.linspace(0.0, 1.0, grid_points)
    q_grid = quality_at(curve, quality, grid)
    order = np.argsort(d, kind="stable")
    auc = float(np.trapezoid(q[order], d[order]))
    gap = q_teacher - q_student
    cpt: dict[str, float | None] = {}
    apgr = None
    if abs(gap) > 1e-12:
        apgr = float(np.mean((q_grid - q_student) / gap))
        pgr = (q - q_student) / gap
        for level in cpt_levels:
            cpt[f"{level:g}"] = first_crossing(d[order], pgr[order], level)
    else:
        cpt = {f"{level:g}": None for level in cpt_levels}
    matched = np.nonzero(q >= q_teacher - tolerance - 1e-12)[0]
    savings = matched_threshold = matched_deferral = None
    if len(matched):
        best = matched[np.argmin(curve.cost_usd[matched])]
        savings = _savings(float(curve.cost_usd[best]), teacher_only_cost_usd)
        matched_threshold = float(curve.thresholds[best])
        matched_deferral = float(d[best])
    return CurveSummary(
        quality=quality,
        quality_student=q_student,
        quality_teacher=q_teacher,
        auc=auc,
        apgr=apgr,
        cpt=cpt,
        savings_at_matched_quality=savings,
        matched_threshold=matched_threshold,
        matched_deferral_rate=matched_deferral,
    )


def first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float | None:
    """Least x where the piecewise-linear curve through (x, y), x ascending, reaches `level`.

    Between two thresholds, any deferral rate is reachable by choosing between them at random,
    so the curve is linear there; this keeps CPT honest when scores tie in large groups.
    """
    if y[0] >= level - 1e-12:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= level - 1e-12:
            step = y[i] - y[i - 1]
            share = 0.0 if step <= 0 else (level - y[i - 1]) / step
            return float(x[i - 1] + min(max(share, 0.0), 1.0) * (x[i] - x[i - 1]))
    return None


def random_baseline_auc(q_student: float, q_teacher: float) -> float:
    """Random deferral traces the straight line from student-only to teacher-only quality."""
    return 0.5 * (q_student + q_teacher)


__all__ = [
    "CascadeCurve",
    "CurveSummary",
    "OperatingPoint",
    "cascade_curve",
    "operating_point",
    "oracle_scores",
    "point_from_accepted",
    "quality_at",
    "random_baseline_auc",
    "random_summary",
    "summarize_curve",
]
