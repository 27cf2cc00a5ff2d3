"""Text → unit vectors with a sentence-transformers model, loaded offline by default."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from engine.config import Settings
from engine.errors import ConfigError

log = logging.getLogger(__name__)


class Embedder:
    """Encodes items in batches and queries one at a time, with a small query cache.

    Every vector it returns is float32 and L2-normalized, so inner product is cosine.
    """

    def __init__(self, settings: Settings, *, query_cache_size: int = 1024) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start

        path = settings.model_path()
        try:
            self.model = SentenceTransformer(
                path, device=settings.device, local_files_only=settings.model_offline
            )
        except OSError as exc:
            raise ConfigError(
                f"RECSEARCH_MODEL={settings.model!r}: cannot load the model from {path!r} "
                f"({exc}). Point it at a sentence-transformers folder, or set "
                "RECSEARCH_MODEL_OFFLINE=0 to allow downloads."
            ) from exc
        self.model.eval()
        self.name = settings.model_name()
        self.batch_size = settings.embed_batch_size
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ConfigError(f"RECSEARCH_MODEL={settings.model!r} does not report its dimension")
        self.dim = int(dim)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = query_cache_size
        self._lock = threading.Lock()

    def encode(
        self,
        texts: Sequence[str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized; calls progress(n) after each batch."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            out[start : start + len(batch)] = self.model.encode(
                batch,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if progress is not None:
                progress(len(batch))
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalized; repeated queries come from an LRU cache."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
        vector = self.model.encode(
            text, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)
        vector.setflags(write=False)
        with self._lock:
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
