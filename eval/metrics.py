"""Task metrics on label arrays; references may hold None (unknown), which are left out."""

from __future__ import annotations

import numpy as np


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float | None:
    """Share of predictions equal to the reference, over rows whose reference is known."""
    predictions = np.asarray(predictions, dtype=object)
    references = np.asarray(references, dtype=object)
    known = np.array([r is not None for r in references], dtype=bool)
    if not known.any():
        return None
    return float(np.mean(predictions[known] == references[known]))


def _known(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions, dtype=object)
    references = np.asarray(references, dtype=object)
    if predictions.shape != references.shape:
        raise ValueError("predictions and references must have the same length")
    known = np.array([r is not None for r in references], dtype=bool)
    return predictions[known], references[known]


def macro_f1(predictions: np.ndarray, references: np.ndarray) -> float | None:
    """Mean over the reference labels of each label's F1 (unknown references left out)."""
    predictions, references = _known(predictions, references)
    if len(references) == 0:
        return None
    scores = []
    for label in sorted(set(references.tolist()), key=str):
        tp = int(np.sum((predictions == label) & (references == label)))
        fp = int(np.sum((predictions == label) & (references != label)))
        fn = int(np.sum((predictions != label) & (references == label)))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def normalize_text(text: str) -> str:
    """Lower case, no punctuation except inside words, single spaces (SQuAD-style)."""
    import re
    import string

    text = "".join(ch for ch in str(text).lower() if ch not in set(string.punctuation))
    return re.sub(r"\s+", " ", re.sub(r"\b(a|an|the)\b", " ", text)).strip()


def exact_match(predictions: np.ndarray, references: np.ndarray) -> float | None:
    """Share of predictions whose normalised text equals the reference's."""
    predictions, references = _known(predictions, references)
    if len(references) == 0:
        return None
    same = [
        p is not None and normalize_text(p) == normalize_text(r)
        for p, r in zip(predictions, references, strict=True)
    ]
    return float(np.mean(same))


def token_f1(predictions: np.ndarray, references: np.ndarray) -> float | None:
    """Mean token-overlap F1 of normalised texts (SQuAD's F1)."""
    from collections import Counter

    predictions, references = _known(predictions, references)
    if len(references) == 0:
        return None
    scores = []
    for p, r in zip(predictions, references, strict=True):
        pred, ref = normalize_text(p or "").split(), normalize_text(r).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref:
            scores.append(float(pred == ref))
        elif common == 0:
            scores.append(0.0)
        else:
            precision, recall = common / len(pred), common / len(ref)
            scores.append(2 * precision * recall / (precision + recall))
    return float(np.mean(scores))
