"""Model versions are pruned like index versions: the newest keep_versions stay, and so do
the live one, its rollback target and the models a running experiment serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from engine.core.config import Settings
from engine.core.errors import NotFound
from engine.encoder.embedder import Embedder
from engine.ranking import experiments
from engine.ranking.model_store import PREVIOUS, ModelStore
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.store.published import PublishedVersions
from indexer.train import train_from_examples


def _save(store: ModelStore, count: int) -> list[str]:
    prior = LinearRanker.prior()
    return [
        store.save(
            LinearRanker(prior.names, prior.weights * (i + 2), prior.bias), {}, promote=False
        )
        for i in range(count)
    ]


def test_prune_keeps_the_newest_the_live_the_rollback_target_and_the_experiments(
    runtime: Runtime,
) -> None:
    store = ModelStore(runtime.settings.model_dir)
    v = _save(store, 8)
    store.promote(v[0])
    store.promote(v[1])  # live v[1]; rolling back would make v[0] live again
    assert store.rollback_target() == v[0]
    with runtime.write_session() as session:
        experiments.start(session, store, v[2], 0.5)  # v[2] against the live v[1]
    with runtime.session() as session:
        in_use = experiments.models_in_use(session)
    assert in_use == {v[1], v[2]}
    assert store.prune(2, pinned=in_use) == v[3:6]
    assert store.versions() == [*v[:3], *v[6:]]
    assert not any((store.root / gone).exists() for gone in v[3:6])
    assert store.current_version() == v[1]
    # A promote of a pruned version is a 404, not a CURRENT naming nothing.
    with pytest.raises(NotFound, match=v[3]):
        store.promote(v[3], expected=v[1])


def test_re_promoting_the_live_version_keeps_the_rollback_target(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    v = _save(store, 3)
    store.promote(v[0])
    store.promote(v[1])
    store.promote(v[1])  # changes nothing: the way back is still v[0]
    assert (store.root / PREVIOUS).read_text().strip() == v[0]
    assert store.prune(1) == []  # v[0] the target, v[1] live, v[2] the newest
    store.promote(v[2])
    assert store.prune(1) == [v[0]]


def test_training_prunes_to_keep_versions(settings: Settings, embedder: Embedder) -> None:
    runtime = Runtime(settings.replace(keep_versions=2), embedder=embedder)
    try:
        rng = np.random.default_rng(0)
        names = LinearRanker.prior().names
        versions = []
        for round_ in range(5):
            x = rng.normal(size=(200, len(names)))
            y = (x[:, 0] + rng.normal(size=200) > 0).astype(np.float64)
            groups = np.arange(200) // 10
            _, report = train_from_examples(runtime, x, y, groups, names, promote=round_ == 0)
            versions.append(report.version)
        store = ModelStore(runtime.settings.model_dir)
        # The first is live (promoted when trained); the newest two are kept.
        assert store.versions() == [versions[0], *versions[-2:]]
    finally:
        runtime.close()


def test_shared_prune_removes_versions_from_the_database(database: Engine, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "a", PublishedVersions(database, "models"))
    v = _save(store, 4)
    store.promote(v[0])
    assert store.prune(1) == v[1:3]
    other_host = ModelStore(tmp_path / "b", PublishedVersions(database, "models"))
    assert other_host.versions() == [v[0], v[3]]
