"""The user-context vector: query ⊕ user ⊕ session, weighted and renormalized."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def combine(parts: Sequence[tuple[float, np.ndarray | None]]) -> np.ndarray | None:
    """Σ wᵢ·vᵢ over the parts present, as a float32 unit vector; None when nothing is present.

    Each vᵢ is a unit vector, so a missing part simply drops out and the rest keep their
    relative weights (the renormalization the design asks for).
    """
    total: np.ndarray | None = None
    for weight, vector in parts:
        if vector is None or weight <= 0:
            continue
        total = weight * vector if total is None else total + weight * vector
    if total is None:
        return None
    norm = float(np.linalg.norm(total))
    if norm < 1e-9:
        return None
    return (total / norm).astype(np.float32)


def mean_direction(vectors: Sequence[np.ndarray]) -> np.ndarray | None:
    """The unit mean of some unit vectors (the session's items), or None."""
    if not vectors:
        return None
    return combine([(1.0, v) for v in vectors])
