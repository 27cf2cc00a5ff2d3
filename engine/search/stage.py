"""What the first stage hands the ranker: the candidates, their features and the context."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.search.candidates import Candidate
from engine.search.context import Context
from engine.search.response import Mode


@dataclass
class Stage:
    """The first stage's result for one request (training reads it too)."""

    index_version: str
    candidates: list[Candidate]
    x: np.ndarray  # (len(candidates), len(names)) features
    names: tuple[str, ...]
    context: Context
    timings_ms: dict[str, float]
    vectors: np.ndarray | None = None  # (len(candidates), dim) unit vectors (diversity)
    similar: bool = False

    @property
    def mode(self) -> Mode:
        return "similar" if self.similar else self.context.mode
