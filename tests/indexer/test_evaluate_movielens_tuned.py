"""`evaluate_movielens(..., tune=...)`: the encoder is tuned on the training history only (never
a held-out event, never a step the ranker learns from), the history is recorded again under
the tuned index, and every figure is measured again under "encoder_tuned"."""

from __future__ import annotations

import csv
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from engine.runtime import Runtime
from engine.users.events import EventIn

GENRES = ["Comedy", "Drama", "Horror", "Western", "Animation", "Documentary"]
USERS, LIKED, DISLIKED = 12, 28, 6


def mini_movielens(folder: Path) -> Path:
    """movies.csv and ratings.csv shaped as MovieLens': each user rates one genre's movies
    well, a minute apart (one visit, so consecutive likes make pairs), and a few others badly."""
    folder.mkdir(parents=True)
    movies = [(m, GENRES[m % len(GENRES)]) for m in range(1, 241)]
    with open(folder / "movies.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["movieId", "title", "genres"])
        for m, genre in movies:
            out.writerow([m, f"A {genre.lower()} picture number {m} ({1950 + m})", genre])
    with open(folder / "ratings.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["userId", "movieId", "rating", "timestamp"])
        for u in range(1, USERS + 1):
            genre = GENRES[u % len(GENRES)]
            liked = [m for m, g in movies if g == genre][:LIKED]
            liked = liked[u % 5 :] + liked[: u % 5]  # users walk the genre in different orders
            disliked = [m for m, g in movies if g != genre][u : u + DISLIKED * 7 : 7]
            ts = 1_000_000_000 + u * 1_000_000
            for n, m in enumerate(liked):
                if n % 5 == 2 and disliked:
                    out.writerow([u, disliked.pop(), 2.0, ts])
                    ts += 60
                out.writerow([u, m, 5.0 if n % 2 else 4.0, ts])
                ts += 60
    return folder


def unix(event: EventIn) -> int:
    return int(event.ts.replace(tzinfo=UTC).timestamp())  # stored naive, in UTC


@pytest.mark.slow
def test_tuned_encoder_learns_from_the_training_prefix_only(
    one_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.users import recording
    from indexer import evaluate_movielens as module
    from indexer.encoder_tuning import TuneOptions
    from indexer.examples import is_positive

    runtime = one_runtime
    folder = mini_movielens(tmp_path / "mini-movielens")
    learned_from: list[EventIn] = []
    tuned_on: list[Any] = []
    recorded_under: list[str] = []  # the serving index's encoder at each recording

    real_pairs, real_tune = module.event_pairs, module.tune_encoder
    real_record = recording.record_events

    def watched_pairs(session: Any, events: Any, *args: Any, **kwargs: Any) -> Any:
        learned_from.extend(events)
        return real_pairs(session, events, *args, **kwargs)

    def watched_tune(*args: Any, **kwargs: Any) -> Any:
        tuned_on.extend(args[1])
        return real_tune(*args, **kwargs)

    def watched_record(session: Any, events: Any, settings: Any, vectors: Any) -> Any:
        recorded_under.append(vectors.live.get().model_name)
        return real_record(session, events, settings, vectors)

    monkeypatch.setattr(module, "event_pairs", watched_pairs)
    monkeypatch.setattr(module, "tune_encoder", watched_tune)
    monkeypatch.setattr(recording, "record_events", watched_record)
    tune = TuneOptions(epochs=1, batch_size=8, max_seq_length=32)  # one: quick enough for CI
    result: dict[str, Any] = module.evaluate_movielens(runtime, folder, tune=tune, tune_pairs=40)

    # What was held out, and what the ranker learns from, as the evaluation defines them.
    with open(folder / "ratings.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    held: dict[str, tuple[int, str]] = {}
    for r in rows:
        if float(r["rating"]) >= 4:
            held[r["userId"]] = max(
                held.get(r["userId"], (0, "")), (int(r["timestamp"]), r["movieId"])
            )
    assert result["users"] == USERS and len(held) == USERS

    # The encoder's events: no held-out one, nothing after it, nothing the ranker replays.
    assert learned_from
    threshold = runtime.settings.positive_rating
    for e in learned_from:
        ts, item = held[e.user_id]
        assert (e.item_id, unix(e)) != (item, ts) and unix(e) < ts
    for user in held:
        positives = sorted(
            (int(r["timestamp"]), r["movieId"])
            for r in rows
            if r["userId"] == user and float(r["rating"]) >= 4
        )[:-1]  # the history's, the held-out one off
        window = positives[-module.REPLAY_PER_USER :]
        mine = [e for e in learned_from if e.user_id == user]
        assert all(unix(e) < window[0][0] for e in mine)
        assert sum(is_positive(e, threshold) for e in mine) == len(positives) - len(window)

    tuned = result["encoder_tuned"]
    # At most tune_pairs of the pairs found, all of them in the tuning.
    assert len(tuned_on) == tuned["pairs"] == tuned["encoder"]["pairs"] == 40
    assert tuned["pairs_found"] > 40 and tuned["tuning_s"] > 0
    assert tuned["tuned_on_events"] == len(learned_from)

    # Users' state recorded again under the tuned index before it is measured.
    base_name = runtime.settings.model_name()
    assert recorded_under[0] == base_name and recorded_under[-1] == tuned["encoder"]["name"]
    assert tuned["encoder"]["name"] != base_name
    assert tuned["index"]["version"] != result["index"]["version"]

    # The same figures as the base run's, plus the tuning's.
    figures = {"metrics", "reranked_over_best_baseline", "ablations", "model", "train_seconds"}
    assert figures <= set(result)
    assert set(tuned) == figures | {
        "index",
        "tuning_s",
        "encoder",
        "pairs",
        "pairs_found",
        "tuned_on_events",
    }
    assert (
        list(tuned["metrics"])
        == list(result["metrics"])
        == [
            "popularity",
            "retrieval",
            "reranked",
            "als",
        ]
    )
    for run in (result, tuned):
        for values in run["metrics"].values():
            assert set(values) == {"ndcg@10", "hr@10"}
            assert 0 <= values["ndcg@10"] <= values["hr@10"] <= 1
        assert run["model"]["examples"] > run["model"]["positives"] > 0
    for method in ("popularity", "als"):  # the baselines do not read the encoder
        assert tuned["metrics"][method] == result["metrics"][method]
