"""Shared by the robustness tests: one finished run, config variants, and the bad-input check.

Every bad input must give exit code 2, an error naming the file, field or row, no traceback,
and leave the finished run's folder byte for byte (and mtime for mtime) as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from distill.cli import main
from tests import tiny

_FINISHED: dict[Path, Path] = {}


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 + mtime of every file under `folder`: any write shows up."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        + str(p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def finished_project(folder: Path, student: Path) -> Path:
    """A finished run (dataset teacher, 80 rows, 1 epoch) in `folder`; returns its config.
    Built once per folder, so modules that share a session folder share the run."""
    if folder not in _FINISHED:
        folder.mkdir(parents=True, exist_ok=True)
        data = tiny.write_jsonl(tiny.make_rows(80), folder / "messages.jsonl")
        config = tiny.tiny_config(folder, data, student, teacher=None, epochs=1)
        assert main(["run", str(config), "--quiet"]) == 0
        _FINISHED[folder] = config
    return _FINISHED[folder]


def write_variant(
    folder: Path, config: Path, name: str, mutate: Callable[[dict[str, Any]], Any]
) -> Path:
    """A copy of `config` with `mutate(raw)` applied, written beside it as NAME.yaml."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    mutate(raw)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def assert_rejected(argv: list[str], run_dir: Path, expected: list[str], capsys) -> str:
    """`cascadekit ARGV` exits 2 with every `expected` text in stderr, no traceback, and no
    file of `run_dir` changed. Returns stderr."""
    capsys.readouterr()
    before = snapshot(run_dir)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err[-2000:]}"
    for text in expected:
        assert text in err, f"{text!r} not in stderr: {err[-2000:]}"
    assert "Traceback" not in err
    assert len(err) < 5000, f"an error message of {len(err)} characters"
    assert snapshot(run_dir) == before
    return err
