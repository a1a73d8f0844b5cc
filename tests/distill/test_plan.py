"""`cascadekit plan`: the daily figures follow from the run's measurements and scale with N."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.cli import main
from distill.plan import TaskFacts, format_plan, plan_traffic, teacher_throughput

FACTS = TaskFacts(
    task="intent",
    n_test=300,
    deferral_rate=0.4,
    mean_teacher_input_tokens=1000.0,
    mean_teacher_output_tokens=3.0,
    teacher_usd_per_request=0.0025,
    cascade_usd_per_request=0.0011,
    student_rows_per_s=100.0,
    teacher_rows_per_s=None,
)
DAILY = (
    "requests_per_day", "teacher_calls_per_day", "teacher_tokens_per_day", "student_hours_per_day",
    "teacher_hours_per_day", "teacher_only_hours_per_day", "teacher_only_usd_per_day",
    "cascade_usd_per_day", "teacher_only_compute_usd_per_day", "cascade_compute_usd_per_day",
)  # fmt: skip


def test_teacher_calls_are_the_deferred_share_of_requests():
    plan = plan_traffic(8e9, [FACTS])
    (task,) = plan.tasks
    assert task.requests_per_day == pytest.approx(8e9 / 1000)
    assert task.teacher_calls_per_day == pytest.approx(0.4 * task.requests_per_day)
    assert task.teacher_tokens_per_day == pytest.approx(task.teacher_calls_per_day * 1003)
    assert task.student_hours_per_day == pytest.approx(8e6 / 100 / 3600)
    assert task.teacher_hours_per_day is None  # an API teacher: USD only
    assert task.teacher_only_usd_per_day >= task.cascade_usd_per_day
    assert task.savings_rate == pytest.approx(1 - 0.0011 / 0.0025)
    assert plan.total == replace(task, task="total")


def test_doubling_the_volume_doubles_every_daily_figure():
    local = replace(FACTS, teacher_rows_per_s=3.0)
    one, two = (
        plan_traffic(n, [local, replace(local, task="b", n_test=100)], 2.0) for n in (4e9, 8e9)
    )
    for a, b in zip([*one.tasks, one.total], [*two.tasks, two.total], strict=True):
        for field in DAILY:
            assert getattr(b, field) == pytest.approx(2 * getattr(a, field)), field
        assert b.savings_rate == pytest.approx(a.savings_rate)


def test_traffic_mix_follows_the_test_split_and_the_total_sums_the_tasks():
    small = replace(FACTS, task="b", n_test=100, mean_teacher_input_tokens=200.0, deferral_rate=1.0)
    plan = plan_traffic(1e9, [FACTS, small])
    a, b = plan.tasks
    assert a.requests_per_day == pytest.approx(3 * b.requests_per_day)
    tokens = a.requests_per_day * 1000 + b.requests_per_day * 200
    assert tokens == pytest.approx(1e9)  # N is the teacher-only input token volume
    assert plan.total.teacher_calls_per_day == pytest.approx(
        a.teacher_calls_per_day + b.teacher_calls_per_day
    )
    assert plan.total.deferral_rate == pytest.approx(
        plan.total.teacher_calls_per_day / plan.total.requests_per_day
    )
    assert "| total |" in format_plan(plan)


def test_compute_usd_prices_local_hours_and_api_calls():
    local = replace(FACTS, teacher_rows_per_s=4.0)
    (task,) = plan_traffic(8e9, [local], hardware_usd_per_hour=2.0).tasks
    assert task.teacher_hours_per_day == pytest.approx(0.4 * 8e6 / 4 / 3600)
    assert task.teacher_only_compute_usd_per_day == pytest.approx(8e6 / 4 / 3600 * 2)
    assert task.cascade_compute_usd_per_day == pytest.approx(
        (task.student_hours_per_day + task.teacher_hours_per_day) * 2
    )
    (api,) = plan_traffic(8e9, [FACTS], hardware_usd_per_hour=2.0).tasks
    assert api.teacher_only_compute_usd_per_day == pytest.approx(api.teacher_only_usd_per_day)
    assert api.cascade_compute_usd_per_day == pytest.approx(
        api.student_hours_per_day * 2 + api.teacher_calls_per_day * 0.0025
    )
    assert plan_traffic(8e9, [FACTS]).tasks[0].cascade_compute_usd_per_day is None


def test_a_local_teacher_speed_comes_from_its_recorded_compute_time(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    manifest = {"tasks": {"intent": {"n_computed": 0}}, "versions": {"torch": "2.13.0+cpu"}}
    (labels / "manifest.json").write_text(json.dumps(manifest))
    pq.write_table(pa.table({"latency_s": [0.25, 0.25, 0.5, 0.0]}), labels / "intent.parquet")
    hf = SimpleNamespace(teacher=SimpleNamespace(kind="hf", batch_size=8))
    rate, line = teacher_throughput(hf, tmp_path)
    assert rate == pytest.approx(3 / 1.0)  # rows without a time are left out
    assert "from the cache" in line and "2.13.0+cpu" in line
    api = SimpleNamespace(teacher=SimpleNamespace(kind="openai"))
    assert teacher_throughput(api, tmp_path)[0] is None


def test_plan_of_a_finished_run_agrees_with_its_report(finished_run, capsys):
    args = ["plan", str(finished_run), "--tokens-per-day", "8e9", "--measure-rows", "16"]
    assert main([*args, "--json", "--gpu-usd-per-hour", "1.5"]) == 0
    plan = json.loads(capsys.readouterr().out)
    summary = json.loads((finished_run / "report/summary.json").read_text())
    (name, entry), (task,) = next(iter(summary["tasks"].items())), plan["tasks"]
    projection = entry["projection"]  # the tiny config projects 8e9 tokens a day too
    assert task["task"] == name
    assert task["requests_per_day"] == pytest.approx(projection["requests_per_day"])
    assert task["teacher_only_usd_per_day"] == pytest.approx(projection["teacher_only_usd_per_day"])
    assert task["cascade_usd_per_day"] == pytest.approx(projection["cascade_usd_per_day"])
    deferral = entry["cascade"]["deferral_rate"]
    assert task["teacher_calls_per_day"] == pytest.approx(deferral * task["requests_per_day"])
    assert task["student_hours_per_day"] > 0 and task["teacher_hours_per_day"] is None
    assert task["cascade_compute_usd_per_day"] is not None and plan["hardware_usd_per_hour"] == 1.5
    if deferral < 1:
        assert task["teacher_only_usd_per_day"] > task["cascade_usd_per_day"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| task | requests/day |" in table and "timed here on" in table


@pytest.mark.parametrize(
    ("run", "volume", "message"),
    [
        ("missing", "8e9", "no such run directory"),
        ("unfinished", "8e9", "not a finished run"),
        ("finished", "0", "must be positive"),
        ("finished", "-5", "must be positive"),
    ],
)
def test_bad_input_exits_2_with_one_line(run, volume, message, finished_run, tmp_path, capsys):
    path = {"missing": tmp_path / "nope", "unfinished": tmp_path, "finished": finished_run}[run]
    (tmp_path / "cascade.json").write_text("{}")
    assert main(["plan", str(path), f"--tokens-per-day={volume}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
