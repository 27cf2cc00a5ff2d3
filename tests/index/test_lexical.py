"""BM25 scoring (engine.index.lexical) against bm25s's own retrieve, the oracle: the same rows with
bit-identical scores, ties allowed (bm25s orders equal scores arbitrarily; we by row)."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from engine.catalog.items import embedding_text
from engine.index.lexical import LexicalIndex
from tests.conftest import SAMPLE_CATALOG

QUERIES = [
    "a quiet beach with turquoise water",
    "Eiffel Tower and the Louvre",
    "temples temples and gardens",  # a repeated term counts twice
    "wine",
    "the and of",  # stopwords only
    "xylospongium",  # no such term
]


def bm25s_search(
    index: LexicalIndex, query: str, k: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """What LexicalIndex.search returned before it scored on bm25s's matrix itself."""
    import bm25s

    tokens = bm25s.tokenize(
        [query], stopwords="en", stemmer=index.stemmer, show_progress=False, return_ids=False
    )
    if not tokens[0]:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    mask = None
    if allowed is not None:
        mask = np.zeros(index.size, dtype=np.float32)
        mask[allowed] = 1.0
    rows, scores = index.retriever.retrieve(  # type: ignore[attr-defined]
        tokens, k=min(k, index.size), show_progress=False, weight_mask=mask, n_threads=0
    )
    keep = scores[0] > 0
    return rows[0][keep].astype(np.int64), scores[0][keep]


def assert_same_up_to_ties(
    got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]
) -> None:
    rows, scores = got
    want_rows, want_scores = want
    assert np.array_equal(scores, want_scores)  # bit-identical, best first
    for score in np.unique(scores):
        # Equal scores: the same rows, except at the cut, where any of the tied rows may be in.
        if score > scores[-1]:
            assert set(rows[scores == score]) == set(want_rows[want_scores == score])
    order = np.lexsort((rows, -scores))
    assert np.array_equal(order, np.arange(len(rows)))  # ties by row


def test_sample_catalog_against_bm25s() -> None:
    rows = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines()]
    texts = [
        embedding_text(r["title"], r.get("text"), r.get("category"), r.get("tags", []))
        for r in rows
    ]
    index = LexicalIndex.build(texts)
    islands = np.asarray([i for i, r in enumerate(rows) if r.get("category") == "island"])
    for query in QUERIES:
        for k in (1, 10, 66, 1000):
            for allowed in (None, islands):
                got = index.search(query, k, allowed)
                assert_same_up_to_ties(got, bm25s_search(index, query, k, allowed))
    assert index.search("xylospongium", 10)[0].size == 0


# Few words, so that equal scores are common; "the" is a stopword.
WORDS = ["cell", "cells", "gene", "genes", "protein", "mouse", "tumour"]


@given(
    docs=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12), max_size=30),
    query=st.lists(st.sampled_from([*WORDS, "the"]), min_size=1, max_size=5),
    k=st.integers(1, 40),
)
def test_random_corpora_against_bm25s(docs: list[list[str]], query: list[str], k: int) -> None:
    index = LexicalIndex.build([" ".join(d) for d in [["cell"], *docs]])
    text = " ".join(query)
    assert_same_up_to_ties(index.search(text, k), bm25s_search(index, text, k, None))
