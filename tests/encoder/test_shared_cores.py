"""A query is encoded on every core only while the server has no other request under way
(Embedder.share_cores, web.inflight.InFlight), on one thread otherwise: the real MiniLM on ONNX
Runtime, its wide session and its one-thread session, each run counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.runtime import Runtime
from tests.conftest import all_at_once


class Counting:
    """A real ONNX Runtime session, counting its runs."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.runs = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.session.run(*args, **kwargs)


@pytest.fixture
def two_threads(encoder_cache: Path) -> Embedder:
    """An embedder of its own (share_cores changes it) whose encoder has two threads."""
    return Embedder(Settings(data_dir=encoder_cache, encoder_threads=2))


def sessions(embedder: Embedder) -> tuple[Counting, Counting]:
    """(wide, narrow) sessions of the embedder's query encoder, counting from now on."""
    encoder: Any = embedder._query
    wide, narrow = Counting(encoder.session), Counting(encoder._narrow_session())
    encoder.session, encoder._narrow = wide, narrow
    return wide, narrow


def test_the_one_thread_session_agrees_with_the_wide_one(two_threads: Embedder) -> None:
    encoder: Any = two_threads._query
    texts = ["tide pools at low water", "a quiet library with a reading room", "x"]
    wide = encoder.embed(texts, prompt=two_threads.prompts.query)
    narrow = encoder.embed(texts, prompt=two_threads.prompts.query, narrow=True)
    assert np.allclose(wide, narrow, atol=1e-5)
    assert encoder._narrow is not None and encoder._narrow is not encoder.session
    assert encoder._narrow.get_session_options().intra_op_num_threads == 1
    assert encoder.session.get_session_options().intra_op_num_threads == 2


def test_a_lone_query_takes_every_core_and_a_crowded_one_a_single_thread(
    two_threads: Embedder,
) -> None:
    crowded = [False]
    two_threads.share_cores(lambda: crowded[0])
    wide, narrow = sessions(two_threads)
    alone = two_threads.encode_query("alone: a lighthouse on the cliffs")
    assert (wide.runs, narrow.runs) == (1, 0)
    crowded[0] = True
    beside = two_threads.encode_query("beside others: a lighthouse on the cliffs")
    assert (wide.runs, narrow.runs) == (1, 1)
    encoder: Any = two_threads._query
    prompt = two_threads.prompts.query
    for text, vector in [
        ("alone: a lighthouse on the cliffs", alone),
        ("beside others: a lighthouse on the cliffs", beside),
    ]:
        assert np.allclose(vector, encoder.embed([text], prompt=prompt)[0], atol=1e-5)


def test_queries_batched_together_go_on_one_thread(two_threads: Embedder) -> None:
    """A batch of several queries is itself a sign of load: one thread, whatever the server
    says. Each query still gets its own vector."""
    two_threads.share_cores(lambda: False)
    wide, narrow = sessions(two_threads)
    texts = [f"burst {i}: kelp forests and sea otters" for i in range(16)]
    calls = two_threads._batcher.calls
    found = dict(all_at_once([lambda t=t: (t, two_threads.encode_query(t)) for t in texts]))  # type: ignore[misc]
    made = two_threads._batcher.calls - calls
    assert made < len(texts)  # some went together...
    assert narrow.runs >= 1 and wide.runs + narrow.runs == made  # ...and those on one thread
    encoder: Any = two_threads._query
    for text in texts:
        own = encoder.embed([text], prompt=two_threads.prompts.query)[0]
        assert np.allclose(found[text], own, atol=1e-5)


def test_an_encoder_of_one_thread_has_no_second_session(encoder_cache: Path) -> None:
    one = Embedder(Settings(data_dir=encoder_cache, encoder_threads=1))
    encoder: Any = one._query
    one.share_cores(lambda: True)
    one.encode_query("one thread: a harbour at dawn")
    assert encoder._narrow is None and encoder._narrow_session() is encoder.session


def test_the_runtime_shares_cores_in_encoders_made_later(
    encoder_cache: Path, tmp_path: Path
) -> None:
    runtime = Runtime(Settings(data_dir=tmp_path, encoder_threads=2, index_poll_s=0.0))
    try:
        crowded = lambda: True  # noqa: E731
        runtime.share_cores(crowded)
        embedder = runtime.embedder_for(runtime.settings.model_name())  # made after
        assert embedder._crowded is crowded
        assert embedder._query._narrow is not None  # type: ignore[attr-defined]  # made at once
    finally:
        runtime.close()
