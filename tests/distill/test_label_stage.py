"""The label stage: a killed run resumes without asking twice; bad answers stay error rows."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from distill import runs
from distill.cli import main
from distill.teachers.hf import HFTeacher
from tests import tiny


def test_a_killed_labelling_run_resumes_without_asking_twice(
    tmp_path, tiny_student, tiny_teacher, monkeypatch, capsys
):
    data = tiny.write_jsonl(tiny.make_rows(80), tmp_path / "m.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student, teacher=tiny_teacher)
    asked: list[str] = []
    real = HFTeacher.label_batch

    def dies_on_the_third_batch(self, task, records):
        if len(asked) >= 16:
            raise RuntimeError("teacher process killed")
        asked.extend(r.text for r in records)
        return real(self, task, records)

    monkeypatch.setattr(HFTeacher, "label_batch", dies_on_the_third_batch)
    assert main(["label", str(config), "--quiet"]) == 1
    assert "teacher process killed" in capsys.readouterr().err
    assert runs.read_manifest(tmp_path / "run", "label") is None  # nothing half-written
    assert len(asked) == 16

    resumed: list[str] = []

    def counts(self, task, records):
        resumed.extend(r.text for r in records)
        return real(self, task, records)

    monkeypatch.setattr(HFTeacher, "label_batch", counts)
    assert main(["label", str(config), "--quiet"]) == 0
    distinct = {row["text"] for row in tiny.make_rows(80)}
    assert not set(asked) & set(resumed), "an answered input was asked again"
    assert set(asked) | set(resumed) == distinct
    manifest = runs.read_manifest(tmp_path / "run", "label")["tasks"]["intent"]
    assert manifest["n_computed"] == len(distinct) - 16
    assert manifest["n_from_cache"] == sum(r["text"] in set(asked) for r in tiny.make_rows(80))


def test_answers_outside_the_label_set_are_kept_as_error_rows(tmp_path, tiny_student, capsys):
    rows = tiny.make_rows(120)
    rows[3]["recorded"] = "Refund"  # not in the label set: never coerced to "refund"
    rows[5]["recorded"] = None
    data = tiny.write_jsonl(rows, tmp_path / "m.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student, teacher=None, epochs=1)
    assert main(["run", str(config), "--quiet"]) == 0
    labels = pq.read_table(tmp_path / "run/labels/intent.parquet").to_pydict()
    by_id = dict(
        zip(labels["id"], zip(labels["teacher_label"], labels["error"], strict=True), strict=True)
    )
    assert by_id["r0003"] == (None, "label 'Refund' is not in the label set")
    assert by_id["r0005"] == (None, "no answer recorded")
    assert runs.read_manifest(tmp_path / "run", "label")["tasks"]["intent"]["n_errors"] == 2
    split = runs.read_manifest(tmp_path / "run", "split")["tasks"]["intent"]
    assert split["dropped_teacher_errors"] == 2
    assert split["train"] + split["calib"] + split["test"] == 118


@pytest.mark.parametrize("field", ["cascade.alpha=0", "student.training.epochs=-1"])
def test_overrides_are_validated_like_the_file(tmp_path, tiny_student, field, capsys):
    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "m.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student, teacher=None)
    assert main(["validate", str(config), field]) == 2
    assert field.split("=")[0] in capsys.readouterr().err
