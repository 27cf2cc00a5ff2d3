"""Typo tolerance for the lexical stage: a query word that no item holds is read as the
nearest word that one does, by Meilisearch's rules.

The rules (Meilisearch's defaults, its "typo tolerance" settings and calculations pages): a
word of fewer than 5 letters takes no typo, 5 to 8 letters one, 9 or more two, and a typo on
the first letter counts as two. A typo is one Damerau-Levenshtein edit in its optimal string
alignment form (insert, delete or substitute a letter, or swap two neighbours), as rapidfuzz
counts them.

Candidates come from SymSpell's symmetric deletes (Wolf Garbe, 2012): each word of the
vocabulary is filed under the CRC-32 of what is left of its first 7 letters after deleting up
to 2 of them; a query word looks up its own deletes, and only the words filed there are
measured (rapidfuzz, in C++). symspellpy keeps that table in Python dicts filled at load time:
7.5 s and about 300 MB more per process for 160k words, the vocabulary of a 100k-item catalog
(symspellpy 6.10, on the dev machine while busy). Here it is built once with the version (5 s
for 158k words, bench/typo_tolerance.py), saved as two sorted arrays (35 MB beside BM25's 84 MB)
and memory-mapped: loading takes milliseconds, and the serving processes share one copy.
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import OSA

log = logging.getLogger(__name__)

FOLDER = "typos"
ONE_TYPO_FROM = 5  # letters in a query word for one typo
TWO_TYPOS_FROM = 9  # ... and for two
MAX_TYPOS = 2
PREFIX = 7  # SymSpell's default: deletes of a word's first 7 letters; the rest is measured
# The shortest word within reach: one typo (a deletion) from a 5-letter query word.
_SHORTEST = ONE_TYPO_FROM - 1


def typos_allowed(word: str) -> int:
    """How many typos a query word may hold: none for numbers or below 5 letters, one up to 8
    letters, two from 9."""
    if len(word) < ONE_TYPO_FROM or not word.isalpha():
        return 0
    return 1 if len(word) < TWO_TYPOS_FROM else 2


def typos(word: str, candidate: str, limit: int) -> int:
    """Typos between a query word and a vocabulary word, a first-letter typo counting as two;
    limit + 1 for any count above limit."""
    distance = int(OSA.distance(word, candidate, score_cutoff=limit))
    if word[:1] != candidate[:1]:
        distance += 1
    return min(distance, limit + 1)


class TypoIndex:
    """A version's words, filed for typo look-ups: vocabulary word → the BM25 term it counts as.

    Words are surface forms ("studies", not the stem "studi"): typos are made on what people
    type, and a stem's cut-off ending would count as typos of its own.
    """

    def __init__(
        self, words: list[str], terms: np.ndarray, keys: np.ndarray, owners: np.ndarray
    ) -> None:
        self.words = words  # sorted, all letters, each at least _SHORTEST long
        self.terms = terms  # (n_words,) int32: each word's term (stem) id in the BM25 vocabulary
        self.keys = keys  # (n_keys,) uint32, sorted: the keys of each word's deletes
        self.owners = owners  # (n_keys,) int32: the word (position) each key belongs to

    @classmethod
    def build(cls, words: Mapping[str, int]) -> TypoIndex:
        """From surface word → term id; words with a digit, or shorter than any correction
        can reach, are left out. 5 s for 158k words (bench/typo_tolerance.py)."""
        kept = sorted(w for w in words if len(w) >= _SHORTEST and w.isalpha())
        terms = np.asarray([words[w] for w in kept], dtype=np.int32)
        # A word's keys depend on its first PREFIX letters only: work them out once per prefix
        # ("interna" for international, internal, internalized, ...).
        by_prefix: dict[str, list[int]] = {}
        for position, word in enumerate(kept):
            by_prefix.setdefault(word[:PREFIX], []).append(position)
        keys: list[int] = []
        owners: list[int] = []
        for prefix, positions in by_prefix.items():
            for key in {_key(d) for d in _deletes(prefix, MAX_TYPOS)}:
                keys.extend(itertools.repeat(key, len(positions)))
                owners.extend(positions)
        sorted_keys = np.asarray(keys, dtype=np.uint32)
        order = np.argsort(sorted_keys, kind="stable")
        return cls(kept, terms, sorted_keys[order], np.asarray(owners, dtype=np.int32)[order])

    @classmethod
    def load(cls, folder: Path) -> TypoIndex | None:
        """The saved words (arrays memory-mapped), or None for a version saved without them."""
        path = folder / FOLDER
        if not path.is_dir():
            return None
        text = (path / "words.txt").read_text(encoding="utf-8")
        return cls(
            text.split("\n") if text else [],
            np.load(path / "terms.npy"),
            np.load(path / "keys.npy", mmap_mode="r"),
            np.load(path / "owners.npy", mmap_mode="r"),
        )

    def save(self, folder: Path) -> None:
        path = folder / FOLDER
        path.mkdir(parents=True, exist_ok=True)
        (path / "words.txt").write_text("\n".join(self.words), encoding="utf-8")
        for name, array in (("terms", self.terms), ("keys", self.keys), ("owners", self.owners)):
            np.save(path / f"{name}.npy", np.ascontiguousarray(array))

    def matches(self, word: str, limit: int) -> list[tuple[str, int, int]]:
        """(vocabulary word, its term id, typos) for each word within `limit` typos of word.

        SymSpell's look-up: every word within `limit` edits shares a delete of at most
        `limit` letters with word, so only the words filed under word's deletes are measured.
        """
        if limit <= 0 or not self.words:
            return []
        keys = np.fromiter(map(_key, _deletes(word, limit)), dtype=np.uint32)
        starts = np.searchsorted(self.keys, keys, side="left").tolist()
        ends = np.searchsorted(self.keys, keys, side="right").tolist()
        near: set[int] = set()
        for start, end in zip(starts, ends, strict=True):
            if end > start:
                near.update(self.owners[start:end].tolist())
        if not near:
            return []
        words, size = self.words, len(word)
        positions = [p for p in near if abs(len(words[p]) - size) <= limit]
        found = process.extract(
            word,
            [words[p] for p in positions],
            scorer=OSA.distance,
            score_cutoff=limit,
            limit=None,
        )
        out = []
        for candidate, distance, at in found:
            count = distance + (candidate[:1] != word[:1])  # a first-letter typo counts two
            if count <= limit:
                out.append((candidate, int(self.terms[positions[at]]), int(count)))
        return out


def _deletes(word: str, most: int) -> set[str]:
    """What is left of word's first PREFIX letters after deleting 0 to `most` (at most 2) of
    them."""
    prefix = word[:PREFIX]
    found = {prefix}
    if most >= 1:
        found.update(prefix[:i] + prefix[i + 1 :] for i in range(len(prefix)))
    if most >= 2:
        found.update(
            prefix[:i] + prefix[i + 1 : j] + prefix[j + 1 :]
            for i, j in itertools.combinations(range(len(prefix)), 2)
        )
    return found


def _key(text: str) -> int:
    """A delete's key: CRC-32 of its UTF-8, the same in every process (unlike hash()).
    Two deletes may share one; that only adds a candidate, which is then measured."""
    return zlib.crc32(text.encode("utf-8"))
