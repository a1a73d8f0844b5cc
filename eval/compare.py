"""Finished runs side by side: students, scores or teachers, one table and one plot per task.

    cascadekit compare runs/a runs/b [runs/c ...] --out runs/a-vs-b [--names a,b,c]

Reads each run's report/summary.json and report/curve.csv (written by `cascadekit evaluate`)
and writes into --out: compare.md (per task that two or more runs share, a row per run with
its oracle and random baselines beside it), compare.json (the same numbers), compare_TASK.png
(the runs' curves overlaid) and compare.html (the page with its plots inlined). Only
`load_run(s)` read and `write_comparison` writes; the rest computes.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.curves import CascadeCurve, QualityName
from eval.html import markdown_to_html
from eval.plots import plot_comparison
from eval.report import CURVE_COLUMNS

TASK_KEYS = ("n_test", "quality_metric", "teacher", "student", "cascade", "curve")
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # becomes part of a file name


class CompareError(ValueError):
    """A run folder or option that cannot be compared; the message names which and why."""


@dataclass(frozen=True, eq=False)
class RunReport:
    """One finished run, as its report folder records it."""

    name: str  # shown in tables and legends
    run_dir: Path  # absolute
    summary: dict[str, Any]  # report/summary.json
    curves: dict[str, dict[str, CascadeCurve]]  # task -> "cascade" / "oracle" -> its points


@dataclass(frozen=True)
class TaskComparison:
    """One task across the runs that report it."""

    task: str
    runs: list[str]  # names of the runs that have the task, in the order given
    missing: list[str]  # names of the runs that do not
    quality: QualityName  # the plots' y axis: accuracy when every run has gold, else agreement
    cpt_levels: list[str]  # every CPT level any of the runs reports, ascending
    rows: list[dict[str, Any]]  # per run: its cascade, then its oracle and random baselines
    notes: list[str]  # what makes these runs less comparable than the table looks


@dataclass(frozen=True)
class Comparison:
    """The runs, and every task that two or more of them report."""

    runs: list[RunReport]
    tasks: list[TaskComparison]
    notes: list[str]  # tasks that only one run has


def run_names(run_dirs: list[Path], names: list[str] | None = None) -> list[str]:
    """The runs' display names: `names` when given, else each run folder's name, with as many
    parent folders as it takes to tell equal names apart (`a/quickstart`, `b/quickstart`)."""
    if names is not None:
        names = [name.strip() for name in names]
        if len(names) != len(run_dirs):
            raise CompareError(
                f"--names gives {len(names)} name(s) for {len(run_dirs)} runs: one per run, "
                "comma-separated, in the order of the runs"
            )
        for name in names:
            if not name or "|" in name or "`" in name:
                raise CompareError(f"--names: {name!r} is not a usable name (empty, | or `)")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise CompareError(f"--names: {', '.join(repeated)} given more than once")
        return names
    paths = [Path(p).resolve() for p in run_dirs]
    depths = [1] * len(paths)

    def shown(i: int) -> str:
        return "/".join(paths[i].parts[1:][-depths[i] :]).replace("|", "_").replace("`", "_")

    while True:
        current = [shown(i) for i in range(len(paths))]
        clashing = [  # with another folder: the same folder given twice never parts
            i
            for i, name in enumerate(current)
            if depths[i] < len(paths[i].parts) - 1
            and any(other == name and paths[j] != paths[i] for j, other in enumerate(current))
        ]
        if not clashing:
            break
        for i in clashing:
            depths[i] += 1
    result: list[str] = []
    for name in current:  # the same folder given twice: number the repeats
        result.append(name if name not in result else f"{name} ({result.count(name) + 1})")
    return result


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise CompareError(f"{path}: not UTF-8 text") from exc
    tasks = summary.get("tasks") if isinstance(summary, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise CompareError(f'{path}: no "tasks" in it; is it a cascadekit report?')
    for task, entry in tasks.items():
        if not TASK_NAME.match(task):
            raise CompareError(f"{path}: task name {task!r} is not a plain name")
        absent = [key for key in TASK_KEYS if not isinstance(entry, dict) or key not in entry]
        if absent:
            raise CompareError(f"{path}: task {task!r} has no {', '.join(absent)}")
        if entry["quality_metric"] not in ("accuracy", "agreement"):
            raise CompareError(
                f"{path}: task {task!r} has quality_metric {entry['quality_metric']!r}, "
                "expected accuracy or agreement"
            )
    return summary


def _column(path: Path, task: str, rows: list[dict[str, str]], name: str) -> np.ndarray:
    try:
        return np.array([float(row[name]) if row[name] != "" else math.nan for row in rows])
    except (TypeError, ValueError) as exc:
        raise CompareError(f"{path}: task {task!r}: {name} is not a number") from exc


def _read_curves(path: Path) -> dict[str, dict[str, CascadeCurve]]:
    points: dict[tuple[str, str], list[dict[str, str]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in CURVE_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise CompareError(f"{path}: no column {', '.join(absent)}")
        for row in reader:
            points.setdefault((row["task"], row["curve"]), []).append(row)
    curves: dict[str, dict[str, CascadeCurve]] = {}
    for (task, kind), rows in points.items():
        accuracy = _column(path, task, rows, "accuracy")  # empty cells: the run has no gold
        curves.setdefault(task, {})[kind] = CascadeCurve(
            thresholds=_column(path, task, rows, "threshold"),
            deferral_rate=_column(path, task, rows, "deferral_rate"),
            cost_usd=_column(path, task, rows, "cost_usd_per_request"),
            accuracy=None if np.isnan(accuracy).all() else accuracy,
            agreement=_column(path, task, rows, "agreement"),
            risk=_column(path, task, rows, "risk"),
        )
    return curves


def load_run(run_dir: Path, name: str) -> RunReport:
    """Read RUN/report/summary.json and RUN/report/curve.csv; a CompareError names what is
    missing or unreadable."""
    report = Path(run_dir) / "report"
    if not Path(run_dir).is_dir():
        raise CompareError(f"{run_dir}: no such run directory")
    for file in ("summary.json", "curve.csv"):
        if not (report / file).is_file():
            raise CompareError(
                f"{run_dir}: no report/{file}; is it a finished run? "
                "(`cascadekit evaluate CONFIG` writes it)"
            )
    summary = _read_summary(report / "summary.json")
    curves = _read_curves(report / "curve.csv")
    for task, entry in summary["tasks"].items():
        cascade = curves.get(task, {}).get("cascade")
        if cascade is None:
            raise CompareError(f"{report / 'curve.csv'}: no cascade points for task {task!r}")
        if entry["quality_metric"] == "accuracy" and cascade.accuracy is None:
            raise CompareError(
                f"{report / 'curve.csv'}: task {task!r} has no accuracy column values, "
                "but summary.json measures accuracy"
            )
    return RunReport(name=name, run_dir=Path(run_dir).resolve(), summary=summary, curves=curves)


def load_runs(run_dirs: list[Path], names: list[str] | None = None) -> list[RunReport]:
    """Read at least two runs, named by `run_names`."""
    if len(run_dirs) < 2:
        raise CompareError(
            f"compare needs at least two runs, got {len(run_dirs)}: "
            "cascadekit compare RUN RUN [RUN ...] --out DIR"
        )
    return [
        load_run(path, name)
        for path, name in zip(run_dirs, run_names(run_dirs, names), strict=True)
    ]


def _level_order(level: str) -> float:
    try:
        return float(level)
    except ValueError:
        return math.inf


def _rows(name: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's cascade row, then its oracle and random rows where summary.json has them."""
    cascade, curve = entry["cascade"], entry["curve"]
    rows = [
        {
            "run": name,
            "kind": "cascade",
            "quality_metric": entry["quality_metric"],
            "n_test": entry["n_test"],
            "score": cascade.get("score"),
            "method": cascade.get("method"),
            "teacher_accuracy": entry["teacher"].get("accuracy"),
            "student_accuracy": entry["student"].get("accuracy"),
            "student_agreement": entry["student"].get("agreement"),
            "threshold": cascade.get("threshold"),
            "defer_all": cascade.get("defer_all"),
            "alpha": cascade.get("alpha"),
            "deferral_rate": cascade.get("deferral_rate"),
            "risk": cascade.get("risk"),
            "accuracy": cascade.get("accuracy"),
            "agreement": cascade.get("agreement"),
            "cost_usd_per_request": cascade.get("cost_usd_per_request"),
            "savings_rate": cascade.get("savings_rate"),
            "auc": curve.get("auc"),
            "apgr": curve.get("apgr"),
            "cpt": curve.get("cpt") or {},
            "savings_at_matched_quality": curve.get("savings_at_matched_quality"),
        }
    ]
    for kind in ("oracle", "random"):  # the baselines, where summary.json has them
        if f"{kind}_auc" in curve or f"{kind}_apgr" in curve:
            rows.append(
                {
                    "run": name,
                    "kind": kind,
                    "auc": curve.get(f"{kind}_auc"),
                    "apgr": curve.get(f"{kind}_apgr"),
                    "cpt": curve.get(f"{kind}_cpt") or {},
                    "savings_at_matched_quality": curve.get(f"{kind}_savings_at_matched_quality"),
                }
            )
    return rows


def _by_run(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}: {value}" for name, value in values.items())


def _compare_task(task: str, runs: list[RunReport], missing: list[str]) -> TaskComparison:
    entries = {run.name: run.summary["tasks"][task] for run in runs}
    metrics = {name: entry["quality_metric"] for name, entry in entries.items()}
    quality: QualityName = (
        "accuracy" if all(m == "accuracy" for m in metrics.values()) else "agreement"
    )
    notes = []
    if missing:
        notes.append(f"Not in {', '.join(missing)}: compared between {', '.join(entries)} only.")
    if len(set(metrics.values())) > 1:
        notes.append(
            f"The runs measure quality differently ({_by_run(metrics)}): their AUC, APGR and "
            "CPT are not comparable; the plot shows agreement with each run's teacher, without "
            "the oracle of a run measured by accuracy."
        )
    n_test = {name: entry["n_test"] for name, entry in entries.items()}
    if len(set(n_test.values())) > 1:
        notes.append(
            f"The runs were tested on different numbers of rows ({_by_run(n_test)}): their "
            "figures come from different test sets."
        )
    teachers = {run.name: (run.summary.get("meta") or {}).get("teacher") for run in runs}
    if len(set(teachers.values())) > 1:
        notes.append(
            "The runs have different teachers: agreement, risk and deferral are measured "
            "against each run's own teacher."
        )
    levels = {
        level
        for entry in entries.values()
        for key in ("cpt", "oracle_cpt")
        for level in entry["curve"].get(key) or {}
    }
    return TaskComparison(
        task=task,
        runs=list(entries),
        missing=missing,
        quality=quality,
        cpt_levels=sorted(levels, key=_level_order),
        rows=[row for name, entry in entries.items() for row in _rows(name, entry)],
        notes=notes,
    )


def compare_runs(runs: list[RunReport]) -> Comparison:
    """Compare every task that two or more of `runs` report; say which runs lack which task."""
    if len(runs) < 2:
        raise CompareError(f"compare needs at least two runs, got {len(runs)}")
    tasks: list[str] = []  # in the order the runs first name them
    for run in runs:
        tasks += [task for task in run.summary["tasks"] if task not in tasks]
    compared, notes = [], []
    for task in tasks:
        having = [run for run in runs if task in run.summary["tasks"]]
        if len(having) < 2:
            notes.append(f"Task `{task}` is only in {having[0].name}: not compared.")
            continue
        missing = [run.name for run in runs if task not in run.summary["tasks"]]
        compared.append(_compare_task(task, having, missing))
    if not compared:
        held = "; ".join(f"{run.name} has {', '.join(run.summary['tasks'])}" for run in runs)
        raise CompareError(f"no task is in two or more of the runs, nothing to compare ({held})")
    return Comparison(runs=runs, tasks=compared, notes=notes)


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _fmt(value: float | None, spec: str = ".3f") -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return format(value, spec)


def task_table(comparison: TaskComparison) -> str:
    """A Markdown table of one task: a row per run, each followed by its oracle and random
    baselines (which have only AUC, APGR, CPT and savings at matched quality)."""
    levels = comparison.cpt_levels
    head = (
        "| run | quality | n_test | score | teacher acc | student acc | student agree | τ "
        "| deferral | risk (α) | cascade acc | cascade agree | savings | AUC | APGR | "
        + "".join(f"CPT({level}) | " for level in levels)
        + "savings at matched quality |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in comparison.rows:
        cpt = " | ".join(_rate(row["cpt"].get(level)) for level in levels)
        tail = f"| {_fmt(row['auc'])} | {_fmt(row['apgr'])} | " + (f"{cpt} | " if levels else "")
        if row["kind"] != "cascade":
            matched = _rate(row.get("savings_at_matched_quality"))
            lines.append(f"| {row['run']} ({row['kind']}) " + "| " * 12 + tail + f"{matched} |")
            continue
        tau = "∞" if row["defer_all"] else _fmt(row["threshold"])
        alpha = "" if row["alpha"] is None else f" ({row['alpha']:g})"
        lines.append(
            f"| {row['run']} | {row['quality_metric']} | {row['n_test']} | {row['score'] or '–'} "
            f"| {_rate(row['teacher_accuracy'])} | {_rate(row['student_accuracy'])} "
            f"| {_rate(row['student_agreement'])} | {tau} | {_rate(row['deferral_rate'])} "
            f"| {_rate(row['risk'])}{alpha} | {_rate(row['accuracy'])} "
            f"| {_rate(row['agreement'])} | {_rate(row['savings_rate'])} "
            + tail
            + f"{_rate(row['savings_at_matched_quality'])} |"
        )
    return "\n".join(lines)


def _task_section(comparison: TaskComparison, image: bool) -> list[str]:
    lines = [f"## Task `{comparison.task}`", ""]
    if comparison.notes:
        lines += [f"- {note}" for note in comparison.notes] + [""]
    lines += [task_table(comparison), ""]
    if image:
        lines += [f"![{comparison.task}](compare_{comparison.task}.png)", ""]
    return lines


def comparison_tables(comparison: Comparison) -> str:
    """Every task's table, under its name and notes (what the CLI prints)."""
    lines = [f"- {note}" for note in comparison.notes] + ([""] if comparison.notes else [])
    for task in comparison.tasks:
        lines += _task_section(task, image=False)
    return "\n".join(lines).rstrip() + "\n"


def comparison_markdown(comparison: Comparison) -> str:
    """compare.md: the runs, then each task's notes, table and plot."""
    lines = [
        "# Cascade comparison",
        "",
        "| run | directory | teacher | student | config digest |",
        "|---|---|---|---|---|",
    ]
    for run in comparison.runs:
        meta = run.summary.get("meta") or {}
        lines.append(
            f"| {run.name} | `{run.run_dir}` | `{meta.get('teacher') or '–'}` "
            f"| `{meta.get('student') or '–'}` | `{str(meta.get('config_digest') or '–')[:12]}` |"
        )
    lines += [
        "",
        "Each run's figures are measured on its own test split, at the threshold it calibrated "
        "on its own calibration split: τ, deferral, risk (its α), cascade accuracy and "
        "agreement and savings are at that threshold. Oracle rows defer exactly the student's "
        "errors (the best any score could do), random rows a random share of requests (what "
        "a score that knows nothing does). In the plots each run keeps one colour: its "
        "cascade solid, its oracle dashed, its random baseline dotted, its calibrated "
        "threshold a dot.",
        "",
    ]
    lines += [f"- {note}" for note in comparison.notes] + ([""] if comparison.notes else [])
    for task in comparison.tasks:
        lines += _task_section(task, image=True)
    return "\n".join(lines).rstrip() + "\n"


def comparison_dict(comparison: Comparison) -> dict[str, Any]:
    """compare.json: the runs, and per task the numbers of its table (from summary.json)."""
    return {
        "runs": [
            {
                "name": run.name,
                "run_dir": str(run.run_dir),
                **{
                    key: (run.summary.get("meta") or {}).get(key)
                    for key in ("teacher", "student", "config_digest")
                },
            }
            for run in comparison.runs
        ],
        "tasks": {
            t.task: {
                "runs": t.runs,
                "missing": t.missing,
                "plot_quality": t.quality,
                "cpt_levels": t.cpt_levels,
                "notes": t.notes,
                "rows": t.rows,
            }
            for t in comparison.tasks
        },
        "notes": comparison.notes,
    }


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "compare.json").is_file():
        raise CompareError(
            f"--out {out} already holds other files: give a new or empty folder, or an "
            "earlier comparison's (which is replaced)"
        )


def write_comparison(comparison: Comparison, out: Path) -> dict[str, Path]:
    """Write compare.md, compare.json, compare_TASK.png and compare.html into `out`, all or
    nothing: into a temporary sibling first, then moved into place. `out` must be new, empty
    or an earlier comparison (replaced whole); anything else is refused and left untouched.
    Returns the written files by name."""
    out = Path(out).resolve()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    names = ["compare.md", "compare.json", "compare.html"]
    try:
        all_runs = [run.name for run in comparison.runs]
        for t in comparison.tasks:
            runs = [run for run in comparison.runs if run.name in t.runs]
            plot_comparison(
                t.task,
                t.quality,
                {run.name: run.curves[t.task] for run in runs},
                {run.name: run.summary["tasks"][t.task] for run in runs},
                all_runs,
                tmp / f"compare_{t.task}.png",
            )
            names.append(f"compare_{t.task}.png")
        markdown = comparison_markdown(comparison)
        (tmp / "compare.md").write_text(markdown, encoding="utf-8")
        (tmp / "compare.json").write_text(
            json.dumps(comparison_dict(comparison), indent=2) + "\n", encoding="utf-8"
        )
        page = markdown_to_html(markdown, tmp, title="Cascade comparison")
        (tmp / "compare.html").write_text(page, encoding="utf-8")
        if out.exists():  # empty, or an earlier comparison: swap it out, then drop it
            trash = out.parent / f".trash-{out.name}-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            try:
                tmp.rename(out)
            except OSError:
                trash.rename(out)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {name: out / name for name in names}
