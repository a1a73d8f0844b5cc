"""Bad input: exit code 2, a message naming the problem, and the run directory untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from tests import tiny
from tests.robustness.helpers import snapshot as _snapshot


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_student):
    """A finished run with the dataset teacher, to check that bad input leaves it alone."""
    folder = tmp_path_factory.mktemp("bad-input")
    data = tiny.write_jsonl(tiny.make_rows(80), folder / "messages.jsonl")
    config = tiny.tiny_config(folder, data, tiny_student, teacher=None, epochs=1)
    assert main(["run", str(config), "--quiet"]) == 0
    return folder, config


def _variant(folder: Path, config: Path, name: str, mutate) -> Path:
    raw = yaml.safe_load(config.read_text())
    mutate(raw, folder)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _write_data(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return str(folder / name)


CASES = {
    "missing field": (lambda r, f: r.pop("tasks"), "tasks: required field is missing"),
    "unknown key": (
        lambda r, f: r["student"].update(optimiser="sgd"),
        "student.optimiser: unknown key",
    ),
    "wrong type": (
        lambda r, f: r["student"]["training"].update(epochs="many"),
        "student.training.epochs",
    ),
    "duplicate labels": (
        lambda r, f: r["tasks"][0].update(labels=["a", "b", "a"]),
        "duplicate label 'a'",
    ),
    "missing data": (lambda r, f: r["data"].update(path=str(f / "nope.jsonl")), "does not exist"),
    "empty data": (
        lambda r, f: r["data"].update(path=_write_data(f, "empty.jsonl", "")),
        "no rows",
    ),
    "no text field": (
        lambda r, f: r["data"].update(
            path=_write_data(f, "notext.jsonl", json.dumps({"id": "1", "body": "x"}) + "\n")
        ),
        "notext.jsonl:1: no text field 'text'",
    ),
    "duplicate ids": (
        lambda r, f: r["data"].update(
            path=_write_data(
                f,
                "dupes.jsonl",
                json.dumps({"id": "7", "text": "a", "intent": "refund", "recorded": "refund"})
                + "\n"
                + json.dumps({"id": "7", "text": "b", "intent": "refund", "recorded": "refund"})
                + "\n",
            )
        ),
        "dupes.jsonl:2: duplicate id '7'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["run", "label"])
def test_bad_input_exits_2_and_changes_nothing(project, case, command, capsys):
    folder, config = project
    mutate, expected = CASES[case]
    bad = _variant(folder, config, case.replace(" ", "-"), mutate)
    before = _snapshot(folder / "run")
    assert main([command, str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert _snapshot(folder / "run") == before


def test_bad_input_creates_no_run_directory(project, capsys):
    folder, config = project
    bad = _variant(
        folder,
        config,
        "fresh",
        lambda r, f: r.update(run_dir="fresh-run", data={**r["data"], "path": str(f / "nope")}),
    )
    assert main(["run", str(bad)]) == 2
    assert not (folder / "fresh-run").exists()
    assert "does not exist" in capsys.readouterr().err


def test_validate_checks_config_and_data_and_writes_nothing(project, capsys):
    folder, config = project
    before = _snapshot(folder / "run")
    assert main(["validate", str(config)]) == 0
    assert "valid: 80 rows" in capsys.readouterr().out
    bad = _variant(folder, config, "v", CASES["duplicate ids"][0])
    assert main(["validate", str(bad)]) == 2
    assert _snapshot(folder / "run") == before


def test_a_stage_without_its_inputs_says_what_to_run(tmp_path, tiny_student, capsys):
    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "m.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student)
    assert main(["train", str(config)]) == 2
    assert "stage 'label' is missing" in capsys.readouterr().err


def test_a_model_reference_that_cannot_load_is_bad_config(tmp_path, tiny_student, capsys):
    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "m.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student, teacher=tmp_path / "missing")
    assert main(["run", str(config)]) == 2
    assert "teacher.model: model folder" in capsys.readouterr().err
    config = tiny.tiny_config(tmp_path, data, tmp_path / "nope")
    assert main(["validate", str(config)]) == 2
    assert "student.base_model: model folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_other_failures_exit_1_without_traceback(tmp_path, tiny_student, capsys):
    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "m.jsonl")
    # a teacher folder that looks like a model but is broken: the run cannot go on
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    config = tiny.tiny_config(tmp_path, data, tiny_student, teacher=tmp_path / "broken")
    assert main(["label", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--debug" in err and "Traceback" not in err


def test_gold_outside_the_label_set_names_the_row(tmp_path, tiny_student, capsys):
    rows = tiny.make_rows(40)
    rows[7]["intent"] = "card_lots"  # a typo in the gold column
    data = tiny.write_jsonl(rows, tmp_path / "m.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student)
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "row id 'r0007': gold label 'card_lots'" in err and "task 'intent'" in err
    assert not (tmp_path / "run").exists()


def test_too_few_rows_for_the_splits_is_caught_before_labelling(tmp_path, tiny_student, capsys):
    data = tiny.write_jsonl(tiny.make_rows(2), tmp_path / "m.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student)
    assert main(["run", str(config)]) == 2
    assert "split empty" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
