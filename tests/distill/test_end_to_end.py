"""The CLI through every stage on tiny models, checking every artifact and invariant."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from distill import runs
from tests import tiny


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CASCADEKIT_CACHE": str(cwd / "ck-cache")}
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args, "--quiet"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _manifests(run_dir: Path) -> dict[str, bytes]:
    return {s: (runs.stage_dir(run_dir, s) / "manifest.json").read_bytes() for s in runs.STAGES}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_student, tiny_teacher):
    folder = tmp_path_factory.mktemp("e2e")
    data = tiny.write_jsonl(tiny.make_rows(), folder / "messages.jsonl")
    config = tiny.tiny_config(folder, data, tiny_student, teacher=tiny_teacher)
    result = _cli("run", str(config), cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, config, result


def test_every_stage_finishes_with_a_verified_manifest(finished_run):
    folder, _, result = finished_run
    run_dir = folder / "run"
    for stage in runs.STAGES:
        manifest = runs.read_manifest(run_dir, stage)
        assert manifest is not None and manifest["stage"] == stage
        assert runs.verify_outputs(run_dir, stage, manifest) == []
        assert manifest["versions"]["torch"] and manifest["config_digest"]
    assert (run_dir / "config.resolved.yaml").is_file()
    assert not list(run_dir.glob(".tmp-*")), "temporary folders were left behind"
    assert "| intent |" in result.stdout and "report:" in result.stdout
    label_manifest = runs.read_manifest(run_dir, "label")
    distinct_texts = len({row["text"] for row in tiny.make_rows()})
    assert label_manifest["tasks"]["intent"]["n_computed"] == distinct_texts  # asked once each
    assert label_manifest["tasks"]["intent"]["teacher_cost_usd"] > 0


def test_labels_splits_and_scores_are_consistent(finished_run):
    folder, _, _ = finished_run
    run_dir = folder / "run"
    labels = pq.read_table(run_dir / "labels/intent.parquet").to_pydict()
    assert len(labels["id"]) == 160
    assert set(labels["teacher_label"]) <= set(tiny.LABELS)
    assert all(abs(sum(p) - 1) < 1e-6 for p in labels["teacher_probs"])
    import datasets

    dataset = datasets.load_from_disk(str(run_dir / "dataset/intent"))
    ids = {name: set(dataset[name]["id"]) for name in ("train", "calib", "test")}
    assert sum(len(v) for v in ids.values()) == 160
    assert not (
        ids["train"] & ids["calib"] or ids["train"] & ids["test"] or ids["calib"] & ids["test"]
    )
    scores = pq.read_table(run_dir / "scores/intent.parquet").to_pydict()
    assert set(scores["split"]) == {"calib", "test"}
    assert set(scores["id"]) == ids["calib"] | ids["test"]
    assert np.allclose(scores["score_max_prob"], [max(p) for p in scores["student_probs"]])
    adapter = run_dir / "adapters/intent"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "labels.json").read_text())["labels"] == tiny.LABELS


def test_calibration_uses_calib_only_and_the_report_matches(finished_run):
    from distill.config import digest

    folder, _, _ = finished_run
    run_dir = folder / "run"
    cascade = json.loads((run_dir / "cascade.json").read_text())["tasks"]["intent"]
    scores = pq.read_table(run_dir / "scores/intent.parquet").to_pydict()
    calib = [
        (i, t)
        for i, t, s in zip(scores["id"], scores["teacher_label"], scores["split"], strict=True)
        if s == "calib"
    ]
    assert cascade["n_calib"] == len(calib)
    assert cascade["calib_digest"] == digest([list(p) for p in sorted(calib)])
    assert cascade["labels"] == tiny.LABELS and cascade["score"] == "max_prob"
    assert cascade["alpha"] == 0.2 and cascade["delta"] == 0.2
    summary = json.loads((run_dir / "report/summary.json").read_text())["tasks"]["intent"]
    n_test = sum(1 for s in scores["split"] if s == "test")
    assert summary["n_test"] == n_test
    assert summary["cascade"]["threshold"] == cascade["threshold"]
    # the curve's ends are the teacher alone and the student alone, on test
    rows = [
        r for r in csv.DictReader((run_dir / "report/curve.csv").open()) if r["curve"] == "cascade"
    ]
    first, last = rows[0], rows[-1]
    assert first["threshold"] == "inf" and float(first["deferral_rate"]) == 1.0
    assert float(first["accuracy"]) == pytest.approx(summary["teacher"]["accuracy"])
    assert float(last["deferral_rate"]) == 0.0
    assert float(last["accuracy"]) == pytest.approx(summary["student"]["accuracy"])
    assert float(last["agreement"]) == pytest.approx(summary["student"]["agreement"])
    assert 0.0 <= summary["cascade"]["deferral_rate"] <= 1.0
    assert summary["curve"]["oracle_auc"] >= summary["curve"]["auc"] - 1e-9
    assert (run_dir / "report/curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "Learn-then-Test" in (run_dir / "report/report.md").read_text()


def test_rerun_skips_every_stage_and_asks_the_teacher_nothing(finished_run):
    folder, config, _ = finished_run
    run_dir = folder / "run"
    before = _manifests(run_dir)
    again = _cli("run", str(config), cwd=folder)
    assert again.returncode == 0, again.stderr
    for stage in runs.STAGES:
        assert f"{stage}: up to date, skipped" in again.stderr
    assert _manifests(run_dir) == before
    assert "| intent |" in again.stdout  # the table is printed again from summary.json
    # forcing the label stage finds every answer in the cache
    forced = _cli("label", str(config), "--force", cwd=folder)
    assert forced.returncode == 0, forced.stderr
    tasks = runs.read_manifest(run_dir, "label")["tasks"]["intent"]
    assert tasks["n_computed"] == 0 and tasks["n_from_cache"] == 160


def test_changing_alpha_reruns_only_calibrate_and_evaluate(finished_run):
    folder, config, _ = finished_run
    run_dir = folder / "run"
    before = _manifests(run_dir)
    result = _cli("run", str(config), "cascade.alpha=0.3", cwd=folder)
    assert result.returncode == 0, result.stderr
    after = _manifests(run_dir)
    for stage in ("label", "split", "train", "score"):
        assert f"{stage}: up to date, skipped" in result.stderr
    assert json.loads((run_dir / "cascade.json").read_text())["tasks"]["intent"]["alpha"] == 0.3
    assert after["calibrate"] != before["calibrate"] and after["evaluate"] != before["evaluate"]
    # a single stage refuses to run on inputs that are out of date for the config
    stale = _cli("evaluate", str(config), cwd=folder)
    assert stale.returncode == 2
    assert "stage 'calibrate' is out of date" in stale.stderr
    assert yaml.safe_load((run_dir / "config.resolved.yaml").read_text())["cascade"]["alpha"] == 0.3
