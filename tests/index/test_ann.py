"""FAISS indexes against an exact numpy oracle, with filters, persistence and the row map."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.config import Settings
from engine.index.ann import create_index, load_index
from engine.index.ann.faiss import choose_factory
from indexer.recall import measure_recall


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Points around 50 centres: shaped like text embeddings, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_top_k(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = xq @ xb.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def test_choose_factory_by_size_and_setting() -> None:
    s = Settings(auto_flat_max_items=1000)
    assert choose_factory(s, 1000) == "Flat"
    assert choose_factory(s, 1001) == "HNSW32,SQfp16"
    assert choose_factory(s.replace(index_type="flat"), 10**6) == "Flat"
    assert choose_factory(s.replace(index_type="hnsw", hnsw_m=16), 10) == "HNSW16,SQfp16"
    assert choose_factory(s.replace(index_type="HNSW32"), 10) == "HNSW32"  # float32 vectors
    assert choose_factory(s.replace(index_type="ivf"), 10_000) == "IVF256,Flat"
    assert choose_factory(s.replace(index_type="IVF64,PQ8"), 10) == "IVF64,PQ8"


def test_flat_equals_exact_search() -> None:
    xb, xq = unit_vectors(2000, 32, 1), unit_vectors(50, 32, 2)
    index = create_index("faiss", 32, len(xb), Settings(index_type="flat"))
    index.add(xb)
    scores, rows = index.search(xq, 10)
    exact_scores, exact_rows = numpy_top_k(xq, xb, 10)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    # Rows may differ only where scores tie.
    differs = rows != exact_rows
    np.testing.assert_allclose(scores[differs], exact_scores[differs], atol=1e-6)


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_indexes_keep_a_recall_floor(index_type: str) -> None:
    xb = clustered_unit_vectors(5100, 32, 3)
    xb, xq = xb[:5000], xb[5000:]
    index = create_index("faiss", 32, len(xb), Settings(index_type=index_type))
    index.add(xb)
    _, rows = index.search(xq, 10)
    _, exact_rows = numpy_top_k(xq, xb, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows, strict=True)])
    assert recall >= 0.9
    assert measure_recall(index, xb, 200) >= 0.9


def test_hnsw_keeps_half_precision_vectors_and_full_precision_recall(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The default HNSW stores float16 vectors: about half the file of float32's, the same
    recall against the exact oracle (within what two graphs differ by), near-exact scores."""
    xb = clustered_unit_vectors(5100, 64, 8)
    xb, xq = xb[:5000], xb[5000:]
    _, exact_rows = numpy_top_k(xq, xb, 10)
    found = {}
    for index_type in ("hnsw", "HNSW32"):
        index = create_index("faiss", 64, len(xb), Settings(index_type=index_type))
        index.add(xb)
        scores, rows = index.search(xq, 10)
        found[index_type] = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows, strict=True)]
        )
        exact = np.einsum("qd,qkd->qk", xq, xb[rows])  # the rows' true scores
        np.testing.assert_allclose(scores, exact, atol=2e-3)
        folder = tmp_path / index_type
        folder.mkdir()
        index.save(folder)
    assert found["hnsw"] >= 0.95 and found["hnsw"] >= found["HNSW32"] - 0.02
    half, full = ((tmp_path / t / "index.faiss").stat().st_size for t in ("hnsw", "HNSW32"))
    vector_bytes = xb.size * 4
    assert full - half >= 0.45 * vector_bytes  # the float32 copy, halved


def test_measure_recall_detects_a_bad_index() -> None:
    xb = unit_vectors(3000, 32, 5)
    bad = create_index("faiss", 32, len(xb), Settings(index_type="HNSW4", hnsw_ef_search=1))
    good = create_index("faiss", 32, len(xb), Settings(index_type="flat"))
    bad.add(xb)
    good.add(xb)
    assert measure_recall(good, xb, 300) == 1.0
    assert measure_recall(bad, xb, 300) < 0.8


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_filtered_search_returns_only_allowed_rows(index_type: str) -> None:
    xb = unit_vectors(3000, 16, 6)
    index = create_index("faiss", 16, len(xb), Settings(index_type=index_type))
    index.add(xb)
    allowed = np.arange(0, 3000, 7, dtype=np.int64)
    scores, rows = index.search(xb[:20], 10, allowed_rows=allowed)
    returned = rows[rows >= 0]
    assert returned.size > 0 and set(returned.tolist()) <= set(allowed.tolist())
    if index_type == "flat":
        exact_scores, exact_rows = numpy_top_k(xb[:20], xb[allowed], 10)
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_save_and_load_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    xb = unit_vectors(1500, 16, 7)
    index = create_index("faiss", 16, len(xb), Settings(index_type="hnsw", hnsw_ef_search=77))
    index.add(xb)
    description = index.save(tmp_path)
    loaded = load_index(tmp_path, description)
    assert loaded.size == 1500 and loaded.description == description
    assert description["params"]["efSearch"] == 77
    np.testing.assert_array_equal(loaded.search(xb[:5], 5)[1], index.search(xb[:5], 5)[1])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 70), seed=st.integers(0, 1000))
def test_every_row_maps_back_to_itself(n: int, k: int, seed: int) -> None:
    """Row numbers are the id map: each vector finds its own row first, and rows are valid."""
    xb = unit_vectors(n, 8, seed)
    index = create_index("faiss", 8, n, Settings(index_type="flat"))
    index.add(xb)
    scores, rows = index.search(xb, k)
    assert rows.shape == (n, min(k, n))
    assert ((rows >= 0) & (rows < n)).all()
    # Self-match has the top score (another row may tie with it).
    np.testing.assert_allclose(scores[:, 0], np.ones(n), atol=1e-5)
