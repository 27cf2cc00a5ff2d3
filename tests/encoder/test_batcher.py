"""Queries arriving together share one encoder call (engine.encoder.batcher), with the real
MiniLM on ONNX Runtime: the same vectors as alone, fewer calls under load, none delayed alone."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from engine.core.config import Settings
from engine.encoder.batcher import QueryBatcher
from engine.encoder.embedder import Embedder
from tests.conftest import all_at_once

TEXTS = [f"quiet beach town number {i} with coral reefs and snorkeling" for i in range(24)]


class Recording:
    """The real query encoder, recording each call's batch size."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.sizes: list[int] = []
        self.fail_on: str | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.sizes.append(len(texts))
        if self.fail_on in texts:
            raise RuntimeError("the encoder broke")
        return self.embedder._query.embed(list(texts), prompt=self.embedder.prompts.query)


def alone(embedder: Embedder, text: str) -> np.ndarray:
    return embedder._query.embed([text], prompt=embedder.prompts.query)[0]


def test_concurrent_queries_share_calls_and_get_their_own_vectors(embedder: Embedder) -> None:
    encode = Recording(embedder)
    batcher = QueryBatcher(encode, max_batch=8)
    found = all_at_once([lambda t=t: (t, batcher(t)) for t in TEXTS])  # type: ignore[misc]
    assert sorted(t for t, _ in found) == sorted(TEXTS)
    for text, vector in found:
        assert np.allclose(vector, alone(embedder, text), atol=1e-5)
    assert sum(encode.sizes) == len(TEXTS) == batcher.encoded
    assert len(encode.sizes) < len(TEXTS)  # some queries went together
    assert max(encode.sizes) <= 8


def test_a_lone_query_goes_at_once(embedder: Embedder) -> None:
    encode = Recording(embedder)
    batcher = QueryBatcher(encode, max_wait_s=5.0)  # a wait would show as a stuck test
    for text in TEXTS[:5]:
        assert np.allclose(batcher(text), alone(embedder, text), atol=1e-5)
    assert encode.sizes == [1] * 5


def test_an_error_reaches_every_query_of_its_batch_and_the_next_ones_go_on(
    embedder: Embedder,
) -> None:
    encode = Recording(embedder)
    gate = threading.Event()

    def slow_first(texts: Sequence[str]) -> np.ndarray:
        if "hold" in texts:
            gate.wait(5)  # the others queue behind this call, then go as one batch
        return encode(texts)

    batcher = QueryBatcher(slow_first)
    encode.fail_on = "broken"
    results: dict[str, object] = {}

    def ask(text: str) -> None:
        try:
            results[text] = batcher(text)
        except RuntimeError as exc:
            results[text] = exc

    first = threading.Thread(target=ask, args=("hold",))
    first.start()
    while not batcher._running:
        pass
    others = [threading.Thread(target=ask, args=(t,)) for t in ("broken", "beside it")]
    for t in others:
        t.start()
    while len(batcher._pending) < 2:
        pass
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert isinstance(results["hold"], np.ndarray)
    assert isinstance(results["broken"], RuntimeError)
    assert isinstance(results["beside it"], RuntimeError)  # in the failed batch
    assert encode.sizes == [1, 2]
    encode.fail_on = None
    assert np.allclose(batcher("beside it"), alone(embedder, "beside it"), atol=1e-5)


@pytest.mark.parametrize("max_batch", [1, 3])
def test_batches_never_exceed_max_batch(embedder: Embedder, max_batch: int) -> None:
    encode = Recording(embedder)
    batcher = QueryBatcher(encode, max_batch=max_batch)
    all_at_once([lambda t=t: batcher(t) for t in TEXTS[:12]])  # type: ignore[misc]
    assert max(encode.sizes) <= max_batch and sum(encode.sizes) == 12


def test_the_embedders_concurrent_queries_share_calls(embedder: Embedder) -> None:
    """Embedder.encode_query goes through its batcher: a burst of new texts from many threads
    costs fewer encoder calls than texts, each text still getting its own vector."""
    texts = [f"embedder burst {i}: tide pools and kelp forests" for i in range(24)]
    calls_before = embedder._batcher.calls
    found = all_at_once([lambda t=t: (t, embedder.encode_query(t)) for t in texts])  # type: ignore[misc]
    for text, vector in found:
        assert np.allclose(vector, alone(embedder, text), atol=1e-5)
        assert not vector.flags.writeable  # cached vectors are shared: read-only
    assert embedder._batcher.calls - calls_before < len(texts)


def test_query_batch_1_encodes_each_query_alone(encoder_cache: Path) -> None:
    one = Embedder(Settings(data_dir=encoder_cache, query_batch=1))
    texts = [f"alone {i}" for i in range(8)]
    all_at_once([lambda t=t: one.encode_query(t) for t in texts])  # type: ignore[misc]
    assert one._batcher.calls == len(texts)
