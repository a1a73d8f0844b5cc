"""How far an input lies from a student's training data, in the student's own feature space.

A classifier is confident only about inputs like those it learned from. After training, the
pooled features of (up to `MAX_ROWS` of) its training rows are kept beside the student
(`neighbours.safetensors`), and the distance of a new input to them, the mean cosine distance
to its `K` nearest training rows, becomes a confidence feature of the deferral score.

It also serves the catch-all label of open-set tasks ("out of scope", "other"): such a label
stands for everything the others do not cover, which no training set can sample well, so a
classifier rarely predicts it for an input unlike any it saw. With a catch-all label, an input
farther from the training rows than a distance chosen on the validation rows (the one that
makes the validation answers most accurate) gets that label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NEIGHBOURS_FILE = "neighbours.safetensors"
K = 10  # neighbours averaged in the distance
MAX_ROWS = 20_000  # training rows kept (a stratified sample of larger sets)
MIN_CATCH_ALL_VAL = 10  # validation rows of the catch-all label needed to choose a distance


@dataclass(frozen=True)
class Neighbours:
    features: torch.Tensor  # (n, hidden) unit vectors of training rows
    labels: torch.Tensor  # (n,) their label ids

    def distance(self, features: np.ndarray, k: int = K, chunk: int = 1024) -> np.ndarray:
        """(m,) mean cosine distance of each row of `features` (m, hidden) to its k nearest
        training rows."""
        index = self.features.float()
        k = min(k, len(index))
        out = np.zeros(len(features))
        for start in range(0, len(features), chunk):
            query = torch.nn.functional.normalize(
                torch.as_tensor(features[start : start + chunk], dtype=torch.float32), dim=1
            )
            similar = (query @ index.T).topk(k, dim=1).values  # (chunk, k)
            out[start : start + len(query)] = (1.0 - similar.mean(dim=1)).double().numpy()
        return out

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(
            {
                "features": self.features.to(torch.float16).contiguous(),
                "labels": self.labels.to(torch.int32).contiguous(),
            },
            str(Path(folder) / NEIGHBOURS_FILE),
            # one key: safetensors writes metadata in hash order, and the file must be
            # byte-identical from run to run (K is in labels.json as knn_k)
            metadata={"format": "pt"},
        )

    @classmethod
    def load(cls, folder: Path) -> Neighbours:
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / NEIGHBOURS_FILE))
        return cls(state["features"].float(), state["labels"].long())


def sample_rows(labels: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Indices of at most `max_rows` rows, each label keeping its share (all rows when fewer)."""
    if len(labels) <= max_rows:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        rows = np.nonzero(labels == label)[0]
        n = max(1, round(len(rows) * max_rows / len(labels)))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def build_neighbours(features: np.ndarray, labels: np.ndarray) -> Neighbours:
    unit = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    return Neighbours(unit, torch.as_tensor(labels, dtype=torch.long))


def fit_catch_all_distance(
    distance: np.ndarray, probs: np.ndarray, targets: np.ndarray, catch_all: int
) -> float | None:
    """The distance beyond which answering `catch_all` makes the validation rows most
    accurate (ties: the larger distance); None when it helps no row, or too few validation
    rows carry the catch-all label to tell."""
    if int(np.sum(targets == catch_all)) < MIN_CATCH_ALL_VAL:
        return None
    predicted = probs.argmax(axis=1)
    right = predicted == targets
    is_catch_all = targets == catch_all
    order = np.argsort(-distance, kind="stable")  # farthest first: flipped as τ falls
    # flipping a row to catch_all: +1 if it is one and was wrong, -1 if it was right otherwise
    gain = np.where(is_catch_all & ~right, 1, 0) - np.where(~is_catch_all & right, 1, 0)
    gain = np.where(predicted == catch_all, 0, gain)[order]
    total = np.cumsum(gain)
    best = int(np.argmax(total))  # the first (largest distance) of the best
    if total[best] <= 0:
        return None
    sorted_distance = distance[order]
    if best + 1 < len(sorted_distance):  # between the last flipped row and the next
        return float((sorted_distance[best] + sorted_distance[best + 1]) / 2)
    return float(sorted_distance[best] - 1e-9)


def answer(
    probs: np.ndarray, distance: np.ndarray, catch_all: int | None, threshold: float | None
) -> np.ndarray:
    """(n,) label ids: the most probable label, or the catch-all label beyond the distance."""
    predicted = probs.argmax(axis=1)
    if catch_all is None or threshold is None:
        return predicted
    return np.where(distance > threshold, catch_all, predicted)


def fit_student_neighbours(
    predict: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    train_texts: Sequence[str],
    train_targets: np.ndarray,
    val_texts: Sequence[str],
    val_targets: np.ndarray | None,
    catch_all: int | None,
    seed: int = 0,
) -> tuple[Neighbours, dict]:
    """The neighbours of a trained student (`predict(texts) -> (probs, features)`) and its
    catch-all rule for labels.json: {"catch_all_distance": τ or None, "neighbours": n}."""
    rows = sample_rows(np.asarray(train_targets), MAX_ROWS, seed)
    _, features = predict([train_texts[i] for i in rows])
    neighbours = build_neighbours(features, np.asarray(train_targets)[rows])
    threshold = None
    if catch_all is not None and val_texts and val_targets is not None:
        probs, val_features = predict(list(val_texts))
        distance = neighbours.distance(val_features)
        threshold = fit_catch_all_distance(distance, probs, np.asarray(val_targets), catch_all)
    return neighbours, {"catch_all_distance": threshold, "neighbours": len(rows), "knn_k": K}
