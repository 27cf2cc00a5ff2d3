"""Whole items on SciFact (issue 27, part 2): every method with and without chunking, in one
run and one table.

    .venv/bin/python bench/chunking.py [--out PATH]

71 % of SciFact's abstracts are longer than MiniLM's 256-token window. SciFact
(../shared/data) is imported into a scratch data dir and evaluated by `evaluate_beir` twice
on the 300 test claims: first with RECSEARCH_CHUNKING=0 (each item is its first window, as
before), then with chunking on (the same data dir: the build reuses every item vector and
encodes only the windows after the first; an item's similarity is the best of its windows).
The rankers of both runs are trained on the train split alone. Records the chunk count, the
windows' encode time and the chunk index. Writes JSON (default bench/results/chunking.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core.config import Settings  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from indexer.evaluate import evaluate_beir  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"
METHODS = ("dense", "dense_ann", "lexical", "hybrid", "reranked_no_prior", "reranked")


def table(runs: dict[str, dict[str, Any]]) -> str:
    off, on = runs["off"]["metrics"], runs["on"]["metrics"]
    lines = [
        f"SciFact test ({runs['on']['queries']} claims), NDCG@10 / Recall@100",
        f"{'method':<20}{'no chunks':>16}{'chunks (MaxP)':>16}{'change':>10}",
    ]
    for method in METHODS:
        a, b = off[method], on[method]
        lines.append(
            f"{method:<20}{a['ndcg@10']:>8.4f}{a['recall@100']:>8.4f}"
            f"{b['ndcg@10']:>8.4f}{b['recall@100']:>8.4f}{b['ndcg@10'] - a['ndcg@10']:>+10.4f}"
        )
    chunks = runs["on"]["chunks"]
    lines.append(
        f"chunks: {chunks['count']} windows after the first, of {chunks['items_chunked']} of "
        f"{runs['on']['documents']} items (window {chunks['window']} tokens, overlap "
        f"{chunks['overlap']}); encoded in {chunks['embed_seconds']:.0f}s, chunk index "
        f"{chunks['index']['factory']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chunking.json")
    parser.add_argument(
        "--workdir", type=Path, help="keep the data dir here (a rerun reuses its vectors)"
    )
    args = parser.parse_args()
    if not SCIFACT.is_dir():
        sys.exit(f"needs BEIR SciFact in {SCIFACT}")
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.workdir or Path(tmp)
        for name, chunking in (("off", False), ("on", True)):
            runtime = Runtime(Settings(data_dir=data_dir, index_poll_s=0.0, chunking=chunking))
            try:
                result = evaluate_beir(runtime, SCIFACT)
                result["chunks"] = runtime.live.get().manifest.get("chunks")
            finally:
                runtime.close()
            runs[name] = result
            print(f"chunking {name}: done in {result['total_seconds']:.0f}s", flush=True)
    out = {
        "runs": runs,
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "command": " ".join(sys.argv),
    }
    print(table(runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
