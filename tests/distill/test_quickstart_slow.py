"""The real quickstart on a subset, with the real shipped models (teacher from PyPI, MiniLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_on_a_subset_with_the_real_models(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the converted teacher is cached across runs
    command = [
        sys.executable, "-m", "distill.cli", "run", str(ROOT / "configs/quickstart/config.yaml"),
        f"run_dir={tmp_path / 'run'}", f"teacher_cache={tmp_path / 'teacher.sqlite'}",
        "data.limit=160", "--quiet",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run/report/summary.json").read_text())["tasks"]["intent"]
    n_test = summary["n_test"]
    assert 15 <= n_test <= 60
    # the real teacher knows the task (19 intents: chance is ~5%); the student learned something
    assert summary["teacher"]["accuracy"] > 0.5
    assert summary["student"]["agreement"] > 0.15
    cascade = summary["cascade"]
    assert 0.0 <= cascade["deferral_rate"] <= 1.0 and cascade["alpha"] == 0.1
    assert summary["curve"]["oracle_apgr"] >= summary["curve"]["apgr"] - 1e-9
    labels = json.loads((tmp_path / "run/labels/manifest.json").read_text())
    assert labels["tasks"]["intent"]["n_computed"] == 160
    assert "qwen2.5-coder-1.5b-instruct" in labels["teacher"]
    assert "| intent |" in result.stdout
