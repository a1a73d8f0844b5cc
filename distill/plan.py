"""Capacity and cost plan of a finished run at a stated traffic volume.

    cascadekit plan RUN --tokens-per-day 8e9 [--measure-rows 128] [--batch 8]
        [--hardware-usd-per-hour P] [--json]

The plan scales what the run measured to a day of traffic. N is the daily volume in teacher
input tokens (what the teacher would read if it took all traffic), as `--tokens-per-day`
means everywhere in cascadekit. Per task t:

    share_t   = n_test_t / sum_u n_test_u        the traffic mix, as in the run's test split
    R         = N / sum_t share_t * tok_t        requests a day (tok_t: mean teacher input
    R_t       = share_t * R                      tokens of a test request of task t)
    calls_t   = d_t * R_t                        teacher calls (d_t: deferral rate on test at
                                                 the calibrated threshold, summary.json)
    teacher tokens_t = calls_t * (tok_t + out_t)  (out_t: mean teacher output tokens)
    student hours_t  = R_t / s_t / 3600          every request runs the student; s_t: student
                                                 rows/s timed here on up to K test rows
                                                 in batches like `cascadekit serve` (the
                                                 median over the batches)
    teacher hours_t  = calls_t / u / 3600        cascade; teacher only: R_t / u / 3600. u: the
                                                 local (`hf`) teacher's rows/s recorded by the
                                                 label stage; other teachers have none (API)
    priced USD: teacher only R_t * c_teacher_t, cascade R_t * c_cascade_t (summary.json's
                per-request costs under the config's token prices: the report's projection)
    compute USD (with P = --hardware-usd-per-hour, default cost.training_usd_per_hour):
                cascade      = student hours_t * P + (local teacher: teacher hours_t * P,
                                                      else calls_t * c_teacher_t)
                teacher only = local teacher: R_t / u / 3600 * P, else R_t * c_teacher_t
    saving = 1 - cascade / teacher only; the total row sums the tasks.

Hours are hours of the measured hardware at the measured throughput, one process, no
headroom for peaks: divide by 24 for the machines a flat day keeps busy. `plan_traffic` is
pure; `read_run` and `measure_student` do the reading and the timing.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import UserError


@dataclass(frozen=True)
class TaskFacts:
    """What a finished run measured about one task, per request."""

    task: str
    n_test: int
    deferral_rate: float  # at the calibrated threshold, on test
    mean_teacher_input_tokens: float
    mean_teacher_output_tokens: float
    teacher_usd_per_request: float  # the cost model's price of a teacher call
    cascade_usd_per_request: float  # student on every request + teacher on the deferred ones
    student_rows_per_s: float | None  # timed by measure_student
    teacher_rows_per_s: float | None  # local teacher only; None: an API (USD only)


@dataclass(frozen=True)
class TaskPlan:
    """One task's (or the total's) daily figures."""

    task: str
    requests_per_day: float
    deferral_rate: float
    teacher_calls_per_day: float
    teacher_tokens_per_day: float  # input + output of the calls the cascade makes
    student_hours_per_day: float | None
    teacher_hours_per_day: float | None  # cascade; None: API teacher
    teacher_only_hours_per_day: float | None
    teacher_only_usd_per_day: float  # priced: the config's token prices
    cascade_usd_per_day: float
    savings_rate: float
    teacher_only_compute_usd_per_day: float | None  # with a hardware price
    cascade_compute_usd_per_day: float | None
    compute_savings_rate: float | None


@dataclass(frozen=True)
class Plan:
    tokens_per_day: float
    hardware_usd_per_hour: float | None
    student_hardware: str  # what the student's throughput was timed on
    student_device: str  # "CPU" or "GPU": the unit of student hours
    teacher_throughput: str  # where the teacher's came from, or why there is none
    tasks: tuple[TaskPlan, ...]
    total: TaskPlan


def plan_traffic(
    tokens_per_day: float,
    facts: Sequence[TaskFacts],
    hardware_usd_per_hour: float | None = None,
    student_hardware: str = "",
    teacher_throughput: str = "",
    student_device: str = "",
) -> Plan:
    """Scale each task's measured per-request figures to `tokens_per_day` (see the module's
    docstring for every formula)."""
    if tokens_per_day <= 0:
        raise ValueError("tokens_per_day must be positive")
    if not facts:
        raise ValueError("no task to plan")
    n_total = sum(f.n_test for f in facts)
    shares = [f.n_test / n_total for f in facts]
    tokens_per_request = sum(
        s * f.mean_teacher_input_tokens for s, f in zip(shares, facts, strict=True)
    )
    if tokens_per_request <= 0:
        raise ValueError("the run's test requests carry no teacher input tokens")
    requests = tokens_per_day / tokens_per_request
    price = hardware_usd_per_hour
    plans = []
    for share, f in zip(shares, facts, strict=True):
        r = share * requests
        calls = f.deferral_rate * r
        student_h = None if not f.student_rows_per_s else r / f.student_rows_per_s / 3600
        teacher_h = only_h = None
        if f.teacher_rows_per_s:
            teacher_h = calls / f.teacher_rows_per_s / 3600
            only_h = r / f.teacher_rows_per_s / 3600
        only_usd, cascade_usd = r * f.teacher_usd_per_request, r * f.cascade_usd_per_request
        only_compute = cascade_compute = None
        if price is not None and student_h is not None:
            if only_h is not None and teacher_h is not None:
                only_compute, teacher_part = only_h * price, teacher_h * price
            else:
                only_compute, teacher_part = only_usd, calls * f.teacher_usd_per_request
            cascade_compute = student_h * price + teacher_part
        plans.append(
            TaskPlan(
                task=f.task,
                requests_per_day=r,
                deferral_rate=f.deferral_rate,
                teacher_calls_per_day=calls,
                teacher_tokens_per_day=calls
                * (f.mean_teacher_input_tokens + f.mean_teacher_output_tokens),
                student_hours_per_day=student_h,
                teacher_hours_per_day=teacher_h,
                teacher_only_hours_per_day=only_h,
                teacher_only_usd_per_day=only_usd,
                cascade_usd_per_day=cascade_usd,
                savings_rate=_saving(only_usd, cascade_usd),
                teacher_only_compute_usd_per_day=only_compute,
                cascade_compute_usd_per_day=cascade_compute,
                compute_savings_rate=(
                    None if only_compute is None else _saving(only_compute, cascade_compute)
                ),
            )
        )
    return Plan(
        tokens_per_day=tokens_per_day,
        hardware_usd_per_hour=price,
        student_hardware=student_hardware,
        student_device=student_device,
        teacher_throughput=teacher_throughput,
        tasks=tuple(plans),
        total=_total(plans),
    )


def _saving(teacher_only: float, cascade: float | None) -> float:
    return 0.0 if not teacher_only or cascade is None else 1.0 - cascade / teacher_only


def _sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))  # type: ignore[arg-type]


def _total(plans: list[TaskPlan]) -> TaskPlan:
    def total(name: str) -> Any:
        return _sum([getattr(p, name) for p in plans])

    requests, calls = total("requests_per_day"), total("teacher_calls_per_day")
    only, cascade = total("teacher_only_usd_per_day"), total("cascade_usd_per_day")
    only_compute = total("teacher_only_compute_usd_per_day")
    cascade_compute = total("cascade_compute_usd_per_day")
    return TaskPlan(
        task="total",
        requests_per_day=requests,
        deferral_rate=calls / requests if requests else 0.0,
        teacher_calls_per_day=calls,
        teacher_tokens_per_day=total("teacher_tokens_per_day"),
        student_hours_per_day=total("student_hours_per_day"),
        teacher_hours_per_day=total("teacher_hours_per_day"),
        teacher_only_hours_per_day=total("teacher_only_hours_per_day"),
        teacher_only_usd_per_day=only,
        cascade_usd_per_day=cascade,
        savings_rate=_saving(only, cascade),
        teacher_only_compute_usd_per_day=only_compute,
        cascade_compute_usd_per_day=cascade_compute,
        compute_savings_rate=None
        if only_compute is None
        else _saving(only_compute, cascade_compute),
    )


# ── output ───────────────────────────────────────────────────────────────────────────────
def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON-ready data (`--json`)."""
    return asdict(plan)


def _count(value: float | None) -> str:
    if value is None:
        return "–"
    for limit, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{unit}"
    return f"{value:.3g}"


def _hours(value: float | None, api: str = "–") -> str:
    return api if value is None else f"{value:,.1f}"


def _usd(value: float | None) -> str:
    return "–" if value is None else f"${value:,.0f}"


def format_plan(plan: Plan) -> str:
    """Markdown: where the throughputs come from, the daily volumes and the daily USD."""
    rows = [*plan.tasks, plan.total] if len(plan.tasks) > 1 else list(plan.tasks)
    unit = f"{plan.student_device}-h" if plan.student_device else "h"
    api = "API" if all(p.teacher_hours_per_day is None for p in rows) else "–"
    lines = [
        f"At {plan.tokens_per_day:.3g} teacher input tokens a day.",
        f"- student throughput: {plan.student_hardware}",
        f"- teacher throughput: {plan.teacher_throughput}",
        "",
        "| task | requests/day | deferral | teacher calls/day | teacher tokens/day (cascade) "
        f"| student {unit}/day | teacher h/day (cascade / teacher only) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in rows:
        teacher = (
            api
            if p.teacher_hours_per_day is None
            else f"{_hours(p.teacher_hours_per_day)} / {_hours(p.teacher_only_hours_per_day)}"
        )
        lines.append(
            f"| {p.task} | {_count(p.requests_per_day)} | {p.deferral_rate:.1%} "
            f"| {_count(p.teacher_calls_per_day)} | {_count(p.teacher_tokens_per_day)} "
            f"| {_hours(p.student_hours_per_day)} | {teacher} |"
        )
    price = plan.hardware_usd_per_hour
    compute = (
        "" if price is None else f" | compute at ${price:g}/h: teacher only | cascade | saving"
    )
    lines += [
        "",
        f"| task | priced: teacher only USD/day | cascade USD/day | saving{compute} |",
        "|---|---|---|---|" + ("---|---|---|" if price is not None else ""),
    ]
    for p in rows:
        line = (
            f"| {p.task} | {_usd(p.teacher_only_usd_per_day)} | {_usd(p.cascade_usd_per_day)} "
            f"| {p.savings_rate:.1%} |"
        )
        if price is not None:
            saving = "–" if p.compute_savings_rate is None else f"{p.compute_savings_rate:.1%}"
            line += (
                f" {_usd(p.teacher_only_compute_usd_per_day)} "
                f"| {_usd(p.cascade_compute_usd_per_day)} | {saving} |"
            )
        lines.append(line)
    lines.append(
        "\nHours are hours of the measured hardware at the measured throughput (one process, "
        "no peak headroom; / 24 = machines busy all day). Priced USD: the config's token prices."
    )
    return "\n".join(lines)


# ── I/O: read a finished run, time its students ─────────────────────────────────────────
def read_run(run_dir: Path) -> tuple[Any, dict, dict[str, dict[str, np.ndarray]]]:
    """(config, summary.json, task -> test score rows) of a finished run; UserError else."""
    from distill import runs
    from distill.config import load_config
    from distill.pipeline import load_scores

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    summary_path = run_dir / "report" / "summary.json"
    config_path = run_dir / "config.resolved.yaml"
    finished = runs.read_manifest(run_dir, "evaluate") is not None and summary_path.is_file()
    if not finished or not config_path.is_file() or not (run_dir / "cascade.json").is_file():
        raise UserError(
            f"{run_dir}: not a finished run (no report/summary.json, cascade.json or "
            "config.resolved.yaml); run `cascadekit run CONFIG` to the end first"
        )
    config = load_config(config_path)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    tests = {task: load_scores(run_dir, task, "test") for task in summary["tasks"]}
    return config, summary, tests


def teacher_throughput(config, run_dir: Path) -> tuple[float | None, str]:
    """Rows/s of a local (`hf`) teacher from the compute time it recorded per row (batch time
    / batch size) in the label stage, with a line saying so; (None, why) for other teachers."""
    import pyarrow.parquet as pq

    from distill import runs

    kind = config.teacher.kind
    if kind == "openai":
        return None, "API teacher (an OpenAI-compatible endpoint): USD from the cost model only"
    if kind != "hf":
        return None, f"`{kind}` teacher: no throughput to measure, USD from the cost model only"
    manifest = runs.read_manifest(run_dir, "label") or {}
    seconds = rows = computed = 0
    for task, info in (manifest.get("tasks") or {}).items():
        path = runs.stage_dir(run_dir, "label") / f"{task}.parquet"
        try:
            latency = np.asarray(pq.read_table(path, columns=["latency_s"])["latency_s"], float)
        except (OSError, KeyError, ValueError):  # an older run: no compute times recorded
            continue
        latency = latency[np.isfinite(latency) & (latency > 0)]
        seconds, rows = seconds + latency.sum(), rows + len(latency)
        computed += info.get("n_computed", 0)
    if not rows or seconds <= 0:
        return None, "`hf` teacher without recorded compute times: USD from the cost model only"
    when = (
        "timed in this run's label stage"
        if computed
        else "answers from the cache, timed when first computed"
    )
    torch_build = (manifest.get("versions") or {}).get("torch")
    return rows / seconds, (
        f"{rows / seconds:.2f} rows/s, the `hf` teacher's compute time per row recorded by the "
        f"label stage ({rows:,} rows at batch {config.teacher.batch_size}, torch {torch_build}; "
        f"{when})"
    )


def describe_hardware() -> tuple[str, str]:
    """("GPU" or "CPU", a line naming it): the device the student runs on here."""
    import torch

    if torch.cuda.is_available():
        return "GPU", f"GPU {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return "CPU", f"CPU {name} ({torch.get_num_threads()} threads, {os.cpu_count()} cores), no GPU"


def measure_student(run_dir: Path, task: str, texts: Sequence[str], batch: int, cascade=None):
    """Student rows/s on `texts` in batches of `batch` (as `cascadekit serve` batches), after
    one untimed warm-up batch that loads the model: the median over batches, so that a burst
    of other work on a shared machine does not decide the figure."""
    from distill.cascade import Cascade

    cascade = cascade or Cascade.load(run_dir)
    texts = list(texts)
    cascade.predict_mixed([(task, t) for t in texts[:batch]])  # warm-up: loads the base
    rates = []
    for start in range(0, len(texts), batch):
        items = [(task, t) for t in texts[start : start + batch]]
        started = time.perf_counter()
        cascade.predict_mixed(items)
        rates.append(len(items) / (time.perf_counter() - started))
    return float(np.median(rates))


def plan_run(
    run_dir: Path,
    tokens_per_day: float,
    measure_rows: int = 128,
    batch: int = 8,
    hardware_usd_per_hour: float | None = None,
) -> Plan:
    """Read a finished run, time its students here, and plan `tokens_per_day` with it."""
    from distill.cascade import Cascade

    if not 0 < tokens_per_day < float("inf"):
        raise UserError(f"--tokens-per-day must be positive and finite, got {tokens_per_day:g}")
    if measure_rows < 1 or batch < 1:
        raise UserError("--measure-rows and --batch must be at least 1")
    if hardware_usd_per_hour is not None and hardware_usd_per_hour < 0:
        raise UserError("--hardware-usd-per-hour must be >= 0")
    config, summary, tests = read_run(run_dir)
    if hardware_usd_per_hour is None and config.cost.training_usd_per_hour > 0:
        hardware_usd_per_hour = config.cost.training_usd_per_hour
    teacher_rate, teacher_line = teacher_throughput(config, Path(run_dir))
    cascade = Cascade.load(run_dir, allow_pickle=config.student.allow_pickle)
    facts, timed = [], []
    for task, entry in summary["tasks"].items():
        test = tests[task]
        if int(entry["n_test"]) < 1 or len(test["text"]) == 0:
            raise UserError(f"{run_dir}: task {task!r} has no test rows to plan from")
        texts = [str(t) for t in test["text"][:measure_rows]]
        rate = measure_student(run_dir, task, texts, batch, cascade) if texts else None
        if rate is not None:
            timed.append(
                f"{task} {rate:.1f} rows/s (median of batches over {len(texts)} test rows)"
            )
        facts.append(
            TaskFacts(
                task=task,
                n_test=int(entry["n_test"]),
                deferral_rate=float(entry["cascade"]["deferral_rate"]),
                mean_teacher_input_tokens=float(
                    np.mean(test["teacher_input_tokens"].astype(float))
                ),
                mean_teacher_output_tokens=float(
                    np.mean(test["teacher_output_tokens"].astype(float))
                ),
                teacher_usd_per_request=float(entry["teacher"]["cost_usd_per_request"]),
                cascade_usd_per_request=float(entry["cascade"]["cost_usd_per_request"]),
                student_rows_per_s=rate,
                teacher_rows_per_s=teacher_rate,
            )
        )
    device, hardware = describe_hardware()
    student_line = f"{'; '.join(timed)}, batches of {batch}, timed here on {hardware}"
    try:
        return plan_traffic(
            tokens_per_day, facts, hardware_usd_per_hour, student_line, teacher_line, device
        )
    except ValueError as exc:
        raise UserError(f"{run_dir}: {exc}") from exc
