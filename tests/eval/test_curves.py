"""Curves and their summaries: end points, monotonicity, baselines, and the report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.cost import TierPrice, project_daily, request_cost_usd
from eval.curves import cascade_curve, operating_point, oracle_scores, summarize_curve
from eval.report import summary_table, write_report
from eval.summary import Guarantee, evaluate_cascade

LABELS = ["a", "b", "c"]

cases = st.lists(
    st.tuples(
        st.floats(0, 1),
        st.sampled_from(LABELS),
        st.sampled_from(LABELS),
        st.sampled_from(LABELS),
    ),
    min_size=1,
    max_size=120,
)


def _arrays(rows):
    scores = np.array([r[0] for r in rows])
    student = np.array([r[1] for r in rows], dtype=object)
    teacher = np.array([r[2] for r in rows], dtype=object)
    gold = np.array([r[3] for r in rows], dtype=object)
    return scores, student, teacher, gold


@settings(max_examples=80, deadline=None)
@given(cases)
def test_end_points_are_teacher_only_and_student_only(rows):
    scores, student, teacher, gold = _arrays(rows)
    n = len(rows)
    curve = cascade_curve(scores, student, teacher, np.full(n, 0.1), np.full(n, 2.0), gold)
    # τ = +inf: everything deferred, the teacher's answers
    assert curve.deferral_rate[0] == 1.0
    assert curve.accuracy[0] == pytest.approx(np.mean(teacher == gold))
    assert curve.agreement[0] == 1.0
    assert curve.risk[0] == 0.0
    assert curve.cost_usd[0] == pytest.approx(2.1)
    # lowest τ: nothing deferred, the student's answers
    assert curve.deferral_rate[-1] == 0.0
    assert curve.accuracy[-1] == pytest.approx(np.mean(student == gold))
    assert curve.agreement[-1] == pytest.approx(np.mean(student == teacher))
    assert curve.cost_usd[-1] == pytest.approx(0.1)


@settings(max_examples=80, deadline=None)
@given(cases)
def test_deferral_is_monotone_in_the_threshold(rows):
    scores, student, teacher, gold = _arrays(rows)
    n = len(rows)
    curve = cascade_curve(scores, student, teacher, np.zeros(n), np.ones(n), gold)
    assert np.all(np.diff(curve.thresholds) < 0)
    assert np.all(np.diff(curve.deferral_rate) < 0)  # lower τ, fewer deferrals
    assert np.all(np.diff(curve.cost_usd) <= 1e-12)
    assert np.all(np.diff(curve.risk) >= -1e-12)
    assert np.allclose(curve.risk, 1 - curve.agreement)
    # brute force at every threshold
    for i, tau in enumerate(curve.thresholds):
        accept = scores >= tau
        answer = np.where(accept, student, teacher)
        assert curve.deferral_rate[i] == pytest.approx(1 - accept.mean())
        assert curve.accuracy[i] == pytest.approx(np.mean(answer == gold))


@settings(max_examples=60, deadline=None)
@given(cases)
def test_oracle_is_never_beaten(rows):
    scores, student, teacher, gold = _arrays(rows)
    n = len(rows)
    cost = (np.zeros(n), np.ones(n))
    curve = cascade_curve(scores, student, teacher, *cost, gold)
    oracle = cascade_curve(oracle_scores(student, teacher, gold), student, teacher, *cost, gold)
    s = summarize_curve(curve, "accuracy", 1.0)
    o = summarize_curve(oracle, "accuracy", 1.0)
    assert o.auc >= s.auc - 1e-9
    if s.apgr is not None and s.quality_teacher > s.quality_student:
        assert o.apgr >= s.apgr - 1e-9


def test_summary_figures_on_a_hand_made_case():
    # 4 requests; the student is wrong exactly on the two lowest scores; the teacher is right
    scores = np.array([0.9, 0.8, 0.3, 0.2])
    gold = np.array(["a", "b", "a", "b"], dtype=object)
    student = np.array(["a", "b", "b", "a"], dtype=object)
    teacher = gold.copy()
    curve = cascade_curve(scores, student, teacher, np.full(4, 0.0), np.full(4, 1.0), gold)
    assert list(curve.deferral_rate) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert list(curve.accuracy) == [1.0, 1.0, 1.0, 0.75, 0.5]
    summary = summarize_curve(curve, "accuracy", teacher_only_cost_usd=1.0, tolerance=0.0)
    # this score is an oracle: PGR reaches 1 at 50% deferral
    assert summary.cpt["0.5"] == 0.25
    assert summary.cpt["0.95"] == pytest.approx(0.475)  # linear between 25% and 50% deferral
    assert summary.savings_at_matched_quality == pytest.approx(0.5)
    assert summary.matched_threshold == 0.8
    assert summary.apgr > 0.5  # better than random deferral
    point = operating_point(curve, 0.5, teacher_only_cost_usd=1.0)
    assert point.deferral_rate == 0.5 and point.accuracy == 1.0 and point.savings_rate == 0.5
    assert operating_point(curve, math.inf, 1.0).deferral_rate == 1.0
    assert operating_point(curve, -1.0, 1.0).deferral_rate == 0.0


def test_random_deferral_has_apgr_one_half():
    rng = np.random.default_rng(0)
    n = 20000
    gold = rng.integers(0, 3, n).astype(str).astype(object)
    teacher = gold.copy()
    student = np.where(rng.uniform(size=n) < 0.6, gold, "x").astype(object)
    curve = cascade_curve(rng.uniform(size=n), student, teacher, np.zeros(n), np.ones(n), gold)
    assert summarize_curve(curve, "accuracy", 1.0).apgr == pytest.approx(0.5, abs=0.02)


def test_cost_model_and_projection():
    price = TierPrice(usd_per_million_input_tokens=2.5, usd_per_million_output_tokens=10.0)
    cost = request_cost_usd(price, np.array([1000, 0]), np.array([10, 0]))
    assert cost == pytest.approx([0.0025 + 0.0001, 0.0])
    assert request_cost_usd(TierPrice(usd_per_request=0.01), [5], [5]) == pytest.approx([0.01])
    p = project_daily(
        8e9, 1000.0, teacher_only_usd_per_request=0.0026, cascade_usd_per_request=0.001
    )
    assert p.requests_per_day == pytest.approx(8e6)
    assert p.teacher_only_usd_per_day == pytest.approx(20800.0)
    assert p.savings_usd_per_day == pytest.approx(8e6 * 0.0016)


def _evaluation(with_gold: bool = True):
    rng = np.random.default_rng(3)
    n = 300
    gold = rng.choice(LABELS, n).astype(object)
    teacher = np.where(rng.uniform(size=n) < 0.9, gold, "a").astype(object)
    scores = rng.uniform(size=n)
    student = np.where(rng.uniform(size=n) < scores, teacher, "c").astype(object)
    return evaluate_cascade(
        task="intent",
        scores=scores,
        student_pred=student,
        teacher_pred=teacher,
        gold=gold if with_gold else None,
        student_cost_usd=np.full(n, 1e-6),
        teacher_cost_usd=np.full(n, 2e-3),
        teacher_input_tokens=np.full(n, 800.0),
        guarantee=Guarantee(
            "learn-then-test/fixed-sequence/binomial", "max_prob", 0.1, 0.1, 200, 0.7
        ),
        tokens_per_day=8e9,
    )


def test_report_files_and_summary_keys(tmp_path):
    evaluation = _evaluation()
    summary = write_report([evaluation], tmp_path, {"run_dir": "x", "config_digest": "abc"})
    for name in ("summary.json", "curve.csv", "curves.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    task = json.loads((tmp_path / "summary.json").read_text())["tasks"]["intent"]
    assert task == summary["tasks"]["intent"]
    for path in (
        "n_test", "teacher.accuracy", "student.accuracy", "student.agreement",
        "cascade.threshold", "cascade.alpha", "cascade.delta", "cascade.deferral_rate",
        "cascade.risk", "cascade.accuracy", "cascade.savings_rate", "curve.auc", "curve.apgr",
        "curve.oracle_apgr", "curve.cpt",
    ):  # fmt: skip
        node = task
        for part in path.split("."):
            assert part in node, path
            node = node[part]
    assert task["cascade"]["threshold"] == 0.7
    assert set(task["curve"]["cpt"]) == {"0.5", "0.8", "0.95"}
    assert task["projection"]["requests_per_day"] == pytest.approx(1e7)
    report = (tmp_path / "report.md").read_text()
    assert "With probability at least 90%" in report and "| intent |" in report
    table = summary_table(summary)
    assert table.splitlines()[0].startswith("| task |") and "| intent | 300 |" in table


def test_without_gold_accuracies_are_null(tmp_path):
    evaluation = _evaluation(with_gold=False)
    summary = write_report([evaluation], tmp_path, {})
    task = summary["tasks"]["intent"]
    assert task["teacher"]["accuracy"] is None
    assert task["student"]["accuracy"] is None
    assert task["cascade"]["accuracy"] is None
    assert task["quality_metric"] == "agreement"
    assert task["student"]["agreement"] is not None


def test_cpt_of_the_oracle_interpolates_across_tied_scores():
    # the oracle's scores tie in big groups; CPT must not jump to the end of a group
    n = 100
    gold = np.array(["a"] * n, dtype=object)
    teacher = gold.copy()
    student = np.array(["a"] * 80 + ["b"] * 20, dtype=object)  # 20 student errors
    oracle = cascade_curve(
        oracle_scores(student, teacher, gold), student, teacher, np.zeros(n), np.ones(n), gold
    )
    summary = summarize_curve(oracle, "accuracy", 1.0)
    assert summary.cpt["0.5"] == pytest.approx(0.10)  # half of the 20% errors deferred
    assert summary.cpt["0.95"] == pytest.approx(0.19)
