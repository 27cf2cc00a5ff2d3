"""Two sources of the candidates stage, beside the ANN index: BM25 over the version and its
delta, and the version's windows (chunks) merged into the index's hits by item (MaxP)."""

from __future__ import annotations

from operator import itemgetter

import numpy as np

from engine.core.config import Settings
from engine.index.corpus import Corpus

# (id, score) → score: best first is sorted(..., key=by_score, reverse=True), which keeps
# ties in their order as a sort on the negated score does, without a call per pair.
by_score = itemgetter(1)


def with_windows(
    pairs: list[tuple[str, float]],
    hits: list[tuple[int, float]],
    ids: list[str],
    exclude: set[str],
    stale: frozenset[str],
) -> list[tuple[str, float]]:
    """The index's hits merged with its chunks' (item row, score), each item at its best
    (MaxP). Chunks are the version's in every backend: an item rewritten since the build
    (stale) is the delta's, chunks and all."""
    best = dict(pairs)
    for row, score in hits:
        item_id = ids[row]
        if item_id in exclude or item_id in stale:
            continue
        if score > best.get(item_id, -np.inf):
            best[item_id] = score
    return list(best.items())


def lexical_hits(
    corpus: Corpus,
    q: str,
    want: int,
    allowed: np.ndarray | None,
    stale: frozenset[str],
    exclude: set[str],
    category: str | None,
    settings: Settings,
    typos: bool = True,
) -> dict[str, tuple[int, float]]:
    """BM25 hits of the index and the delta: id → (rank, score), best first; rows of the
    index that are stale (the delta holds the item) or excluded are skipped. typos: correct
    misspelt words, over both vocabularies (engine.index.typos)."""
    artifact, delta = corpus.artifact, corpus.delta
    found: list[tuple[str, float]] = []
    beside = corpus.delta_lexical()
    if artifact.lexical is not None and (allowed is None or allowed.size):
        ids = artifact.ids
        k = want + len(exclude) + min(len(stale), want)
        while True:
            rows, scores = artifact.lexical.search(
                q, k, allowed, typo_tolerance=typos, others=beside
            )
            found = [
                (i, sc)
                for r, sc in zip(rows.tolist(), scores.tolist(), strict=True)
                if (i := ids[r]) not in exclude and i not in stale
            ]
            if len(found) >= want or rows.size < k:  # enough, or every match was read
                break
            k *= 4
        del found[want:]  # the best `want` of the index, as if the skipped rows were not there
    if delta is not None:
        hits = delta.lexical_search(q, want, category, typo_tolerance=typos, base=artifact.lexical)
        found += [(i, sc) for i, sc in hits if i not in exclude]
    ranked = sorted(found, key=by_score, reverse=True)  # stable: ties keep their order
    return {i: (rank, sc) for rank, (i, sc) in enumerate(ranked[: settings.lexical_candidates])}
