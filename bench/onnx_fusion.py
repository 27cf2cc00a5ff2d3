"""The ONNX export's recipe, step by step: the model's default attention (SDPA) traced as it
is, eager attention traced, and eager attention fused by ONNX Runtime's transformer optimizer
(what engine/encoder/onnx_export.py serves when it agrees with the traced graph).

    .venv/bin/python bench/onnx_fusion.py [--queries 400] [--threads 1,2]

The three graphs are exported into a temporary folder and timed one query at a time through
OnnxEncoder.embed (tokenizer, graph, pooling), in rotating order per SciFact claim so machine
noise hits all alike, at each thread count; the mean cosine of each graph's vectors to the
fused graph's is reported too. Then the fused graph at the last thread count tokenizes two
ways, alternating per claim: transformers' tokenizer call (the encoder before the tokenizer
core) and the fast tokenizer's core set once (engine.encoder.onnx_encoder.tokenizer_core, served):
tokenize alone, and the whole embed. Prints tables and writes JSON (default
bench/results/onnx_fusion.json). Data is read from ../shared/data/beir-scifact.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core.config import Settings  # noqa: E402
from engine.encoder.onnx_encoder import OnnxEncoder, model_folder, read_spec  # noqa: E402
from engine.encoder.onnx_export import _fuse, _trace  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "onnx_fusion.json")
    args = parser.parse_args()
    if not SCIFACT.is_dir():
        sys.exit(f"needs BEIR SciFact in {SCIFACT}")
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh][: args.queries]
    settings = Settings()
    spec = read_spec(model_folder(settings), settings.model)
    with tempfile.TemporaryDirectory() as tmp:
        sdpa, raw, fused = (Path(tmp) / f"{n}.onnx" for n in ("sdpa", "eager", "fused"))
        _trace(spec, sdpa, attention="default")
        _, config = _trace(spec, raw)
        counts = _fuse(spec, raw, fused, config)
        if counts is None:
            sys.exit("the optimizer fused nothing for this model (or the fused graph disagreed)")
        graphs = {
            "sdpa": sdpa.read_bytes(),
            "eager": raw.read_bytes(),
            "fused": fused.read_bytes(),
        }
    rows: list[dict[str, Any]] = []
    for threads in [int(t) for t in args.threads.split(",")]:
        encoders = {
            name: OnnxEncoder(spec, data, backend="onnx", threads=threads)
            for name, data in graphs.items()
        }
        for q in queries[:20]:  # warm up both
            for encoder in encoders.values():
                encoder.embed([q])
        ms: dict[str, list[float]] = {name: [] for name in encoders}
        vectors: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
        names = list(encoders)
        for n, q in enumerate(queries):
            turn = n % len(names)
            for name in names[turn:] + names[:turn]:
                t = time.perf_counter()
                vector = encoders[name].embed([q])[0]
                ms[name].append((time.perf_counter() - t) * 1e3)
                vectors[name].append(vector)
        reference = np.array(vectors["fused"])
        for name in names:
            cosine = float(np.mean(np.sum(np.array(vectors[name]) * reference, axis=1)))
            rows.append(
                {
                    "graph": name,
                    "threads": threads,
                    "p50_ms": round(float(np.percentile(ms[name], 50)), 3),
                    "p99_ms": round(float(np.percentile(ms[name], 99)), 3),
                    "cosine_to_fused": round(cosine, 6),
                }
            )
    tokenizers = tokenizer_rows(encoders["fused"], queries)
    print(f"\nfused operators: {counts}")
    print(f"{'graph':>8} {'threads':>7} {'p50 ms':>8} {'p99 ms':>8}  cosine to fused")
    for r in rows:
        print(
            f"{r['graph']:>8} {r['threads']:>7} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}  "
            f"{r['cosine_to_fused']:.6f}"
        )
    print(f"\n{'tokenizer':>18} {'tokenize p50/p99 ms':>20} {'embed p50/p99 ms':>18}")
    for r in tokenizers:
        print(
            f"{r['tokenizer']:>18} {r['tokenize_p50_ms']:9.3f} {r['tokenize_p99_ms']:9.3f}  "
            f"{r['embed_p50_ms']:8.3f} {r['embed_p99_ms']:8.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "onnx_fusion",
                "machine": {"host": platform.node(), "python": platform.python_version()},
                "model": settings.model_name(),
                "queries": len(queries),
                "fused_operators": counts,
                "rows": rows,
                "tokenizers": tokenizers,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


def tokenizer_rows(encoder: OnnxEncoder, queries: list[str]) -> list[dict[str, Any]]:
    """Tokenize and embed each query with the tokenizer core and with transformers' call."""
    core = encoder._core
    ways = {"transformers call": None, "core (served)": core}
    ms: dict[str, dict[str, list[float]]] = {w: {"tokenize": [], "embed": []} for w in ways}
    for n, q in enumerate(queries):
        order = list(ways) if n % 2 else list(ways)[::-1]
        for way in order:
            encoder._core = ways[way]
            t = time.perf_counter()
            encoder.tokenize([q])
            ms[way]["tokenize"].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            encoder.embed([q])
            ms[way]["embed"].append((time.perf_counter() - t) * 1e3)
    encoder._core = core
    return [
        {"tokenizer": way}
        | {
            f"{step}_{p}_ms": round(float(np.percentile(ms[way][step], pct)), 3)
            for step in ("tokenize", "embed")
            for p, pct in (("p50", 50), ("p99", 99))
        }
        for way in ways
    ]


if __name__ == "__main__":
    main()
