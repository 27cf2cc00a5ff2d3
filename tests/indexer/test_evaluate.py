"""The click prior's honesty (no query sees its own clicks) and feature-group ablations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.ranking.feature_names import BASE_FEATURES
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.users.decay import as_of
from indexer import ablation
from indexer.click_prior import (
    CLICKED_AT,
    READ_AT,
    click_state,
    cross_fitted_states,
    fold_of,
    judgment_clicks,
)
from indexer.examples import Judgment, judgment_examples


def test_judgment_clicks_are_one_pseudo_user_per_query() -> None:
    clicks = judgment_clicks({"q1": {"a": 1.0, "b": 2.0}, "q2": {"a": 1.0, "c": 0.0}})
    assert sorted((e.user_id, e.item_id, e.type) for e in clicks) == [
        ("judged-query-0", "a", "click"),
        ("judged-query-0", "b", "click"),
        ("judged-query-1", "a", "click"),  # grade 0 is not a click
    ]


def test_folds_are_seeded_and_balanced() -> None:
    ids = [f"q{i}" for i in range(23)]
    fold = fold_of(ids, 5, seed=3)
    assert fold == fold_of(ids, 5, seed=3) and set(fold) == set(ids)
    sizes = np.bincount(list(fold.values()))
    assert sizes.max() - sizes.min() <= 1 and len(sizes) == 5
    with pytest.raises(ValueError):
        fold_of(ids, 1)


def test_training_features_never_see_the_query_own_clicks(built: Runtime) -> None:
    """Each query's popularity comes from the other folds' clicks only; the test state sees
    all of them. Checked through the engine's own first stage and feature code."""
    judged = {
        "Paris, France": {"paris-france": 1.0},  # clicked by this query alone
        "Tokyo, Japan": {"tokyo-japan": 1.0, "kyoto-japan": 1.0},
        "Kyoto, Japan": {"kyoto-japan": 1.0},
    }
    settings = built.settings
    weight = settings.type_weights()["click"]
    with built.session() as session:
        fold, states = cross_fitted_states(session, settings, judged, folds=3)
        everyone = click_state(session, settings, judgment_clicks(judged))
        x, y, groups, names = judgment_examples(
            built,
            session,
            [Judgment(q, i, g) for q, d in judged.items() for i, g in d.items()],
            states={q: states[fold[q]] for q in judged},
        )
        stage = built.searcher.first_stage(
            session, SearchRequest(q="Kyoto, Japan", k=20), state=everyone
        )
    assert sorted(set(fold.values())) == [0, 1, 2]  # one query per fold

    def expected(clicks: int) -> float:
        return math.log1p(as_of(weight * clicks, CLICKED_AT, READ_AT, settings.half_life_s))

    popularity = x[:, names.index("popularity")]

    def positives_of(query_index: int) -> list[float]:
        return sorted(popularity[(groups == query_index) & (y == 1)].tolist())

    # Paris was clicked by its own query only; leaking would make it expected(1).
    assert positives_of(0) == [expected(0)]
    # Tokyo's answers: tokyo-japan (no other query), kyoto-japan (the Kyoto query).
    assert positives_of(1) == pytest.approx([expected(0), expected(1)])
    assert positives_of(2) == pytest.approx([expected(1)])  # kyoto-japan, by Tokyo's click
    # At test time every train click counts: kyoto-japan has two.
    found = {c.item_id: n for n, c in enumerate(stage.candidates)}
    column = stage.x[:, stage.names.index("popularity")]
    assert column[found["kyoto-japan"]] == pytest.approx(expected(2))
    assert column[found["tokyo-japan"]] == pytest.approx(expected(1))


def test_feature_groups_name_real_features() -> None:
    grouped = {n for members in ablation.FEATURE_GROUPS.values() for n in members}
    assert grouped <= set(BASE_FEATURES)
    assert ablation.group_of("attr:price") == "attributes"
    assert ablation.group_of("brand_new_feature") == "brand_new_feature"
    assert list(ablation.groups(["query_sim", "popularity", "ann_rank"])) == ["dense", "popularity"]


def test_ablation_measures_what_each_group_buys() -> None:
    """Relevance follows query_sim; popularity is noise; user_activity is constant. Dropping
    the dense group must cost the most, and the constant group is reported unused."""
    rng = np.random.default_rng(0)
    names = ("query_sim", "ann_rank", "popularity", "user_activity")
    n_queries, per_query = 40, 20
    x = np.zeros((n_queries * per_query, len(names)))
    x[:, 0] = rng.normal(size=len(x))
    x[:, 1] = x[:, 0] + rng.normal(scale=0.1, size=len(x))
    x[:, 2] = rng.normal(size=len(x))
    x[:, 3] = 1.0
    y = (x[:, 0] + rng.normal(scale=0.3, size=len(x)) > 1.2).astype(float)
    groups = np.repeat(np.arange(n_queries), per_query)

    def auc_like(model: LinearRanker) -> float:
        """Share of queries whose best-scored row is a positive (held-in data is enough)."""
        logits = model.logits(x)
        return float(
            np.mean([y[groups == g][np.argmax(logits[groups == g])] for g in range(n_queries)])
        )

    full = auc_like(ablation.without(x, y, names, [], l2=1e-3))
    result = ablation.ablate(x, y, names, auc_like, full=full)
    assert set(result) == {"dense", "popularity", "personal"}
    assert result["personal"] == {"features": ["user_activity"], "unused": True}
    assert result["dense"]["features"] == ["query_sim", "ann_rank"]
    assert result["dense"]["change"] < -0.2
    assert result["dense"]["change"] < result["popularity"]["change"]
    assert abs(result["popularity"]["change"]) < 0.1
    # A dropped feature has weight 0 in the re-trained ranker, which still scores every column.
    dropped = ablation.without(x, y, names, ["popularity"], l2=1e-3)
    assert dropped.names == names and dropped.weights[2] == 0.0
