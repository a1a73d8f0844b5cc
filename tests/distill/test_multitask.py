"""Several tasks in one config: each gets its own gold column, recorded labels and report."""

from __future__ import annotations

import json

import yaml

from distill import runs
from distill.cli import main
from tests import tiny


def test_two_tasks_with_their_own_gold_and_recorded_labels(tmp_path, tiny_student, capsys):
    rows = tiny.make_rows(160)
    for row in rows:
        row["topic"] = "card" if row["intent"].startswith("card") else "other"
        row["recorded_topic"] = row["topic"]
    data = tiny.write_jsonl(rows, tmp_path / "m.jsonl")
    path = tiny.tiny_config(tmp_path, data, tiny_student, teacher=None, epochs=4)
    raw = yaml.safe_load(path.read_text())
    raw["tasks"].append(
        {
            "name": "topic",
            "instruction": "Is it about a card?",
            "labels": ["card", "other"],
            "gold_field": "topic",
        }
    )
    raw["teacher"]["label_field"] = {"intent": "recorded", "topic": "recorded_topic"}
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| intent |" in out and "| topic |" in out
    summary = json.loads((tmp_path / "run/report/summary.json").read_text())["tasks"]
    # the recorded labels equal the gold of each task: the teacher is right on every row
    assert summary["intent"]["teacher"]["accuracy"] == 1.0
    assert summary["topic"]["teacher"]["accuracy"] == 1.0
    cascade = json.loads((tmp_path / "run/cascade.json").read_text())["tasks"]
    assert cascade["topic"]["labels"] == ["card", "other"]
    assert (tmp_path / "run/adapters/topic/adapter_model.safetensors").is_file()
    for stage in runs.STAGES:
        assert (
            runs.verify_outputs(
                tmp_path / "run", stage, runs.read_manifest(tmp_path / "run", stage)
            )
            == []
        )
    # a label map that misses a task is caught when the config loads
    raw["teacher"]["label_field"] = {"intent": "recorded"}
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    assert "teacher.label_field names tasks ['intent']" in capsys.readouterr().err
