"""The `vote` teacher: several teachers answer each item; the label is their (weighted)
majority, with the agreement recorded per item."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable

from distill.config import VoteTeacherConfig
from distill.data import Record
from distill.outputs import canonical_output
from distill.teachers.base import TeacherAnswer


class VoteTeacher:
    """Asks every voter about each batch and combines: the answer with the most weight wins
    (ties: the first voter's among the tied); `probs` holds each answer's share of the weight
    and `agreement` the winner's share. With `only_agreeing`, a split vote is an error row."""

    cacheable = True

    def __init__(self, config: VoteTeacherConfig, log: Callable[[str], None] = print) -> None:
        from distill.teachers import make_teacher

        self.config = config
        self.voters = [make_teacher(voter, log=log) for voter in config.teachers]
        self.weights = config.weights or [1.0] * len(self.voters)
        self.batch_size = min(voter.batch_size for voter in self.voters)
        blob = json.dumps([[v.identity for v in self.voters], self.weights, config.only_agreeing])
        self.identity = f"vote:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
        self.budget = None

    def cache_key(self, task, record: Record) -> str:
        keys = [voter.cache_key(task, record) for voter in self.voters]
        return hashlib.sha256(json.dumps([self.identity, keys]).encode()).hexdigest()

    def label_batch(self, task, records: list[Record]) -> list[TeacherAnswer]:
        ballots = []
        for voter in self.voters:
            if hasattr(voter, "budget"):
                voter.budget = self.budget
            ballots.append(voter.label_batch(task, records))
        return [self._count(task, [b[i] for b in ballots]) for i in range(len(records))]

    def _count(self, task, answers: list[TeacherAnswer | None]) -> TeacherAnswer:
        weight: dict[str, float] = defaultdict(float)
        order: list[str] = []
        total = 0.0
        for answer, w in zip(answers, self.weights, strict=True):
            if answer is None or answer.error is not None or answer.label is None:
                continue
            label, problem = canonical_output(task, answer.label)
            if problem is not None or label is None:
                continue
            if label not in weight:
                order.append(label)
            weight[label] += w
            total += w
        tokens_in = sum(a.input_tokens for a in answers if a is not None)
        tokens_out = sum(a.output_tokens for a in answers if a is not None)
        if not weight:
            reasons = "; ".join(sorted({a.error or "invalid answer" for a in answers if a}))
            return TeacherAnswer(
                label=None,
                error=f"no_valid_vote: {reasons[:200]}",
                input_tokens=tokens_in,
                output_tokens=tokens_out,
            )
        best = max(order, key=lambda label: (weight[label], -order.index(label)))
        agreement = weight[best] / sum(self.weights)
        if self.config.only_agreeing and (len(weight) > 1 or total < sum(self.weights)):
            return TeacherAnswer(
                label=None,
                error=f"teachers_disagree: agreement {agreement:.2f}",
                agreement=agreement,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                probs={k: v / sum(self.weights) for k, v in weight.items()},
            )
        return TeacherAnswer(
            label=best,
            agreement=agreement,
            probs={k: v / sum(self.weights) for k, v in weight.items()},
            input_tokens=tokens_in,
            output_tokens=tokens_out,
        )
