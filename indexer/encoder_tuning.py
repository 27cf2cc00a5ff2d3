"""The train-encoder job: fine-tune the sentence-transformers model on the engine's own
positives and publish it as an encoder version (engine.index.encoder_store).

The positives, each query's with a hard negative from the engine's own first stage, come
from indexer.encoder_pairs (judgments, clicked search results, same-visit engagements). Every
other positive in the batch is a negative too (MultipleNegativesRankingLoss: in-batch
negatives); batches never hold one text twice.

sentence-transformers' loss runs in a plain torch loop, not its Trainer (which needs
`datasets` and `accelerate`, pyarrow included, for a few dozen steps): ours reports progress
per step and stops when the job is cancelled. It uses the GPU when RECSEARCH_DEVICE finds one.
The ONNX export is made and checked against torch before the version is published.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from engine.core.errors import InvalidInput
from engine.encoder.embedder import resolve_device
from engine.encoder.onnx_encoder import model_folder
from engine.encoder.prompts import resolve_prompts
from engine.index.encoder_store import MODEL_FOLDER, EncoderStore, tuned_name
from engine.runtime import Runtime
from indexer.encoder_pairs import Pair, clicked_judgments, event_pairs, judgment_pairs
from indexer.examples import Judgment, stored_events
from indexer.progress import Progress, no_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneOptions:
    # Two passes at 5e-5: on SciFact's train split (682 pairs, 44 steps) dense 0.723,
    # reranked without the prior 0.764, with it 0.802 (one pass at 3e-5: 0.682 / 0.746 /
    # 0.792; two at 3e-5: 0.698 / 0.756 / 0.794), in 569 s on 2 cores
    # (bench/encoder_tuning.py; the base: 0.656 / 0.732 / 0.781).
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_seq_length: int | None = None  # tokens while training; None: the model's own
    seed: int = 0
    # A long item in a query's pair is its window nearest the query, the one that scores it
    # when served (MaxP), not its first (indexer.encoder_pairs.best_windows). Off: on SciFact
    # it tuned dense to 0.681 (first windows: 0.682) and the rankers over it lower; with lr
    # 5e-5, dense to 0.691 but reranked to 0.787 (first windows, 3e-5: 0.792).
    windows: bool = False


@dataclass
class TuneReport:
    version: str | None
    name: str | None
    promoted: bool
    base: str
    pairs: int
    sources: dict[str, int]
    hard_negatives: int
    steps: int
    device: str
    tuning_seconds: float
    first_loss: float
    last_loss: float
    size_bytes: int
    options: dict[str, Any] = field(default_factory=dict)
    onnx_check: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune_from_history(
    runtime: Runtime,
    session: Session,
    *,
    judgments: Sequence[Judgment] = (),
    use_log: bool = True,
    options: TuneOptions = TuneOptions(),
    promote: bool = False,
    progress: Progress = no_progress,
) -> TuneReport:
    """Gather the positives (the judgments given; unless use_log is False, the searches'
    clicked results and the event history's same-visit pairs) and tune on them."""
    pairs: list[Pair] = []
    sources: dict[str, int] = {}
    threshold = runtime.settings.positive_rating
    labelled = {"judgments": list(judgments)}
    if use_log:
        runtime.impressions.flush()
        labelled["clicks"] = clicked_judgments(session, threshold)
    for source, rows in labelled.items():
        if rows:
            found = judgment_pairs(
                runtime,
                session,
                rows,
                seed=options.seed,
                windows=options.windows,
                progress=progress,
            )
            sources[source] = len(found)
            pairs += found
    if use_log:
        found = event_pairs(session, stored_events(session), threshold)
        sources["events"] = len(found)
        pairs += found
    if len(pairs) < 2:
        raise InvalidInput(
            f"nothing to learn from: {sources or 'no source'} pairs. The encoder learns from "
            "judgments (--judgments FILE: query, item_id, grade), from clicked search results "
            "(events naming the search's request_id) and from users engaging with two items "
            "in one visit (click, cart, purchase or a good rating, 30 minutes apart at most)"
        )
    return tune_encoder(
        runtime, pairs, sources, options=options, promote=promote, progress=progress
    )


def batches(pairs: Sequence[Pair], size: int, rng: random.Random) -> list[list[Pair]]:
    """Shuffled batches in which no text appears twice (a repeat would be its own negative)."""
    waiting = list(pairs)
    rng.shuffle(waiting)
    out: list[list[Pair]] = []
    while waiting:
        batch: list[Pair] = []
        texts: set[str] = set()
        rest: list[Pair] = []
        for pair in waiting:
            own = {pair.anchor, pair.positive, pair.negative or pair.positive}
            if len(batch) < size and not own & texts:
                batch.append(pair)
                texts |= own
            else:
                rest.append(pair)
        out.append(batch)
        waiting = rest
    return out


def tune_encoder(
    runtime: Runtime,
    pairs: Sequence[Pair],
    sources: Mapping[str, int],
    *,
    options: TuneOptions = TuneOptions(),
    promote: bool = False,
    progress: Progress = no_progress,
) -> TuneReport:
    """Fine-tune RECSEARCH_MODEL on pairs and publish the result as an encoder version."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        MultipleNegativesRankingLoss,
    )

    if len(pairs) < 2:
        raise InvalidInput(
            f"{len(pairs)} training pairs: the encoder learns from at least 2 positives "
            "(judgments with grade > 0, or users engaging with two items in one visit)"
        )
    settings = runtime.settings
    started = time.perf_counter()
    device = resolve_device(settings.device)
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    if settings.encoder_threads:
        torch.set_num_threads(settings.encoder_threads)
    model = SentenceTransformer(
        settings.model_path(), device=device, local_files_only=settings.model_offline
    )
    saved_length = model.max_seq_length
    if options.max_seq_length:
        model.max_seq_length = options.max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate)
    plan = [batches(pairs, options.batch_size, rng) for _ in range(options.epochs)]
    steps = sum(len(epoch) for epoch in plan)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    # Trained as it serves: queries with the query prompt, items with the document prompt.
    prompts = resolve_prompts(settings, model_folder(settings))
    doc = prompts.document
    model.train()
    losses: list[float] = []
    for epoch in plan:
        for batch in epoch:
            with_negative = all(p.negative is not None for p in batch)
            columns = [
                [(doc if p.item_anchor else prompts.query) + p.anchor for p in batch],
                [doc + p.positive for p in batch],
            ]
            if with_negative:
                columns.append([doc + (p.negative or "") for p in batch])
            features = [_to(model.preprocess(column), device) for column in columns]
            loss = loss_fn(features, None)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(float(loss.item()))
            progress("tune", len(losses), steps)
    model.eval()
    model.max_seq_length = saved_length
    # The folder names the prompts it was tuned with, so it resolves to them when it serves.
    model.prompts = {"query": prompts.query, "document": doc}
    model.default_prompt_name = None
    store = EncoderStore.of(settings)
    staging = store.stage()
    folder = staging / MODEL_FOLDER
    model.save(str(folder))
    check = _export_and_check(runtime, folder)
    tuning_s = time.perf_counter() - started
    report = TuneReport(
        version=None,
        name=None,
        promoted=promote,
        base=settings.model_name(),
        pairs=len(pairs),
        sources=dict(sources),
        hard_negatives=sum(1 for p in pairs if p.negative is not None),
        steps=steps,
        device=device,
        tuning_seconds=round(tuning_s, 2),
        first_loss=round(losses[0], 4),
        last_loss=round(float(np.mean(losses[-max(1, len(losses) // 10) :])), 4),
        size_bytes=_size(folder),
        options=asdict(options),
        onnx_check=check,
    )
    manifest = {
        "base": settings.model_name(),
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "report": report.to_dict(),
    }
    version = store.save(staging, manifest, promote=promote)
    report.version = version
    report.name = tuned_name(settings.model_name(), version)
    log.info(
        "encoder %s: %d pairs, %d steps in %.0f s%s",
        report.name,
        len(pairs),
        steps,
        tuning_s,
        " (promoted)" if promote else "",
    )
    return report


def _to(features: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}


def _export_and_check(runtime: Runtime, folder: Path) -> dict[str, Any] | None:
    """The ONNX export of the tuned model, checked against torch (None with the torch
    encoder): made now, under the model's digest, so serving it loads from the cache."""
    settings = runtime.settings
    if settings.encoder == "torch":
        return None
    from engine.encoder.onnx_cache import load_onnx_encoder

    _, check = load_onnx_encoder(settings.replace(model=str(folder)), settings.encoder)
    return {
        "backend": check.backend,
        "mean_cosine": round(check.mean_cosine, 6),
        "min_cosine": round(check.min_cosine, 6),
        "texts": check.texts,
    }


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
