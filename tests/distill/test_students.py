"""Students through the CLI: mixed task kinds in one run, bad student settings, accelerate."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from distill.cli import main
from tests import tiny

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {
    "type": "object",
    "properties": {"intent": {"type": "string"}},
    "required": ["intent"],
    "additionalProperties": False,
}


def _mixed_config(tmp_path, tiny_student, tiny_teacher) -> Path:
    rows = tiny.make_rows(160)
    for r in rows:
        r["spoken"] = r["intent"].replace("_", " ")
        r["fields"] = {"intent": r["intent"]}
        r["why"] = f"it says {r['text'].split()[0]}"
    data = tiny.write_jsonl(rows, tmp_path / "rows.jsonl")
    path = tiny.tiny_config(tmp_path, data, tiny_student, epochs=3)
    config = yaml.safe_load(path.read_text())
    config["tasks"] += [
        {"name": "say", "kind": "generation", "instruction": "Say the intent.",
         "gold_field": "spoken", "max_new_tokens": 6},
        {"name": "fields", "kind": "extraction", "instruction": "Give the intent as JSON.",
         "json_schema": SCHEMA, "gold_field": "fields", "max_new_tokens": 8},
    ]  # fmt: skip
    config["teacher"]["label_field"] = {"intent": "recorded", "say": "spoken", "fields": "fields"}
    config["teacher"]["rationale_field"] = {"say": "why"}
    config["student"]["generative"] = {
        "base_model": str(tiny_teacher),
        "lora": {"r": 4, "alpha": 8},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "max_length": 64},
        "rationales": True,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_classification_generation_and_extraction_in_one_run(tmp_path, tiny_student, tiny_teacher):
    config = _mixed_config(tmp_path, tiny_student, tiny_teacher)
    assert main(["run", str(config), "--quiet"]) == 0
    run = tmp_path / "run"
    cascade = json.loads((run / "cascade.json").read_text())["tasks"]
    assert {t: e["score"] for t, e in cascade.items()} == {
        "intent": "max_prob", "say": "mean_logprob", "fields": "mean_logprob"
    }  # fmt: skip
    for task in ("say", "fields"):
        adapter = run / "adapters" / task
        assert (adapter / "adapter_model.safetensors").is_file()
        assert json.loads((adapter / "generation.json").read_text())["kind"] == (
            "generation" if task == "say" else "extraction"
        )
        table = pq.read_table(run / "scores" / f"{task}.parquet").to_pydict()
        assert {"score_mean_logprob", "score_min_logprob", "student_output_tokens"} <= set(table)
    fields = pq.read_table(run / "scores/fields.parquet").to_pydict()
    assert all(t == g for t, g in zip(fields["teacher_label"], fields["gold"], strict=True))
    assert json.loads(fields["teacher_label"][0])["intent"] in tiny.LABELS  # canonical JSON
    for label, error, score in zip(fields["student_label"], fields["student_error"],
                                   fields["score_mean_logprob"], strict=True):  # fmt: skip
        if error is not None:  # an answer that does not parse is wrong and ranks lowest
            assert label is None and score < -900
    labels = pq.read_table(run / "labels/say.parquet").to_pydict()
    assert all(r.startswith("it says") for r in labels["teacher_rationale"])
    assert pq.read_table(run / "labels/fields.parquet").to_pydict()["teacher_rationale"][0] is None
    train = json.loads((run / "adapters/say/training_metrics.json").read_text())
    intent = json.loads((run / "adapters/intent/training_metrics.json").read_text())
    assert train["n_train"] > intent["n_train"]  # the explanation examples were added
    summary = json.loads((run / "report/summary.json").read_text())["tasks"]
    assert set(summary) == {"intent", "say", "fields"}
    assert (run / "report/training_say.png").is_file()
    metrics = json.loads((run / "adapters/intent/training_metrics.json").read_text())
    assert metrics["val_history"] and metrics["n_val"] > 0


def test_bad_student_settings_fail_before_the_teacher(tmp_path, tiny_student, tiny_teacher):
    config = _mixed_config(tmp_path, tiny_student, tiny_teacher)
    bad = ["student.lora.target_modules=[nonexistent_proj]"]
    assert main(["run", str(config), *bad, "--quiet"]) == 2
    assert not (tmp_path / "run/labels").exists()
    bad = [f"student.generative.base_model={tmp_path}"]  # a folder, not a model
    assert main(["validate", str(config), *bad]) == 2
    bad = ["tasks.2.json_schema={type: objekt}"]
    assert main(["validate", str(config), *bad]) == 2


def test_a_label_set_unlike_the_data_is_refused(tmp_path, tiny_student, capsys):
    data = tiny.write_jsonl(tiny.make_rows(60), tmp_path / "rows.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student)
    overrides = ["tasks.0.labels=[alpha, beta]", "data.gold_field=null", "tasks.0.examples=[]"]
    assert main(["run", str(config), *overrides, "--quiet"]) == 2
    assert "are not in its label set" in capsys.readouterr().err
    assert not (tmp_path / "run/labels").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_trains_on_two_cpu_processes(tmp_path, tiny_student):
    data = tiny.write_jsonl(tiny.make_rows(160), tmp_path / "rows.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student, epochs=10)
    assert main(["split", str(config), "--quiet"]) == 2  # label first
    assert main(["label", str(config), "--quiet"]) == 0
    assert main(["split", str(config), "--quiet"]) == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(ROOT / "scripts/train.py"), str(config), "--quiet",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = tmp_path / "run/adapters/intent"
    metrics = json.loads((adapter / "training_metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["final_loss"] < metrics["first_loss"]
    two = sorted(p.name for p in adapter.iterdir())
    # `cascadekit train` in one process gives the same artifacts
    assert main(["train", str(config), "--quiet", "--force"]) == 0
    one = json.loads((adapter / "training_metrics.json").read_text())
    assert one["num_processes"] == 1 and sorted(p.name for p in adapter.iterdir()) == two
    assert main(["run", str(config), "--quiet"]) == 0
