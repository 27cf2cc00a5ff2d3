"""Text → unit vectors with the model RECSEARCH_MODEL names, by the RECSEARCH_ENCODER backend.

Backends: "onnx" (ONNX Runtime on a graph exported once and checked against torch, see
engine/encoder/onnx_export.py and engine/encoder/onnx_encoder.py), "onnx-int8" (the same
graph with int8 weights) and "torch" (sentence-transformers). Batches (builds) run on the device
RECSEARCH_DEVICE picks. Items are encoded after the document prompt, queries after the query
prompt (engine/encoder/prompts.py).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from cachetools import LRUCache

from engine.core.config import ENCODERS, Settings
from engine.core.errors import ConfigError
from engine.core.values import is_device
from engine.encoder.batcher import QueryBatcher
from engine.encoder.chunking import Chunker
from engine.encoder.onnx_encoder import model_folder
from engine.encoder.prompts import Prompts, prompts_from_config, resolve_prompts

if TYPE_CHECKING:
    from engine.encoder.onnx_check import ProbeCheck

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """One backend: texts in, (len(texts), dim) float32 unit vectors out, each text encoded
    after prompt ("" for none)."""

    backend: str
    dim: int

    def embed(self, texts: Sequence[str], *, prompt: str = "", narrow: bool = False) -> np.ndarray:
        """narrow: others want the cores now, run on one thread if the backend can choose."""
        ...

    def window(self) -> tuple[Any, int]:
        """The model's tokenizer and how many tokens it reads (max_seq_length)."""
        ...


class TorchEncoder:
    """sentence-transformers on torch, the reference every other backend is checked against."""

    backend = "torch"

    def __init__(self, settings: Settings, device: str) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start
        if settings.encoder_threads:
            import torch

            torch.set_num_threads(settings.encoder_threads)
        path = settings.model_path()
        try:
            self.model = SentenceTransformer(
                path, device=device, local_files_only=settings.model_offline
            )
        except OSError as exc:
            raise ConfigError(
                f"RECSEARCH_MODEL={settings.model!r}: cannot load the model from {path!r} "
                f"({exc}). Point it at a sentence-transformers folder, or set "
                "RECSEARCH_MODEL_OFFLINE=0 to allow downloads."
            ) from exc
        self.model.eval()
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ConfigError(f"RECSEARCH_MODEL={settings.model!r} does not report its dimension")
        self.dim = int(dim)

    def prompts(self, settings: Settings) -> Prompts:
        """The prompts settings and the model give: from the folder's configuration file, as
        the ONNX encoder reads it, for a local folder; else from what sentence-transformers
        loaded (a hub name it resolves, e.g. with its organization prefix, has no folder here).
        """
        path = Path(settings.model_path())
        if path.is_dir():
            return resolve_prompts(settings, path)
        return prompts_from_config(settings, loaded_prompt_config(self.model))

    def window(self) -> tuple[Any, int]:
        return self.model.tokenizer, int(self.model.max_seq_length or 512)

    def embed(self, texts: Sequence[str], *, prompt: str = "", narrow: bool = False) -> np.ndarray:
        # narrow: torch's pool is sized once per process (web.server.pool_threads).
        vectors = self.model.encode(
            list(texts),
            # Always explicit: "" too overrides the folder's default_prompt_name.
            prompt=prompt,
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def loaded_prompt_config(model: Any) -> dict[str, Any]:
    """A loaded SentenceTransformer's prompts and default_prompt_name, as its folder's
    config_sentence_transformers.json saved them."""
    # sentence-transformers 6 adds "query" and "document" as "" when the folder saves
    # neither; dropped, so that a saved "passage" prompt is found, as in the file.
    placeholders = getattr(type(model), "_default_prompts", {})
    saved = {k: v for k, v in model.prompts.items() if not (k in placeholders and v == "")}
    return {"prompts": saved, "default_prompt_name": model.default_prompt_name}


def resolve_device(requested: str) -> str:
    """ "cpu" or "cuda[:N]": auto is CUDA where onnxruntime or torch sees a device.

    onnxruntime is asked first; torch (1-2 s to import) only where a CUDA driver is installed,
    so a CPU-only machine resolves auto without importing it. Raises ConfigError for an
    unknown value, and for cuda on a machine without CUDA.
    """
    if not is_device(requested):
        raise ConfigError(
            f"RECSEARCH_DEVICE={requested!r}: expected auto, cpu, cuda or cuda:<index>"
        )
    if requested == "cpu":
        return "cpu"
    if _ort_cuda() or ((requested != "auto" or _has_cuda_driver()) and _torch_cuda()):
        return "cuda" if requested == "auto" else requested
    if requested == "auto":
        return "cpu"
    raise ConfigError(
        f"RECSEARCH_DEVICE={requested}: no CUDA device here (torch.cuda.is_available() is "
        "False and onnxruntime has no CUDAExecutionProvider); set RECSEARCH_DEVICE=auto or cpu"
    )


def _ort_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _has_cuda_driver() -> bool:
    """Whether the NVIDIA driver's CUDA library loads here: without it, torch sees no device."""
    import ctypes

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


class Embedder:
    """Encodes items in batches and queries one at a time, with a small query cache.

    Every vector it returns is float32 and L2-normalized, so inner product is cosine.
    `encoder` is the backend for queries; `batch_encoder` the one that encodes batches, which
    differs with RECSEARCH_QUERY_ENCODER (int8 queries over fp32 items: the query encoder is
    half the time of a search under load, the items' vectors keep full precision), and on a
    GPU where onnxruntime has no CUDA provider (torch on CUDA encodes them).
    `check` is the ONNX export's agreement with torch (None for torch). `prompts` are what
    items (encode) and queries (encode_query) are prefixed with.

    With the ONNX encoder and RECSEARCH_DEVICE=auto, the batch device is resolved when batches
    first need it (`device`, `batch_encoder`, encode, chunker): a process that only searches
    (the CLI's search, a server worker) never looks for a GPU, nor loads torch to do so.
    """

    def __init__(self, settings: Settings, *, query_cache_size: int = 1024) -> None:
        if settings.encoder not in ENCODERS:
            raise ConfigError(
                f"RECSEARCH_ENCODER={settings.encoder!r}: expected one of {', '.join(ENCODERS)}"
            )
        lazy = settings.encoder != "torch" and settings.device == "auto"
        # An explicit device is checked before any export: a machine without it stops here.
        self._device: str | None = None if lazy else resolve_device(settings.device)
        self._settings = settings
        self.name = settings.model_name()
        self.encoder = settings.query_backend
        self.batch_size = settings.embed_batch_size
        self.check: ProbeCheck | None = None
        self._query: TextEncoder
        self._batch_encoder: TextEncoder | None = None
        self._batch_lock = threading.Lock()
        self.prompts: Prompts
        if settings.encoder == "torch":
            device = self._device or "cpu"
            if device != "cpu" and not _torch_cuda():
                device = _no_gpu(settings, "torch sees no CUDA device")
            self._device = device
            torch_encoder = TorchEncoder(settings, device)
            self.prompts = torch_encoder.prompts(settings)
            self._query = self._batch_encoder = torch_encoder
        else:
            from engine.encoder.onnx_cache import load_onnx_encoder

            # Before the export: an ambiguous prompt stops the start before seconds of work.
            self.prompts = resolve_prompts(settings, model_folder(settings))
            self._query, self.check = load_onnx_encoder(settings, self.encoder)
            if not lazy:
                self._batch_encoder = self._batch_for(self._device or "cpu")
        self.dim = self._query.dim
        log.info(
            "encoder %s for queries (model %s, %d dims; query prompt %r, document prompt %r)",
            self.encoder,
            self.name,
            self.dim,
            self.prompts.query,
            self.prompts.document,
        )
        self._chunkers: dict[tuple[int, int], Chunker] = {}
        # Concurrent queries (a worker's threads) share one encoder call.
        self._batcher = QueryBatcher(self._encode_queries, max_batch=settings.query_batch)
        # Whether other requests are under way beside this one (set by a server: share_cores).
        self._crowded: Callable[[], bool] = _alone
        # Query text → its vector (read-only), least recently used out first.
        self._cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(query_cache_size, 1))
        self._lock = threading.Lock()

    @property
    def _batch(self) -> TextEncoder:
        """The encoder of batches, on the device resolved (once) when first asked for."""
        found = self._batch_encoder
        if found is None:
            with self._batch_lock:
                found = self._batch_encoder
                if found is None:
                    found = self._batch_for(resolve_device(self._settings.device))
                    self._batch_encoder = found
        return found

    def _batch_for(self, device: str) -> TextEncoder:
        """The ONNX encoder's batch encoder on device: the query encoder on the CPU, else a
        GPU one (_gpu_batch_encoder); sets self._device to where it runs."""
        settings = self._settings
        batch = self._query
        if device == "cpu" and settings.encoder != self.encoder:  # queries have their own
            from engine.encoder.onnx_cache import load_onnx_encoder

            batch, _ = load_onnx_encoder(settings, settings.encoder)
        elif device != "cpu":
            gpu = _gpu_batch_encoder(settings, device)
            if gpu is None:
                device = _no_gpu(settings, "neither onnxruntime nor torch opened it")
            else:
                batch = gpu
        if batch.dim != self._query.dim:
            raise ConfigError(
                f"RECSEARCH_DEVICE={device}: the batch encoder gives {batch.dim} dimensions, "
                f"the query encoder {self._query.dim}"
            )
        self._device = device
        log.info("encoder %s on %s for batches", batch.backend, device)
        return batch

    @property
    def device(self) -> str:
        """Where batches are encoded: "cpu" or "cuda[:N]"."""
        self._batch  # noqa: B018  (resolves the device on first use: _batch_for sets it)
        return self._device or "cpu"

    @property
    def batch_encoder(self) -> str:
        """The backend that encodes batches ("onnx", "onnx-int8" or "torch")."""
        return self._batch.backend

    def encode(
        self,
        texts: Sequence[str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized, for items (the document prompt); calls
        progress(n) after each batch.

        Texts are batched longest first (as sentence-transformers does), so a batch pads to
        texts of similar length; rows come back in the input's order.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._batch.embed([texts[i] for i in rows], prompt=self.prompts.document)
            if progress is not None:
                progress(len(rows))
        return out

    def chunker(self, settings: Settings) -> Chunker | None:
        """What cuts items into windows as settings say (engine.encoder.chunking); None with
        chunking off."""
        if not settings.chunking:
            return None
        key = (settings.chunk_overlap, settings.max_chunks)
        found = self._chunkers.get(key)
        if found is None:
            tokenizer, length = self._batch.window()
            found = Chunker(tokenizer, length, self.prompts.document, *key)
            self._chunkers[key] = found
        return found

    def encode_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalized, after the query prompt; repeated queries come from
        an LRU cache."""
        with self._lock:
            cached = self._cache.get(text)
        if cached is not None:
            return cached
        vector = self._batcher(text)
        vector.setflags(write=False)
        with self._lock:
            self._cache[text] = vector
        return vector

    def _encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 query vectors: one call of the query encoder, on one
        thread when the batch or the server says other requests are under way."""
        narrow = len(texts) > 1 or self._crowded()
        return np.asarray(
            self._query.embed(texts, prompt=self.prompts.query, narrow=narrow), dtype=np.float32
        )

    def share_cores(self, crowded: Callable[[], bool]) -> None:
        """Serving: a query is encoded on every core the encoder has only while crowded() says
        no other request is under way (in any worker); otherwise on one thread, leaving the
        rest to them. Makes the encoder's one-thread session now, not in a request."""
        prepare = getattr(self._query, "prepare_narrow", None)
        if prepare is not None:
            prepare()
        self._crowded = crowded

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _gpu_batch_encoder(settings: Settings, device: str) -> TextEncoder | None:
    """onnxruntime's CUDA provider on the fp32 export (int8 is a CPU format), else torch on
    CUDA; None when neither reaches the device."""
    if _ort_cuda():
        from engine.encoder.onnx_cache import load_onnx_encoder

        encoder, _ = load_onnx_encoder(settings, "onnx", device=device)
        if "CUDAExecutionProvider" in encoder.providers:
            return encoder
        log.warning("onnxruntime could not open %s; batches fall back to torch", device)
    if _torch_cuda():
        return TorchEncoder(settings, device)
    return None


def _no_gpu(settings: Settings, why: str) -> str:
    """ "cpu" for RECSEARCH_DEVICE=auto; ConfigError for an explicit cuda."""
    if settings.device == "auto":
        log.warning("RECSEARCH_DEVICE=auto: a CUDA device was listed but %s; using the CPU", why)
        return "cpu"
    raise ConfigError(f"RECSEARCH_DEVICE={settings.device}: {why}; set RECSEARCH_DEVICE=cpu")


def describe_encoder(serving: str, manifest: Mapping[str, Any]) -> str:
    """The serving backend, and the index's when they differ: "onnx (index built with torch)".

    Indexes from before the manifest recorded it were built with torch.
    """
    built = manifest.get("model", {}).get("encoder", "torch")
    return serving if built == serving else f"{serving} (index built with {built})"


def _alone() -> bool:
    return False
