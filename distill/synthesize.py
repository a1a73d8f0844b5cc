"""Synthetic inputs: the teacher writes new inputs for a classification task from its label
descriptions and a few seed examples, to fill thin labels or to start from nothing.

For each label the teacher is asked for new, varied inputs with that label (the instruction,
the label's description and up to `seeds` examples: the task's own examples and rows of the
data whose gold or recorded label is that label). Lines are cleaned of numbering and quotes,
then de-duplicated against the existing inputs and each other: exactly (case and spacing
ignored) and nearly (Jaccard similarity of character 5-gram sets >= `near`). Each kept row is
marked `"synthetic": true` with the label it was written for (`synthetic_label`), written to a
JSONL file (atomically) that can be appended to the data; the teacher then labels it like any
other input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from distill.config import RunConfig, TaskConfig
from distill.errors import UserError

NUMBERING = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, k: int = 5) -> set[str]:
    text = normalise(text)
    return {text[i : i + k] for i in range(max(1, len(text) - k + 1))}


class Deduplicator:
    """Exact and near-duplicate detection against everything seen so far. Near duplicates are
    found through an inverted index of 5-grams, so each check looks only at texts that share
    at least one 5-gram."""

    def __init__(self, near: float = 0.7) -> None:
        self.near = near
        self.exact: set[str] = set()
        self.grams: list[set[str]] = []
        self.index: dict[str, list[int]] = {}

    def add(self, text: str) -> None:
        self.exact.add(normalise(text))
        grams = shingles(text)
        self.grams.append(grams)
        for gram in grams:
            self.index.setdefault(gram, []).append(len(self.grams) - 1)

    def duplicate_of(self, text: str) -> str | None:
        """'exact', 'near' or None."""
        if normalise(text) in self.exact:
            return "exact"
        grams = shingles(text)
        counts: dict[int, int] = {}
        for gram in grams:
            for i in self.index.get(gram, ()):
                counts[i] = counts.get(i, 0) + 1
        for i, shared in counts.items():
            if shared / (len(grams) + len(self.grams[i]) - shared) >= self.near:
                return "near"
        return None


def clean_lines(reply: str) -> list[str]:
    lines = []
    for line in reply.splitlines():
        line = NUMBERING.sub("", line).strip().strip('"').strip("'").strip()
        if len(line) >= 3 and not line.lower().startswith(("here are", "sure", "examples")):
            lines.append(line)
    return lines


def prompt(task: TaskConfig, label: str, description: str, seeds: list[str], n: int) -> list:
    shown = "\n".join(f"- {seed}" for seed in seeds) or "(none yet)"
    return [
        {"role": "system", "content": "You write realistic example inputs for a text classifier."},
        {
            "role": "user",
            "content": (
                f"The classifier's task: {task.instruction.strip()}\n\n"
                f"Label: {label}" + (f" ({description})" if description else "") + "\n"
                f"Inputs that have this label:\n{shown}\n\n"
                f"Write {n} new inputs that have this label, as real users would write them: "
                "varied in wording, length and tone, none copying the ones above. One per line, no "
                "numbering, no quotes, nothing else."
            ),
        },
    ]


def synthesize(
    config: RunConfig,
    teacher,
    task: TaskConfig,
    per_label: int,
    existing: Iterable[tuple[str, str | None]],
    seeds: int = 5,
    near: float = 0.7,
    max_rounds: int = 4,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """New rows for every label (up to `per_label` each) and counts of what was dropped.
    `existing` gives (text, label or None) of the data's rows."""
    if task.kind != "classification":
        raise UserError(f"task {task.name!r}: synthetic inputs are for classification tasks")
    if not hasattr(teacher, "complete"):
        raise UserError(
            f"teacher kind {config.teacher.kind!r} cannot write inputs; use an `openai` or "
            "`hf` teacher"
        )
    dedupe = Deduplicator(near)
    by_label: dict[str, list[str]] = {name: [] for name in task.label_names}
    for example in task.examples:
        by_label.setdefault(example.label, []).append(example.text)
    for text, label in existing:
        dedupe.add(text)
        if label in by_label and len(by_label[label]) < seeds:
            by_label[label].append(text)
    rows: list[dict[str, Any]] = []
    dropped = {"exact": 0, "near": 0}
    descriptions = {spec.name: spec.description or "" for spec in task.labels}
    for label in task.label_names:
        kept: list[str] = []
        for _ in range(max_rounds):
            wanted = per_label - len(kept)
            if wanted <= 0:
                break
            messages = prompt(
                task, label, descriptions[label], by_label[label][:seeds], min(wanted + 2, 50)
            )
            try:
                reply = teacher.complete(messages, max_tokens=40 * (wanted + 2), temperature=0.9)
            except Exception as exc:
                raise UserError(f"the teacher could not write inputs for {label!r}: {exc}") from exc
            for line in clean_lines(reply):
                if len(kept) >= per_label:
                    break
                kind = dedupe.duplicate_of(line)
                if kind:
                    dropped[kind] += 1
                    continue
                dedupe.add(line)
                kept.append(line)
        for text in kept:
            digest = hashlib.sha256(f"{task.name}:{label}:{text}".encode()).hexdigest()[:12]
            rows.append(
                {
                    config.data.id_field or "id": f"syn-{label}-{digest}",
                    config.data.text_field: text,
                    "synthetic": True,
                    "synthetic_label": label,
                    "synthetic_task": task.name,
                }
            )
        log(f"synthesize {task.name}/{label}: {len(kept)} new inputs")
    return rows, {"written": len(rows), "dropped_duplicates": dropped}


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
