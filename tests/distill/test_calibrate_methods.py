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
