"""Everything the report says about one task's cascade, computed from arrays (no I/O)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from eval.calibration import expected_calibration_error
from eval.cost import BreakEven, DailyProjection, break_even, project_daily
from eval.curves import (
    CascadeCurve,
    CurveSummary,
    OperatingPoint,
    QualityName,
    cascade_curve,
    operating_point,
    oracle_scores,
    point_from_accepted,
    random_baseline_auc,
    random_summary,
    summarize_curve,
)
from eval.learned import auroc
from eval.metrics import accuracy


@dataclass(frozen=True)
class Guarantee:
    """How the threshold was chosen, as recorded in cascade.json."""

    method: str
    score: str
    alpha: float
    delta: float
    n_calib: int
    threshold: float  # +inf: nothing could be certified, every request defers


MAX_LABELS_SHOWN = 50  # per-label deferral rates are reported for at most this many labels


@dataclass(frozen=True)
class TaskEvaluation:
    task: str
    n_test: int
    quality: QualityName
    teacher_accuracy: float | None
    student_accuracy: float | None
    student_agreement: float
    guarantee: Guarantee
    point: OperatingPoint  # the cascade at the calibrated threshold
    curve: CascadeCurve
    summary: CurveSummary
    oracle_curve: CascadeCurve
    oracle_summary: CurveSummary
    random_auc: float
    teacher_only_cost_usd: float  # mean per request
    student_only_cost_usd: float  # mean per request
    mean_teacher_input_tokens: float
    projection: DailyProjection | None
    ece: float | None = None  # expected calibration error of the confidence vs agreement
    reliability: list[dict[str, float]] | None = None  # its bins, for the reliability diagram
    ece_after_temperature: float | None = None  # the same after temperature scaling on calib
    per_label: dict[str, dict[str, float]] | None = None  # teacher label -> n, deferral rate
    random_summary: CurveSummary | None = None  # deferring a random share of requests
    scores: list[dict[str, Any]] | None = None  # every score's curve summaries, with baselines
    break_even: BreakEven | None = None
    tiers: dict[str, Any] | None = None  # the tiered cascade on test, when there are tiers
    per_label_thresholds: bool = False  # the operating point uses one threshold per label


def evaluate_cascade(
    task: str,
    scores: np.ndarray,
    student_pred: np.ndarray,
    teacher_pred: np.ndarray,
    gold: np.ndarray | None,
    student_cost_usd: np.ndarray,
    teacher_cost_usd: np.ndarray,
    teacher_input_tokens: np.ndarray,
    guarantee: Guarantee,
    cpt_levels: list[float] | tuple[float, ...] = (0.5, 0.8, 0.95),
    tolerance: float = 0.01,
    confidence: np.ndarray | None = None,
    scaled_confidence: np.ndarray | None = None,
    tokens_per_day: float | None = None,
    row_thresholds: np.ndarray | None = None,
    other_scores: dict[str, np.ndarray] | None = None,
    labelling_usd: float | None = None,
    training_usd: float = 0.0,
    tiers: dict[str, Any] | None = None,
) -> TaskEvaluation:
    """Curves, summaries and the calibrated operating point of one task on its test rows.

    `row_thresholds` (n,): each row's own threshold (one per label) instead of the single
    one in `guarantee`. `other_scores`: more scores of the same rows, summarised side by side
    with the oracle and random baselines. `labelling_usd` (+ `training_usd`): the one-off cost
    whose break-even volume is reported. `tiers`: the tiered cascade's figures, passed on."""
    has_gold = gold is not None and any(g is not None for g in gold)
    gold_arg = np.asarray(gold, dtype=object) if has_gold else None
    quality: QualityName = "accuracy" if has_gold else "agreement"
    curve = cascade_curve(
        scores, student_pred, teacher_pred, student_cost_usd, teacher_cost_usd, gold_arg
    )
    oracle = cascade_curve(
        oracle_scores(student_pred, teacher_pred, gold_arg),
        student_pred,
        teacher_pred,
        student_cost_usd,
        teacher_cost_usd,
        gold_arg,
    )
    teacher_only = float(np.mean(teacher_cost_usd))
    summary = summarize_curve(curve, quality, teacher_only, cpt_levels, tolerance)
    oracle_summary = summarize_curve(oracle, quality, teacher_only, cpt_levels, tolerance)
    if row_thresholds is None:
        point = operating_point(curve, guarantee.threshold, teacher_only)
    else:
        accepted = np.asarray(scores, dtype=float) >= np.asarray(row_thresholds, dtype=float)
        point = point_from_accepted(accepted, student_pred, teacher_pred, student_cost_usd,
                                    teacher_cost_usd, gold_arg, guarantee.threshold)  # fmt: skip
    baseline = random_summary(
        quality, summary.quality_student, summary.quality_teacher,
        float(np.mean(student_cost_usd)), teacher_only, cpt_levels, tolerance,
    )  # fmt: skip
    agrees = np.asarray(student_pred) == np.asarray(teacher_pred)
    score_rows = None
    if other_scores:
        score_rows = [
            _score_row("oracle", oracle_summary, 1.0),  # it ranks every agreement first
            _score_row("random", baseline, 0.5),
        ]
        for name, values in other_scores.items():
            other = cascade_curve(values, student_pred, teacher_pred, student_cost_usd,
                                  teacher_cost_usd, gold_arg)  # fmt: skip
            other_summary = summarize_curve(other, quality, teacher_only, cpt_levels, tolerance)
            score_rows.append(_score_row(name, other_summary, auroc(values, agrees)))
    mean_tokens = float(np.mean(teacher_input_tokens))
    projection = None
    if tokens_per_day is not None and mean_tokens > 0:
        projection = project_daily(tokens_per_day, mean_tokens, teacher_only, point.cost_usd)
    payback = None
    if labelling_usd is not None and mean_tokens > 0:
        payback = break_even(labelling_usd, training_usd, teacher_only, point.cost_usd,
                             mean_tokens, tokens_per_day)  # fmt: skip
    ece = reliability = ece_scaled = None
    if confidence is not None:  # a probability that the student agrees with the teacher
        ece, reliability = expected_calibration_error(np.asarray(confidence, float), agrees)
    if scaled_confidence is not None:
        ece_scaled, _ = expected_calibration_error(np.asarray(scaled_confidence, float), agrees)
    per_label = None
    labels = np.asarray(teacher_pred, dtype=object)
    if len(set(labels.tolist())) <= MAX_LABELS_SHOWN:  # a label set, not free text
        faced = guarantee.threshold if row_thresholds is None else np.asarray(row_thresholds)
        deferred = np.asarray(scores, dtype=float) < faced
        per_label = {
            str(label): {"n": int(mask.sum()), "deferral_rate": float(deferred[mask].mean())}
            for label in sorted(set(labels.tolist()))
            for mask in [labels == label]
        }
    return TaskEvaluation(
        task=task,
        n_test=len(scores),
        quality=quality,
        teacher_accuracy=accuracy(teacher_pred, gold_arg) if has_gold else None,
        student_accuracy=accuracy(student_pred, gold_arg) if has_gold else None,
        student_agreement=float(np.mean(np.asarray(student_pred) == np.asarray(teacher_pred))),
        guarantee=guarantee,
        point=point,
        curve=curve,
        summary=summary,
        oracle_curve=oracle,
        oracle_summary=oracle_summary,
        random_auc=random_baseline_auc(summary.quality_student, summary.quality_teacher),
        teacher_only_cost_usd=teacher_only,
        student_only_cost_usd=float(np.mean(student_cost_usd)),
        mean_teacher_input_tokens=mean_tokens,
        projection=projection,
        ece=ece,
        reliability=reliability,
        ece_after_temperature=ece_scaled,
        per_label=per_label,
        random_summary=baseline,
        scores=score_rows,
        break_even=payback,
        tiers=tiers,
        per_label_thresholds=row_thresholds is not None,
    )


def _score_row(name: str, summary: CurveSummary, area: float) -> dict[str, Any]:
    return {
        "score": name,
        "auroc_agreement": area,
        "auc": summary.auc,
        "apgr": summary.apgr,
        "cpt": summary.cpt,
        "savings_at_matched_quality": summary.savings_at_matched_quality,
    }


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def summary_dict(evaluation: TaskEvaluation) -> dict[str, Any]:
    """The task's entry of report/summary.json (plain JSON types; +inf thresholds as null)."""
    e = evaluation
    return {
        "n_test": e.n_test,
        "quality_metric": e.quality,
        "teacher": {
            "accuracy": e.teacher_accuracy,
            "cost_usd_per_request": e.teacher_only_cost_usd,
        },
        "student": {
            "accuracy": e.student_accuracy,
            "agreement": e.student_agreement,
            "cost_usd_per_request": e.student_only_cost_usd,
        },
        "cascade": {
            "score": e.guarantee.score,
            "method": e.guarantee.method,
            "threshold": _finite_or_none(e.guarantee.threshold),
            "defer_all": not math.isfinite(e.guarantee.threshold),
            "alpha": e.guarantee.alpha,
            "delta": e.guarantee.delta,
            "n_calib": e.guarantee.n_calib,
            "deferral_rate": e.point.deferral_rate,
            "risk": e.point.risk,
            "risk_within_alpha": e.point.risk <= e.guarantee.alpha,
            "per_label_thresholds": e.per_label_thresholds,
            "accuracy": e.point.accuracy,
            "agreement": e.point.agreement,
            "cost_usd_per_request": e.point.cost_usd,
            "savings_rate": e.point.savings_rate,
        },
        "curve": {
            "quality": e.summary.quality,
            "auc": e.summary.auc,
            "apgr": e.summary.apgr,
            "oracle_auc": e.oracle_summary.auc,
            "oracle_apgr": e.oracle_summary.apgr,
            "random_auc": e.random_auc,
            "random_apgr": 0.5,
            "cpt": e.summary.cpt,
            "oracle_cpt": e.oracle_summary.cpt,
            "random_cpt": None if e.random_summary is None else e.random_summary.cpt,
            "oracle_savings_at_matched_quality": e.oracle_summary.savings_at_matched_quality,
            "random_savings_at_matched_quality": (
                None if e.random_summary is None else e.random_summary.savings_at_matched_quality
            ),
            "savings_at_matched_quality": e.summary.savings_at_matched_quality,
            "matched_quality_threshold": _finite_or_none(e.summary.matched_threshold),
            "matched_quality_deferral_rate": e.summary.matched_deferral_rate,
        },
        "projection": None if e.projection is None else asdict(e.projection),
        "break_even": None if e.break_even is None else asdict(e.break_even),
        "scores": e.scores,
        "tiers": e.tiers,
        "per_label_deferral": e.per_label,
        "calibration": None
        if e.ece is None
        else {
            "ece": e.ece,
            "ece_after_temperature": e.ece_after_temperature,
            "bins": e.reliability,
        },
    }
