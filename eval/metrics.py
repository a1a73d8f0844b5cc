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
