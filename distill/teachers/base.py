"""The teacher interface: a batch of inputs in, one answer per input out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from distill.config import ClassificationTask
from distill.data import Record


@dataclass(frozen=True)
class TeacherAnswer:
    """A teacher's answer to one input. `label` is None exactly when `error` says why."""

    label: str | None
    probs: dict[str, float] | None = None  # over the label set, when the backend gives one
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    rationale: str | None = None  # the teacher's explanation, when it gave one
    agreement: float | None = None  # several teachers: the winning answer's share of the vote

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "probs": self.probs,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_s": self.latency_s,
            "error": self.error,
            "rationale": self.rationale,
            "agreement": self.agreement,
        }

    @classmethod
    def from_json(cls, data: dict) -> TeacherAnswer:
        return cls(**data)


class Teacher(Protocol):
    """One method to label a batch; `cache_key` says when two calls would give the same answer.

    `cacheable` is False for teachers that only read recorded answers (nothing to save).
    """

    identity: str
    batch_size: int
    cacheable: bool

    def cache_key(self, task: ClassificationTask, record: Record) -> str: ...

    def label_batch(
        self, task: ClassificationTask, records: list[Record]
    ) -> list[TeacherAnswer]: ...
