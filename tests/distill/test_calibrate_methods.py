"""The threshold methods through the CLI: LTT (binomial, Hoeffding–Bentkus), target deferral,
cost budget; and the reliability diagram in the report."""

from __future__ import annotations

import json

import pytest

from distill.cli import main
from tests import tiny


def test_every_threshold_method_runs_and_says_what_it_guarantees(tmp_path, tiny_student):
    data = tiny.write_jsonl(tiny.make_rows(200), tmp_path / "rows.jsonl")
    config = str(tiny.tiny_config(tmp_path, data, tiny_student, epochs=6))
    assert main(["run", config, "--quiet"]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "report/summary.json").read_text())["tasks"]["intent"]
    assert 0 <= summary["calibration"]["ece"] <= 1
    assert sum(b["n"] for b in summary["calibration"]["bins"]) == summary["n_test"]
    assert (run / "report/reliability.png").is_file()
    assert (run / "report/per_label_deferral.png").is_file()
    page = (run / "report/report.html").read_text()
    assert (
        page.count('src="data:image/png;base64,') >= 4
    )  # curves, reliability, per label, training
    assert "<table>" in page and "intent" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    per_label = summary["per_label_deferral"]
    assert set(per_label) <= set(tiny.LABELS)
    assert sum(v["n"] for v in per_label.values()) == summary["n_test"]
    deferred = sum(v["n"] * v["deferral_rate"] for v in per_label.values())
    assert deferred / summary["n_test"] == pytest.approx(summary["cascade"]["deferral_rate"])

    def cascade(*overrides):
        assert main(["run", config, *overrides, "--quiet"]) == 0
        return json.loads((run / "cascade.json").read_text())["tasks"]["intent"]

    hb = cascade("cascade.p_value=hoeffding_bentkus")
    assert hb["method"] == "learn-then-test/fixed-sequence/hoeffding-bentkus"
    assert hb["guarantee"].startswith("P(share of traffic")
    target = cascade("cascade.method=target_deferral", "cascade.target_deferral=0.5")
    assert target["method"] == "target-deferral/0.5" and target["guarantee"] is None
    assert 0.5 <= target["calib_deferral_rate"] <= 0.75  # ties defer together
    assert "no risk guarantee" in (run / "report/report.md").read_text()
    budget = cascade("cascade.method=cost_budget", "cascade.budget_usd_per_1000=0.05")
    assert budget["method"] == "cost-budget/0.05-usd-per-1000"
    assert main(["run", config, "cascade.method=cost_budget", "--quiet"]) == 2  # no budget
    scaled = cascade("cascade.score=temperature_max_prob")
    assert scaled["score"] == "temperature_max_prob" and 0.05 <= scaled["temperature"] <= 20
    calibration = json.loads((run / "report/summary.json").read_text())["tasks"]["intent"]
    assert 0 <= calibration["calibration"]["ece_after_temperature"] <= 1


def test_learned_score_per_label_tiers_and_counted_teacher_tokens(tmp_path, tiny_student):
    """The dataset teacher reports no usage: its tokens are counted. Then the learned score,
    per-label thresholds and a second student tier, each through the CLI."""
    data = tiny.write_jsonl(tiny.make_rows(240), tmp_path / "rows.jsonl")
    config = str(tiny.tiny_config(tmp_path, data, tiny_student, epochs=6))
    run = tmp_path / "run"
    assert main(["run", config, "--quiet"]) == 0
    summary = json.loads((run / "report/summary.json").read_text())
    task = summary["tasks"]["intent"]
    assert summary["meta"]["teacher_tokens"]["intent"].startswith("estimated with the student")
    assert task["teacher"]["cost_usd_per_request"] > 0  # counted, not zero
    assert task["break_even"]["one_off_usd"] > 0
    rows = {row["score"]: row for row in task["scores"]}
    assert {"oracle", "random", "max_prob", "margin", "learned"} <= set(rows)
    assert rows["oracle"]["auroc_agreement"] == 1.0 and rows["random"]["auroc_agreement"] == 0.5
    assert task["curve"]["random_cpt"] == {"0.5": 0.5, "0.8": 0.8, "0.95": 0.95}
    report = (run / "report/report.md").read_text()
    assert "Confidence scores of `intent`" in report and "Break-even" in report
    assert main(["evaluate", config, "--tokens-per-day", "1e6", "--quiet"]) == 0
    task = json.loads((run / "report/summary.json").read_text())["tasks"]["intent"]
    assert task["projection"]["tokens_per_day"] == 1e6
    paid_back = task["break_even"]
    if paid_back["teacher_tokens"] is not None:
        assert paid_back["days"] == pytest.approx(paid_back["teacher_tokens"] / 1e6)

    def cascade(*overrides):
        assert main(["run", config, *overrides, "--quiet"]) == 0
        return json.loads((run / "cascade.json").read_text())["tasks"]["intent"]

    learned = cascade("cascade.score=learned")
    check = learned["learned"]["check"]
    assert learned["score"] == "learned" and learned["learned"]["model"]["features"][:3] == [
        "max_prob", "margin", "neg_entropy",
    ]  # fmt: skip
    assert learned["n_calib"] == check["n_held_out"]  # the threshold never saw the fit rows
    assert 0 <= check["auroc_learned"] <= 1 and isinstance(check["beats_raw"], bool)
    assert (run / learned["learned"]["vocab_file"]).is_file()

    per_label = cascade("cascade.per_label=true", "cascade.min_label_examples=8")
    groups = per_label["per_label"]["groups"]
    assert set(groups) <= set(tiny.LABELS) and per_label["method"].endswith("/per-label")
    n_groups = len(per_label["per_label"]["thresholds"])
    assert per_label["per_label"]["delta_per_group"] == pytest.approx(0.2 / n_groups)
    task = json.loads((run / "report/summary.json").read_text())["tasks"]["intent"]
    assert task["cascade"]["per_label_thresholds"] is True
    by_label = task["per_label_deferral"]
    deferred = sum(v["n"] * v["deferral_rate"] for v in by_label.values())
    assert deferred / task["n_test"] == pytest.approx(task["cascade"]["deferral_rate"])
    assert "for every label at once" in (run / "report/report.md").read_text()

    # a second tier: another run over the same data (a student trained longer)
    assert main(["run", config, "run_dir=run-big", "student.training.epochs=10", "--quiet"]) == 0
    tier = f"cascade.tiers=[{{name: big, run_dir: {tmp_path / 'run-big'}}}]"
    tiers = cascade(tier)["tiers"]
    assert tiers["names"] == ["student", "big"] and len(tiers["thresholds"]) == 2
    assert sum(tiers["calib_share_answered"].values()) == pytest.approx(1.0)
    assert tiers["method"].startswith("pareto-testing")
    task = json.loads((run / "report/summary.json").read_text())["tasks"]["intent"]
    assert set(task["tiers"]["share_answered"]) == {"student", "big", "teacher"}
    assert (run / "report/tiers_intent.png").is_file()

    # a tier that is not a finished run, and settings that do not go together: exit 2
    missing = f"cascade.tiers=[{{name: big, run_dir: {tmp_path / 'nowhere'}}}]"
    assert main(["calibrate", config, missing, "--quiet"]) == 2
    assert main(["validate", config, tier, "cascade.per_label=true"]) == 2
    assert main(["validate", config, tier, "cascade.method=target_deferral"]) == 2
