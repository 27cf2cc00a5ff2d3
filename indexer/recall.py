"""A build's quality gate: recall@10 of the ANN index against exact search on a sample of
the catalog's own vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.index.ann.faiss import exact_top_k
from indexer.progress import Progress, no_progress

RECALL_K = 10


def measure_recall(
    index: Any, vectors: np.ndarray, sample_size: int, progress: Progress = no_progress
) -> float:
    """Recall@10 of the index against exact search, on catalog items used as queries.

    Each query's own row is dropped from both lists (it would be a free hit), and a result
    tied with the exact 10th neighbour counts as correct.
    """
    n = vectors.shape[0]
    if n <= 1:
        return 1.0
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    queries = np.ascontiguousarray(vectors[sample])
    k = min(RECALL_K, n - 1)
    progress("recall", 0, len(sample))
    exact_scores, exact_rows = exact_top_k(queries, vectors, k + 1)
    _, ann_rows = index.search(queries, k + 1)
    hits = 0
    for i, row in enumerate(sample):
        truth = [r for r in exact_rows[i] if r != row][:k]
        truth_scores = [s for s, r in zip(exact_scores[i], exact_rows[i], strict=True) if r != row]
        kth = truth_scores[k - 1] if len(truth_scores) >= k else -np.inf
        found = [r for r in ann_rows[i] if r != row and r >= 0][:k]
        truth_set = set(truth)
        for r in found:
            if r in truth_set or float(queries[i] @ vectors[r]) >= kth - 1e-6:
                hits += 1
    progress("recall", len(sample), len(sample))
    return round(hits / (len(sample) * k), 4)
