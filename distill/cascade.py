"""A calibrated cascade that answers: each task's student with its threshold, loaded from a
run directory, a published folder or a model hub.

    cascade = Cascade.load("runs/quickstart")                 # or a pulled folder
    cascade = Cascade.from_hub("org/name", revision="v1")     # downloads, pins, verifies
    cascade.predict(["my card was declined"], task="intent")

`predict` gives, per input, the student's answer and score, the threshold it faced and
whether the request goes to the teacher (`source` "teacher", `answer` None unless a teacher
callable is given). Paths inside cascade.json are relative to the folder that holds it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import UserError

CASCADE_FILE = "cascade.json"


@dataclass(frozen=True)
class Prediction:
    answer: Any  # the student's answer, or the teacher's when it was asked, else None
    source: str  # "student" or "teacher"
    score: float
    threshold: float  # +inf: this task defers everything
    student_answer: Any


def read_documents(root: Path) -> dict[str, tuple[Path, dict]]:
    """task name -> (the folder of its cascade.json, its entry): one cascade.json at the root
    (a run or a one-repo-per-task publication) or one per task folder."""
    root = Path(root)
    files = (
        [root / CASCADE_FILE]
        if (root / CASCADE_FILE).is_file()
        else sorted(root.glob(f"*/{CASCADE_FILE}"))
    )
    if not files:
        raise UserError(f"{root}: no {CASCADE_FILE} (nor TASK/{CASCADE_FILE}) to load")
    tasks: dict[str, tuple[Path, dict]] = {}
    for path in files:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: not a readable cascade file ({exc})") from exc
        for name, entry in (document.get("tasks") or {}).items():
            if name in tasks:
                raise UserError(f"{path}: task {name!r} appears twice under {root}")
            tasks[name] = (path.parent, entry)
    return tasks


def task_config(entry: dict):
    """The task's config, rebuilt from cascade.json (an extraction schema given inline)."""
    from pydantic import TypeAdapter

    from distill.config import TaskConfig

    return TypeAdapter(TaskConfig).validate_python(entry["task"])


class Cascade:
    """Students with their thresholds; models load on first use of a task."""

    def __init__(self, tasks: dict[str, tuple[Path, dict]], trust_remote_code: bool = False):
        self._tasks = tasks
        self._trust_remote_code = trust_remote_code
        self._models: dict[str, Any] = {}

    @classmethod
    def load(cls, path: str | Path, trust_remote_code: bool = False) -> Cascade:
        return cls(read_documents(Path(path)), trust_remote_code)

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        revision: str | None = None,
        endpoint: str | None = None,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        trust_remote_code: bool = False,
    ) -> Cascade:
        """Download a published cascade pinned to one commit, verify every file against the
        digests in its cascade.json, and load it."""
        from distill.publish import pull

        folder = pull(
            repo_id, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir
        )
        return cls.load(folder, trust_remote_code)

    @property
    def tasks(self) -> list[str]:
        return sorted(self._tasks)

    def entry(self, task: str) -> dict:
        if task not in self._tasks:
            raise UserError(f"no task {task!r} in this cascade; tasks: {', '.join(self.tasks)}")
        return self._tasks[task][1]

    def predict(
        self,
        inputs: Sequence[str],
        task: str,
        teacher: Callable[[list[str]], list[Any]] | None = None,
    ) -> list[Prediction]:
        """Answer each input with the task's student, or mark it for the teacher (and ask
        `teacher`, when given, about the deferred inputs in one call)."""
        from distill.deferral import task_scores
        from eval.calibration import per_label_thresholds

        entry = self.entry(task)
        folder = self._tasks[task][0]
        texts = [str(text) for text in inputs]
        table = self._student_table(task, folder, entry, texts)
        scores = task_scores(folder, table, entry)
        per_label = entry.get("per_label")
        if per_label:
            thresholds = per_label_thresholds(
                table["student_label"], per_label["groups"], per_label["thresholds"]
            )
        else:
            tau = float("inf") if entry.get("threshold") is None else float(entry["threshold"])
            thresholds = np.full(len(texts), tau)
        accepted = scores >= thresholds
        deferred = [i for i in range(len(texts)) if not accepted[i]]
        teacher_answers = {}
        if teacher and deferred:
            answered = teacher([texts[i] for i in deferred])
            teacher_answers = dict(zip(deferred, answered, strict=True))
        return [
            Prediction(
                answer=table["student_label"][i] if accepted[i] else teacher_answers.get(i),
                source="student" if accepted[i] else "teacher",
                score=float(scores[i]),
                threshold=float(thresholds[i]),
                student_answer=table["student_label"][i],
            )
            for i in range(len(texts))
        ]

    def _student_table(self, task: str, folder: Path, entry: dict, texts: list[str]) -> dict:
        """The columns a score needs, as the score stage writes them."""
        from training.bases import resolve_model

        adapter = folder / entry["adapter"]
        base = resolve_model(entry["base_model"], log=lambda _: None)
        if entry["kind"] == "classification":
            from training.classifier import count_tokens, load_classifier, predict_proba
            from training.scores import SCORES

            if task not in self._models:
                self._models[task] = load_classifier(base, adapter, self._trust_remote_code)
            model, tokenizer, names = self._models[task]
            probs = predict_proba(model, tokenizer, texts, 32, entry["max_length"])
            table = {f"score_{name}": fn(probs) for name, fn in SCORES.items()}
            table["student_probs"] = list(probs)
            table["student_label"] = np.array([names[i] for i in probs.argmax(axis=1)], object)
            table["student_input_tokens"] = count_tokens(tokenizer, texts, entry["max_length"])
            table["student_output_tokens"] = np.zeros(len(texts), dtype=np.int64)
        else:
            from distill.outputs import canonical_output
            from distill.pipeline import INVALID_PENALTY
            from training.generator import generate, load_generator

            if task not in self._models:
                self._models[task] = load_generator(base, adapter, self._trust_remote_code)
            model, tokenizer, prompt = self._models[task]
            config = task_config(entry)
            answers = generate(model, tokenizer, prompt, texts, 16)
            checked = [canonical_output(config, text) for text in answers.texts]
            penalty = np.array([INVALID_PENALTY if error else 0.0 for _, error in checked])
            table = {
                "student_label": np.array([answer for answer, _ in checked], dtype=object),
                "score_mean_logprob": np.asarray(answers.mean_logprob) - penalty,
                "score_min_logprob": np.asarray(answers.min_logprob) - penalty,
                "student_input_tokens": np.asarray(answers.input_tokens),
                "student_output_tokens": np.asarray(answers.output_tokens),
            }
        table["text"] = np.array(texts, dtype=object)
        return table
