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
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
    cost_usd: float | None = None  # the student's mean cost, plus the teacher's when deferred


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
            _check_entry(path, name, entry)
            tasks[name] = (path.parent, entry)
    return tasks


def _check_entry(path: Path, name: str, entry: Any) -> None:
    """A task name that is safe as a folder name, and files (adapter, learned vocabulary)
    inside the folder of `path`: a downloaded cascade.json names nothing else on disk."""
    from distill.config import NAME_PATTERN
    from distill.publish import check_file_name

    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"{path}: task name {name!r} is not a safe name")
    if not isinstance(entry, dict):
        raise UserError(f"{path}: task {name!r}: its entry is not an object")
    learned = entry.get("learned") or {}
    if not isinstance(learned, dict):
        raise UserError(f"{path}: task {name!r}: 'learned' is not an object")
    files = [("adapter", entry.get("adapter")), ("learned.vocab_file", learned.get("vocab_file"))]
    for field, value in files:
        if value is None and field != "adapter":
            continue
        # by the name alone (a pulled snapshot's files are links into the hub cache), with the
        # rule for file names in a published repo; "." is a task published at the repo root
        if value != ".":
            try:
                check_file_name(value if isinstance(value, str) else "")
            except UserError:
                raise UserError(
                    f"{path}: task {name!r}: {field} {value!r} is not a path inside {path.parent}"
                ) from None


def task_config(entry: dict):
    """The task's config, rebuilt from cascade.json (an extraction schema given inline)."""
    from pydantic import TypeAdapter

    from distill.config import TaskConfig

    return TypeAdapter(TaskConfig).validate_python(entry["task"])


class Cascade:
    """Students with their thresholds. One base model per student kind carries every task's
    adapter (loaded once, on first use), so a batch may mix tasks without reloading."""

    def __init__(
        self,
        tasks: dict[str, tuple[Path, dict]],
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ):
        self._tasks = tasks
        self._trust_remote_code = trust_remote_code
        self._allow_pickle = allow_pickle  # base weights only: adapters are always safetensors
        self._groups: dict[tuple[str, str], Any] = {}  # (kind group, base) -> loaded models
        self._group_by_task: dict[str, tuple[str, str]] = {}
        self._costs: dict[str, tuple[float, float] | None] = {}
        self._lock = threading.Lock()
        self._bf16 = False  # classifiers in bfloat16 (set_precision)
        # inputs per classifier forward pass; a call's inputs are sorted by length first, so
        # small passes over many inputs pad little (on a CPU 8 is fastest, on a GPU 64+)
        self.forward_batch = 32

    @classmethod
    def load(
        cls, path: str | Path, trust_remote_code: bool = False, allow_pickle: bool = False
    ) -> Cascade:
        """A run directory or a pulled folder; a hub repo id (`org/name`, no such local
        folder) is downloaded with `from_hub` (endpoint and token from HF_ENDPOINT/HF_TOKEN).
        Base weights load from safetensors only unless `allow_pickle`."""
        from distill.publish import REPO_ID

        if not Path(path).exists() and isinstance(path, str) and REPO_ID.fullmatch(path):
            return cls.from_hub(
                path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
            )
        return cls(read_documents(Path(path)), trust_remote_code, allow_pickle)

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        revision: str | None = None,
        endpoint: str | None = None,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> Cascade:
        """Download a published cascade pinned to one commit, verify every file against the
        digests in its cascade.json, and load it."""
        from distill.publish import pull

        folder = pull(
            repo_id, revision=revision, endpoint=endpoint, token=token, cache_dir=cache_dir
        )
        return cls.load(folder, trust_remote_code, allow_pickle)

    @property
    def tasks(self) -> list[str]:
        return sorted(self._tasks)

    def entry(self, task: str) -> dict:
        if task not in self._tasks:
            raise UserError(f"no task {task!r} in this cascade; tasks: {', '.join(self.tasks)}")
        return self._tasks[task][1]

    def costs_usd(self, task: str) -> tuple[float, float] | None:
        """(student, teacher) mean USD per request of the task, from its evaluation
        (report/summary.json beside its cascade.json), or None when there is none."""
        if task not in self._costs:
            self.entry(task)
            path = self._tasks[task][0] / "report" / "summary.json"
            found = None
            if path.is_file():  # else no evaluation beside it: predictions carry no cost
                try:
                    summary = json.loads(path.read_text(encoding="utf-8"))["tasks"][task]
                    found = (
                        float(summary["student"]["cost_usd_per_request"]),
                        float(summary["teacher"]["cost_usd_per_request"]),
                    )
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise UserError(f"{path}: no costs for task {task!r} ({exc!r})") from exc
            self._costs[task] = found
        return self._costs[task]

    @property
    def precision(self) -> str:
        return "bf16" if self._bf16 else "fp32"

    def set_precision(self, precision: str) -> None:
        """ "fp32" (as calibrated) or "bf16": classifiers run in bfloat16, about 1.6 times
        faster on a CPU with AVX-512 BF16 and the usual choice on a GPU. Their scores move a
        little, so `recalibrate` each task afterwards to keep its guarantee. Call before the
        first prediction."""
        if precision not in ("fp32", "bf16"):
            raise UserError(f"precision {precision!r}: choose fp32 or bf16")
        if self._groups:
            raise UserError("set the precision before the first prediction")
        if precision == "bf16":
            generative = [t for t, (_, e) in self._tasks.items() if e["kind"] != "classification"]
            if generative:
                raise UserError(
                    f"precision bf16 is for classification tasks; {', '.join(generative)} "
                    "generate (serve them in fp32)"
                )
        self._bf16 = precision == "bf16"

    def recalibrate(
        self,
        task: str,
        texts: Sequence[str],
        teacher_labels: Sequence[Any],
        ids: Sequence[Any] | None = None,
    ) -> dict:
        """Choose the task's threshold again, with its own Learn-then-Test settings (α, δ,
        p-values), on calibration rows scored by the models as loaded now (e.g. in bf16): the
        guarantee then holds for the scores that are served. A learned score's threshold is
        chosen again on the calib rows its scorer did not fit, told apart by their `ids`.
        Returns what changed."""
        from eval.calibration import LearnThenTest

        entry = self.entry(task)
        method = str(entry.get("method") or "")
        plain = method.startswith("learn-then-test/fixed-sequence/") and method.count("/") == 2
        if entry["kind"] != "classification" or not plain:
            raise UserError(
                f"task {task!r}: only a classification threshold from plain Learn-then-Test "
                f"(not {method or 'none'}) can be recalibrated"
            )
        if len(texts) != len(teacher_labels) or not len(texts):
            raise UserError(f"task {task!r}: recalibrating needs calib rows with teacher labels")
        if entry.get("score") == "learned":
            from distill.deferral import fit_share

            learned = entry.get("learned") or {}
            if ids is None or len(ids) != len(texts) or "fit_fraction" not in learned:
                raise UserError(
                    f"task {task!r}: recalibrating a learned score needs the calib rows' ids "
                    "and a cascade.json that records the scorer's fit share (re-run calibrate)"
                )
            held = ~fit_share(np.asarray(ids), learned["fit_seed"], learned["fit_fraction"])
            texts = [t for t, keep in zip(texts, held, strict=True) if keep]
            teacher_labels = [t for t, keep in zip(teacher_labels, held, strict=True) if keep]
        predictions = self.predict_mixed([(task, str(text)) for text in texts])
        scores = np.array([p.score for p in predictions])
        disagree = np.array(
            [
                p.student_answer != label
                for p, label in zip(predictions, teacher_labels, strict=True)
            ]
        )
        p_value = method.rsplit("/", 1)[1].replace("-", "_")
        ltt = LearnThenTest(entry["alpha"], entry["delta"], p_value).fit(scores, disagree)
        finite = np.isfinite(ltt.threshold_)
        accepted = scores >= ltt.threshold_
        before = entry.get("threshold")
        entry |= {
            "threshold": float(ltt.threshold_) if finite else None,
            "defer_all": not finite,
            "n_calib": len(scores),
            "calib_risk": float(np.mean(disagree & accepted)),
            "calib_deferral_rate": float(np.mean(~accepted)),
            "recalibrated": {
                "precision": "bf16" if self._bf16 else "fp32",
                "threshold_was": before,
            },
        }
        return {
            "task": task,
            "threshold_was": before,
            "threshold": entry["threshold"],
            "n_calib": len(scores),
            "calib_risk": entry["calib_risk"],
            "calib_deferral_rate": entry["calib_deferral_rate"],
        }

    def set_threshold(self, task: str, threshold: float | None) -> None:
        """Change a task's threshold in memory (the drift audit raises it)."""
        self.entry(task)["threshold"] = threshold

    def predict(
        self,
        inputs: Sequence[str],
        task: str,
        teacher: Callable[[list[str]], list[Any]] | None = None,
    ) -> list[Prediction]:
        """Answer each input with the task's student, or mark it for the teacher (and ask
        `teacher`, when given, about the deferred inputs in one call)."""
        texts = [str(text) for text in inputs]
        predictions = self.predict_mixed([(task, text) for text in texts])
        deferred = [i for i, p in enumerate(predictions) if p.source == "teacher"]
        if teacher and deferred:
            answered = teacher([texts[i] for i in deferred])
            for i, answer in zip(deferred, answered, strict=True):
                predictions[i] = replace(predictions[i], answer=answer)
        return predictions

    def predict_mixed(self, items: Sequence[tuple[str, str]]) -> list[Prediction]:
        """(task, text) pairs of any tasks, answered in shared batches: classifiers in one
        forward pass per batch on their base, generators in one generate call. Safe to call
        from several threads (one call at a time runs: the models switch adapters)."""
        with self._lock:
            return self._predict_mixed(items)

    def _predict_mixed(self, items: Sequence[tuple[str, str]]) -> list[Prediction]:
        from distill.deferral import task_scores
        from eval.calibration import per_label_thresholds

        for task, _ in items:
            self.entry(task)
        out: list[Prediction | None] = [None] * len(items)
        by_group: dict[tuple[str, str], list[int]] = {}
        for i, (task, _) in enumerate(items):
            by_group.setdefault(self._group_of(task), []).append(i)
        for (group, base), rows in by_group.items():
            tasks = [items[i][0] for i in rows]
            texts = [items[i][1] for i in rows]
            tables = self._tables(group, base, tasks, texts)
            for task in dict.fromkeys(tasks):
                folder, entry = self._tasks[task]
                mine = [j for j, t in enumerate(tasks) if t == task]
                table = {k: _take(v, mine) for k, v in tables.items()}
                scores = task_scores(folder, table, entry)
                per_label = entry.get("per_label")
                if per_label:
                    thresholds = per_label_thresholds(
                        table["student_label"], per_label["groups"], per_label["thresholds"]
                    )
                else:
                    tau = entry.get("threshold")
                    thresholds = np.full(len(mine), float("inf") if tau is None else float(tau))
                costs = self.costs_usd(task)
                for k, j in enumerate(mine):
                    accepted = bool(scores[k] >= thresholds[k])
                    answer = table["student_label"][k]
                    out[rows[j]] = Prediction(
                        answer=answer if accepted else None,
                        source="student" if accepted else "teacher",
                        score=float(scores[k]),
                        threshold=float(thresholds[k]),
                        student_answer=answer,
                        cost_usd=None
                        if costs is None
                        else costs[0] + (0 if accepted else costs[1]),
                    )
        return [p for p in out if p is not None]

    def _group_of(self, task: str) -> tuple[str, str]:
        """(kind group, base) of the models answering `task`: LoRA students of one kind on
        one base share it; a fully fine-tuned classifier has a group of its own."""
        if task not in self._group_by_task:
            folder, entry = self._tasks[task]
            group = "generative"
            if entry["kind"] == "classification":
                from training.classifier import is_full_finetune

                full = is_full_finetune(folder / entry["adapter"])
                group = f"classification:{task}" if full else "classification"
            self._group_by_task[task] = (group, entry["base_model"])
        return self._group_by_task[task]

    def _tables(self, group: str, base_ref: str, tasks: list[str], texts: list[str]) -> dict:
        """The columns a score needs, as the score stage writes them, for mixed tasks."""
        from training.bases import UnsafeWeightsError, pickle_only, resolve_model

        key = (group, base_ref)
        names = sorted(t for t in self._tasks if self._group_of(t) == key)
        if key not in self._groups:
            base = resolve_model(base_ref, log=lambda _: None)
            adapters = {t: self._tasks[t][0] / self._tasks[t][1]["adapter"] for t in names}
            pickled = None if self._allow_pickle else pickle_only(base)
            if pickled is not None:
                raise UserError(
                    f"base model {base_ref} holds only pickled weights ({pickled}), and "
                    "unpickling can run code; convert them to safetensors, or load with "
                    "allow_pickle=True (serve: student.allow_pickle in its config) if you trust it"
                )
            options = (self._trust_remote_code, self._allow_pickle)
            try:
                if group.startswith("classification"):
                    from training.multitask import MultiTaskClassifier, load_classifiers
                    from training.student import StudentRule

                    if group == "classification":
                        model, tokenizer, _ = load_classifiers(base, adapters, *options)
                    else:  # one fully fine-tuned student
                        from training.classifier import load_classifier

                        (task,) = names
                        single, tokenizer, _ = load_classifier(base, adapters[task], *options)
                        model = MultiTaskClassifier(single.encoder, {task: single.head}).eval()
                    if self._bf16:
                        import torch

                        model.to(torch.bfloat16)
                    rules = {t: StudentRule.load(adapters[t]) for t in names}
                    self._groups[key] = (model, tokenizer, rules)
                else:
                    from training.generator import read_prompt
                    from training.multitask import load_generators

                    model, tokenizer = load_generators(base, adapters, *options)
                    prompts = {t: read_prompt(adapters[t]) for t in names}
                    self._groups[key] = (model, tokenizer, prompts)
            except UnsafeWeightsError as exc:
                raise UserError(str(exc)) from None
        max_length = max(self._tasks[t][1]["max_length"] for t in tasks)
        if group.startswith("classification"):
            from training.classifier import count_tokens
            from training.multitask import predict_mixed

            model, tokenizer, rules = self._groups[key]
            probs, features = predict_mixed(
                model, tokenizer, texts, tasks, self.forward_batch, max_length
            )
            table: dict[str, Any] = {}
            for task in dict.fromkeys(tasks):  # the same columns as the score stage writes
                rows = [i for i, t in enumerate(tasks) if t == task]
                columns = rules[task].columns(np.stack([probs[i] for i in rows]), features[rows])
                for name, values in columns.items():
                    column = table.setdefault(name, [None] * len(texts))
                    for i, value in zip(rows, values, strict=True):
                        column[i] = value
            table = {name: _column_array(name, values) for name, values in table.items()}
            table["student_input_tokens"] = count_tokens(tokenizer, texts, max_length)
            table["student_output_tokens"] = np.zeros(len(texts), dtype=np.int64)
        else:
            from distill.outputs import canonical_output
            from distill.pipeline import INVALID_PENALTY
            from training.generator import generate

            model, tokenizer, prompts = self._groups[key]
            answers = generate(
                model, tokenizer, [prompts[t] for t in tasks], texts, 16, adapter_names=tasks
            )
            checked = [
                canonical_output(task_config(self._tasks[t][1]), text)
                for t, text in zip(tasks, answers.texts, strict=True)
            ]
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


def _column_array(name: str, values: list):
    """A classification column as the score stage's table holds it (probabilities stay a
    list: tasks have label sets of different sizes)."""
    if name == "student_probs":
        return values
    if name == "student_label":
        return np.array(values, dtype=object)
    if name == "catch_all_answer":
        return np.array(values, dtype=bool)
    return np.array(values, dtype=float)


def _take(values, rows: list[int]):
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[i] for i in rows]
