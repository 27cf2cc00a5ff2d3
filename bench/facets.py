"""What totals and facets add to a search at 100k items: engine.search.selection.count, the
step a search runs after ranking, timed alone; the baseline (total only, no facets) in the
same loop.

    .venv/bin/python bench/facets.py [--items 100000] [--repeats 300]

The catalog is synthetic but shaped like a real one: 12 categories (Zipf-like), 3–6 tags each
from 60, a country from 80 and a continent from 6, a numeric cost, a boolean; an index
version of it (a FAISS Flat index over 8-dim random vectors: only its row labels matter
here). Cells, each with and without a filter ({"continent": "Europe", "cost": {"lte": 150}}):
  total      the selection counted (the baseline every search now pays)
  3 facets   total + facets ["category", "tags", "country"]
  + stats    total + those 3 + facet_stats for "cost"
with 200 deleted items (the watch's set) and 20 excluded ones (a user's purchases), as
a live search has. Goal (issue 26): three facets ≤ 2 ms p50 at 100k items.
Prints a table and writes JSON (default bench/results/facets.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.catalog.fields import ItemFields  # noqa: E402
from engine.catalog.filters import parse  # noqa: E402
from engine.core.config import Settings  # noqa: E402
from engine.index.ann.base import RowLabels  # noqa: E402
from engine.index.ann.faiss import FaissIndex  # noqa: E402
from engine.index.artifact import IndexArtifact  # noqa: E402
from engine.index.corpus import Corpus  # noqa: E402
from engine.search import selection  # noqa: E402

FILTER = {"continent": "Europe", "cost": {"lte": 150}}
FACETS = ["category", "tags", "country"]


def catalog(n: int, seed: int = 7) -> list[ItemFields]:
    rng = random.Random(seed)
    categories = [f"cat{i}" for i in range(12)]
    weights = [1 / (i + 1) for i in range(12)]
    tags = [f"tag{i}" for i in range(60)]
    countries = [f"country{i}" for i in range(80)]
    continents = ["Europe", "Asia", "Africa", "North America", "South America", "Oceania"]
    return [
        ItemFields(
            title=f"item {i}",
            category=rng.choices(categories, weights)[0],
            tags=tuple(rng.sample(tags, rng.randint(3, 6))),
            attributes={
                "country": rng.choice(countries),
                "continent": rng.choice(continents),
                "cost": rng.randint(20, 500),
                "family_friendly": rng.random() < 0.5,
            },
        )
        for i in range(n)
    ]


def artifact(items: list[ItemFields], folder: Path) -> IndexArtifact:
    ids = [f"i{i}" for i in range(len(items))]
    categories = [f.category for f in items]
    ann = FaissIndex.create(8, "Flat", Settings(data_dir=folder))
    vectors = np.random.default_rng(0).standard_normal((len(items), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann.add(vectors)
    ann.label(RowLabels(ids, categories))
    return IndexArtifact(
        version="bench",
        folder=folder,
        manifest={"model": {"dimension": 8}},
        ann=ann,
        ids=ids,
        categories=categories,
        text_hashes=[""] * len(ids),
        items=items,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/facets.json"))
    args = parser.parse_args()

    items = catalog(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        art = artifact(items, Path(tmp))
        corpus = Corpus(art, None, None)  # type: ignore[arg-type]  # vectors are not read
        where = parse(FILTER, art.filter_schema())
        rng = random.Random(1)
        deleted = [{f"i{rng.randrange(args.items)}" for _ in range(200)}, set()]
        exclude = {f"i{rng.randrange(args.items)}" for _ in range(20)}
        cells = {
            "total": ([], False),
            "3 facets": (FACETS, False),
            "3 facets + stats": ([*FACETS, "cost"], False),
        }
        started = time.perf_counter()
        for facets, _ in cells.values():  # first use builds the columns: not timed
            selection.count(corpus, None, where, exclude, deleted, True, facets)
        build_s = time.perf_counter() - started
        times: dict[str, list[float]] = {
            f"{name}{suffix}": [] for name in cells for suffix in ("", " (filtered)")
        }
        for _ in range(args.repeats):  # interleaved: noise hits every cell alike
            for name, (facets, _) in cells.items():
                for suffix, filters in (("", None), (" (filtered)", where)):
                    t = time.perf_counter()
                    out = selection.count(corpus, None, filters, exclude, deleted, True, facets)
                    times[f"{name}{suffix}"].append((time.perf_counter() - t) * 1e3)
        assert out.counts is not None and set(out.counts.facets) == set(FACETS)

    rows = {
        name: {
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
        }
        for name, ms in times.items()
    }
    print(f"selection.count at {args.items:,} items, {args.repeats} repeats per cell")
    print(f"(columns built on first use in {build_s:.2f} s, once per index version)\n")
    print(f"{'cell':<30}{'p50 ms':>10}{'p99 ms':>10}")
    for name, row in rows.items():
        print(f"{name:<30}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}")
    added = rows["3 facets"]["p50_ms"] - rows["total"]["p50_ms"]
    print(f"\nthree facets add {added:.3f} ms p50 over the total alone (goal: ≤ 2 ms p50)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "items": args.items,
                "repeats": args.repeats,
                "machine": platform.platform(),
                "columns_build_s": round(build_s, 3),
                "cells": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
