"""Write data/events.jsonl: sample users' histories over data/catalog.jsonl (deterministic).

Each user has a taste (categories, tags, a budget) and browses for a few weeks: mostly views
and clicks on matching destinations, some carts and purchases, ratings after purchases, and a
little noise. Format (the events contract): user_id, item_id, type, value?, ts, event_id.

    python scripts/make_sample_events.py
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERSONAS = {
    "beach-lover": ({"beach", "island"}, {"snorkeling", "diving", "surfing"}, 250),
    "mountain-hiker": ({"mountain", "nature"}, {"hiking", "trekking", "skiing"}, 200),
    "culture-buff": ({"culture", "city"}, {"history", "museums", "architecture", "temples"}, 220),
    "foodie": ({"city", "culture"}, {"food", "markets", "wine", "nightlife"}, 200),
    "backpacker": (set(), {"budget", "hiking", "markets"}, 70),
    "luxury": ({"island", "beach"}, {"luxury", "romance"}, 10_000),
    "safari-fan": ({"nature", "desert"}, {"wildlife", "safari"}, 600),
    "desert-explorer": ({"desert"}, {"road-trip", "stargazing", "adventure"}, 300),
    "wine-lover": ({"countryside"}, {"wine", "vineyards"}, 250),
    "family": (set(), {"family"}, 220),
}


def matches(item: dict, taste: tuple[set[str], set[str], int]) -> bool:
    categories, tags, budget = taste
    cost = item.get("attributes", {}).get("avg_daily_cost_usd", 0)
    in_taste = item.get("category") in categories or bool(tags & set(item.get("tags", [])))
    return in_taste and cost <= budget


def main() -> None:
    rng = random.Random(42)
    items = [json.loads(line) for line in (ROOT / "data" / "catalog.jsonl").open(encoding="utf-8")]
    start = datetime(2026, 7, 1, tzinfo=UTC)
    events = []
    for persona, taste in PERSONAS.items():
        liked = [i["id"] for i in items if matches(i, taste)]
        for n in range(1, 3):
            user = f"{persona}-{n}"
            t = start + timedelta(hours=rng.randint(0, 240))
            for _ in range(rng.randint(15, 35)):
                item = rng.choice(liked) if rng.random() < 0.85 else rng.choice(items)["id"]
                t += timedelta(minutes=rng.randint(2, 2_000))
                kind = rng.choices(["view", "click", "cart", "purchase"], [50, 35, 8, 7])[0]
                events.append({"user_id": user, "item_id": item, "type": kind, "ts": t})
                if kind == "purchase":
                    stars = rng.choice([4, 5, 5]) if item in liked else rng.choice([1, 2, 3])
                    t += timedelta(days=rng.randint(5, 20))
                    rating = {"user_id": user, "item_id": item, "type": "rating", "value": stars}
                    events.append({**rating, "ts": t})
    events.sort(key=lambda e: e["ts"])
    with (ROOT / "data" / "events.jsonl").open("w", encoding="utf-8") as fh:
        for number, event in enumerate(events, start=1):
            event["ts"] = event["ts"].isoformat().replace("+00:00", "Z")
            fh.write(json.dumps({**event, "event_id": f"sample-{number:05d}"}) + "\n")
    print(f"wrote {len(events)} events for {2 * len(PERSONAS)} users")


if __name__ == "__main__":
    main()
