"""Serving in bf16: the classifiers switch precision and every threshold is chosen again on the
run's calib rows, with the task's own Learn-then-Test settings."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from distill.cascade import Cascade
from distill.errors import UserError
from distill.pipeline import load_scores
from distill.serve import recalibrate


def _calib(run):
    calib = load_scores(run, "intent", "calib")
    return list(calib["text"]), list(calib["teacher_label"])


def test_recalibrating_in_fp32_gives_back_the_calibrated_threshold(finished_run):
    cascade = Cascade.load(finished_run)
    entry = dict(cascade.entry("intent"))
    change = cascade.recalibrate("intent", *_calib(finished_run))
    assert change["threshold_was"] == entry["threshold"]
    if entry["threshold"] is None:
        assert change["threshold"] is None
    else:  # the same scores (up to float rounding of the merged adapter): the same threshold
        assert change["threshold"] == pytest.approx(entry["threshold"], abs=1e-5)
    assert change["n_calib"] == entry["n_calib"]
    assert change["calib_risk"] == pytest.approx(entry["calib_risk"])
    assert change["calib_deferral_rate"] == pytest.approx(entry["calib_deferral_rate"])


def test_bf16_recalibrates_on_the_scores_it_serves(finished_run):
    logs = []
    cascade = Cascade.load(finished_run)
    (change,) = recalibrate(cascade, finished_run, "bf16", logs.append)
    assert cascade.precision == "bf16" and "recalibrated on" in logs[0]
    texts, teacher = _calib(finished_run)
    predictions = cascade.predict(texts, task="intent")
    tau = change["threshold"]
    assert all(p.threshold == (np.inf if tau is None else tau) for p in predictions)
    # the recorded calib figures are those of the bf16 scores under the new threshold
    accepted = np.array([p.source == "student" for p in predictions])
    disagree = np.array([p.student_answer != t for p, t in zip(predictions, teacher, strict=True)])
    assert change["calib_deferral_rate"] == pytest.approx(np.mean(~accepted))
    assert change["calib_risk"] == pytest.approx(np.mean(disagree & accepted))
    assert change["calib_risk"] <= cascade.entry("intent")["alpha"] or tau is None
    assert cascade.entry("intent")["recalibrated"]["precision"] == "bf16"


def test_precision_is_checked(finished_run, tmp_path):
    cascade = Cascade.load(finished_run)
    with pytest.raises(UserError, match="choose fp32 or bf16"):
        cascade.set_precision("int4")
    cascade.predict(["i lost my card"], task="intent")
    with pytest.raises(UserError, match="before the first prediction"):
        cascade.set_precision("bf16")
    with pytest.raises(UserError, match="calib rows"):
        Cascade.load(finished_run).recalibrate("intent", ["a"], [])
    learned = Cascade.load(finished_run)
    learned.entry("intent")["score"] = "learned"
    with pytest.raises(UserError, match="needs the calib rows' ids"):
        learned.recalibrate("intent", *_calib(finished_run))
    tiered = Cascade.load(finished_run)
    tiered.entry("intent")["method"] = "learn-then-test/fixed-sequence/binomial/per-label"
    with pytest.raises(UserError, match="plain Learn-then-Test"):
        tiered.recalibrate("intent", *_calib(finished_run))
    # a cascade without its run's score stage (a pull) cannot be recalibrated
    folder = tmp_path / "no-scores"
    shutil.copytree(finished_run, folder)
    shutil.rmtree(folder / "scores")
    with pytest.raises(UserError, match="serve the run directory"):
        recalibrate(Cascade.load(folder), folder, "bf16", print)


def test_serve_precision_flag_needs_the_run_directory(finished_run, tmp_path, capsys):
    from distill.cli import main

    folder = tmp_path / "pulled-like"
    shutil.copytree(finished_run, folder)
    shutil.rmtree(folder / "scores")
    assert main(["serve", str(folder), "--port", "0", "--precision", "bf16"]) == 2
    assert "--precision bf16 recalibrates on the run's calib split" in capsys.readouterr().err
