"""Plots of the report: quality against deferral rate and against cost, one row per task."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt

from eval.summary import TaskEvaluation


def plot_curves(evaluations: list[TaskEvaluation], path: Path) -> None:
    """Write a PNG: per task, cascade vs oracle vs random deferral, and quality vs USD."""
    rows = len(evaluations)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.2 * rows), squeeze=False)
    for (ax_defer, ax_cost), e in zip(axes, evaluations, strict=True):
        q = e.curve.quality(e.quality)
        qo = e.oracle_curve.quality(e.quality)
        q_student, q_teacher = e.summary.quality_student, e.summary.quality_teacher
        label = "accuracy (gold)" if e.quality == "accuracy" else "agreement with teacher"
        apgr = "n/a" if e.summary.apgr is None else f"{e.summary.apgr:.2f}"
        oracle_apgr = "n/a" if e.oracle_summary.apgr is None else f"{e.oracle_summary.apgr:.2f}"
        ax_defer.plot(e.curve.deferral_rate, q, color="tab:blue", label=f"cascade (APGR {apgr})")
        ax_defer.plot(
            e.oracle_curve.deferral_rate,
            qo,
            color="tab:green",
            linestyle="--",
            label=f"oracle (APGR {oracle_apgr})",
        )
        ax_defer.plot(
            [0, 1], [q_student, q_teacher], color="grey", linestyle=":", label="random (APGR 0.50)"
        )
        point_q = e.point.accuracy if e.quality == "accuracy" else e.point.agreement
        if point_q is not None:
            tau = e.guarantee.threshold
            tau_text = f"τ={tau:.3f}" if math.isfinite(tau) else "τ=∞"
            ax_defer.scatter(
                [e.point.deferral_rate],
                [point_q],
                color="tab:red",
                zorder=5,
                label=f"calibrated {tau_text} (α={e.guarantee.alpha:g}, δ={e.guarantee.delta:g})",
            )
        ax_defer.axhline(q_teacher, color="black", linewidth=0.6, alpha=0.4)
        ax_defer.set_xlabel("deferral rate (share of requests sent to the teacher)")
        ax_defer.set_ylabel(label)
        ax_defer.set_title(f"{e.task}: quality vs deferral (n_test={e.n_test})")
        ax_defer.set_xlim(0, 1)
        ax_defer.grid(alpha=0.3)
        ax_defer.legend(loc="lower right", fontsize=8)

        usd_per_1k = e.curve.cost_usd * 1000
        ax_cost.plot(usd_per_1k, q, color="tab:blue", label="cascade")
        ax_cost.plot(
            e.oracle_curve.cost_usd * 1000, qo, color="tab:green", linestyle="--", label="oracle"
        )
        ax_cost.scatter(
            [e.teacher_only_cost_usd * 1000],
            [q_teacher],
            color="black",
            marker="s",
            zorder=5,
            label="teacher only",
        )
        ax_cost.scatter(
            [e.student_only_cost_usd * 1000],
            [q_student],
            color="tab:orange",
            marker="^",
            zorder=5,
            label="student only",
        )
        if point_q is not None:
            ax_cost.scatter(
                [e.point.cost_usd * 1000],
                [point_q],
                color="tab:red",
                zorder=6,
                label=f"calibrated (saves {e.point.savings_rate:.0%})",
            )
        ax_cost.set_xlabel("USD per 1,000 requests")
        ax_cost.set_ylabel(label)
        ax_cost.set_title(f"{e.task}: quality vs cost")
        ax_cost.grid(alpha=0.3)
        ax_cost.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
