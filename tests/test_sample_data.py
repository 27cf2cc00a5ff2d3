"""The sample data the quick start uses is valid and consistent."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

from engine.catalog.items import validate_item
from tests.conftest import ROOT, SAMPLE_CATALOG


def test_catalog_is_valid_and_varied() -> None:
    lines = SAMPLE_CATALOG.read_text(encoding="utf-8").splitlines()
    items = [validate_item(json.loads(line), line=n) for n, line in enumerate(lines, start=1)]
    assert len(items) >= 300 and len({i.id for i in items}) == len(items)
    categories = Counter(i.category for i in items)
    assert set(categories) == {
        "beach",
        "city",
        "mountain",
        "culture",
        "nature",
        "island",
        "desert",
        "countryside",
    }
    assert min(categories.values()) >= 15
    assert {"paris-france", "london-united-kingdom", "tokyo-japan"} <= {i.id for i in items}
    assert all(i.text and 2 <= i.text.count(". ") + 1 <= 6 for i in items)


def test_events_reference_catalog_items() -> None:
    ids = {json.loads(line)["id"] for line in SAMPLE_CATALOG.read_text().splitlines()}
    events = [
        json.loads(line) for line in (ROOT / "data" / "events.jsonl").read_text().splitlines()
    ]
    assert len(events) >= 300
    assert {e["item_id"] for e in events} <= ids
    assert {e["type"] for e in events} <= {"view", "click", "cart", "purchase", "rating"}
    assert len({e["event_id"] for e in events}) == len(events)
    times = [datetime.fromisoformat(e["ts"]) for e in events]
    assert times == sorted(times)
    assert all(1 <= e["value"] <= 5 for e in events if e["type"] == "rating")
