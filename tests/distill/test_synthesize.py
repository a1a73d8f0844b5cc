"""Synthetic inputs written by the teacher: cleaned, de-duplicated, marked, labelled after."""

from __future__ import annotations

import json
import re

import yaml

from distill.cli import main
from distill.synthesize import Deduplicator, clean_lines
from tests import tiny


def test_deduplicator_and_cleaning():
    dedupe = Deduplicator(near=0.7)
    dedupe.add("My card was declined at the shop")
    assert dedupe.duplicate_of("my  CARD was declined at the shop") == "exact"
    assert dedupe.duplicate_of("My card was declined at the shop!!") == "near"
    assert dedupe.duplicate_of("Where is my refund for the shoes?") is None
    assert clean_lines('Here are some:\n1. "one two"\n- three four\n\n(2) five six') == [
        "one two",
        "three four",
        "five six",
    ]


def test_synthesize_writes_marked_rows_that_label_like_any_other(tmp_path, tiny_student):
    data = tiny.write_jsonl(tiny.make_rows(80), tmp_path / "rows.jsonl")
    path = tiny.tiny_config(tmp_path, data, tiny_student)
    config = yaml.safe_load(path.read_text())
    config["teacher"] = {
        "kind": "python",
        "function": "tests.rule_teacher:by_keyword",
        "complete": "tests.rule_teacher:write_inputs",
    }
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "synthetic.jsonl"
    assert main(["synthesize", str(path), "--per-label", "3", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 * len(tiny.LABELS)
    assert all(r["synthetic"] is True and r["synthetic_label"] in tiny.LABELS for r in rows)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts) and "i lost my card" not in texts
    assert all(not t.startswith(("1.", "-", '"')) for t in texts)
    # appended to the data, the teacher labels them like any other row
    with data.open("a") as handle:
        handle.write(out.read_text())
    assert main(["label", str(path), "--quiet"]) == 0
    assert main(["synthesize", str(path), "--per-label", "3", "--out", str(out)]) == 2  # exists
    dataset = {**config["teacher"], "kind": "dataset", "label_field": "recorded"}
    dataset.pop("function"), dataset.pop("complete")
    config["teacher"] = dataset
    path.write_text(yaml.safe_dump(config))
    assert (
        main(["synthesize", str(path), "--per-label", "1", "--out", str(tmp_path / "x.jsonl")]) == 2
    )  # a dataset teacher cannot write


def test_synthesize_shows_only_train_rows_as_examples(tmp_path, tiny_student, monkeypatch):
    """A calib or test row in the prompt would reach training through its paraphrases."""
    rows = tiny.make_rows(80)
    for i, row in enumerate(rows):
        row["text"] += f" marker{i:03d}"
        row["split"] = "train" if i < 40 else ("calib" if i < 60 else "test")
    data = tiny.write_jsonl(rows[::-1], tmp_path / "rows.jsonl")  # calib and test rows first
    path = tiny.tiny_config(tmp_path, data, tiny_student)
    config = yaml.safe_load(path.read_text())
    config["data"]["split_field"] = "split"
    config["teacher"] = {
        "kind": "python",
        "function": "tests.rule_teacher:by_keyword",
        "complete": "tests.rule_teacher:write_inputs_recording",
    }
    path.write_text(yaml.safe_dump(config))
    prompts = tmp_path / "prompts.txt"
    monkeypatch.setenv("RULE_TEACHER_PROMPTS", str(prompts))
    out = tmp_path / "synthetic.jsonl"
    assert main(["synthesize", str(path), "--per-label", "2", "--out", str(out), "--quiet"]) == 0
    shown = set(re.findall(r"marker(\d{3})", prompts.read_text()))
    assert shown and all(int(i) < 40 for i in shown), sorted(shown)


def test_a_batching_teacher_is_asked_once_per_round(tmp_path, tiny_student):
    """Every label still short of inputs goes into one `complete_many` call per round."""
    from distill.config import load_config
    from distill.synthesize import synthesize
    from tests.rule_teacher import write_inputs

    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "rows.jsonl")
    config = load_config(tiny.tiny_config(tmp_path, data, tiny_student))

    class Batching:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def complete(self, messages, max_tokens, temperature):
            raise AssertionError("one at a time")

        def complete_many(self, conversations, max_tokens, temperature):
            self.calls.append(len(conversations))
            return [write_inputs(m, max_tokens, temperature) for m in conversations]

    teacher = Batching()
    rows, counts = synthesize(config, teacher, config.tasks[0], 2, [], log=lambda _: None)
    assert teacher.calls == [len(tiny.LABELS)]
    assert len(rows) == counts["written"] == 2 * len(tiny.LABELS)
