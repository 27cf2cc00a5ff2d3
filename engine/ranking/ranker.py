"""The sigmoid ranking model R(u, q, c) = σ(w·z(φ(u, q, c)) + b), with exact explanations.

This is the design's σ(Wᵀf(c) + b + Uᵀg(u) + b' + Vᵀx(u, q, c)) with all weights in one
vector over named features; z standardizes each feature with the training set's mean and
spread. The item terms alone (weights on f(c), the rest 0) are the source article's model;
the user terms g(u) are the same for every candidate of one user, so they only calibrate the
probability, and personalization comes from the cross terms x(u, q, c).

Until a model is trained from events or judgments, hand-set prior weights serve.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.ranking.feature_names import BASE_FEATURES

# Hand-set: the query dominates; words, history, session and taste reorder within it.
PRIOR_WEIGHTS = {
    "query_sim": 8.0,
    "lexical_score": 1.0,
    "ann_rank": 0.5,
    "user_sim": 1.5,
    "session_sim": 2.0,
    "category_affinity": 0.8,
    "tag_affinity": 0.5,
    "popularity": 0.2,
    "seen_recently": -0.5,
    "covisit_score": 0.3,
}
PRIOR_BIAS = -5.0
MODEL_FILE = "model.json"


@dataclass(frozen=True)
class LinearRanker:
    names: tuple[str, ...]
    weights: np.ndarray  # (n_features,) float64, on standardized features
    bias: float
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0))
    version: str = "prior"

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.mean.size == 0:
            object.__setattr__(self, "mean", np.zeros(n))
        if self.scale.size == 0:
            object.__setattr__(self, "scale", np.ones(n))

    @classmethod
    def prior(cls) -> LinearRanker:
        weights = np.array([PRIOR_WEIGHTS.get(n, 0.0) for n in BASE_FEATURES])
        return cls(BASE_FEATURES, weights, PRIOR_BIAS)

    def aligned(self, names: Sequence[str]) -> LinearRanker:
        """The same model over another feature list: unknown features get weight 0."""
        names = tuple(names)
        if names == self.names:
            return self
        index = {n: i for i, n in enumerate(self.names)}

        def pick(values: np.ndarray, default: float) -> np.ndarray:
            return np.array([values[index[n]] if n in index else default for n in names])

        return LinearRanker(
            names,
            pick(self.weights, 0.0),
            self.bias,
            pick(self.mean, 0.0),
            pick(self.scale, 1.0),
            self.version,
        )

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n,) logits for (n, n_features) raw features."""
        return self.standardize(x) @ self.weights + self.bias

    @staticmethod
    def probability(logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))

    def explain(self, x_row: np.ndarray) -> dict[str, Any]:
        """Each feature's contribution wᵢ·zᵢ; they plus the bias sum to the logit exactly."""
        z = self.standardize(x_row)
        contributions = {
            n: float(w * v) for n, w, v in zip(self.names, self.weights, z, strict=True)
        }
        return {
            "model": self.version,
            "logit": float(self.bias + sum(contributions.values())),
            "bias": self.bias,
            "contributions": contributions,
            "features": {n: float(v) for n, v in zip(self.names, x_row, strict=True)},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic_regression",
            "features": list(self.names),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], version: str) -> LinearRanker:
        return cls(
            tuple(data["features"]),
            np.asarray(data["weights"], dtype=np.float64),
            float(data["bias"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            version,
        )

    @classmethod
    def load(cls, folder: Path, version: str) -> LinearRanker:
        return cls.from_json(json.loads((folder / MODEL_FILE).read_text()), version)


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    *,
    l2: float = 1e-3,
    sample_weight: np.ndarray | None = None,
    balance_classes: bool = False,
    max_iter: int = 200,
) -> LinearRanker:
    """Logistic regression (torch, L-BFGS) with L2 on standardized inputs; deterministic.

    balance_classes weighs positives up to the negatives' total: ranking data has a few
    positives among many candidates, and unweighted the L2 term drowns their signal (on
    SciFact it is worth +0.007 NDCG@10).
    """
    import torch

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if balance_classes and sample_weight is None and 0 < y.sum() < len(y):
        sample_weight = np.where(y > 0, (len(y) - y.sum()) / y.sum(), 1.0)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature: keep it at 0 after centring
    z = torch.tensor((x - mean) / scale, dtype=torch.float64)
    target = torch.tensor(y, dtype=torch.float64)
    weight = torch.tensor(
        sample_weight if sample_weight is not None else np.ones(len(y)), dtype=torch.float64
    )
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss(weight=weight, reduction="sum")
    total = float(weight.sum())

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(z @ w + b, target) / total + l2 * (w @ w)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return LinearRanker(
        tuple(names), w.detach().numpy().copy(), float(b.detach()[0]), mean, scale, "trained"
    )
