"""ANN backends behind one interface, picked by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.ann.base import AnnIndex
from engine.config import Settings
from engine.errors import ConfigError

BACKENDS = ("faiss",)


def create_index(backend: str, dim: int, n_items: int, settings: Settings) -> AnnIndex:
    """A new, empty index of the backend, sized for a catalog of n_items."""
    if backend == "faiss":
        from engine.ann.faiss import FaissIndex, choose_factory

        return FaissIndex.create(dim, choose_factory(settings, n_items), settings)
    raise ConfigError(f"unknown ANN backend {backend!r}; known: {', '.join(BACKENDS)}")


def load_index(folder: Path, description: dict[str, Any]) -> AnnIndex:
    """Open the index a manifest's "index" section describes."""
    backend = description.get("backend")
    if backend == "faiss":
        from engine.ann.faiss import FaissIndex

        return FaissIndex.load(folder, description)
    raise ConfigError(f"{folder}: unknown ANN backend {backend!r} in manifest.json")


__all__ = ["AnnIndex", "create_index", "load_index"]
