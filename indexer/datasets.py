"""Readers for public evaluation datasets: BEIR folders and MovieLens CSVs.

Only what a real user of the engine would have goes in: for BEIR queries that is `_id` and
`text`, never `metadata` (in SciFact it names the evidence documents, i.e. the answers).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from engine.catalog.items import ItemIn
from engine.core.errors import InvalidInput


def _need(path: Path) -> Path:
    if not path.exists():
        raise InvalidInput(f"{path}: not found (expected a BEIR or MovieLens folder layout)")
    return path


def beir_items(folder: Path) -> list[ItemIn]:
    items = []
    with open(_need(folder / "corpus.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            title = (doc.get("title") or "").strip() or str(doc["_id"])
            items.append(
                ItemIn(id=str(doc["_id"]), title=title[:1000], text=doc.get("text") or None)
            )
    return items


def beir_queries(folder: Path) -> dict[str, str]:
    """query id → text; metadata is deliberately not read."""
    queries = {}
    with open(_need(folder / "queries.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            queries[str(row["_id"])] = str(row["text"])
    return queries


def beir_qrels(folder: Path, split: str) -> dict[str, dict[str, float]]:
    """query id → {document id: grade} for one split (train or test)."""
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    with open(_need(folder / "qrels" / f"{split}.tsv"), encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader)
        if header[:2] != ["query-id", "corpus-id"]:
            raise InvalidInput(f"{folder}/qrels/{split}.tsv: unexpected header {header!r}")
        for row in reader:
            if row and float(row[2]) > 0:
                qrels[row[0]][row[1]] = float(row[2])
    return dict(qrels)


def movielens_items(folder: Path) -> list[ItemIn]:
    """movies.csv (title, genres) with tags.csv aggregated per movie as item tags."""
    tags: dict[str, list[str]] = defaultdict(list)
    tags_path = folder / "tags.csv"
    if tags_path.exists():
        with open(tags_path, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                tag = row["tag"].strip().lower()
                if tag and tag not in tags[row["movieId"]] and len(tags[row["movieId"]]) < 20:
                    tags[row["movieId"]].append(tag[:100])
    items = []
    with open(_need(folder / "movies.csv"), encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
            items.append(
                ItemIn(
                    id=row["movieId"],
                    title=row["title"],
                    text=f"Genres: {', '.join(genres)}." if genres else None,
                    category=genres[0] if genres else None,
                    tags=tuple(dict.fromkeys(genres + tags[row["movieId"]])),
                )
            )
    return items


def movielens_ratings(folder: Path) -> list[dict[str, object]]:
    """ratings.csv as rating events, oldest first."""
    with open(_need(folder / "ratings.csv"), encoding="utf-8", newline="") as fh:
        rows = [
            {
                "user_id": row["userId"],
                "item_id": row["movieId"],
                "type": "rating",
                "value": float(row["rating"]),
                "ts": int(row["timestamp"]),
                "event_id": f"ml-{row['userId']}-{row['movieId']}",
            }
            for row in csv.DictReader(fh)
        ]
    rows.sort(key=lambda r: (r["ts"], r["user_id"], r["item_id"]))  # type: ignore[arg-type, return-value]
    return rows
