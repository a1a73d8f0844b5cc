"""What a trained classification student answers, from its probabilities and features.

The score stage and the cascade runtime both turn a student's output into the same columns:
its answer (the most probable label, or the catch-all label for an input far from every
training row, see `training.neighbours`), its probabilities, its confidence scores and the
distance to its training rows. Keeping that in one place keeps the calibrated threshold and
the served answers the same function of the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.classifier import read_meta
from training.neighbours import NEIGHBOURS_FILE, Neighbours, answer
from training.scores import SCORES


@dataclass(frozen=True)
class StudentRule:
    labels: list[str]
    catch_all: int | None  # index of the catch-all label, if the task has one
    catch_all_distance: float | None  # beyond it an input gets the catch-all label
    neighbours: Neighbours | None

    @classmethod
    def load(cls, adapter_dir: Path) -> StudentRule:
        meta = read_meta(adapter_dir)
        labels = list(meta["labels"])
        catch_all = meta.get("catch_all")
        has_neighbours = (Path(adapter_dir) / NEIGHBOURS_FILE).is_file()
        return cls(
            labels=labels,
            catch_all=labels.index(catch_all) if catch_all else None,
            catch_all_distance=meta.get("catch_all_distance"),
            neighbours=Neighbours.load(adapter_dir) if has_neighbours else None,
        )

    def columns(self, probs: np.ndarray, features: np.ndarray) -> dict[str, list]:
        """The score table's student columns for rows with these probabilities (n, labels)
        and pooled features (n, hidden)."""
        distance = (
            self.neighbours.distance(features)
            if self.neighbours is not None
            else np.zeros(len(probs))
        )
        ids = answer(probs, distance, self.catch_all, self.catch_all_distance)
        columns: dict[str, list] = {
            "student_label": [self.labels[i] for i in ids],
            "student_probs": probs.tolist(),
            "knn_distance": distance.tolist(),
            "catch_all_answer": (
                (ids == self.catch_all) if self.catch_all is not None else np.zeros(len(ids), bool)
            ).tolist(),
        }
        for name, fn in SCORES.items():
            columns[f"score_{name}"] = fn(probs).tolist()
        return columns
