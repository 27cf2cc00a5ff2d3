"""Typo tolerance in the lexical stage (engine.index.typos, engine.index.lexical): Meilisearch's
rules on a small index, the look-up against a brute-force oracle, a save/load round trip, the
delta beside the version, and the sample catalog through the engine."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.index import lexical
from engine.index.delta import DeltaSnapshot
from engine.index.lexical import LexicalIndex
from engine.index.typos import FOLDER, TypoIndex, typos, typos_allowed
from engine.runtime import Runtime
from engine.search.request import SearchRequest

TEXTS = [
    "Kyoto temples and gardens",  # 0
    "Paris museums and cafes",  # 1
    "Paris by night, the Seine",  # 2
    "Parks of Rome",  # 3
    "International airport hotels",  # 4
    "Maafushi island guesthouses",  # 5
    "Route 66000 road trip",  # 6
]


@pytest.fixture(scope="module")
def index() -> LexicalIndex:
    return LexicalIndex.build(TEXTS)


def rows(index: LexicalIndex, query: str, **kwargs: bool) -> list[int]:
    return index.search(query, 10, **kwargs)[0].tolist()


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("rime", ["rime"]),  # 4 letters: no typo ("rome")
        ("prks", ["prks"]),  # 4 letters: no typo ("parks")
        ("kyotto", ["kyoto"]),  # 6 letters, one insertion
        ("kyoot", ["kyoto"]),  # 5 letters, two neighbours swapped: one typo
        ("kiyotto", ["kiyotto"]),  # 7 letters, two typos: too many
        ("gyoto", ["gyoto"]),  # a typo on the first letter counts as two
        ("mafushi", ["maafushi"]),
        ("intrnatonal", ["internat"]),  # 11 letters, two deletions
        ("intrnatonl", ["intrnatonl"]),  # 10 letters, three
        ("nternational", ["internat"]),  # the first letter deleted: two typos
        ("xnternatonal", ["xnternaton"]),  # the first letter and another: three
        ("66001", ["66001"]),  # numbers take no typo
    ],
)
def test_meilisearch_rules(index: LexicalIndex, query: str, terms: list[str]) -> None:
    assert index.query_terms(query) == terms
    assert index.query_terms(query, typo_tolerance=False) == index.tokens(query)


def test_the_nearest_word_held_by_the_most_rows_wins(index: LexicalIndex) -> None:
    # "parus" is one typo from both "paris" (2 rows) and "parks" (1 row).
    assert index.query_terms("parus") == ["pari"]
    assert rows(index, "parus") == rows(index, "paris") == [1, 2]
    # Fewer typos come before more rows: "pariss" is one typo from "paris" only.
    assert index.query_terms("parkss") == ["park"]


def test_off_finds_only_what_was_typed(index: LexicalIndex) -> None:
    assert rows(index, "kyotto") == [0]
    assert rows(index, "kyotto", typo_tolerance=False) == []
    assert rows(index, "mafushi island") == [5]
    assert rows(index, "mafushi island", typo_tolerance=False) == [5]  # "island" alone


def test_known_words_are_never_corrected(index: LexicalIndex) -> None:
    words = sorted({w for text in TEXTS for w in text.lower().replace(",", "").split()})
    query = " ".join(words)
    assert index.query_terms(query) == index.tokens(query)
    for on, off in zip(
        index.search(query, 10), index.search(query, 10, typo_tolerance=False), strict=True
    ):
        assert np.array_equal(on, off)  # bit-identical scores


def test_a_save_and_load_round_trip(index: LexicalIndex, tmp_path: Path) -> None:
    index.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path, len(TEXTS))
    assert loaded is not None and loaded.typos is not None
    assert loaded.typos.words == index.typos.words  # type: ignore[union-attr]
    for query in ("kyotto", "intrnatonal airprt", "parus", "rime"):
        assert loaded.query_terms(query) == index.query_terms(query)
        for got, want in zip(loaded.search(query, 10), index.search(query, 10), strict=True):
            assert np.array_equal(got, want)


def test_a_version_saved_before_typos_loads_without_them(
    index: LexicalIndex, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index.save(tmp_path)
    shutil.rmtree(tmp_path / FOLDER)
    with caplog.at_level(logging.WARNING, logger="engine.index.lexical"):
        loaded = LexicalIndex.load(tmp_path, len(TEXTS))
    assert loaded is not None and loaded.typos is None
    assert "built before typo tolerance" in caplog.text
    assert loaded.query_terms("kyotto") == ["kyotto"]
    assert rows(loaded, "kyotto") == [] and rows(loaded, "kyoto") == [0]


def test_the_delta_corrects_over_both_vocabularies(index: LexicalIndex) -> None:
    texts = ["Parks of Kyoto", "Thulusdhoo surf camp"]
    delta = DeltaSnapshot(
        "v1",
        datetime.now(UTC),
        ids=["kyoto-parks", "thulusdhoo"],
        categories=[None, None],
        texts=texts,
        vectors=np.zeros((2, 4), np.float32),
        lexical=LexicalIndex.build_if_any(texts),
    )
    # Alone, its few words would read "paris" (which the version holds) as "parks".
    assert delta.lexical_search("paris", 10, None)[0][0] == "kyoto-parks"
    assert delta.lexical_search("paris", 10, None, base=index) == []
    assert delta.lexical_search("paris", 10, None, base=index, typo_tolerance=False) == []
    # A word only the delta holds is no typo for the version either.
    assert index.query_terms("thulusdhoo", others=[delta.lexical]) == ["thulusdhoo"]  # type: ignore[list-item]
    hits = delta.lexical_search("thulusdho", 10, None, base=index)
    assert [i for i, _ in hits] == ["thulusdhoo"]


def test_corrections_are_remembered_beside_the_same_indexes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = LexicalIndex.build(TEXTS)  # a memory of its own
    looked_up: list[str] = []
    correct = lexical._correct

    def counted(word: str, indexes: list[LexicalIndex]) -> str | None:
        looked_up.append(word)
        return correct(word, indexes)

    monkeypatch.setattr(lexical, "_correct", counted)
    assert index.query_terms("kyotto") == ["kyoto"]
    assert index.query_terms("kyotto gardns") == ["kyoto", "garden"]
    assert looked_up == ["kyotto", "gardns"]  # "kyotto" once
    # Beside another index the words differ, so the look-up is made again.
    other = LexicalIndex.build_if_any(["Kyotto lantern festival"])
    assert other is not None
    assert index.query_terms("gardns", others=[other]) == ["garden"]
    assert looked_up == ["kyotto", "gardns", "gardns"]
    # The memory is bounded: past FIXES_KEPT it starts over.
    monkeypatch.setattr(lexical, "FIXES_KEPT", 2)
    index.query_terms("muzeums intrnatonal")
    assert len(index._fixes) <= 2


# Few letters, so that near words are common; words of 4 to 11 letters.
WORD = st.text(alphabet="abcde", min_size=4, max_size=11)


@given(vocabulary=st.sets(WORD, min_size=1, max_size=60), query=WORD)
def test_matches_are_every_word_within_reach(vocabulary: set[str], query: str) -> None:
    """Against a brute-force oracle: the symmetric-delete look-up misses no word and adds
    none, whatever the prefix cut (7 letters) leaves out."""
    typo_index = TypoIndex.build({w: i for i, w in enumerate(sorted(vocabulary))})
    for limit in range(typos_allowed(query) + 1):
        want = {w for w in vocabulary if typos(query, w, limit) <= limit}
        got = typo_index.matches(query, limit)
        assert {w for w, _, _ in got} == (want if limit else set())
        assert all(count == typos(query, w, limit) for w, _, count in got)


def test_typo_counts() -> None:
    assert [typos_allowed(w) for w in ("rome", "paris", "santorini", "2024x", "12345")] == [
        0,
        1,
        2,
        0,
        0,
    ]
    assert typos("kyotto", "kyoto", 1) == 1
    assert typos("kyoot", "kyoto", 1) == 1  # a swap is one edit
    assert typos("gyoto", "kyoto", 2) == 2  # the first letter counts two
    assert typos("kyoto", "osaka", 2) == 3  # over the limit: limit + 1


def search(runtime: Runtime, q: str, k: int = 3) -> list[str]:
    with runtime.session() as session:
        response = runtime.searcher.search(session, SearchRequest(q=q, k=k))
    return [r.id for r in response.results]


def test_typos_find_the_sample_catalog_places(built: Runtime) -> None:
    assert "kyoto-japan" in search(built, "kyotto")
    assert search(built, "mafushi")[0] == "maafushi-maldives"
