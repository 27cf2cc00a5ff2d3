"""The sigmoid ranking model R(u, q, c) = σ(w·φ(u, q, c) + b), with exact explanations.

This is the design's σ(Wᵀf(c) + b + Uᵀg(u) + b' + Vᵀx(u, q, c)) with all weights in one
vector over the named features. Until a model is trained from events, hand-set prior
weights serve, so the search path is already two-stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.features import FEATURES

# Hand-set: the query dominates; history, session and category taste reorder within it.
PRIOR_WEIGHTS = {
    "query_sim": 8.0,
    "user_sim": 1.5,
    "session_sim": 2.0,
    "category_affinity": 0.8,
    "tag_affinity": 0.5,
    "popularity": 0.2,
    "seen_recently": -0.5,
    "retrieval_rank": 0.5,
}
PRIOR_BIAS = -5.0


@dataclass(frozen=True)
class LinearRanker:
    names: tuple[str, ...]
    weights: np.ndarray  # (n_features,) float64
    bias: float
    version: str = "prior"

    @classmethod
    def prior(cls) -> LinearRanker:
        return cls(FEATURES, np.array([PRIOR_WEIGHTS[n] for n in FEATURES]), PRIOR_BIAS)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n,) logits for (n, n_features) features."""
        return x @ self.weights + self.bias

    @staticmethod
    def probability(logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-logits))

    def explain(self, x_row: np.ndarray) -> dict[str, Any]:
        """Each feature's contribution wᵢ·φᵢ; they plus the bias sum to the logit exactly."""
        contributions = {
            n: float(w * v) for n, w, v in zip(self.names, self.weights, x_row, strict=True)
        }
        return {
            "model": self.version,
            "logit": float(self.bias + sum(contributions.values())),
            "bias": self.bias,
            "contributions": contributions,
            "features": {n: float(v) for n, v in zip(self.names, x_row, strict=True)},
        }
