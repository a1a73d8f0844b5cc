"""Malformed configs: each exits 2 with an error naming the file and the field, no traceback,
and leaves a finished run's folder untouched, under `validate` and `run` alike.

A case is a config derived from a finished run's: its YAML text edited, one field set or
removed, or an override added on the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.robustness.helpers import assert_rejected, finished_project, write_variant

Maker = Callable[[Path, Path, str], tuple[Path, list[str]]]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_student) -> tuple[Path, Path]:
    folder = tmp_path_factory.getbasetemp() / "robustness-run"
    return folder, finished_project(folder, tiny_student)


# ── ways to spoil a config ──────────────────────────────────────────────────────────────
def text(edit: Callable[[str], str | bytes]) -> Maker:
    """The config's YAML text, edited (the result may be bytes)."""

    def make(folder: Path, config: Path, name: str) -> tuple[Path, list[str]]:
        new = edit(config.read_text(encoding="utf-8"))
        path = folder / f"{name}.yaml"
        path.write_bytes(new if isinstance(new, bytes) else new.encode("utf-8"))
        return path, []

    return make


def _keys(dotted: str) -> list[Any]:
    return [int(k) if k.isdigit() else k for k in dotted.split(".")]


def put(dotted: str, value: Any) -> Maker:
    """One field set to `value` (a callable gets the project folder)."""

    def make(folder: Path, config: Path, name: str) -> tuple[Path, list[str]]:
        def mutate(raw: dict[str, Any]) -> None:
            *parents, last = _keys(dotted)
            node: Any = raw
            for key in parents:
                node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
            new = value(folder) if callable(value) else value
            if isinstance(node, list) and last == len(node):
                node.append(new)  # a second task
            else:
                node[last] = new

        return write_variant(folder, config, name, mutate), []

    return make


def drop(dotted: str) -> Maker:
    """One field removed."""

    def make(folder: Path, config: Path, name: str) -> tuple[Path, list[str]]:
        def mutate(raw: dict[str, Any]) -> None:
            *parents, last = _keys(dotted)
            node: Any = raw
            for key in parents:
                node = node[key]
            del node[last]

        return write_variant(folder, config, name, mutate), []

    return make


def rename(dotted: str, new: str) -> Maker:
    """One field under a misspelt name."""

    def make(folder: Path, config: Path, name: str) -> tuple[Path, list[str]]:
        def mutate(raw: dict[str, Any]) -> None:
            *parents, last = _keys(dotted)
            node: Any = raw
            for key in parents:
                node = node[key]
            node[new] = node.pop(last)

        return write_variant(folder, config, name, mutate), []

    return make


def override(*items: str) -> Maker:
    """The config as it is, with `key.sub=value` overrides."""

    def make(folder: Path, config: Path, name: str) -> tuple[Path, list[str]]:
        return config, list(items)

    return make


def other_file(relative: str) -> Maker:
    """Another path given as the config."""

    def make(folder: Path, config: Path, name: str) -> tuple[Path, list[str]]:
        return folder / relative, []

    return make


def _duplicate_line(line: str) -> Callable[[str], str]:
    return lambda t: t.replace(line + "\n", line + "\n" + line.replace(": 1", ": 2") + "\n", 1)


EPOCHS = "    epochs: 1"  # a line of the finished run's config: duplicated below
RUN_DIR = "run_dir: run"  # another, given a tag below


def line_numbers(config_text: str) -> dict[str, str]:
    """What the line placeholders of CASES stand for in this config text: {appended}, the
    first line added after its end; {duplicate epochs}, the copy of EPOCHS just below it;
    {run_dir}, RUN_DIR's line."""
    lines = config_text.splitlines()
    return {
        "{appended}": str(len(lines) + 1),
        "{duplicate epochs}": str(lines.index(EPOCHS) + 2),
        "{run_dir}": str(lines.index(RUN_DIR) + 1),
    }


EXTRACTION = {"name": "fields", "kind": "extraction", "instruction": "Extract."}
OPENAI = {"kind": "openai", "model": "m"}
MB = 1_000_000

# name: (how to spoil it, texts the error must contain; {config} is the config file's name,
# and line_numbers says what the line placeholders stand for)
CASES: dict[str, tuple[Maker, list[str]]] = {
    # the file itself
    "empty file": (text(lambda t: ""), ["{config}: the file is empty"]),
    "only comments": (text(lambda t: "# nothing here\n"), ["{config}: the file is empty"]),
    "top level list": (
        text(lambda t: "- run_dir: run\n"),
        ["{config}: the top level must be a mapping, got list"],
    ),
    "top level text": (
        text(lambda t: "just words\n"),
        ["{config}: the top level must be a mapping, got str"],
    ),
    "unclosed bracket": (
        text(lambda t: t.replace("alpha: 0.2", "alpha: [0.2")),
        ["{config}:", "not valid YAML"],
    ),
    "bad indentation": (
        text(lambda t: t.replace("  seed: 0", "    seed: 0\n  bad: [")),
        ["{config}:", "not valid YAML"],
    ),
    "tab indentation": (
        text(lambda t: t.replace("  seed: 0", "\tseed: 0")),
        ["{config}:", "not valid YAML"],
    ),
    "duplicate top key": (
        text(lambda t: t + "run_dir: elsewhere\n"),
        ["{config}:{appended}: not valid YAML: duplicate key 'run_dir'"],
    ),
    "duplicate nested key": (
        text(_duplicate_line(EPOCHS)),
        ["{config}:{duplicate epochs}: not valid YAML: duplicate key 'epochs'"],
    ),
    "non-UTF-8 bytes": (
        text(lambda t: t.encode() + b"# caf\xe9\n"),
        ["{config}: not UTF-8 text"],
    ),
    "NUL character": (text(lambda t: t + "\x00"), ["{config}: not valid YAML"]),
    "python object tag": (
        text(lambda t: t.replace(RUN_DIR, "run_dir: !!python/object/apply:os.getcwd []")),
        ["{config}:{run_dir}: not valid YAML: could not determine a constructor"],
    ),
    "list as a key": (
        text(lambda t: t + "? [a, b]\n: 1\n"),
        ["{config}:{appended}: not valid YAML: a list cannot be a key"],
    ),
    "recursive alias": (
        text(lambda t: t + "x: &a [*a]\n"),
        ["{config}:{appended}: not valid YAML"],
    ),
    "nested too deeply": (
        text(lambda t: t + "x: " + "[" * 5000 + "]" * 5000 + "\n"),
        ["{config}: not valid YAML: nested too deeply"],
    ),
    "empty !!int": (
        text(lambda t: t.replace("seed: 0", "seed: !!int ''")),
        ["{config}: not valid YAML"],
    ),
    "config is a folder": (other_file("."), ["is a folder, not a YAML file"]),
    "config name too long": (
        other_file("c" * 5000 + ".yaml"),
        ["cannot be read (File name too long)"],
    ),
    "config missing": (other_file("nope.yaml"), ["nope.yaml does not exist"]),
    # missing and misnamed fields
    "no tasks": (drop("tasks"), ["{config}: invalid config", "tasks: required field is missing"]),
    "no data": (drop("data"), ["data: required field is missing"]),
    "no teacher": (drop("teacher"), ["teacher: required field is missing"]),
    "no data.path": (drop("data.path"), ["data.path: required field is missing"]),
    "no teacher.kind": (drop("teacher.kind"), ["teacher.kind: required field is missing"]),
    "no task instruction": (
        drop("tasks.0.instruction"),
        ["tasks[0].instruction: required field is missing"],
    ),
    "tasks misnamed task": (
        rename("tasks", "task"),
        ["task: unknown key", "tasks: required field is missing"],
    ),
    "training misnamed": (rename("student.training", "trainig"), ["student.trainig: unknown key"]),
    "alpha misnamed": (rename("cascade.alpha", "alhpa"), ["cascade.alhpa: unknown key"]),
    "unknown task key": (put("tasks.0.colour", "red"), ["tasks[0].colour: unknown key"]),
    "unknown top key": (put("optimiser", "sgd"), ["optimiser: unknown key"]),
    # wrong types and numbers out of range
    "epochs a word": (put("student.training.epochs", "many"), ["student.training.epochs:"]),
    "epochs zero": (
        put("student.training.epochs", 0),
        ["student.training.epochs: Input should be greater than 0 (got 0)"],
    ),
    "epochs negative": (put("student.training.epochs", -3), ["student.training.epochs:"]),
    "epochs fractional": (put("student.training.epochs", 1.5), ["student.training.epochs:"]),
    "batch size a list": (
        put("student.training.batch_size", [16]),
        ["student.training.batch_size:"],
    ),
    "negative learning rate": (
        put("student.training.learning_rate", -0.01),
        ["student.training.learning_rate:"],
    ),
    "lora rank zero": (put("student.lora.r", 0), ["student.lora.r:"]),
    "lora dropout one": (put("student.lora.dropout", 1.0), ["student.lora.dropout:"]),
    "val fraction too big": (
        put("student.training.val_fraction", 0.7),
        ["student.training.val_fraction:"],
    ),
    "alpha zero": (put("cascade.alpha", 0), ["cascade.alpha: Input should be greater than 0"]),
    "alpha one": (put("cascade.alpha", 1), ["cascade.alpha: Input should be less than 1"]),
    "alpha above one": (put("cascade.alpha", 1.5), ["cascade.alpha:"]),
    "alpha negative": (put("cascade.alpha", -0.1), ["cascade.alpha:"]),
    "alpha NaN": (text(lambda t: t.replace("alpha: 0.2", "alpha: .nan")), ["cascade.alpha:"]),
    "alpha a word": (put("cascade.alpha", "low"), ["cascade.alpha:"]),
    "tokens per day infinite": (
        text(lambda t: t.replace("tokens_per_day: 8000000000.0", "tokens_per_day: .inf")),
        ["cost.tokens_per_day: Input should be a finite number"],
    ),
    "negative training seed": (put("student.training.seed", -1), ["student.training.seed:"]),
    "split seed beyond numpy": (
        put("data.seed", 2**40),
        ["data.seed: Input should be less than 4294967296"],
    ),
    "delta zero": (put("cascade.delta", 0), ["cascade.delta:"]),
    "splits sum above one": (
        put("data.split", {"train": 0.6, "calib": 0.3, "test": 0.3}),
        ["data.split: train + calib + test must be 1, got 1.2"],
    ),
    "split fraction zero": (
        put("data.split", {"train": 0.8, "calib": 0.0, "test": 0.2}),
        ["data.split.calib:"],
    ),
    "split fraction negative": (
        put("data.split", {"train": 0.9, "calib": 0.2, "test": -0.1}),
        ["data.split.test:"],
    ),
    "split train all": (
        put("data.split", {"train": 1.0, "calib": 0.0, "test": 0.0}),
        ["data.split.train:"],
    ),
    "limit zero": (put("data.limit", 0), ["data.limit:"]),
    "unknown data format": (put("data.format", "xml"), ["data.format:"]),
    "seed a word": (put("data.seed", "abc"), ["data.seed:"]),
    "negative price": (
        put("cost.teacher.usd_per_million_input_tokens", -3.0),
        ["cost.teacher.usd_per_million_input_tokens:"],
    ),
    "zero tokens per day": (put("cost.tokens_per_day", 0), ["cost.tokens_per_day:"]),
    "CPT level above one": (
        put("evaluate.cpt_levels", [0.5, 2]),
        ["evaluate.cpt_levels: CPT level 2.0 is not in (0, 1]"],
    ),
    "unknown score": (put("cascade.score", "vibes"), ["cascade.score:"]),
    "score for another task kind": (
        put("cascade.score", "mean_logprob"),
        ["cascade.score 'mean_logprob' does not apply to task 'intent'"],
    ),
    "cost budget without budget": (
        put("cascade.method", "cost_budget"),
        ["cascade: method cost_budget needs budget_usd_per_1000"],
    ),
    # teachers
    "unknown teacher backend": (
        put("teacher", {"kind": "gpt4", "model": "x"}),
        ["teacher.kind: not one of the kinds", "'hf', 'dataset', 'openai', 'python', 'vote'"],
    ),
    "teacher a string": (put("teacher", "hf"), ["teacher: Input should be a valid dictionary"]),
    "hf teacher without model": (put("teacher", {"kind": "hf"}), ["teacher.model: required"]),
    "hf teacher batch zero": (
        put("teacher", {"kind": "hf", "model": "embedded:x", "batch_size": 0}),
        ["teacher.batch_size:"],
    ),
    "hf teacher folder missing": (
        put("teacher", lambda f: {"kind": "hf", "model": str(f / "no-model")}),
        ["teacher.model: model folder", "does not exist"],
    ),
    "openai ftp url": (put("teacher", {**OPENAI, "base_url": "ftp://x"}), ["teacher.base_url:"]),
    "openai key variable": (
        put("teacher", {**OPENAI, "api_key_env": "MY-KEY"}),
        ["teacher.api_key_env:"],
    ),
    "python teacher function": (
        put("teacher", {"kind": "python", "function": "not a function"}),
        ["teacher.function:"],
    ),
    "vote of one": (
        put("teacher", {"kind": "vote", "teachers": [{"kind": "dataset", "label_field": "x"}]}),
        ["teacher.teachers: List should have at least 2 items"],
    ),
    "vote voter without kind": (
        put("teacher", {"kind": "vote", "teachers": [{"kind": "hf", "model": "a"}, {}]}),
        ["teacher.teachers[1].kind: required field is missing"],
    ),
    "vote weight NaN": (
        put(
            "teacher",
            {
                "kind": "vote",
                "teachers": [{"kind": "hf", "model": "a"}, {"kind": "hf", "model": "b"}],
                "weights": [float("nan"), 1.0],
            },
        ),
        ["teacher.weights[0]: Input should be a finite number"],
    ),
    "label field map of other tasks": (
        put("teacher.label_field", {"topic": "recorded"}),
        ["teacher.label_field names tasks ['topic']"],
    ),
    # tasks and labels
    "tasks empty": (put("tasks", []), ["tasks: List should have at least 1 item"]),
    "tasks a mapping": (put("tasks", {"name": "intent"}), ["tasks: Input should be a valid list"]),
    "task name traversal": (put("tasks.0.name", "../evil"), ["tasks[0].name:"]),
    "task name reserved": (put("tasks.0.name", "manifest.json"), ["is reserved"]),
    "task names clash by case": (
        put("tasks.1", {"name": "INTENT", "instruction": "x", "labels": ["a", "b"]}),
        ["tasks: duplicate task name 'intent' (names ignore case)"],
    ),
    "one label": (put("tasks.0.labels", ["only"]), ["tasks[0].labels: List should have at least"]),
    "duplicate labels": (
        put("tasks.0.labels", ["refund", "other", "refund"]),
        ["tasks[0].labels: duplicate label 'refund'"],
    ),
    "label with trailing space": (
        put("tasks.0.labels", ["refund", "other "]),
        ["tasks[0].labels[1].name: label 'other ' has leading/trailing spaces"],
    ),
    "mixed label types": (put("tasks.0.labels", ["refund", 7, None]), ["tasks[0].labels[1]:"]),
    "1 MB label": (
        put("tasks.0.labels.0.name", "x" * MB),
        ["tasks[0].labels[0].name: String should have at most 100 characters"],
    ),
    "1 MB task name": (put("tasks.0.name", "y" * MB), ["tasks[0].name: String should match"]),
    "example outside label set": (
        put("tasks.0.examples.0.label", "lost"),
        ["tasks[0]: examples[0].label 'lost' is not in the label set"],
    ),
    "unknown task kind": (put("tasks.0.kind", "regression"), ["tasks[0].kind:"]),
    "bad JSON Schema": (
        put("tasks.1", {**EXTRACTION, "json_schema": {"type": 5}}),
        ["tasks[1].json_schema: not a valid JSON Schema at type"],
    ),
    "JSON Schema $ref to nowhere": (
        put("tasks.1", {**EXTRACTION, "json_schema": {"$ref": "#/$defs/none"}}),
        ["tasks[1].json_schema: not a valid JSON Schema", "$ref '#/$defs/none' does not point"],
    ),
    "JSON Schema $ref to the web": (
        put("tasks.1", {**EXTRACTION, "json_schema": {"$ref": "https://example.com/s.json"}}),
        ["tasks[1].json_schema:", "$ref 'https://example.com/s.json' does not point"],
    ),
    "missing JSON Schema file": (
        put("tasks.1", {**EXTRACTION, "json_schema": "schemas/none.json"}),
        ["tasks[1].json_schema: JSON Schema file", "none.json does not exist"],
    ),
    # paths
    "run_dir null": (put("run_dir", None), ["run_dir:"]),
    "run_dir is a file": (
        put("run_dir", "messages.jsonl"),
        ["run_dir:", "messages.jsonl exists and is not a folder"],
    ),
    "run_dir under a file": (
        put("run_dir", "messages.jsonl/run"),
        ["run_dir:", "cannot be used (Not a directory)"],
    ),
    "run_dir name too long": (
        put("run_dir", "r" * 5000),
        ["run_dir:", "cannot be used (File name too long)"],
    ),
    "run_dir NUL byte": (put("run_dir", "ru\x00n"), ["run_dir: 'ru\\x00n' is not a usable path"]),
    "teacher_cache is a folder": (
        put("teacher_cache", "run"),
        ["teacher_cache:", "is a folder, not a file"],
    ),
    "data.path missing": (
        put("data.path", "nope.jsonl"),
        ["data.path", "nope.jsonl does not exist"],
    ),
    "data.path a list": (put("data.path", ["a.jsonl"]), ["data.path:"]),
    "data.path unknown user": (
        put("data.path", "~nosuchuser/m.jsonl"),
        ["data.path: '~nosuchuser/m.jsonl' is not a usable path"],
    ),
    "data.path a folder": (
        put("data", lambda f: {"path": str(f / "run"), "format": "jsonl"}),
        ["is a folder, but data.format is jsonl"],
    ),
    "data.path unknown extension": (
        put("data.path", "config.yaml"),
        ["cannot tell the format from the extension '.yaml'"],
    ),
    "student folder missing": (
        put("student.base_model", "./no-student"),
        ["student.base_model: model folder", "does not exist"],
    ),
    "student path too long": (
        put("student.base_model", "/" + "s" * 5000),
        ["student.base_model:", "cannot be read (File name too long)"],
    ),
    "unknown embedded student": (
        put("student.base_model", "embedded:nope"),
        ["student.base_model: unknown embedded model 'nope'"],
    ),
    "lora targets not in the model": (
        put("student.lora.target_modules", ["no_such_proj"]),
        ["student.lora.target_modules: LoRA target modules {'no_such_proj'} are not in"],
    ),
    # fields naming data columns
    "text field not a column": (
        put("data.text_field", "body"),
        ["messages.jsonl:1: no text field 'body' (data.text_field)"],
    ),
    "id field not a column": (
        put("data.id_field", "uid"),
        ["messages.jsonl:1: no id in field 'uid' (data.id_field)"],
    ),
    "gold field not a column": (
        put("data.gold_field", "truth"),
        ["no row has the gold field 'truth'"],
    ),
    "label field not a column": (
        put("teacher.label_field", "answer"),
        ["messages.jsonl:1: no column 'answer'"],
    ),
    # overrides on the command line
    "override without =": (override("student.training.epochs"), ["is not of the form key.sub"]),
    "override empty key": (override("student..epochs=3"), ["has an empty key"]),
    "override index out of range": (
        override("tasks.5.name=x"),
        ["override 'tasks.5.name=x': tasks.5 is not an index of a list"],
    ),
    "override into a number": (
        override("cascade.alpha.low=1"),
        ["cascade.alpha.low is inside a plain value"],
    ),
    "override bad YAML": (override("student.training.epochs=[1"), ["value is not valid YAML"]),
    "override wrong type": (
        override("student.training.epochs=many"),
        ["student.training.epochs: Input should be a valid integer"],
    ),
    "override unknown key": (override("student.optimiser=sgd"), ["student.optimiser: unknown key"]),
    "override alpha outside (0,1)": (override("cascade.alpha=2"), ["cascade.alpha:"]),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_malformed_config_exits_2_names_the_field_and_writes_nothing(
    project, case, command, capsys
):
    folder, config = project
    make, expected = CASES[case]
    name = "config-" + "".join(c if c.isalnum() else "-" for c in case)
    path, overrides = make(folder, config, name)
    placeholders = {"{config}": path.name, **line_numbers(config.read_text(encoding="utf-8"))}
    for placeholder, value in placeholders.items():
        expected = [text.replace(placeholder, value) for text in expected]
    assert_rejected([command, str(path), *overrides, "--quiet"], folder / "run", expected, capsys)


def test_there_are_at_least_40_malformed_configs():
    assert len(CASES) >= 40
