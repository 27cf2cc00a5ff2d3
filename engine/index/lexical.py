"""BM25 over item text (bm25s, English stemming): finds exact names and rare terms that
embeddings miss. Built with each index version and saved in its folder, row-aligned."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.core.errors import InvalidInput

log = logging.getLogger(__name__)

FOLDER = "lexical"
# bm25s.tokenize's defaults: scikit-learn's token pattern, lowercased, English stopwords.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


def _bm25s():  # type: ignore[no-untyped-def]
    import bm25s

    # bm25s sets its own logger to DEBUG at import, which floods a CLI's log; keep warnings.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer("english")


class LexicalIndex:
    """BM25 scores for queries over rows 0..n-1 (the same rows as the ANN index).

    bm25s builds and stores the index: a (terms × rows) sparse matrix of precomputed BM25
    term scores. Queries are scored here on that matrix, touching only the rows that contain
    a query term: bm25s's own retrieve sums into a dense array with np.add.at and ranks every
    row (24 ms per query at 150k texts, NOTES.md), which is most of a search at catalog scale.
    The sums are the same float32 additions in the same order, so scores are bit-identical.
    """

    def __init__(self, retriever: object, size: int) -> None:
        self.retriever = retriever
        self.size = size
        self.stemmer = _stemmer()
        self._stopwords = frozenset(_bm25s().stopwords.STOPWORDS_EN)
        scores = retriever.scores  # type: ignore[attr-defined]
        self._data: np.ndarray = scores["data"]  # (nnz,) float32 term scores
        self._indices: np.ndarray = scores["indices"]  # (nnz,) rows, grouped by term
        self._indptr: np.ndarray = scores["indptr"]  # (n_terms + 1,) offsets into both
        self._vocab: dict[str, int] = retriever.vocab_dict  # type: ignore[attr-defined]
        if getattr(retriever, "nonoccurrence_array", None) is not None:
            raise ValueError("only BM25 variants without a non-occurrence score are supported")

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        index = cls.build_if_any(texts)
        if index is None:
            raise InvalidInput("no item has a word to index: every title and text is empty")
        return index

    @classmethod
    def build_if_any(cls, texts: Sequence[str]) -> LexicalIndex | None:
        """The index, or None when no text holds an indexable term (only stopwords, say):
        bm25s cannot index an empty vocabulary."""
        bm25s = _bm25s()
        tokens = bm25s.tokenize(
            list(texts), stopwords="en", stemmer=_stemmer(), show_progress=False
        )
        if not tokens.vocab:
            return None
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

    def tokens(self, text: str) -> list[str]:
        """The query's stemmed terms, repeats kept, as bm25s.tokenize makes them."""
        words = [w for w in _TOKEN.findall(text.lower()) if w not in self._stopwords]
        return list(self.stemmer.stemWords(words)) if words else []

    def search(
        self, query: str, k: int, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the top-k rows with a positive BM25 score, best first.

        Equal scores come in row order. allowed_rows: int64 rows to keep (a filter).
        """
        terms = [self._vocab[t] for t in self.tokens(query) if t in self._vocab]
        if not terms or self.size == 0 or k <= 0:
            return _EMPTY
        if len(terms) == 1:
            start, end = self._indptr[terms[0]], self._indptr[terms[0] + 1]
            rows = self._indices[start:end].astype(np.int64)
            scores = self._data[start:end].copy()
        else:
            total = np.zeros(self.size, dtype=self._data.dtype)
            for term in terms:  # repeated terms count again, as in bm25s
                start, end = self._indptr[term], self._indptr[term + 1]
                total[self._indices[start:end]] += self._data[start:end]
            # On a bool mask: flatnonzero on the float array itself is 10x slower.
            rows = np.flatnonzero(total > 0)
            scores = total[rows]
        keep = scores > 0
        if allowed_rows is not None:
            allowed = np.zeros(self.size, dtype=bool)
            allowed[allowed_rows] = True
            keep &= allowed[rows]
        rows, scores = rows[keep], scores[keep]
        best = best_first(scores, k, ties=rows)
        return rows[best], scores[best]


def best_first(scores: np.ndarray, k: int, ties: np.ndarray | None = None) -> np.ndarray:
    """Positions of the k highest scores, best first, equal scores in the order of `ties`
    (default: position): a stable sort's first k, without sorting them all (np.partition)."""
    n = int(scores.size)
    key = np.arange(n) if ties is None else ties
    if n > k:
        kth = np.partition(scores, n - k)[n - k]  # the k-th best score
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)
        positions = np.concatenate(
            [above, tied[np.argsort(key[tied], kind="stable")][: k - above.size]]
        )
    else:
        positions = np.arange(n)
    return positions[np.lexsort((key[positions], -scores[positions]))]
