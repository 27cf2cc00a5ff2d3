"""Tuned encoders: positives from judgments and from the event history, a long item's window
nearest the query as its positive, batches without repeats, and a tuned encoder as a version
that a build embeds with, that serving follows through its index, and that promote and
rollback move."""

from __future__ import annotations

import random
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from engine.catalog.items import ItemIn, upsert_items
from engine.core.config import Settings
from engine.core.errors import NotFound, NotReady
from engine.encoder.embedder import Embedder
from engine.index.encoder_store import MODEL_FOLDER, EncoderStore, build_encoder, encoder_settings
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.users.events import EventIn
from indexer.build import build
from indexer.encoder_pairs import (
    Pair,
    clicked_judgments,
    event_pairs,
    item_texts,
    judgment_pairs,
)
from indexer.encoder_tuning import batches
from indexer.examples import Judgment
from indexer.ingest import ingest
from tests.conftest import SAMPLE_CATALOG, write_jsonl
from tests.index.test_chunks import FILLER, QUERIES, TAILS, ingest_and_build, notes
from tests.indexer.test_train import description_judgments
from tests.users.test_recording import first_occurrences, record, seeded_stream
from tests.users.test_taste import assert_same_taste, reference, users
from web.cli import Context, cli


def test_batches_hold_no_text_twice_and_use_every_pair_once() -> None:
    rng = random.Random(3)
    # Queries with several answers, and answers shared between queries: the hard case.
    pairs = [
        Pair(f"q{rng.randrange(20)}", f"d{rng.randrange(30)}", f"n{rng.randrange(40)}")
        for _ in range(200)
    ]
    out = batches(pairs, 16, random.Random(0))
    assert sorted(map(repr, (p for b in out for p in b))) == sorted(map(repr, pairs))
    for batch in out:
        texts = [t for p in batch for t in {p.anchor, p.positive, p.negative}]
        assert len(texts) == len(set(texts)), batch
    # Full batches of 16 while pairs that fit remain; only the leftovers make short ones.
    sizes = [len(b) for b in out]
    assert max(sizes) == 16 and sizes[:5] == [16] * 5
    assert len(out) <= len(pairs) // 16 + 6, sizes


def test_event_pairs_are_one_users_consecutive_engagements_in_one_visit(
    runtime: Runtime,
) -> None:
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
    t0 = datetime(2026, 1, 1, 12)

    def at(minutes: float, user: str, item: str, kind: str, value: float | None = None) -> EventIn:
        return EventIn(user, item, kind, t0 + timedelta(minutes=minutes), value)

    events = [
        at(0, "u1", "paris-france", "click"),
        at(5, "u1", "london-united-kingdom", "purchase"),  # pair 1
        at(6, "u2", "berlin-germany", "click"),
        at(7, "u1", "london-united-kingdom", "click"),  # the same item again: no pair
        at(8, "u2", "amsterdam-netherlands", "view"),  # a view is no engagement
        at(9, "u2", "amsterdam-netherlands", "rating", 2.0),  # a poor rating neither
        at(10, "u2", "amsterdam-netherlands", "rating", 5.0),  # pair 2: berlin → amsterdam
        at(200, "u1", "berlin-germany", "click"),  # hours later: another visit
        at(201, "u1", "no-such-item", "click"),  # not in the catalog: left out
    ]
    with runtime.session() as session:
        pairs = event_pairs(session, events, runtime.settings.positive_rating)
        texts = item_texts(session, ["paris-france", "london-united-kingdom", "berlin-germany"])
        texts.update(item_texts(session, ["amsterdam-netherlands"]))
    assert pairs == [
        Pair(texts["paris-france"], texts["london-united-kingdom"], item_anchor=True),
        Pair(texts["berlin-germany"], texts["amsterdam-netherlands"], item_anchor=True),
    ]
    assert texts["paris-france"].startswith("Paris, France Category: city.")


def test_a_long_items_positive_and_negative_are_its_windows_nearest_the_query(
    runtime: Runtime, embedder: Embedder
) -> None:
    # Council notes whose tails, past the model's window, tell them apart (MaxP serves them
    # by the tail's window); one more written after the build: its windows are encoded here.
    more = {
        "orchard": "Finally, an old orchard lets families pick their own apples in autumn.",
        "chess": "Finally, the library hosts a chess tournament for players of every age.",
    }
    ingest_and_build(runtime, notes({**TAILS, **more}))  # enough for a hard negative each
    late = "Finally, a retired keeper shows visitors the old lighthouse lamp at dusk."
    with runtime.write_session() as session:
        upsert_items(session, [ItemIn(id="late", title="Late notes", text=FILLER * 4 + late)])
    tails = {**TAILS, "late": late}
    queries = {**QUERIES, "late": "visiting an old lighthouse with its keeper"}
    judgments = [Judgment(q, key, 1.0) for key, q in queries.items()]
    with runtime.session() as session:
        plain = judgment_pairs(runtime, session, judgments)
        windowed = judgment_pairs(runtime, session, judgments, windows=True)
        texts = item_texts(session, [*tails, *more])
    chunker = embedder.chunker(runtime.settings)
    assert chunker is not None

    def nearest(query: str, text: str) -> str:  # the oracle: every window encoded afresh
        cut = [text, *chunker.extra(text)]
        assert len(cut) >= 2  # each note is longer than one window
        return cut[int(np.argmax(embedder.encode(cut) @ embedder.encode_query(query)))]

    by_text = {text: key for key, text in texts.items()}
    assert len(windowed) == len(plain) == len(judgments)
    for j, before, pair in zip(judgments, plain, windowed, strict=True):
        assert before.positive == texts[j.item_id]  # without windows: the whole text
        assert pair.positive == nearest(j.query, texts[j.item_id]) != texts[j.item_id]
        assert pair.positive.endswith(tails[j.item_id])
        # The same hard negative (one seed), as its window nearest the query.
        assert before.negative is not None and pair.negative is not None
        assert pair.negative == nearest(j.query, texts[by_text[before.negative]])
    assert sum(p.negative != b.negative for p, b in zip(windowed, plain, strict=True)) >= 1


def test_encoder_versions_promote_and_roll_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    store = EncoderStore.of(settings)
    assert build_encoder(settings) == (settings.model_name(), settings)
    versions = []
    for n in range(2):
        staging = store.stage()
        shutil.copytree(settings.model_path(), staging / MODEL_FOLDER)
        versions.append(store.save(staging, {"base": settings.model_name(), "n": n}, promote=True))
    assert versions == ["v000001", "v000002"] and store.current_version() == "v000002"
    assert store.rollback_target() == "v000001"
    name, chosen = build_encoder(settings)
    assert name == f"{settings.model_name()}@v000002"
    assert Path(chosen.model) == store.model_folder("v000002")
    assert build_encoder(settings, "v000001")[0] == f"{settings.model_name()}@v000001"
    store.promote("v000001")
    assert store.current_version() == "v000001" and store.rollback_target() == "v000002"
    with pytest.raises(NotFound):
        build_encoder(settings, "v000009")
    # An index names its encoder; one this process cannot load is not served.
    assert encoder_settings(settings, settings.model_name()) is settings
    for unknown in ("other-model", "other-model@v000001", f"{settings.model_name()}@v000007"):
        with pytest.raises(NotReady, match="recsearch build"):
            encoder_settings(settings, unknown)


@pytest.mark.slow
def test_a_tuned_encoder_is_built_with_served_through_its_index_and_rolled_back(
    one_runtime: Runtime, seed_index: Path, tmp_path: Path
) -> None:
    runtime = one_runtime
    shutil.copytree(seed_index, runtime.settings.index_dir)
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
    with runtime.session() as session:
        base_build = build(runtime, session)
    base_name = runtime.settings.model_name()
    # Users with taste vectors in the base encoder's space, before any switch. The test
    # re-encodes them itself: the runtime's follower would race it (test_taste tests it).
    runtime.tastes.close()
    events = first_occurrences(seeded_stream(list(runtime.live.get().ids[:30]), 150, seed=8))
    record(runtime, events, batch=50)
    base_tastes = users(runtime)
    tasted = sorted(u for u, s in base_tastes.items() if s.vector is not None)
    judgments = description_judgments(24)
    path = write_jsonl(
        tmp_path / "judgments.jsonl",
        [{"query": j.query, "item_id": j.item_id, "grade": j.grade} for j in judgments],
    )
    context = Context(runtime.settings, quiet=True, runtime=runtime)

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), obj=context)
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    out = run("train", "--encoder", "--judgments", str(path), "--batch-size", "8")
    assert f"encoder v000001 ({base_name}@v000001): 24 pairs (24 from judgments" in out
    assert "not promoted" in out
    store = EncoderStore.of(runtime.settings)
    report: dict[str, Any] = store.manifest("v000001")["report"]
    # 24 pairs in batches of 8, a batch short where a hard negative repeats a text; the
    # default two epochs
    assert report["options"]["epochs"] == 2
    assert report["hard_negatives"] == 24 and 6 <= report["steps"] <= 10
    assert report["onnx_check"]["mean_cosine"] >= 0.9999  # exported and checked before publish
    assert store.current_version() is None  # not promoted: builds still embed with the base
    assert "v000001  24 pairs" in run("encoder", "list")

    # The tuned weights differ from the base's: its vectors move.
    tuned = runtime.embedder_for(f"{base_name}@v000001")
    base = runtime.embedder_for(base_name)
    probe = "a quiet beach town with coral reefs"
    assert float(tuned.encode_query(probe) @ base.encode_query(probe)) < 0.9999

    run("encoder", "promote", "v000001")
    built = run("build")
    stale = f"{len(tasted)} users' taste vectors are in another encoder's space"
    assert f"{stale} than {base_name}@v000001's" in built
    artifact = runtime.live.get()
    assert artifact.version != base_build.version
    assert artifact.model_name == f"{base_name}@v000001"
    assert artifact.manifest["model"]["encoder_version"] == "v000001"
    # Serving follows the index: queries and the index's vectors are the tuned encoder's.
    assert runtime.embedder is tuned
    with runtime.session() as session:
        texts = item_texts(session, artifact.ids[:5])
    expected = tuned.encode([texts[i] for i in artifact.ids[:5]])
    assert np.allclose(np.asarray(artifact.vectors())[:5], expected, atol=1e-5)
    assert runtime.searcher.encoder_for(artifact) is tuned
    assert runtime.search(SearchRequest(q=probe, k=3)).results  # end to end

    # Users' taste vectors follow: one user's next event sums them again in the tuned space,
    # the command does every other user; each is then what recording every event with the
    # tuned encoder's item vectors leaves.
    tuned_name = f"{base_name}@v000001"
    later = EventIn(tasted[0], artifact.ids[40], "purchase", max(e.ts for e in events))
    record(runtime, [later], batch=1)
    assert users(runtime)[tasted[0]].encoder == tuned_name
    assert {users(runtime)[u].encoder for u in tasted[1:]} == {base_name}
    out = run("encoder", "reencode-users")
    assert f"{len(tasted) - 1} users' taste vectors re-encoded with {tuned_name}" in out
    in_tuned = reference(runtime, [*events, later])
    switched = users(runtime)
    for user in tasted:
        assert switched[user].encoder == tuned_name
        assert_same_taste(switched[user], in_tuned[user])
        # The old vector pointed elsewhere: the sum really changed space.
        cosine = float(
            switched[user].unit_vector() @ base_tastes[user].unit_vector()  # type: ignore[operator]
        )
        assert cosine < 0.9999

    # An index rollback brings its encoder back with it, and the tastes back to the base's.
    assert f"{stale} than {base_name}'s" in run("rollback", base_build.version)
    assert runtime.live.get().version == base_build.version
    assert runtime.embedder is base
    assert runtime.live.get().manifest["model"].get("encoder_version") is None
    run("encoder", "reencode-users")
    in_base = reference(runtime, [*events, later])
    back = users(runtime)
    for user in tasted:
        assert back[user].encoder == base_name
        assert_same_taste(back[user], in_base[user])
        if user != tasted[0]:
            assert_same_taste(back[user], base_tastes[user])  # the round trip is exact


def test_clicked_search_results_are_query_positives(client: Any, built: Runtime) -> None:
    shown = {
        q: client.get(f"/v1/search?q={q}&k=5").get_json()
        for q in ("beach", "museums", "ski resort")
    }
    item = {q: body["results"][1]["id"] for q, body in shown.items()}
    events = [
        {"user_id": "a", "item_id": item["beach"], "type": "click"},
        {"user_id": "a", "item_id": item["museums"], "type": "rating", "value": 2.0},  # poor
        {"user_id": "b", "item_id": item["ski resort"], "type": "purchase"},
        # A click on an item the search did not show, or with no search: not its answer.
        {"user_id": "b", "item_id": shown["beach"]["results"][4]["id"], "type": "view"},
        {"user_id": "c", "item_id": item["museums"], "type": "click"},
    ]
    for event, q in zip(events, ("beach", "museums", "ski resort", "beach", None), strict=True):
        if q is not None:
            event["request_id"] = shown[q]["request_id"]
    assert client.post("/v1/events", json={"events": events}).status_code == 200
    built.impressions.flush()
    with built.session() as session:
        found = clicked_judgments(session, built.settings.positive_rating)
    assert found == [
        Judgment("beach", item["beach"], 1.0),
        Judgment("ski resort", item["ski resort"], 1.0),
    ]
