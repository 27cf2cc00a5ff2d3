"""The query encoder's own ceiling: queries/s with nothing but the encoder running, as
`recsearch serve`'s workers run it under load (one process per worker, one ONNX thread per
call), per backend and batch size; every cell interleaved with the others, round by round.

    .venv/bin/python bench/encoder_ceiling.py [--backends onnx,onnx-int8] [--batches 1,2,4]
        [--processes 2] [--duration 10] [--rounds 2]

It answers what throughput a server could reach if everything but the encoder cost nothing:
the bound that a requests/s goal at that precision has to fit under on this machine.
bench/serve_load.py runs it in the same run as its targets (--ceiling-s) and sets it beside
txtai's requests/s there.

Every text is unique (a SciFact claim with a number after it, as serve_load sends them), so
no cache answers; a batch holds the next `batch` texts, padded to the longest as the
server's micro-batcher pads them. Prints a table and writes JSON (default
bench/results/encoder_ceiling.json). Reads SciFact from ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"


def _encode_for(
    backend: str, batch: int, seconds: float, seed: int, texts: list[str], out: Any
) -> None:
    """In a forked process: encode unique texts `batch` at a time for `seconds`; put q/s."""
    os.environ["OMP_NUM_THREADS"] = "1"
    sys.path.insert(0, str(ROOT))
    from engine.core.config import Settings
    from engine.encoder.onnx_cache import load_onnx_encoder

    settings = Settings(data_dir=Path(tempfile.gettempdir()) / "recsearch-encoder-ceiling")
    encoder, _ = load_onnx_encoder(settings, backend)
    for text in texts[:10]:  # warm: ONNX Runtime's first calls allocate
        encoder.embed([text], narrow=True)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = [f"{texts[(done + j) % len(texts)]} {seed}-{done + j}" for j in range(batch)]
        encoder.embed(chunk, narrow=True)  # one thread, as a crowded server's call
        done += batch
    out.put(done / (time.perf_counter() - started))


def measure(backend: str, processes: int, batch: int, seconds: float, texts: list[str]) -> float:
    """Queries/s summed over `processes` processes encoding at once (the ONNX export cache is
    shared, so only the first cell of a backend may export it)."""
    fork = multiprocessing.get_context("fork")
    out = fork.Queue()
    workers = [
        fork.Process(target=_encode_for, args=(backend, batch, seconds, seed, texts, out))
        for seed in range(processes)
    ]
    for w in workers:
        w.start()
    rates = [out.get(timeout=seconds + 600) for _ in workers]
    for w in workers:
        w.join(60)
    return round(sum(rates), 1)


def scifact_claims(data: Path = SCIFACT) -> list[str]:
    queries = [json.loads(line)["text"] for line in (data / "queries.jsonl").open()]
    return list(dict.fromkeys(queries))


def run(
    backends: list[str], batches: list[int], processes: int, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    """Each (backend, batch) measured once a round, in turn: rows with every round's q/s and
    their median."""
    texts = scifact_claims()
    cells = [(b, n) for b in backends for n in batches]
    measured: dict[tuple[str, int], list[float]] = {c: [] for c in cells}
    for round_no in range(rounds):
        for cell in cells if round_no % 2 == 0 else cells[::-1]:
            measured[cell].append(measure(cell[0], processes, cell[1], seconds, texts))
    rows = []
    for (backend, batch), rates in measured.items():
        median = statistics.median(rates)
        rows.append(
            {
                "backend": backend,
                "batch": batch,
                "processes": processes,
                "qps": round(median, 1),
                "rounds_qps": rates,
                # CPU each query costs: `processes` cores busy the whole time
                "cpu_ms_per_query": round(1e3 * processes / median, 2) if median else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'backend':<10} {'batch':>5} {'processes':>9} {'queries/s':>10} "
        f"{'CPU ms/query':>12}  rounds"
    ]
    for r in rows:
        lines.append(
            f"{r['backend']:<10} {r['batch']:>5} {r['processes']:>9} {r['qps']:>10.1f} "
            f"{r['cpu_ms_per_query']:>12.2f}  {', '.join(f'{q:.1f}' for q in r['rounds_qps'])}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="onnx,onnx-int8")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--processes", type=int, default=2, help="as `recsearch serve --workers`")
    parser.add_argument("--duration", type=float, default=10, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "encoder_ceiling.json"
    )
    args = parser.parse_args()
    if not SCIFACT.is_dir():
        sys.exit(f"{SCIFACT} is missing: this benchmark reads BEIR SciFact's claims")
    rows = run(
        args.backends.split(","),
        [int(b) for b in args.batches.split(",")],
        args.processes,
        args.duration,
        args.rounds,
    )
    print(
        f"The query encoder alone: {args.processes} processes x 1 ONNX thread, unique SciFact "
        f"claims, {args.duration:g} s per cell, {args.rounds} rounds interleaved; "
        f"{os.cpu_count()} cores"
    )
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "encoder_ceiling",
                "duration_s": args.duration,
                "rounds": args.rounds,
                "cores": os.cpu_count(),
                "machine": platform.machine(),
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
