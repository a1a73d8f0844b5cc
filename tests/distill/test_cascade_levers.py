"""The levers that make a cascade save more, through the real CLI on tiny models: predefined
splits (`data.split_field`), the catch-all label, the learned score chosen by `auto`, and a
served cascade that answers exactly as the score stage did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from distill.cli import main
from distill.config import load_config
from distill.errors import ConfigError
from distill.pipeline import load_scores
from tests import tiny

SPLITS = {"train": 300, "val": 100, "calib": 1000, "test": 100}


def _rows_with_splits() -> list[dict]:
    rows = tiny.make_rows(sum(SPLITS.values()), seed=3)
    names = [name for name, n in SPLITS.items() for _ in range(n)]
    return [row | {"part": name} for row, name in zip(rows, names, strict=True)]


def _config(folder, rows, student, **task) -> tuple:
    data = tiny.write_jsonl(rows, folder / "rows.jsonl")
    path = tiny.tiny_config(folder, data, student, epochs=3)
    config = yaml.safe_load(path.read_text())
    config["data"]["split_field"] = "part"
    config["tasks"][0].update(task)
    config["cascade"] = {"alpha": 0.1, "delta": 0.1}
    return config, path


@pytest.fixture(scope="module")
def lever_run(tmp_path_factory, tiny_student):
    folder = tmp_path_factory.mktemp("levers")
    config, path = _config(folder, _rows_with_splits(), tiny_student, catch_all="other")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(path), "--quiet"]) == 0
    return folder / "run", path


def test_predefined_splits_are_kept_and_val_feeds_early_stopping(lever_run):
    import datasets

    run, _ = lever_run
    dataset = datasets.load_from_disk(str(run / "dataset" / "intent"))
    assert {name: len(dataset[name]) for name in dataset} == SPLITS
    assert set(dataset["val"]["data_split"]) == {"val"}
    metrics = json.loads((run / "adapters/intent/training_metrics.json").read_text())
    assert metrics["n_val"] == SPLITS["val"] and metrics["n_train"] == SPLITS["train"]


def test_auto_picks_the_learned_score_with_enough_calib_rows(lever_run):
    run, _ = lever_run
    entry = json.loads((run / "cascade.json").read_text())["tasks"]["intent"]
    assert entry["score"] == "learned"
    features = entry["learned"]["model"]["features"]
    assert "catch_all_answer" in features and "knn_distance|other" in features
    assert entry["n_calib"] < SPLITS["calib"]  # τ is chosen on the rows the scorer did not fit
    labels = json.loads((run / "adapters/intent/labels.json").read_text())
    assert labels["catch_all"] == "other" and labels["neighbours"] == SPLITS["train"]


def test_the_served_cascade_answers_as_the_score_stage_did(lever_run):
    from distill.cascade import Cascade

    run, _ = lever_run
    test = load_scores(run, "intent", "test")
    entry = json.loads((run / "cascade.json").read_text())["tasks"]["intent"]
    predictions = Cascade.load(run).predict(list(test["text"]), task="intent")
    assert [p.student_answer for p in predictions] == list(test["student_label"])
    from distill.deferral import task_scores

    expected = task_scores(run, test, entry)
    served = np.array([p.score for p in predictions])
    # the served adapter is merged into its base and batches differ: float rounding only
    assert np.allclose(served, expected, atol=1e-4)
    clear = np.abs(expected - entry["threshold"]) > 1e-4
    answered = np.array([p.source == "student" for p in predictions])
    assert (answered == (expected >= entry["threshold"]))[clear].all()


def test_a_split_value_outside_the_four_names_the_row(tmp_path, capsys, tiny_student):
    rows = _rows_with_splits()
    rows[7]["part"] = "holdout"
    config, path = _config(tmp_path, rows, tiny_student)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "row id 'r0007'" in err and "'holdout'" in err and "data.split_field" in err
    assert not (tmp_path / "run").exists()


def test_a_split_field_without_calib_rows_is_refused(tmp_path, capsys, tiny_student):
    rows = [row | {"part": "train" if row["part"] == "calib" else row["part"]}
            for row in _rows_with_splits()]  # fmt: skip
    config, path = _config(tmp_path, rows, tiny_student)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    assert "calib split empty" in capsys.readouterr().err


def test_a_catch_all_outside_the_label_set_names_the_field(tmp_path, tiny_student):
    config, path = _config(tmp_path, _rows_with_splits(), tiny_student, catch_all="nothing")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError, match=r"tasks\[0\].*catch_all 'nothing' is not in the label"):
        load_config(path)


def test_yaml_booleans_in_a_label_set_get_a_quoting_hint(tmp_path, tiny_student):
    config, path = _config(tmp_path, _rows_with_splits(), tiny_student)
    config["tasks"][0]["labels"] = ["card_lost", True]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError, match="quote the label"):
        load_config(path)


def test_a_learned_threshold_is_recalibrated_on_the_rows_its_scorer_did_not_fit(lever_run):
    from distill.cascade import Cascade
    from distill.serve import recalibrate

    run, _ = lever_run
    calib = load_scores(run, "intent", "calib")
    cascade = Cascade.load(run)
    entry = dict(cascade.entry("intent"))
    change = cascade.recalibrate(
        "intent", list(calib["text"]), list(calib["teacher_label"]), list(calib["id"])
    )
    assert change["n_calib"] == entry["n_calib"]  # the held-out share, as calibrate chose
    assert change["threshold"] == pytest.approx(entry["threshold"], abs=1e-4)
    logs = []
    (bf16,) = recalibrate(Cascade.load(run), run, "bf16", logs.append)
    assert bf16["n_calib"] == entry["n_calib"] and "recalibrated on" in logs[0]
