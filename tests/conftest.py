"""Shared fixtures: tiny models saved once per session, and an isolated cascadekit cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    return tiny.save_tiny_student(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return tiny.save_tiny_teacher(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_teacher_plain(tmp_path_factory) -> Path:
    return tiny.save_tiny_teacher(tmp_path_factory.mktemp("tiny-llama-plain"), chat=False)


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return tiny.write_jsonl(tiny.make_rows(), tmp_path / "messages.jsonl")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_student) -> Path:
    """A finished tiny run (dataset teacher, tiny student): for publishing and loading."""
    from distill.cli import main

    folder = tmp_path_factory.mktemp("finished")
    data = tiny.write_jsonl(tiny.make_rows(200), folder / "rows.jsonl")
    config = tiny.tiny_config(folder, data, tiny_student, epochs=6)
    assert main(["run", str(config), "--quiet"]) == 0
    return folder / "run"
