"""The `python` backend (module:function) and the `vote` backend (several teachers)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from distill.cli import main
from tests import rule_teacher, tiny


def _config(tmp_path, tiny_student, teacher: dict):
    data = tiny.write_jsonl(tiny.make_rows(120), tmp_path / "rows.jsonl")
    path = tiny.tiny_config(tmp_path, data, tiny_student)
    config = yaml.safe_load(path.read_text())
    config["teacher"] = teacher
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _labels(tmp_path) -> dict:
    return pq.read_table(tmp_path / "run/labels/intent.parquet").to_pydict()


def test_python_teacher_labels_caches_and_reports_errors(tmp_path, tiny_student):
    config = _config(
        tmp_path, tiny_student, {"kind": "python", "function": "tests.rule_teacher:by_keyword"}
    )
    rule_teacher.CALLS.clear()
    assert main(["label", config, "--quiet"]) == 0
    table = _labels(tmp_path)
    assert set(table["teacher_label"]) <= set(tiny.LABELS) and all(
        e is None for e in table["error"]
    )
    assert sum(table["input_tokens"]) > 0
    asked = sum(rule_teacher.CALLS)
    assert asked > 0
    # a second run over the same data: every answer from the cache, no call
    rule_teacher.CALLS.clear()
    assert main(["label", config, "--force", "--quiet"]) == 0
    assert rule_teacher.CALLS == []
    manifest = json.loads((tmp_path / "run/labels/manifest.json").read_text())
    assert manifest["tasks"]["intent"]["n_computed"] == 0


def test_python_teacher_failure_becomes_error_rows(tmp_path, tiny_student):
    config = _config(
        tmp_path, tiny_student, {"kind": "python", "function": "tests.rule_teacher:broken"}
    )
    assert main(["label", config, "--quiet"]) == 0
    table = _labels(tmp_path)
    assert all(e.startswith("python_error: RuntimeError") for e in table["error"])
    manifest = json.loads((tmp_path / "run/labels/manifest.json").read_text())
    assert manifest["tasks"]["intent"]["errors_by_kind"] == {"python_error": 120}
    bad = _config(tmp_path, tiny_student, {"kind": "python", "function": "tests.nothing:here"})
    assert main(["label", bad, "--quiet"]) == 2


def test_vote_majority_agreement_and_only_agreeing(tmp_path, tiny_student):
    voters = [
        {"kind": "python", "function": "tests.rule_teacher:by_keyword"},
        {"kind": "dataset", "label_field": "recorded"},
        {"kind": "python", "function": "tests.rule_teacher:always_other"},
    ]
    config = _config(tmp_path, tiny_student, {"kind": "vote", "teachers": voters})
    assert main(["label", config, "--quiet"]) == 0
    table = _labels(tmp_path)
    assert all(a is not None and 1 / 3 <= a <= 1 for a in table["teacher_agreement"])
    for label, agreement, gold in zip(
        table["teacher_label"], table["teacher_agreement"], table["gold"], strict=True
    ):
        if agreement >= 2 / 3:
            assert label in tiny.LABELS
        if gold == "other":
            assert label == "other" and agreement >= 2 / 3
    strict = _config(
        tmp_path, tiny_student, {"kind": "vote", "teachers": voters[:2], "only_agreeing": True}
    )
    assert main(["label", strict, "--force", "--quiet"]) == 0
    table = _labels(tmp_path)
    kept = [e is None for e in table["error"]]
    assert all(a == 1.0 for a, k in zip(table["teacher_agreement"], kept, strict=True) if k)
    assert all(e.startswith("teachers_disagree") for e in table["error"] if e is not None)
    weighted = _config(
        tmp_path, tiny_student, {"kind": "vote", "teachers": voters, "weights": [1, 1]}
    )
    assert main(["validate", weighted]) == 2


def test_two_runs_share_one_cache_at_the_same_time(tmp_path, tiny_student):
    """Two label processes write the same SQLite cache concurrently: both finish, every row
    is labelled, and each answer is stored once."""
    import sqlite3
    import subprocess
    import sys

    procs, configs = [], []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        path = _config(
            folder,
            tiny_student,
            {"kind": "python", "function": "tests.rule_teacher:by_keyword", "batch_size": 4},
        )
        raw = yaml.safe_load(Path(path).read_text())
        raw["teacher_cache"] = str(tmp_path / "shared.sqlite")
        Path(path).write_text(yaml.safe_dump(raw))
        configs.append(path)
    for path in configs:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distill.cli", "label", path, "--quiet"],
                stderr=subprocess.PIPE,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    for name in ("a", "b"):
        table = _labels(tmp_path / name)
        assert len(table["id"]) == 120 and all(e is None for e in table["error"])
    with sqlite3.connect(tmp_path / "shared.sqlite") as db:
        keys = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM answers").fetchone()
    distinct_texts = len({r["text"] for r in tiny.make_rows(120)})
    assert keys == (distinct_texts, distinct_texts)
