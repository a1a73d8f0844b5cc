"""Labels already recorded in a column of the input data (production logs, human labels)."""

from __future__ import annotations

from distill.config import ClassificationTask, DatasetTeacherConfig
from distill.data import Record
from distill.outputs import canonical_output
from distill.teachers.base import TeacherAnswer


class DatasetTeacher:
    """Reads each row's label from `label_field`; a label outside the set is an error row."""

    cacheable = False
    batch_size = 1024

    def __init__(self, config: DatasetTeacherConfig, log=print) -> None:
        self.config = config
        fields = config.label_field
        shown = (
            ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
            if isinstance(fields, dict)
            else fields
        )
        self.identity = f"dataset:{config.name}:{shown}"

    def column(self, task: ClassificationTask) -> str:
        fields = self.config.label_field
        return fields[task.name] if isinstance(fields, dict) else fields

    def rationale(self, task: ClassificationTask, record: Record) -> str | None:
        fields = self.config.rationale_field
        if fields is None:
            return None
        column = fields.get(task.name) if isinstance(fields, dict) else fields
        value = record.fields.get(column) if column else None
        return value if isinstance(value, str) and value.strip() else None

    def cache_key(self, task: ClassificationTask, record: Record) -> str:
        return f"{self.identity}:{task.name}:{record.id}"

    def label_batch(self, task: ClassificationTask, records: list[Record]) -> list[TeacherAnswer]:
        column = self.column(task)
        answers = []
        for record in records:
            value = record.fields.get(column)
            if value is None:
                answers.append(TeacherAnswer(label=None, error="no answer recorded"))
                continue
            answer, problem = canonical_output(task, value)
            rationale = self.rationale(task, record)
            answers.append(TeacherAnswer(label=answer, error=problem, rationale=rationale))
        return answers
