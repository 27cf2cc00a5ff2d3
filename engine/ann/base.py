"""The interface every ANN backend implements (FAISS now; Milvus when a catalog outgrows RAM)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class AnnIndex(ABC):
    """Vectors addressed by row number 0..n-1; inner product over unit vectors (cosine)."""

    backend: str = ""

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append (n, dim) float32 unit vectors; they get the next row numbers."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, *, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: (scores, rows), each (n_queries, k); missing slots have row -1.

        allowed_rows: sorted int64 row numbers; when given, only those rows can be returned.
        """

    @abstractmethod
    def save(self, folder: Path) -> dict[str, Any]:
        """Write the index files into folder; return the manifest's "index" section."""

    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    @abstractmethod
    def description(self) -> dict[str, Any]:
        """Backend, type, factory string and parameters, as recorded in manifest.json."""
