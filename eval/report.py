"""Write the report folder: summary.json, curve.csv, curves.png and report.md."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from eval.plots import plot_curves, plot_per_label, plot_reliability, plot_tiers
from eval.summary import TaskEvaluation, summary_dict

CURVE_COLUMNS = ("task", "curve", "threshold", "deferral_rate", "cost_usd_per_request",
                 "accuracy", "agreement", "risk")  # fmt: skip


def _fmt(value: float | None, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _share(value: float) -> str:
    """A probability or share as a percentage, without rounding 0.999 up to 100%."""
    return f"{value * 100:.4g}%"


def summary_table(summary: dict[str, Any]) -> str:
    """A Markdown table of the headline figures, one row per task (also printed by the CLI).

    Takes the content of summary.json, so a finished run's table can be printed again.
    """
    head = (
        "| task | n_test | teacher acc | student acc | student agree | τ | deferral | "
        "risk (α) | cascade acc | savings | APGR (oracle) | CPT(0.8) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, t in summary["tasks"].items():
        c, curve = t["cascade"], t["curve"]
        tau = "∞" if c["threshold"] is None else f"{c['threshold']:.3f}"
        lines.append(
            f"| {name} | {t['n_test']} | {_rate(t['teacher']['accuracy'])} "
            f"| {_rate(t['student']['accuracy'])} | {_rate(t['student']['agreement'])} | {tau} "
            f"| {_rate(c['deferral_rate'])} | {_rate(c['risk'])} ({c['alpha']:g}) "
            f"| {_rate(c['accuracy'])} | {_rate(c['savings_rate'])} "
            f"| {_fmt(curve['apgr'], '.2f')} ({_fmt(curve['oracle_apgr'], '.2f')}) "
            f"| {_rate(curve['cpt'].get('0.8'))} |"
        )
    return "\n".join(lines)


def _curve_rows(e: TaskEvaluation) -> list[dict[str, Any]]:
    rows = []
    for kind, curve in (("cascade", e.curve), ("oracle", e.oracle_curve)):
        for i in range(len(curve.thresholds)):
            tau = float(curve.thresholds[i])
            rows.append(
                {
                    "task": e.task,
                    "curve": kind,
                    "threshold": tau if math.isfinite(tau) else "inf",
                    "deferral_rate": float(curve.deferral_rate[i]),
                    "cost_usd_per_request": float(curve.cost_usd[i]),
                    "accuracy": "" if curve.accuracy is None else float(curve.accuracy[i]),
                    "agreement": float(curve.agreement[i]),
                    "risk": float(curve.risk[i]),
                }
            )
    return rows


def _p_value_name(method: str) -> str:
    return "Hoeffding–Bentkus" if method.endswith("hoeffding-bentkus") else "exact binomial"


def _markdown(
    evaluations: list[TaskEvaluation], summary: dict[str, Any], meta: dict[str, Any]
) -> str:
    parts = [
        "# Cascade report",
        "",
        f"Run: `{meta.get('run_dir', '')}` · config digest `{str(meta.get('config_digest'))[:12]}`"
        f" · teacher `{meta.get('teacher', '')}` · student `{meta.get('student', '')}`",
        "",
        "Every figure below is measured on the test split only; thresholds were chosen on the "
        "calibration split only.",
        "",
        summary_table(summary),
        "",
        "![curves](curves.png)",
        "",
    ]
    for e in evaluations:
        g = e.guarantee
        if not g.method.startswith("learn-then-test"):
            shown = f"{g.threshold:.4f}" if math.isfinite(g.threshold) else "∞"
            guarantee = (
                f"The student answers when its `{g.score}` score is at least {shown}, a "
                f"threshold chosen by `{g.method}` on the {g.n_calib} calibration examples: "
                f"no risk guarantee. On test the cascade departed from the teacher on "
                f"{e.point.risk:.1%} of traffic."
            )
        elif math.isfinite(g.threshold):
            guarantee = (
                f"The student answers when its `{g.score}` score is at least {g.threshold:.4f}. "
                f"With probability at least {_share(1 - g.delta)} over the draw of the "
                f"{g.n_calib} calibration examples, the cascade departs from the teacher on at "
                f"most {_share(g.alpha)} of all traffic (Learn-then-Test, fixed-sequence, "
                f"{_p_value_name(g.method)} p-values). On test it departed on {e.point.risk:.1%}."
            )
        else:
            guarantee = (
                f"No threshold could be certified at α={g.alpha:g}, δ={g.delta:g} on "
                f"{g.n_calib} calibration examples: every request goes to the teacher. "
                "Raise α, add calibration data or improve the student."
            )
        s, o = e.summary, e.oracle_summary
        r = e.random_summary or o
        if e.per_label_thresholds and g.method.startswith("learn-then-test"):
            guarantee = (
                f"The student answers when its `{g.score}` score reaches the threshold of the "
                f"label it predicts (one threshold per label, chosen on {g.n_calib} "
                f"calibration examples). With probability at least {_share(1 - g.delta)}, for "
                f"every label at once, the cascade departs from the teacher on at most "
                f"{_share(g.alpha)} of that label's traffic (Learn-then-Test per label, δ split "
                f"between the labels). On test it departed on {e.point.risk:.1%} of traffic."
            )
        cost_line = (
            f"Cost per 1,000 requests: teacher only ${e.teacher_only_cost_usd * 1000:.4f}, "
            f"student only ${e.student_only_cost_usd * 1000:.4f}, cascade "
            f"${e.point.cost_usd * 1000:.4f} (saves {e.point.savings_rate:.1%})."
        )
        parts += [
            f"## Task `{e.task}`",
            "",
            guarantee,
            "",
            f"- Quality measure: {e.quality}"
            + (" against gold labels" if e.quality == "accuracy" else " with the teacher"),
            f"- Teacher accuracy {_rate(e.teacher_accuracy)}, student accuracy "
            f"{_rate(e.student_accuracy)}, student agreement with teacher "
            f"{_rate(e.student_agreement)}",
            f"- Cascade at τ: deferral {_rate(e.point.deferral_rate)}, accuracy "
            f"{_rate(e.point.accuracy)}, agreement {_rate(e.point.agreement)}",
            f"- AUC {_fmt(s.auc)} (oracle {_fmt(o.auc)}, random {_fmt(e.random_auc)}); "
            f"APGR {_fmt(s.apgr, '.3f')} (oracle {_fmt(o.apgr, '.3f')}, random 0.500)",
            "- CPT: "
            + ", ".join(
                f"{k} → {_rate(v)} (oracle {_rate(o.cpt.get(k))}, random {_rate(r.cpt.get(k))})"
                for k, v in s.cpt.items()
            ),
            f"- Savings at matched quality (within {meta.get('tolerance', 0.01):g} of the "
            f"teacher): {_rate(s.savings_at_matched_quality)} (oracle "
            f"{_rate(o.savings_at_matched_quality)}, random "
            f"{_rate(r.savings_at_matched_quality)})",
            f"- {cost_line}",
        ]
        if e.projection is not None:
            p = e.projection
            parts.append(
                f"- At {p.tokens_per_day:.3g} teacher tokens a day ({p.requests_per_day:,.0f} "
                f"requests): teacher only ${p.teacher_only_usd_per_day:,.0f}/day, cascade "
                f"${p.cascade_usd_per_day:,.0f}/day, saving ${p.savings_usd_per_day:,.0f}/day."
            )
        tokens = (meta.get("teacher_tokens") or {}).get(e.task)
        if tokens:
            parts.append(f"- Teacher token counts: {tokens}.")
        speed = (meta.get("student_speed") or {}).get(e.task)
        if speed:
            parts.append(
                f"- Student cost to run (here, {meta.get('student', '')}): "
                f"{speed['ms_per_input_batched']:.1f} ms per input in batches of "
                f"{speed['batch_size']}, {speed['ms_per_input_alone']:.1f} ms alone; "
                f"{speed['parameters'] / 1e6:.1f}M parameters ({speed['weights_mb']:.0f} MB of "
                f"weights); the scoring process peaked at {speed['peak_rss_mb']:,.0f} MB."
            )
        if e.break_even is not None:
            parts.append(_break_even_line(e.break_even))
        if e.ece is not None:
            parts.append(
                f"- Expected calibration error of `max_prob` as the chance of agreeing with the "
                f"teacher: {e.ece:.3f} (10 bins; 0 is perfect): see `reliability.png`"
                + (
                    f"; {e.ece_after_temperature:.3f} after temperature scaling fitted on calib "
                    "(`cascade.score: temperature_max_prob`)"
                    if e.ece_after_temperature is not None
                    else ""
                )
            )
        parts.append("")
        if e.scores:
            parts += _scores_table(e)
        if e.tiers:
            parts += _tiers_section(e)
    if any(e.ece is not None for e in evaluations):
        parts += ["![reliability diagram](reliability.png)", ""]
    if any(e.per_label for e in evaluations):
        parts += [
            "Deferral rate per teacher label at the calibrated threshold (test split):",
            "",
            "![per-label deferral](per_label_deferral.png)",
            "",
        ]
    return "\n".join(parts)


def _break_even_line(b) -> str:
    if b.requests is None:
        return (
            f"- Break-even: never; the cascade saves nothing per request (one-off cost "
            f"${b.one_off_usd:,.2f})."
        )
    days = "" if b.days is None else f", {b.days:.3g} days at the stated volume"
    return (
        f"- Break-even: labelling (${b.labelling_usd:,.2f}) and training "
        f"(${b.training_usd:,.2f}) are paid back after {b.requests:,.0f} requests "
        f"({b.teacher_tokens:.3g} teacher input tokens{days})."
    )


def _scores_table(e: TaskEvaluation) -> list[str]:
    """Every confidence score of the task on test, beside the oracle and random baselines."""
    levels = list(e.summary.cpt)
    head = (
        "| score | AUROC (agreement) | AUC | APGR | "
        + " | ".join(f"CPT({k})" for k in levels)
        + " | savings at matched quality |"
    )
    lines = [
        f"Confidence scores of `{e.task}` on test (the cascade uses `{e.guarantee.score}`):",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for row in e.scores or []:
        name = f"**{row['score']}**" if row["score"] == e.guarantee.score else row["score"]
        lines.append(
            f"| {name} | {_fmt(row['auroc_agreement'])} | {_fmt(row['auc'])} "
            f"| {_fmt(row['apgr'])} | "
            + " | ".join(_rate(row["cpt"].get(k)) for k in levels)
            + f" | {_rate(row['savings_at_matched_quality'])} |"
        )
    return [*lines, ""]


def _tiers_section(e: TaskEvaluation) -> list[str]:
    t = e.tiers or {}
    names = [*t["names"], "teacher"]
    thresholds = ", ".join(
        f"{name} {'skipped' if tau is None else f'τ={tau:.4f}'}"
        for name, tau in zip(t["names"], t["thresholds"], strict=True)
    )
    shares = ", ".join(f"{name} {_rate(t['share_answered'][name])}" for name in names)
    return [
        f"### Tiers of `{e.task}`",
        "",
        f"Thresholds chosen jointly ({t['method']}): {thresholds}. Guarantee: {t['guarantee']}.",
        "",
        f"- Answered on test: {shares}",
        f"- End-to-end risk {_rate(t['risk'])} (α {t['alpha']:g}), accuracy "
        f"{_rate(t['accuracy'])}, agreement {_rate(t['agreement'])}, "
        f"${t['cost_usd_per_request'] * 1000:.4f} per 1,000 requests, saving "
        f"{_rate(t['savings_rate'])} against the teacher alone (two tiers, student → teacher: "
        f"{_rate(e.point.savings_rate)} at {_rate(e.point.risk)} risk)",
        "",
        f"![tiers of {e.task}](tiers_{e.task}.png)",
        "",
    ]


def write_report(
    evaluations: list[TaskEvaluation], folder: Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write the four report files into `folder` (which must exist); return the summary."""
    summary = {
        "meta": meta,
        "tasks": {e.task: summary_dict(e) for e in evaluations},
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with (folder / "curve.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        for e in evaluations:
            writer.writerows(_curve_rows(e))
    plot_curves(evaluations, folder / "curves.png")
    if any(e.reliability for e in evaluations):
        plot_reliability(evaluations, folder / "reliability.png")
    if any(e.per_label for e in evaluations):
        plot_per_label(evaluations, folder / "per_label_deferral.png")
    for e in evaluations:
        if e.tiers:
            plot_tiers(e, folder / f"tiers_{e.task}.png")
    (folder / "report.md").write_text(_markdown(evaluations, summary, meta), encoding="utf-8")
    return summary
