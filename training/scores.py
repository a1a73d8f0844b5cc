"""Confidence scores of a classification student, from its class probabilities.

Each takes (n, n_labels) probabilities and returns (n,) scores where higher means surer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def max_prob(probs: np.ndarray) -> np.ndarray:
    """The probability of the predicted label."""
    return np.max(probs, axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def neg_entropy(probs: np.ndarray) -> np.ndarray:
    """Minus the entropy of the predicted distribution (0 is certain)."""
    clipped = np.clip(probs, 1e-12, 1.0)
    return np.sum(probs * np.log(clipped), axis=1)


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_prob": max_prob,
    "margin": margin,
    "neg_entropy": neg_entropy,
}
