"""BM25 over item text (bm25s, English stemming): finds exact names and rare terms that
embeddings miss. Built with each index version and saved in its folder, row-aligned.

Typo tolerance (engine.index.typos, on unless a search turns it off): a query word whose stem
no item holds is read as the nearest word that one does ("kyotto" as "kyoto").
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.core.errors import InvalidInput
from engine.index.typos import TypoIndex, typos_allowed

log = logging.getLogger(__name__)

FOLDER = "lexical"
# bm25s.tokenize's defaults: scikit-learn's token pattern, lowercased, English stopwords.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
# What a corrected word's BM25 score counts for, against an exact one's 1. Measured on SciFact's
# test claims with bench/typo_tolerance.py's typos, BM25 NDCG@10: 0.677 at 1, 0.669 at 0.8,
# 0.658 at 0.5 (0.610 uncorrected), clean claims within 0.002 of no correction at each.
TYPO_WEIGHT = 1.0
# Corrections kept per index (word → its fix): a look-up measures hundreds of words (85 µs a
# word on SciFact), and the same unknown words come back query after query. Past this many,
# the memory starts over.
FIXES_KEPT = 10_000
_SERIALS = itertools.count()  # tells indexes apart in a memory's keys (ids can be reused)
_UNSET = object()


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

    def __init__(self, retriever: object, size: int, typos: TypoIndex | None = None) -> None:
        self.retriever = retriever
        self.size = size
        self.typos = typos  # None: this index corrects no typo (a version saved before them)
        self.stemmer = _stemmer()
        self._stopwords = frozenset(_bm25s().stopwords.STOPWORDS_EN)
        scores = retriever.scores  # type: ignore[attr-defined]
        self._data: np.ndarray = scores["data"]  # (nnz,) float32 term scores
        self._indices: np.ndarray = scores["indices"]  # (nnz,) rows, grouped by term
        self._indptr: np.ndarray = scores["indptr"]  # (n_terms + 1,) offsets into both
        self._vocab: dict[str, int] = retriever.vocab_dict  # type: ignore[attr-defined]
        self._stems: list[str] | None = None  # term id → stem, made at the first typo
        self.serial = next(_SERIALS)
        # (word, the serials of the indexes searched beside) → the stem it is read as, or None
        self._fixes: dict[tuple[object, ...], str | None] = {}
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
        words = _surface_words(texts, retriever.vocab_dict)
        return cls(retriever, len(texts), TypoIndex.build(words))

    @classmethod
    def load(cls, folder: Path, size: int) -> LexicalIndex | None:
        """The saved index, or None for a version built before lexical search existed.

        A version saved before typo tolerance loads without it (logged): correcting needs the
        items' words, which only its build read; the next `recsearch build` has them.
        """
        bm25s = _bm25s()

        path = folder / FOLDER
        if not path.is_dir():
            return None
        typos = TypoIndex.load(folder)
        if typos is None:
            log.warning(
                "index %s was built before typo tolerance: its searches correct no typo "
                "until the next `recsearch build`",
                folder.name,
            )
        return cls(bm25s.BM25.load(str(path), mmap=False), size, typos)

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder / FOLDER))  # type: ignore[attr-defined]
        if self.typos is not None:
            self.typos.save(folder)

    def tokens(self, text: str) -> list[str]:
        """The query's stemmed terms, repeats kept, as bm25s.tokenize makes them."""
        words = self._words(text)
        return list(self.stemmer.stemWords(words)) if words else []

    def query_terms(
        self, query: str, typo_tolerance: bool = True, others: Sequence[LexicalIndex] = ()
    ) -> list[str]:
        """The stemmed terms a search for query looks up, typos corrected; repeats kept.

        A term no item holds stays as typed (it finds nothing). others: see search.
        """
        return [stem for stem, _ in self._query(query, typo_tolerance, others)]

    def search(
        self,
        query: str,
        k: int,
        allowed_rows: np.ndarray | None = None,
        *,
        typo_tolerance: bool = True,
        others: Sequence[LexicalIndex] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the top-k rows with a positive BM25 score, best first.

        Equal scores come in row order. allowed_rows: int64 rows to keep (a filter).
        typo_tolerance: read a word of 5 letters or more that no item holds as the nearest one
        that does (engine.index.typos). others: indexes searched beside this one for the same
        query (the version's beside the delta's): a word any of them holds is no typo, and a
        typo is corrected over all their words, so that each looks up the same terms.
        """
        terms = [
            (term, TYPO_WEIGHT if corrected else 1.0)
            for stem, corrected in self._query(query, typo_tolerance, others)
            if (term := self._vocab.get(stem)) is not None
        ]
        if not terms or self.size == 0 or k <= 0:
            return _EMPTY
        if len(terms) == 1:
            ((term, weight),) = terms
            start, end = self._indptr[term], self._indptr[term + 1]
            rows = self._indices[start:end].astype(np.int64)
            scores = self._data[start:end] * np.float32(weight)
        else:
            total = np.zeros(self.size, dtype=self._data.dtype)
            for term, weight in terms:  # repeated terms count again, as in bm25s
                start, end = self._indptr[term], self._indptr[term + 1]
                scores = self._data[start:end]
                total[self._indices[start:end]] += scores if weight == 1.0 else scores * weight
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

    def _words(self, text: str) -> list[str]:
        return [w for w in _TOKEN.findall(text.lower()) if w not in self._stopwords]

    def _query(
        self, query: str, typo_tolerance: bool, others: Sequence[LexicalIndex]
    ) -> list[tuple[str, bool]]:
        """(stem, whether it corrects a typo) for each query word, repeats kept."""
        words = self._words(query)
        if not words:
            return []
        stems = self.stemmer.stemWords(words)
        if not typo_tolerance:
            return [(stem, False) for stem in stems]
        indexes = [self, *others]
        fixes: dict[str, str | None] = {}  # a word typed twice is looked up once
        out: list[tuple[str, bool]] = []
        for word, stem in zip(words, stems, strict=True):
            if typos_allowed(word) and not any(stem in i._vocab for i in indexes):
                if word not in fixes:
                    fixes[word] = self._correction(word, others)
                fixed = fixes[word]
                if fixed is not None:
                    out.append((fixed, True))
                    continue
            out.append((stem, False))
        return out

    def _correction(self, word: str, others: Sequence[LexicalIndex]) -> str | None:
        """_correct over this index and others, remembered: every index is immutable, so one
        word searched beside the same others is always corrected the same way."""
        key = (word, *[other.serial for other in others])
        fixed = self._fixes.get(key, _UNSET)
        if fixed is _UNSET:
            fixed = _correct(word, [self, *others])
            if len(self._fixes) >= FIXES_KEPT:
                self._fixes.clear()
            self._fixes[key] = fixed
        return fixed  # type: ignore[return-value]

    def _df(self, stem: str) -> int:
        """How many rows hold the stem."""
        term = self._vocab.get(stem)
        return 0 if term is None else int(self._indptr[term + 1] - self._indptr[term])

    def _stem(self, term: int) -> str:
        if self._stems is None:
            stems = [""] * len(self._vocab)
            for stem, at in self._vocab.items():
                stems[at] = stem
            self._stems = stems
        return self._stems[term]


def _correct(word: str, indexes: Sequence[LexicalIndex]) -> str | None:
    """The stem of the indexes' word nearest to word: fewest typos (a first-letter typo
    counting two), then held by the most rows, then first alphabetically; None if none is
    within reach. Words one typo away are looked for first: most typos are one edit, and the
    two-edit look-up measures several times as many words."""
    for within in range(1, typos_allowed(word) + 1):
        found: dict[str, tuple[int, str]] = {}  # stem → (typos, word)
        for index in indexes:
            if index.typos is None:
                continue
            for candidate, term, count in index.typos.matches(word, within):
                stem = index._stem(term)
                found[stem] = min(found.get(stem, (count, candidate)), (count, candidate))
        if found:
            best = min(
                found.items(),
                key=lambda f: (f[1][0], -sum(i._df(f[0]) for i in indexes), f[1][1]),
            )
            return best[0]
    return None


def _surface_words(texts: Sequence[str], vocab: dict[str, int]) -> dict[str, int]:
    """Each word of the texts (as typed, lowercased) that a typo may be corrected to → the id
    of its stem in the BM25 vocabulary."""
    seen: set[str] = set()
    for text in texts:
        seen.update(_TOKEN.findall(text.lower()))
    stopwords = frozenset(_bm25s().stopwords.STOPWORDS_EN)
    words = [w for w in seen if w.isalpha() and w not in stopwords]
    stems = _stemmer().stemWords(words) if words else []
    return {w: vocab[s] for w, s in zip(words, stems, strict=True) if s in vocab}


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
