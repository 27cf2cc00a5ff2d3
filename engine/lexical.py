"""BM25 over item text (bm25s, English stemming): finds exact names and rare terms that
embeddings miss. Built with each index version and saved in its folder, row-aligned."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FOLDER = "lexical"


def _bm25s():  # type: ignore[no-untyped-def]
    import bm25s

    # bm25s sets its own logger to DEBUG at import, which floods a CLI's log; keep warnings.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer("english")


class LexicalIndex:
    """BM25 scores for queries over rows 0..n-1 (the same rows as the ANN index)."""

    def __init__(self, retriever: object, size: int) -> None:
        self.retriever = retriever
        self.size = size
        self.stemmer = _stemmer()

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        bm25s = _bm25s()
        tokens = bm25s.tokenize(
            list(texts), stopwords="en", stemmer=_stemmer(), show_progress=False
        )
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, len(texts))

    @classmethod
    def load(cls, folder: Path, size: int) -> LexicalIndex | None:
        """The saved index, or None for a version built before lexical search existed."""
        bm25s = _bm25s()

        path = folder / FOLDER
        if not path.is_dir():
            return None
        return cls(bm25s.BM25.load(str(path), mmap=False), size)

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder / FOLDER))  # type: ignore[attr-defined]

    def search(
        self, query: str, k: int, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the top-k rows with a positive BM25 score, best first."""
        bm25s = _bm25s()

        tokens = bm25s.tokenize(
            [query], stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False
        )
        if not tokens[0] or self.size == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        mask = None
        if allowed_rows is not None:
            mask = np.zeros(self.size, dtype=np.float32)
            mask[allowed_rows] = 1.0
        rows, scores = self.retriever.retrieve(  # type: ignore[attr-defined]
            tokens, k=min(k, self.size), show_progress=False, weight_mask=mask, n_threads=1
        )
        keep = scores[0] > 0
        return rows[0][keep].astype(np.int64), scores[0][keep]
