"""How closely an ONNX export agrees with torch: the probe texts (engine.encoder.onnx_export)
encoded by both, each alone and all in one padded batch. engine.encoder.onnx_cache runs the
check once per export and keeps its figures in the export's .json, so later starts read them
instead of loading the torch model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.encoder.onnx_encoder import ModelSpec, OnnxEncoder
from engine.encoder.onnx_export import PROBE_TEXTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeCheck:
    """How closely an export agrees with torch on PROBE_TEXTS (cosine of unit vectors)."""

    backend: str
    model_file: Path
    mean_cosine: float
    min_cosine: float
    texts: int
    reused: bool  # read from the cache: no torch model was loaded to check


def probe_check(encoder: OnnxEncoder, spec: ModelSpec, backend: str, path: Path) -> ProbeCheck:
    """Cosines to torch's vectors, each probe text encoded alone and all in one padded batch.

    Both sides encode without a prompt: the empty prompt, given explicitly, keeps a folder's
    default_prompt_name off the torch side too.
    """
    from sentence_transformers import SentenceTransformer

    log.info("checking %s against torch on %d probe texts", path, len(PROBE_TEXTS))
    reference = SentenceTransformer(str(spec.folder), device="cpu", local_files_only=True)
    expected = reference.encode(
        list(PROBE_TEXTS),
        prompt="",
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    alone = np.concatenate([encoder.embed([text]) for text in PROBE_TEXTS])
    batched = encoder.embed(list(PROBE_TEXTS))
    cosines = np.concatenate([(alone * expected).sum(axis=1), (batched * expected).sum(axis=1)])
    return ProbeCheck(
        backend=backend,
        model_file=path,
        mean_cosine=float(cosines.mean()),
        min_cosine=float(cosines.min()),
        texts=len(PROBE_TEXTS),
        reused=False,
    )


def check_record(check: ProbeCheck) -> dict[str, Any]:
    """The check as the export's .json keeps it."""
    import onnxruntime

    return {
        "probe_sha256": _probe_digest(),
        "onnxruntime": onnxruntime.__version__,
        "mean_cosine": check.mean_cosine,
        "min_cosine": check.min_cosine,
        "texts": check.texts,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def stored_check(meta: dict[str, Any], path: Path, backend: str) -> ProbeCheck | None:
    """The cached check, unless the probe texts or onnxruntime changed since it ran."""
    import onnxruntime

    stored = meta.get("check")
    if (
        not isinstance(stored, dict)
        or stored.get("probe_sha256") != _probe_digest()
        or stored.get("onnxruntime") != onnxruntime.__version__
    ):
        return None
    try:
        return ProbeCheck(
            backend=backend,
            model_file=path,
            mean_cosine=float(stored["mean_cosine"]),
            min_cosine=float(stored["min_cosine"]),
            texts=int(stored["texts"]),
            reused=True,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _probe_digest() -> str:
    return hashlib.sha256(json.dumps(PROBE_TEXTS).encode()).hexdigest()
