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

BATCH = 32  # conversations per batched `complete_many` call
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
    dropped = {"exact": 0, "near": 0}
    descriptions = {spec.name: spec.description or "" for spec in task.labels}
    kept: dict[str, list[str]] = {label: [] for label in task.label_names}
    for round_ in range(1, max_rounds + 1):
        short = [label for label in task.label_names if len(kept[label]) < per_label]
        if not short:
            break
        wanted = {label: per_label - len(kept[label]) for label in short}
        conversations = [
            prompt(task, label, descriptions[label], by_label[label][:seeds],
                   min(wanted[label] + 2, 50))
            for label in short
        ]  # fmt: skip
        max_tokens = 40 * (max(wanted.values()) + 2)
        log(f"synthesize {task.name}: round {round_}, asking for {sum(wanted.values())} inputs "
            f"over {len(short)} labels")  # fmt: skip
        try:
            replies = _complete(teacher, conversations, max_tokens, temperature=0.9)
        except Exception as exc:
            raise UserError(f"the teacher could not write inputs: {exc}") from exc
        for label, reply in zip(short, replies, strict=True):
            for line in clean_lines(reply):
                if len(kept[label]) >= per_label:
                    break
                kind = dedupe.duplicate_of(line)
                if kind:
                    dropped[kind] += 1
                    continue
                dedupe.add(line)
                kept[label].append(line)
    rows: list[dict[str, Any]] = []
    for label in task.label_names:
        for text in kept[label]:
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
        log(f"synthesize {task.name}/{label}: {len(kept[label])} new inputs")
    return rows, {"written": len(rows), "dropped_duplicates": dropped}


def _complete(teacher, conversations: list[list[dict]], max_tokens: int, temperature: float):
    """One reply per conversation: in batches of up to BATCH where the teacher can
    (`complete_many`), else one call each."""
    if hasattr(teacher, "complete_many"):
        replies: list[str] = []
        for start in range(0, len(conversations), BATCH):
            chunk = conversations[start : start + BATCH]
            replies += teacher.complete_many(chunk, max_tokens=max_tokens, temperature=temperature)
        return replies
    return [teacher.complete(m, max_tokens=max_tokens, temperature=temperature)
            for m in conversations]  # fmt: skip


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
