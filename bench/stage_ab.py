"""The first stage of a search (candidates, then features) as this tree has it against a base
revision's, interleaved query by query in one process, on a catalog search_latency built.

    .venv/bin/python bench/stage_ab.py --workdir DIR [--base HEAD] [--items 100000]
        [--queries 200] [--rounds 4]

This machine drifts 20-45 % within an hour, so two runs of search_latency cannot tell a
change of 0.1 ms apart; here both versions run on the same request, one after the other (the
order alternating), with the same state and the same query vector. The base revision's
engine/search/candidates.py and features.py are loaded from git as modules of their own; the
rest of the engine is this tree's, and both run on one prepared request (one clock reading). Every query's candidates and features must come out the
same in both (ids, order, the sources' ranks; features bit for bit), or it stops.

DIR is search_latency's --workdir, holding the catalog of --items items (run search_latency
with --workdir DIR --sizes N first). Prints a table and writes JSON
(default bench/results/stage_ab.json). The query's vector is cached: no encoder runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search_latency import USER, percentiles, queries  # noqa: E402

from engine.core.config import Settings  # noqa: E402
from engine.encoder.embedder import Embedder  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.search import candidates, features  # noqa: E402
from engine.search.request import SearchRequest  # noqa: E402


def base_module(revision: str, path: str, folder: Path) -> ModuleType:
    """The file at `path` as `revision` has it, imported as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = "base_" + Path(path).stem
    file = folder / f"{name}.py"
    file.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--base", default="HEAD")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stage_ab.json")
    args = parser.parse_args()
    data_dir = args.workdir / f"n{args.items}"
    if not (data_dir / "built.json").exists():
        sys.exit(f"no catalog in {data_dir}: run bench/search_latency.py --workdir first")

    embedder = Embedder(Settings())
    settings = Settings(data_dir=data_dir, index_poll_s=3600)
    runtime = Runtime(settings, embedder=embedder)
    runtime.watch.ready()
    searcher = runtime.searcher
    qs = queries(args.queries)
    for q in qs:
        embedder.encode_query(q)
    with tempfile.TemporaryDirectory() as tmp:
        base = {
            "candidates": base_module(args.base, "engine/search/candidates.py", Path(tmp)),
            "features": base_module(args.base, "engine/search/features.py", Path(tmp)),
        }
    versions = {"base": base, "tree": {"candidates": candidates, "features": features}}
    samples: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for n, q in enumerate(qs):
            request = SearchRequest(q=q, k=10, user_id=USER)
            order = ["base", "tree"] if (n + round_) % 2 else ["tree", "base"]
            out: dict[str, Any] = {}
            with runtime.read_session() as session:
                ready = searcher.prepare(session, request)  # one "now" for both
                for name in order:
                    gather = versions[name]["candidates"].gather
                    t = time.perf_counter()
                    found = gather(
                        session, ready.corpus, ready.state, ready.context, request, settings
                    )
                    t_gather = time.perf_counter()
                    x, _ = versions[name]["features"].of_candidates(
                        session, ready.corpus, found, ready.context, searcher.feature_names
                    )
                    t_features = time.perf_counter()
                    samples.setdefault(f"{name}_candidates", []).append((t_gather - t) * 1e3)
                    samples.setdefault(f"{name}_features", []).append((t_features - t_gather) * 1e3)
                    out[name] = (
                        [(c.item_id, c.ann_rank, c.lexical_rank, c.covisit_rank) for c in found],
                        x,
                    )
            assert out["base"][0] == out["tree"][0], f"candidates differ for {q!r}"
            assert np.array_equal(out["base"][1], out["tree"][1]), f"features differ for {q!r}"
    runtime.close()
    ms = {name: percentiles(values) for name, values in samples.items()}
    result = {
        "benchmark": "stage_ab",
        "base": args.base,
        "items": args.items,
        "queries": len(qs),
        "rounds": args.rounds,
        "ms": ms,
    }
    print(f"\nfirst stage at {args.items} items, a user's search, {args.base} vs this tree; ms")
    print(f"{'stage':>10} | {'base p50':>8} {'p99':>7} | {'tree p50':>8} {'p99':>7} | change p50")
    print("-" * 62)
    for stage in ("candidates", "features"):
        was, now = ms[f"base_{stage}"], ms[f"tree_{stage}"]
        print(
            f"{stage:>10} | {was['p50']:8.3f} {was['p99']:7.3f} | {now['p50']:8.3f}"
            f" {now['p99']:7.3f} | {now['p50'] - was['p50']:+.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
