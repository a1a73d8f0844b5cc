"""Teacher backends, chosen by `teacher.kind`; each is imported only when it is chosen."""

from __future__ import annotations

import importlib

from distill.teachers.base import Teacher, TeacherAnswer

BACKENDS: dict[str, str] = {
    "hf": "distill.teachers.hf:HFTeacher",
    "dataset": "distill.teachers.dataset:DatasetTeacher",
    "openai": "distill.teachers.openai:OpenAITeacher",
    "python": "distill.teachers.python:PythonTeacher",
    "vote": "distill.teachers.vote:VoteTeacher",
}


def make_teacher(config, log=print) -> Teacher:
    """The backend named by `config.kind`, built from its config section."""
    module_name, _, class_name = BACKENDS[config.kind].partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return backend(config, log=log)


__all__ = ["BACKENDS", "Teacher", "TeacherAnswer", "make_teacher"]
