"""The ONNX exports of a sentence-transformers model, made once per model and library versions,
checked against torch and cached for every later start, by every data dir of this user
(engine.encoder.onnx_export makes the graph).

The cache is <cache>/<sha256 of the model folder's files>/<library key>/, where <cache> is
cache_root(settings): RECSEARCH_CACHE_DIR/encoders, by default ~/.cache/recsearch/encoders
(DATA_DIR/encoders where the user cache cannot be written), and the library key hashes the
versions of torch, transformers, tokenizers, onnx and onnxruntime, which make the export
(library_versions()):

    model.onnx          the transformer alone (token embeddings out); the tokenizer, pooling and
                        normalization of the torch model run around it, in numpy
    model-int8.onnx     model.onnx with dynamically quantized int8 weights (QInt8, per channel)
    <file>.json         how the file was made (format, opset, model hash, library versions), its
                        sha256, size and state (inode, size, mtime, ctime), and the probe check
                        against torch (engine.encoder.onnx_check): later starts verify the file
                        (hashing it, ~0.2 s for 90 MB, unless its state is still the one
                        recorded) instead of loading the torch model to check it again
    tokenizer-core.json the model's fast tokenizer as the encoder runs it
                        (engine.encoder.fast_tokenizer): starts load neither transformers nor torch
    .lock               one process exports while the others wait, then reuse its result

A start marks the export it loads used; a new export removes those unused for 30 days
(engine.encoder.cache_eviction).

<cache>/model-digests.json remembers each model folder's digest with its files' states, so an
untouched folder is not hashed again at each start.

Files are written to a temporary name and renamed, so a reader sees a whole file or none. A
file whose bytes, model hash, opset, format or library versions differ from its .json is
exported again. An export logs a line (a WARNING, so that a command shows it) when it starts
and when it is ready: it takes tens of seconds, once per model and machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.core.files import (
    held_elsewhere,
    locked,
    make_private_dir,
    write_atomically,
    write_json_durably,
)
from engine.encoder.cache_eviction import evict_unused, mark_used
from engine.encoder.fast_tokenizer import cached_tokenizer
from engine.encoder.onnx_check import ProbeCheck, check_record, probe_check, stored_check
from engine.encoder.onnx_encoder import (
    FALLBACK,
    ModelSpec,
    OnnxEncoder,
    available_cores,
    model_folder,
    read_json,
    read_spec,
)
from engine.encoder.onnx_export import EXPORT_FORMAT, OPSET, export_graph, quantize

log = logging.getLogger(__name__)

FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
# In the cache's root: each model folder's digest, with the state of its files (model_digest).
DIGESTS = "model-digests.json"
# The packages whose versions key the cache: they trace, fuse, quantize and tokenize.
LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime")


# Mean cosine to torch over the probe texts below which an export does not serve.
MIN_MEAN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.98}


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
    naming the figure and the fallback. The first start per model, backend and library
    versions takes tens of seconds (export, quantization, a torch model for the check); later
    ones, in any data dir, read the cache.
    """
    threshold = MIN_MEAN_COSINE[backend] if min_mean_cosine is None else min_mean_cosine
    folder = model_folder(settings)
    spec = read_spec(folder, settings.model)
    digest = model_digest(settings, folder)
    cache = export_dir(settings, digest)
    path = cache / FILES[backend]
    loaded = _verified(path, digest)
    started = time.monotonic()
    made = False
    if loaded is None:
        cache = _writable(cache, settings, digest)
        path = cache / FILES[backend]
        if held_elsewhere(cache / ".lock"):
            log.warning("waiting for another process exporting the encoder into %s", cache)
        with _cache_lock(cache):
            loaded, made = _ensure_export(spec, digest, backend, cache)
    meta, model_bytes = loaded
    mark_used(cache)
    if made:  # exports come rarely and add ~90 MB each: drop those long unused
        evict_unused(cache.parent.parent, keep=cache)
    threads = settings.encoder_threads or available_cores()
    tokenizer = cached_tokenizer(spec.transformer, spec.max_seq_length, cache, digest)
    # The check runs on the CPU; a GPU session for builds is made from the same bytes.
    encoder = OnnxEncoder(
        spec, model_bytes, backend=backend, threads=threads, tokenizer=tokenizer, path=path
    )
    check = stored_check(meta, path, backend)
    if check is None:
        check = probe_check(encoder, spec, backend, path)
        try:
            with _cache_lock(cache):
                current = _read_meta(path)
                if current is not None and current.get("sha256") == meta["sha256"]:
                    current["check"] = check_record(check)
                    write_json_durably(_meta_path(path), current)
        except OSError as exc:  # a read-only cache: the next start checks again
            log.warning("could not record the check in %s (%s)", _meta_path(path), exc)
    if made:
        log.warning(
            "ONNX encoder ready in %.0f s: %s (%d MB), mean cosine to torch %.5f; every later "
            "start and data dir reuses it",
            time.monotonic() - started,
            path,
            len(model_bytes) // 2**20,
            check.mean_cosine,
        )
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
        encoder = OnnxEncoder(
            spec, model_bytes, backend=backend, threads=threads, device=device, tokenizer=tokenizer
        )
    return encoder, check


def export_dir(settings: Settings, digest: str) -> Path:
    """Where the exports of the model with this folder digest are kept, for the installed
    library versions: <encoder cache>/<digest>/<library key>."""
    return cache_root(settings) / digest / library_key()


def cache_root(settings: Settings) -> Path:
    """The encoder cache: <RECSEARCH_CACHE_DIR>/encoders, or the data dir's own (cache_dir None)."""
    return (
        settings.cache_dir if settings.cache_dir is not None else settings.data_dir
    ) / "encoders"


def library_versions() -> dict[str, str | None]:
    """The installed versions of LIBRARIES (None for one not installed), read from the
    packages' metadata: nothing is imported."""
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def library_key() -> str:
    """16 hex digits naming library_versions(): the cache folder of one set of versions."""
    text = json.dumps(library_versions(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _writable(cache: Path, settings: Settings, digest: str) -> Path:
    """cache, when this process can make it and write in it; else the data dir's own cache
    (a read-only home, a cache folder owned by another user), with a warning."""
    try:
        make_private_dir(cache)
        if os.access(cache, os.W_OK | os.X_OK):
            return cache
        problem = "not writable"
    except OSError as exc:
        problem = str(exc)
    fallback = export_dir(settings.replace(cache_dir=None), digest)
    log.warning(
        "cannot export the encoder into %s (%s); using %s (RECSEARCH_CACHE_DIR moves the cache)",
        cache,
        problem,
        fallback,
    )
    return fallback


def folder_digest(folder: Path) -> str:
    """sha256 over the relative path, size and bytes of every file (hidden ones skipped)."""
    digest = hashlib.sha256()
    for path in _model_files(folder):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def model_digest(settings: Settings, folder: Path) -> str:
    """folder_digest(folder), remembered in the cache (DIGESTS) with the state of each file: a
    folder whose files are all untouched since (file_state) is not read again, which saves
    hashing 90 MB of weights (0.1-0.3 s) at every start."""
    memo_path = cache_root(settings) / DIGESTS
    files = _model_files(folder)
    listing = [[p.relative_to(folder).as_posix(), *file_state(p.stat())] for p in files]
    state = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    key = str(folder.resolve())
    try:
        memo = read_json(memo_path)
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    found = memo.get(key)
    if isinstance(found, dict) and found.get("state") == state and found.get("digest"):
        return str(found["digest"])
    digest = folder_digest(folder)  # after the state: a file written meanwhile reads as new
    memo[key] = {"state": state, "digest": digest}
    try:
        make_private_dir(memo_path.parent)
        write_json_durably(memo_path, memo)
    except OSError:  # a read-only cache: the next start hashes the folder again
        pass
    return digest


def file_state(stat: os.stat_result) -> list[int]:
    """What changes whenever a file is written, replaced or touched: its inode, size, mtime
    and ctime (ns), the last set by the kernel at every change and by no call of a user's."""
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _model_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


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
    expected = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "model_hash": digest,
        "versions": library_versions(),
    }
    for key, value in expected.items():
        if meta.get(key) != value:
            return f"{key} {meta.get(key)!r}, expected {value!r}", None
    try:
        state, data = _read_with_state(path)
    except OSError as exc:
        return f"unreadable: {exc}", None
    if len(data) != meta.get("bytes"):
        return f"{len(data)} bytes, expected {meta.get('bytes')}", None
    # A file untouched since it was hashed (the state its .json recorded) holds those bytes;
    # any other (written, copied, replaced) is hashed again.
    if state != meta.get("state") and hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return "sha256 differs from its metadata", None
    return None, (meta, data)


def _read_with_state(path: Path) -> tuple[list[int], bytes]:
    """The file's bytes and its file_state, of one open file (not of a file renamed over it)."""
    with open(path, "rb") as fh:
        return file_state(os.fstat(fh.fileno())), fh.read()


def _ensure_export(
    spec: ModelSpec, digest: str, backend: str, cache: Path
) -> tuple[tuple[dict[str, Any], bytes], bool]:
    """The verified file for backend, exported (and its source, for int8) when needed, and
    whether this call made it.

    Call with the cache lock held: another process may have exported it while this one waited.
    """
    path = cache / FILES[backend]
    loaded = _verified(path, digest)
    if loaded is not None:
        return loaded, False
    extra: dict[str, Any] = {}
    if backend == "onnx-int8":
        (source_meta, _), _ = _ensure_export(spec, digest, "onnx", cache)
        log.warning("quantizing the ONNX export to int8, once: %s", path)
        write_atomically(path, lambda tmp: quantize(cache / FILES["onnx"], tmp))
        extra = {
            "quantization": "dynamic QInt8 per-channel",
            "source_sha256": source_meta["sha256"],
        }
    else:
        log.warning(
            "exporting the encoder's model %s to ONNX and checking it against torch: about "
            "half a minute, once per model and library versions (into %s)",
            spec.folder,
            cache,
        )
        made: dict[str, Any] = {}
        write_atomically(path, lambda tmp: made.update(export_graph(spec, tmp)))
        extra = {"graph": made}
    state, data = _read_with_state(path)
    meta = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "model_hash": digest,
        "model_folder": str(spec.folder),
        "file": path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "state": state,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        **extra,
    }
    write_json_durably(_meta_path(path), meta)
    log.info("exported %s (%d bytes)", path, len(data))
    return (meta, data), True


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
