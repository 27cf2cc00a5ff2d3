"""Fine-tuning the encoder on SciFact's train split (issue 27): the base encoder and the tuned
one side by side, measured in one run by `evaluate_beir(tune=...)`.

    .venv/bin/python bench/encoder_tuning.py [--epochs 1] [--batch-size 32]
        [--max-seq-length N] [--learning-rate 5e-5] [--seed 0]
        [--windows | --no-windows]
        [--workdir DIR] [--out PATH]

SciFact (../shared/data) is imported into a scratch data dir and built with the base encoder;
every method is measured on the 300 test claims (dense exact, dense_ann, lexical, hybrid,
reranked_no_prior: content features only, reranked: with the click prior from the train
judgments). Then the encoder is fine-tuned on the train split's judgments alone (75 % of its
claims; the rest fit the tuned run's ranker), one hard negative each mined by the engine's
first stage; with --windows a long abstract stands in its pair as its window nearest the
claim (MaxP, as it is served). An index is built with it and everything is measured again.
Goals (issue 27, on the test split): tuned dense ≥ 0.69, reranked_no_prior ≥ 0.76, reranked
≥ 0.80; tuning ≤ 15 minutes on this machine.
Records the tuning time, the tuned encoder's size on disk and its ONNX check.
Writes JSON (default bench/results/encoder_tuning.json).
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
from indexer.encoder_tuning import TuneOptions  # noqa: E402
from indexer.evaluate import evaluate_beir  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"
GOALS = {"dense": 0.69, "reranked_no_prior": 0.76, "reranked": 0.80}
GOAL_TUNING_S = 15 * 60
METHODS = ("dense", "dense_ann", "lexical", "hybrid", "reranked_no_prior", "reranked")


def table(result: dict[str, Any]) -> str:
    base, tuned = result["metrics"], result["encoder_tuned"]["metrics"]
    lines = [
        f"SciFact test ({result['queries']} claims), NDCG@10 / Recall@100",
        f"{'method':<20}{'base':>16}{'tuned':>16}{'change':>10}{'goal':>8}",
    ]
    for method in METHODS:
        b, t = base[method], tuned[method]
        goal = GOALS.get(method)
        lines.append(
            f"{method:<20}{b['ndcg@10']:>8.4f}{b['recall@100']:>8.4f}"
            f"{t['ndcg@10']:>8.4f}{t['recall@100']:>8.4f}"
            f"{t['ndcg@10'] - b['ndcg@10']:>+10.4f}"
            + (f"{goal:>8.2f}{' met' if t['ndcg@10'] >= goal else ' MISSED'}" if goal else "")
        )
    encoder = result["encoder_tuned"]["encoder"]
    tuning_s = result["encoder_tuned"]["tuning_s"]
    lines.append(
        f"tuning {tuning_s:.0f}s (goal ≤ {GOAL_TUNING_S}s: "
        f"{'met' if tuning_s <= GOAL_TUNING_S else 'MISSED'}), {encoder['pairs']} pairs, "
        f"{encoder['steps']} steps on {encoder['device']}, loss {encoder['first_loss']:.3f} → "
        f"{encoder['last_loss']:.3f}; encoder {encoder['size_bytes'] / 1e6:.1f} MB; "
        f"ONNX check {encoder['onnx_check']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=TuneOptions.epochs)
    parser.add_argument("--batch-size", type=int, default=TuneOptions.batch_size)
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=TuneOptions.learning_rate)
    parser.add_argument(
        "--seed", type=int, default=TuneOptions.seed, help="the pairs' order and the model's init"
    )
    parser.add_argument(
        "--windows",
        action=argparse.BooleanOptionalAction,
        default=TuneOptions.windows,
        help="a long item's positive (and negative) is its window nearest the query",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "encoder_tuning.json"
    )
    parser.add_argument(
        "--workdir", type=Path, help="the data dir to use and keep (reuses its base build)"
    )
    args = parser.parse_args()
    if not SCIFACT.is_dir():
        sys.exit(f"needs BEIR SciFact in {SCIFACT}")
    options = TuneOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        learning_rate=args.learning_rate,
        seed=args.seed,
        windows=args.windows,
    )
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(Settings(data_dir=args.workdir or Path(tmp), index_poll_s=0.0))
        try:
            result = evaluate_beir(runtime, SCIFACT, tune=options)
        finally:
            runtime.close()
    result["machine"] = {"python": platform.python_version(), "cpu": platform.processor()}
    result["command"] = " ".join(sys.argv)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
