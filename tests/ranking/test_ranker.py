"""The sigmoid ranker: exact explanations, training recovers a known model, metrics."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.ranking.feature_names import BASE_FEATURES
from engine.ranking.metrics import auc, hit_rate_at_k, log_loss, ndcg_at_k, recall_at_k
from engine.ranking.ranker import LinearRanker, fit_logistic

_floats = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=60)
@given(
    x=arrays(np.float64, len(BASE_FEATURES), elements=_floats),
    w=arrays(np.float64, len(BASE_FEATURES), elements=st.floats(-10, 10)),
    mean=arrays(np.float64, len(BASE_FEATURES), elements=st.floats(-5, 5)),
    scale=arrays(np.float64, len(BASE_FEATURES), elements=st.floats(0.1, 10)),
    bias=st.floats(-10, 10),
)
def test_contributions_plus_bias_are_the_logit(
    x: np.ndarray, w: np.ndarray, mean: np.ndarray, scale: np.ndarray, bias: float
) -> None:
    ranker = LinearRanker(BASE_FEATURES, w, bias, mean, scale, "t")
    e = ranker.explain(x)
    assert e["logit"] == e["bias"] + sum(e["contributions"].values())
    assert math.isclose(e["logit"], float(ranker.logits(x[None, :])[0]), rel_tol=1e-9, abs_tol=1e-6)
    assert list(e["contributions"]) == list(BASE_FEATURES)


def test_aligned_gives_unknown_features_no_weight() -> None:
    ranker = LinearRanker(
        ("a", "b"), np.array([1.0, 2.0]), 0.5, np.array([1.0, 0.0]), np.array([2.0, 1.0])
    )
    moved = ranker.aligned(("b", "new", "a"))
    x = np.array([[3.0, 100.0, 5.0]])
    assert moved.logits(x)[0] == ranker.logits(np.array([[5.0, 3.0]]))[0] == 0.5 + 2.0 + 6.0


def test_fit_recovers_a_known_model() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.standard_normal((n, 3)) * np.array([1.0, 3.0, 0.5]) + np.array([0.0, 2.0, 0.0])
    true_logit = 1.5 * x[:, 0] - 0.5 * x[:, 1] + 0.0 * x[:, 2] + 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(float)
    ranker = fit_logistic(x, y, ("a", "b", "c"), l2=1e-6)
    raw_weights = ranker.weights / ranker.scale  # back to unstandardized units
    np.testing.assert_allclose(raw_weights, [1.5, -0.5, 0.0], atol=0.15)
    p = ranker.probability(ranker.logits(x))
    assert auc(y, p) > 0.75 and log_loss(y, p) < log_loss(y, np.full_like(p, y.mean()))


def test_ranking_metrics() -> None:
    assert ndcg_at_k(["a", "b", "c"], {"a"}, 10) == 1.0
    assert math.isclose(ndcg_at_k(["x", "a"], {"a"}, 10), 1 / math.log2(3))
    assert ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert math.isclose(
        ndcg_at_k(["b", "a"], {"a": 2.0, "b": 1.0}, 2),
        (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)),
    )
    assert hit_rate_at_k(["x", "a"], {"a"}, 1) == 0.0 and hit_rate_at_k(["x", "a"], {"a"}, 2) == 1.0
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c", "d"}, 2) == 0.25


@settings(max_examples=40)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_matches_pairwise_definition(pairs: list[tuple[bool, int]]) -> None:
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs], dtype=float)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        assert math.isnan(auc(labels, scores))
        return
    expected = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert math.isclose(auc(labels, scores), expected)
