"""The `python` teacher: your own function, `module:function`, for anything else (a rules
engine, an internal service client, a model you already wrap)."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable

from distill.config import PythonTeacherConfig
from distill.data import Record
from distill.errors import ConfigError
from distill.teachers.base import TeacherAnswer

FIELDS = ("label", "probs", "input_tokens", "output_tokens", "latency_s", "error", "rationale")


class PythonTeacher:
    """Calls `function(task, texts)` per batch; each answer is a label string or a dict with
    `label` and optional `probs`, `rationale`, `input_tokens`, `output_tokens`, `error`."""

    cacheable = True

    def __init__(self, config: PythonTeacherConfig, log: Callable[[str], None] = print) -> None:
        self.function = _load(config.function, "teacher.function")
        self.batch_size = config.batch_size
        self.identity = f"python:{config.function}:{config.version}"
        self._complete = _load(config.complete, "teacher.complete") if config.complete else None

    def __getattr__(self, name: str):
        if name == "complete" and self.__dict__.get("_complete") is not None:
            complete = self.__dict__["_complete"]
            return lambda messages, max_tokens, temperature: str(
                complete(messages, max_tokens, temperature)
            )
        raise AttributeError(name)

    def cache_key(self, task, record: Record) -> str:
        blob = json.dumps([self.identity, task.model_dump(mode="json"), record.text])
        return hashlib.sha256(blob.encode()).hexdigest()

    def label_batch(self, task, records: list[Record]) -> list[TeacherAnswer]:
        texts = [record.text for record in records]
        try:
            raw = list(self.function(task, texts))
        except Exception as exc:  # the user's code: its failure is a row error, not a crash
            error = f"python_error: {type(exc).__name__}: {str(exc)[:160]}"
            return [TeacherAnswer(label=None, error=error) for _ in records]
        if len(raw) != len(records):
            error = f"python_error: returned {len(raw)} answers for {len(records)} texts"
            return [TeacherAnswer(label=None, error=error) for _ in records]
        return [_answer(value) for value in raw]


def _load(reference: str, field: str) -> Callable:
    module_name, _, name = reference.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{field}: cannot import {reference!r} ({exc})") from exc
    if not callable(function):
        raise ConfigError(f"{field}: {reference!r} is not callable")
    return function


def _answer(value) -> TeacherAnswer:
    if isinstance(value, TeacherAnswer):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(FIELDS)
        if unknown:
            return TeacherAnswer(label=None, error=f"python_error: unknown keys {sorted(unknown)}")
        label = value.get("label")
        data = {k: value[k] for k in FIELDS if k in value}
        if label is not None and not isinstance(label, str):
            data["label"] = json.dumps(label, ensure_ascii=False)  # a JSON answer
        if data.get("label") is None and not data.get("error"):
            data["error"] = "python_error: no label"
        return TeacherAnswer(**data)
    if value is None:
        return TeacherAnswer(label=None, error="python_error: no answer")
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    return TeacherAnswer(label=value)
