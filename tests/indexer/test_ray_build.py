"""Builds that embed on a Ray cluster (RECSEARCH_RAY_ADDRESS, `build --ray`): the same vectors
as a local build, published the same way, a killed encoder retried, reuse kept, and an
unreachable address refused in seconds with nothing published.

The cluster is real: two `ray start` nodes of one CPU each on 127.0.0.2 (tests/ray_cluster.py),
shared by the module and stopped by PID. Without Ray installed, only the unreachable-address
tests run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from engine.core.config import Settings
from engine.core.errors import ConfigError, NotReady
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from indexer.build import BuildReport, build
from indexer.embedding import load_catalog
from indexer.ingest import ingest
from indexer.progress import no_progress
from indexer.ray_embedding import check_reachable
from tests import ray_cluster
from tests.conftest import SAMPLE_CATALOG, write_jsonl
from web.cli import Context, cli

ITEMS = 96  # of the sample catalog: enough batches to kill an actor mid-way, quick to embed
ENCODER = "EncoderActor"  # in the title of each encoder actor's process


@pytest.fixture(scope="module")
def cluster() -> Iterator[ray_cluster.RayCluster]:
    """Two nodes of one CPU each (2 cores here: 2 actors × 1 encoder thread), the driver's
    RAY_AUTH_* set in this process while the module runs."""
    reason = ray_cluster.available()
    if reason:
        pytest.skip(reason)
    started = ray_cluster.start(nodes=2, cpus_per_node=1)
    try:
        with started.driver_env():
            yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = SAMPLE_CATALOG.read_text(encoding="utf-8").splitlines()[:ITEMS]
    return write_jsonl(tmp_path_factory.mktemp("catalog") / "c.jsonl", lines)  # type: ignore[arg-type]


def loaded(settings: Settings, embedder: Embedder, catalog_file: Path) -> Runtime:
    runtime = Runtime(settings, embedder=embedder)
    with runtime.write_session() as session:
        assert ingest(runtime, session, catalog_file).counts.inserted == ITEMS
    return runtime


@pytest.fixture(scope="module")
def local(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, catalog_file: Path
) -> Iterator[Runtime]:
    """The catalog built here: the reference every Ray build is held to."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("local") / "var", index_poll_s=0)
    runtime = loaded(settings, embedder, catalog_file)
    report = run_build(runtime)
    assert report.version == "v000001" and report.embedded == ITEMS
    yield runtime
    runtime.close()


@pytest.fixture
def on_ray(
    cluster: ray_cluster.RayCluster, embedder: Embedder, catalog_file: Path, tmp_path: Path
) -> Iterator[Runtime]:
    """The same catalog in a database and data folder of its own, built on the cluster."""
    settings = Settings(
        data_dir=tmp_path / "var", index_poll_s=0, ray_address=cluster.address, ray_actors=2
    )
    runtime = loaded(settings, embedder, catalog_file)
    yield runtime
    runtime.close()


def run_build(runtime: Runtime, settings: Settings | None = None, **kw) -> BuildReport:  # type: ignore[no-untyped-def]
    with runtime.session() as session:
        return build(runtime, session, settings=settings, **kw)


def published(settings: Settings) -> tuple[list[str], np.ndarray, dict]:  # type: ignore[type-arg]
    store = IndexStore(settings.index_dir)
    artifact = store.load(store.current_version())
    return artifact.ids, np.asarray(artifact.vectors()), artifact.manifest


@pytest.mark.slow  # a Ray build: its actors start in seconds
def test_a_ray_build_publishes_the_local_vectors(
    local: Runtime, on_ray: Runtime, cluster: ray_cluster.RayCluster
) -> None:
    report = run_build(on_ray)
    assert report.version == "v000001" and (report.embedded, report.reused) == (ITEMS, 0)
    assert IndexStore(on_ray.settings.index_dir).current_version() == "v000001"
    ids, vectors, manifest = published(on_ray.settings)
    local_ids, local_vectors, local_manifest = published(local.settings)
    assert ids == local_ids and vectors.shape == (ITEMS, 384)
    assert np.abs(vectors - local_vectors).max() <= 1e-5
    assert manifest["embedding"] == {
        "where": "ray",
        "address": cluster.address,
        "actors": 2,
        "items": ITEMS,
    }
    assert report.embedding == manifest["embedding"]
    assert local_manifest["embedding"]["where"] == "local"
    assert local_manifest["embedding"]["items"] == ITEMS
    assert manifest["recall_at_10"] == local_manifest["recall_at_10"] == 1.0
    assert manifest["catalog_fingerprint"] == local_manifest["catalog_fingerprint"]


@pytest.mark.slow  # a Ray build: its actors start in seconds
def test_a_worker_runs_a_queued_build_on_ray(
    on_ray: Runtime, embedder: Embedder, cluster: ray_cluster.RayCluster
) -> None:
    """RECSEARCH_JOBS=worker: a server queues the build, a worker with RECSEARCH_RAY_ADDRESS
    claims it and embeds on the cluster."""
    from indexer.jobs import JobRunner
    from indexer.worker import Worker

    server = Runtime(on_ray.settings.replace(jobs="worker", ray_address=""), embedder=embedder)
    try:
        job = JobRunner(server).start("build")
        assert job.state == "queued"
        assert Worker(on_ray).run(once=True) == 1
        done = JobRunner(server).get(job.id)
        assert done.state == "succeeded" and done.attempts == 1, done.error
        _, _, manifest = published(on_ray.settings)
        assert manifest["version"] == done.result["version"]  # type: ignore[index]
        assert manifest["embedding"]["where"] == "ray"
        assert manifest["embedding"]["address"] == cluster.address
    finally:
        server.close()


@pytest.mark.slow  # a Ray build: its actors start in seconds
def test_a_killed_encoder_is_retried_and_the_build_still_publishes(
    local: Runtime, on_ray: Runtime, cluster: ray_cluster.RayCluster
) -> None:
    # Batches of 4 in shards of 3 batches: the pool still has work when the first block lands.
    settings = on_ray.settings.replace(embed_batch_size=4)
    # The actors of an earlier build end with its job, a moment after it disconnects.
    deadline = time.monotonic() + 30
    while cluster.workers(ENCODER) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.workers(ENCODER)
    killed: list[int] = []
    before: set[int] = set()
    after: set[int] = set()

    def progress(phase: str, done: int, total: int) -> None:
        if phase != "embed" or done == 0:
            return
        encoders = set(cluster.workers(ENCODER))
        if not killed and done < total:
            assert len(encoders) == 2, encoders  # the pool is up: a new PID later is a restart
            before.update(encoders)
            killed.append(min(encoders))
            os.kill(killed[0], signal.SIGKILL)
        else:
            after.update(encoders)

    report = run_build(on_ray, settings, progress=progress)
    assert killed, "no block came back before the last one: nothing was killed mid-build"
    assert after - before, "no encoder actor was started again after the kill"
    assert report.version == "v000001" and report.embedded == ITEMS
    ids, vectors, manifest = published(settings)
    local_ids, local_vectors, _ = published(local.settings)
    assert ids == local_ids
    assert np.abs(vectors - local_vectors).max() <= 1e-5
    assert manifest["embedding"]["items"] == ITEMS


@pytest.mark.slow  # a Ray build: its actors start in seconds
def test_only_changed_texts_go_to_ray(
    local: Runtime, on_ray: Runtime, catalog_file: Path, tmp_path: Path
) -> None:
    """Reuse works as it does here: one changed text is embedded on the cluster."""
    shutil.copytree(local.settings.index_dir, on_ray.settings.index_dir)
    first = json.loads(catalog_file.read_text(encoding="utf-8").splitlines()[0])
    changed = {**first, "text": "A lighthouse keeper's diary from a storm-bound island."}
    with on_ray.write_session() as session:
        ingest(on_ray, session, write_jsonl(tmp_path / "one.jsonl", [changed]))
    report = run_build(on_ray)
    assert report.version == "v000002" and (report.embedded, report.reused) == (1, ITEMS - 1)
    ids, vectors, manifest = published(on_ray.settings)
    assert manifest["embedding"]["items"] == 1
    assert manifest["embedding"]["actors"] == 1  # one text: one shard, one actor
    local_ids, local_vectors, _ = published(local.settings)
    row = ids.index(first["id"])
    assert ids == local_ids
    with on_ray.session() as session:
        text = load_catalog(session, local.embedder.name, no_progress).texts[row]
    assert "lighthouse keeper" in text
    expected = local.embedder.encode([text])[0]
    assert np.abs(vectors[row] - expected).max() <= 1e-5
    others = np.arange(ITEMS) != row
    assert np.array_equal(vectors[others], local_vectors[others])  # reused, not re-encoded


def test_an_unreachable_address_fails_fast_and_publishes_nothing(local: Runtime) -> None:
    address = f"{ray_cluster.HOST}:{ray_cluster.free_port()}"  # nothing listens there
    store = IndexStore(local.settings.index_dir)
    versions = store.versions()
    started = time.monotonic()
    with pytest.raises(NotReady, match=re.escape(address)):
        run_build(local, local.settings.replace(ray_address=address))
    assert time.monotonic() - started < 10
    assert store.current_version() == "v000001" and store.versions() == versions
    assert not list(local.settings.index_dir.glob(".staging*"))


def test_build_ray_option_names_the_unreachable_address(local: Runtime) -> None:
    address = f"{ray_cluster.HOST}:{ray_cluster.free_port()}"
    context = Context(local.settings, quiet=True, runtime=local)
    result = CliRunner().invoke(cli, ["build", "--ray", address], obj=context)
    assert isinstance(result.exception, NotReady), result.output
    assert address in str(result.exception) and "RECSEARCH_RAY_ADDRESS" in str(result.exception)
    assert IndexStore(local.settings.index_dir).current_version() == "v000001"


@pytest.mark.parametrize("address", ["6379", "head-node", "10.0.0.5:port", "ray://:10001", ""])
def test_an_address_that_is_not_host_port_is_a_config_error(address: str) -> None:
    with pytest.raises(ConfigError, match="RECSEARCH_RAY_ADDRESS"):
        check_reachable(address)
