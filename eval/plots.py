"""Plots of the report: quality against deferral rate and against cost, one row per task."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from eval.curves import CascadeCurve, QualityName
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


def plot_training(task: str, metrics: dict, path: Path) -> None:
    """Write a PNG of one student's training: loss per optimiser step (and its running mean),
    the validation loss, and the validation metric, with the kept (best) step marked."""
    steps = list(range(1, len(metrics["step_losses"]) + 1))
    history = metrics.get("val_history") or []
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_loss.plot(steps, metrics["step_losses"], color="#bbbbbb", lw=0.8, label="train loss")
    window = max(1, len(steps) // 30)
    if len(steps) > window:
        smooth = [
            sum(metrics["step_losses"][max(0, i - window + 1) : i + 1])
            / len(metrics["step_losses"][max(0, i - window + 1) : i + 1])
            for i in range(len(steps))
        ]
        ax_loss.plot(steps, smooth, color="#1f77b4", label=f"train loss, mean of {window}")
    if history:
        ax_loss.plot([h["step"] for h in history], [h["loss"] for h in history], "o-",
                     color="#d62728", label="validation loss")  # fmt: skip
        key = "accuracy" if "accuracy" in history[0] else "metric"
        ax_val.plot([h["step"] for h in history], [h[key] for h in history], "o-",
                    color="#2ca02c")  # fmt: skip
        ax_val.set_ylabel(f"validation {key}")
        best = metrics.get("best_step")
        if best is not None:
            for ax in (ax_loss, ax_val):
                ax.axvline(best, color="#555555", ls=":", lw=1, label="kept (best) step")
    else:
        ax_val.text(0.5, 0.5, "no validation slice", ha="center", va="center")
    ax_loss.set_xlabel("optimiser step")
    ax_val.set_xlabel("optimiser step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    stop = ", stopped early" if metrics.get("stopped_early") else ""
    fig.suptitle(f"{task}: {metrics['n_train']} training rows, {metrics['n_val']} validation"
                 f"{stop}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(evaluations: list[TaskEvaluation], path: Path) -> None:
    """Write a PNG: per task with a probability score, agreement rate against confidence in
    10 bins (the diagonal is perfect calibration), bar widths showing how many rows."""
    tasks = [e for e in evaluations if e.reliability]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.2), squeeze=False)
    for ax, e in zip(axes[0], tasks, strict=True):
        bins = e.reliability or []
        ax.plot([0, 1], [0, 1], ls="--", color="#888888", lw=1, label="perfectly calibrated")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                color="#1f77b4", label="student")  # fmt: skip
        share = [b["n"] / max(1, e.n_test) for b in bins]
        ax.bar([(b["low"] + b["high"]) / 2 for b in bins], share, width=0.09, alpha=0.25,
               color="#ff7f0e", label="share of test rows")  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("agreement with the teacher")
        ax.set_title(f"{e.task}: ECE {e.ece:.3f}")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_label(evaluations: list[TaskEvaluation], path: Path) -> None:
    """Write a PNG: per task, the share of each teacher label's test rows that defer at the
    calibrated threshold, beside the task's overall deferral rate (dashed)."""
    tasks = [e for e in evaluations if e.per_label]
    heights = [max(2.5, 0.28 * len(e.per_label or {}) + 1.2) for e in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, e in zip(axes[:, 0], tasks, strict=True):
        rows = sorted((e.per_label or {}).items(), key=lambda kv: kv[1]["deferral_rate"])
        names = [f"{label} ({v['n']})" for label, v in rows]
        ax.barh(names, [v["deferral_rate"] for _, v in rows], color="#1f77b4")
        ax.axvline(e.point.deferral_rate, color="#d62728", ls="--", lw=1, label="overall")
        ax.set_xlim(0, 1)
        ax.set_xlabel("share deferred to the teacher")
        ax.set_title(f"{e.task}: deferral by teacher label (test rows per label)")
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(
    task: str,
    quality: QualityName,
    curves: dict[str, dict[str, CascadeCurve]],
    entries: dict[str, dict[str, Any]],
    all_runs: list[str],
    path: Path,
) -> None:
    """Write a PNG comparing runs on one task: quality against deferral rate and against USD
    per 1,000 requests. Per run (one colour, fixed by its place in `all_runs`): its cascade
    solid, its oracle dashed, its random baseline dotted, its calibrated threshold a dot.

    `curves` maps each run that has the task to its curve.csv curves ("cascade", and "oracle"
    where recorded); `entries` to the task's entry of its summary.json. A run whose own
    quality measure is not `quality` (accuracy, where another run has no gold) shows neither
    its APGR nor its oracle, both of which were computed for accuracy.
    """
    label = "accuracy (gold)" if quality == "accuracy" else "agreement with the teacher"
    fig, (ax_defer, ax_cost) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name, run_curves in curves.items():
        color = f"C{all_runs.index(name) % 10}"
        cascade, oracle = run_curves["cascade"], run_curves.get("oracle")
        q = cascade.quality(quality)  # (m,) from all deferred (index 0) to none deferred
        usd_per_1k = cascade.cost_usd * 1000
        own_quality = entries[name]["quality_metric"] == quality  # else its APGR and oracle
        apgr = entries[name]["curve"].get("apgr")  # are for accuracy, not for this axis
        shown = f"{name} (APGR {apgr:.2f})" if apgr is not None and own_quality else name
        ax_defer.plot(cascade.deferral_rate, q, color=color, label=shown)
        ax_cost.plot(usd_per_1k, q, color=color, label=name)
        if oracle is not None and own_quality:
            qo = oracle.quality(quality)
            ax_defer.plot(oracle.deferral_rate, qo, color=color, linestyle="--", alpha=0.7)
            ax_cost.plot(oracle.cost_usd * 1000, qo, color=color, linestyle="--", alpha=0.7)
        # random deferral: a straight line between student only and teacher only
        ax_defer.plot([0, 1], [q[-1], q[0]], color=color, linestyle=":", alpha=0.8)
        ax_cost.plot([usd_per_1k[-1], usd_per_1k[0]], [q[-1], q[0]], color=color,
                     linestyle=":", alpha=0.8)  # fmt: skip
        point = entries[name]["cascade"]
        if point.get(quality) is not None and point.get("deferral_rate") is not None:
            ax_defer.scatter([point["deferral_rate"]], [point[quality]], color=color, zorder=5)
            if point.get("cost_usd_per_request") is not None:
                ax_cost.scatter([point["cost_usd_per_request"] * 1000], [point[quality]],
                                color=color, zorder=5)  # fmt: skip
    styles = [
        Line2D([], [], color="black", label="cascade"),
        Line2D([], [], color="black", linestyle="--", label="oracle"),
        Line2D([], [], color="black", linestyle=":", label="random"),
        Line2D([], [], color="black", marker="o", linestyle="", label="calibrated τ"),
    ]
    for ax in (ax_defer, ax_cost):
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + styles, loc="best", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_defer.set_xlim(0, 1)
    ax_defer.set_xlabel("deferral rate (share of requests sent to the teacher)")
    ax_defer.set_title(f"{task}: quality vs deferral")
    ax_cost.set_xlabel("USD per 1,000 requests")
    ax_cost.set_title(f"{task}: quality vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tiers(e: TaskEvaluation, path: Path) -> None:
    """Write a PNG: quality against cost per 1,000 requests for the two-tier cascade's curve
    and for every Pareto-front combination of the tiered cascade (on test), the chosen one
    marked."""
    t = e.tiers or {}
    quality = "accuracy" if e.quality == "accuracy" else "agreement"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(e.curve.cost_usd * 1000, e.curve.quality(e.quality), color="tab:blue",
            label="student → teacher (every τ)")  # fmt: skip
    front = [p for p in t.get("front", []) if p.get(quality) is not None]
    if front:
        ax.scatter([p["cost_usd_per_request"] * 1000 for p in front],
                   [p[quality] for p in front], color="tab:orange", s=14,
                   label=" → ".join([*t["names"], "teacher"]) + " (Pareto front)")  # fmt: skip
    if t.get(quality) is not None:
        ax.scatter([t["cost_usd_per_request"] * 1000], [t[quality]], color="tab:red", s=60,
                   marker="*", zorder=5, label=f"chosen (risk {t['risk']:.1%})")  # fmt: skip
    ax.set_xlabel("USD per 1,000 requests")
    ax.set_ylabel("accuracy (gold)" if quality == "accuracy" else "agreement with teacher")
    ax.set_title(f"{e.task}: tiers on test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
