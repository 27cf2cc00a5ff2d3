"""The ONNX exports of a sentence-transformers model, made once, checked against torch and
cached for every later start (engine.encoder.onnx_export makes the graph).

The cache is DATA_DIR/encoders/<sha256 of the model folder's files>/:

    model.onnx       the transformer alone (token embeddings out); the tokenizer, pooling and
                     normalization of the torch model run around it, in numpy
    model-int8.onnx  model.onnx with dynamically quantized int8 weights (QInt8, per channel)
    <file>.json      how the file was made (format, opset, model hash), its sha256 and size, and
                     the probe check against torch: later starts verify the file (hashing it,
                     ~0.2 s for 90 MB) instead of loading the torch model to check it again
    .lock            one process exports while the others wait, then reuse its result

Files are written to a temporary name and renamed, so a reader sees a whole file or none. A
file whose bytes, model hash, opset or format differ from its .json is exported again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.core.files import locked, make_private_dir, write_atomically, write_json_durably
from engine.encoder.onnx_encoder import (
    FALLBACK,
    ModelSpec,
    OnnxEncoder,
    available_cores,
    model_folder,
    read_json,
    read_spec,
)
from engine.encoder.onnx_export import EXPORT_FORMAT, OPSET, PROBE_TEXTS, export_graph, quantize

log = logging.getLogger(__name__)

FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}


# Mean cosine to torch over the probe texts below which an export does not serve.
MIN_MEAN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.98}


@dataclass(frozen=True)
class ProbeCheck:
    """How closely an export agrees with torch on PROBE_TEXTS (cosine of unit vectors)."""

    backend: str
    model_file: Path
    mean_cosine: float
    min_cosine: float
    texts: int
    reused: bool  # read from the cache: no torch model was loaded to check


def load_onnx_encoder(
    settings: Settings,
    backend: str,
    *,
    device: str = "cpu",
    min_mean_cosine: float | None = None,
) -> tuple[OnnxEncoder, ProbeCheck]:
    """The checked ONNX encoder for settings.model, exporting and checking it on first use.

    backend is "onnx" or "onnx-int8". Raises ConfigError when the export disagrees with torch
    on the probe texts (mean cosine under min_mean_cosine, by default MIN_MEAN_COSINE[backend]),
    naming the figure and the fallback. The first start per model and backend takes seconds
    (export, quantization, a torch model for the check); later ones read the cache.
    """
    threshold = MIN_MEAN_COSINE[backend] if min_mean_cosine is None else min_mean_cosine
    folder = model_folder(settings)
    spec = read_spec(folder, settings.model)
    digest = folder_digest(folder)
    cache = settings.data_dir / "encoders" / digest
    path = cache / FILES[backend]
    loaded = _verified(path, digest)
    if loaded is None:
        with _cache_lock(cache):
            loaded = _ensure_export(spec, digest, backend, cache)
    meta, model_bytes = loaded
    threads = settings.encoder_threads or available_cores()
    # The check runs on the CPU; a GPU session for builds is made from the same bytes.
    encoder = OnnxEncoder(spec, model_bytes, backend=backend, threads=threads)
    check = _stored_check(meta, path, backend)
    if check is None:
        check = _probe_check(encoder, spec, backend, path)
        with _cache_lock(cache):
            current = _read_meta(path)
            if current is not None and current.get("sha256") == meta["sha256"]:
                current["check"] = _check_record(check)
                write_json_durably(_meta_path(path), current)
    if check.mean_cosine < threshold:
        raise ConfigError(
            f"RECSEARCH_ENCODER={backend}: the ONNX export {path} disagrees with torch on "
            f"{check.texts} probe texts: mean cosine {check.mean_cosine:.5f} (min "
            f"{check.min_cosine:.5f}) is below {threshold}; {FALLBACK}"
        )
    log.info(
        "encoder %s: %s, mean cosine to torch %.5f (min %.5f)%s",
        backend,
        path,
        check.mean_cosine,
        check.min_cosine,
        " (cached check)" if check.reused else "",
    )
    if device != "cpu":
        encoder = OnnxEncoder(spec, model_bytes, backend=backend, threads=threads, device=device)
    return encoder, check


def folder_digest(folder: Path) -> str:
    """sha256 over the relative path, size and bytes of every file (hidden ones skipped)."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def cache_problem(path: Path, digest: str) -> str | None:
    """Why the cached export at path cannot serve the model with this digest, or None."""
    return _verify(path, digest)[0]


def _verified(path: Path, digest: str) -> tuple[dict[str, Any], bytes] | None:
    problem, loaded = _verify(path, digest)
    if problem is not None:
        if path.exists() or _meta_path(path).exists():
            log.warning(
                "cached encoder export %s is unusable (%s); exporting it again", path, problem
            )
        return None
    return loaded


def _verify(path: Path, digest: str) -> tuple[str | None, tuple[dict[str, Any], bytes] | None]:
    meta = _read_meta(path)
    if meta is None:
        return "no readable metadata", None
    expected = {"format": EXPORT_FORMAT, "opset": OPSET, "model_hash": digest}
    for key, value in expected.items():
        if meta.get(key) != value:
            return f"{key} {meta.get(key)!r}, expected {value!r}", None
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc}", None
    if len(data) != meta.get("bytes"):
        return f"{len(data)} bytes, expected {meta.get('bytes')}", None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return "sha256 differs from its metadata", None
    return None, (meta, data)


def _ensure_export(
    spec: ModelSpec, digest: str, backend: str, cache: Path
) -> tuple[dict[str, Any], bytes]:
    """The verified file for backend, exported (and its source, for int8) when needed.

    Call with the cache lock held: another process may have exported it while this one waited.
    """
    path = cache / FILES[backend]
    loaded = _verified(path, digest)
    if loaded is not None:
        return loaded
    extra: dict[str, Any] = {}
    if backend == "onnx-int8":
        source_meta, _ = _ensure_export(spec, digest, "onnx", cache)
        write_atomically(path, lambda tmp: quantize(cache / FILES["onnx"], tmp))
        extra = {
            "quantization": "dynamic QInt8 per-channel",
            "source_sha256": source_meta["sha256"],
        }
    else:
        made: dict[str, Any] = {}
        write_atomically(path, lambda tmp: made.update(export_graph(spec, tmp)))
        extra = {"graph": made}
    data = path.read_bytes()
    meta = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "model_hash": digest,
        "model_folder": str(spec.folder),
        "file": path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        **extra,
    }
    write_json_durably(_meta_path(path), meta)
    log.info("exported %s (%d bytes)", path, len(data))
    return meta, data


def _probe_check(encoder: OnnxEncoder, spec: ModelSpec, backend: str, path: Path) -> ProbeCheck:
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


def _probe_digest() -> str:
    return hashlib.sha256(json.dumps(PROBE_TEXTS).encode()).hexdigest()


def _check_record(check: ProbeCheck) -> dict[str, Any]:
    import onnxruntime

    return {
        "probe_sha256": _probe_digest(),
        "onnxruntime": onnxruntime.__version__,
        "mean_cosine": check.mean_cosine,
        "min_cosine": check.min_cosine,
        "texts": check.texts,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _stored_check(meta: dict[str, Any], path: Path, backend: str) -> ProbeCheck | None:
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


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = read_json(_meta_path(path))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


@contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """One exporter per model across threads and processes."""
    make_private_dir(cache)
    with locked(cache / ".lock"):
        yield
