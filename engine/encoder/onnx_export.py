"""ONNX exports of a sentence-transformers model: made once, checked against torch, cached.

The cache is DATA_DIR/encoders/<sha256 of the model folder's files>/:

    model.onnx       the transformer alone (token embeddings out); the tokenizer, pooling and
                     normalization of the torch model run around it, in numpy. Exported with
                     eager attention and fused by ONNX Runtime's transformer optimizer
                     (Attention, SkipLayerNormalization, BiasGelu, ...) when the fused graph
                     agrees with the unfused one; else the unfused graph
    model-int8.onnx  model.onnx with dynamically quantized int8 weights (QInt8, per channel)
    <file>.json      how the file was made (format, opset, model hash), its sha256 and size, and
                     the probe check against torch: later starts verify the file (hashing it,
                     ~0.2 s for 90 MB) instead of loading the torch model to check it again
    .lock            flock: one process exports while the others wait, then reuse its result

Files are written to a temporary name and renamed, so a reader sees a whole file or none. A
file whose bytes, model hash, opset or format differ from its .json is exported again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
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

log = logging.getLogger(__name__)

# Bump when the export recipe changes: cached exports of another format are made again.
# 2: eager attention and ONNX Runtime's transformer fusions. all-MiniLM-L6-v2, one SciFact
# query through OnnxEncoder.embed on this 2-core host (bench/onnx_fusion.py): at 2 threads
# p50 4.07 -> 3.62 ms (SDPA traced -> eager fused), most of it from the eager trace; at 1
# thread the three are within 4 % of each other. Cosine 1.0000.
EXPORT_FORMAT = 2
# Mean cosine of the fused graph's pooled vectors to the unfused graph's on the probe texts
# below which the fusion is dropped (it only reorders float arithmetic: 1.0000 when right).
MIN_FUSED_COSINE = 0.99999
OPSET = 17
FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
# Mean cosine to torch over the probe texts below which an export does not serve.
MIN_MEAN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.98}

_LONG = (
    "Vitamin D deficiency has been associated with an increased risk of respiratory infections, "
    "and several randomized trials tested whether supplementation prevents them. The results "
    "were mixed: daily or weekly doses protected people who started with low levels, while "
    "large monthly boluses showed no benefit. Mechanistic studies suggest that the active form "
    "of the vitamin induces antimicrobial peptides such as cathelicidin in epithelial cells. "
)
# Short and long texts; the last one runs past 256 tokens, so truncation is checked too.
PROBE_TEXTS: tuple[str, ...] = (
    "",
    "beach",
    "skiing in the alps",
    "cheap flights to Lisbon in May?",
    "Crème brûlée and café au lait near the Eiffel Tower",
    "東京で一番おいしい寿司屋",
    "COVID-19 vaccine efficacy: 95% (CI 90.3–97.6) after 2 doses",
    "A quiet cabin by a lake, with a canoe, a fireplace and no Wi-Fi 🌲",
    "the the the the the",
    "Which proteins regulate autophagy in neurons, and does their loss cause neurodegeneration?",
    _LONG,
    _LONG * 4,
)


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
        write_atomically(path, lambda tmp: _quantize(cache / FILES["onnx"], tmp))
        extra = {
            "quantization": "dynamic QInt8 per-channel",
            "source_sha256": source_meta["sha256"],
        }
    else:
        made: dict[str, Any] = {}
        write_atomically(path, lambda tmp: made.update(_export(spec, tmp)))
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


def _export(spec: ModelSpec, target: Path) -> dict[str, Any]:
    """The transformer as an ONNX graph at target, fused where that is exact; returns how it
    was made (the attention implementation traced, the fused operators)."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / "unfused.onnx"
        attention, config = _trace(spec, raw)
        fused = _fuse(spec, raw, Path(tmp) / "fused.onnx", config)
        if fused is None:
            os.replace(raw, target)
            return {"attention": attention, "fused": {}}
        os.replace(Path(tmp) / "fused.onnx", target)
        return {"attention": attention, "fused": fused}


def _trace(spec: ModelSpec, target: Path, attention: str = "eager") -> tuple[str, Any]:
    """torch.onnx.export of the transformer: (the attention implementation, its config).

    Eager attention traces to plain MatMul/Softmax nodes, which ONNX Runtime's optimizer
    fuses into one Attention operator; the default (SDPA) traces to a pattern it does not
    recognize, and runs slower unfused too (bench/onnx_fusion.py compares the three).
    attention "default" traces what the model uses by default.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class Wrapper(torch.nn.Module):
        # transformers 5 changed BertModel's positional arguments: pass them by keyword.
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs).last_hidden_state  # type: ignore[no-any-return]

    tokenizer = AutoTokenizer.from_pretrained(str(spec.transformer), local_files_only=True)
    model = None
    if attention != "default":
        try:
            model = AutoModel.from_pretrained(
                str(spec.transformer), local_files_only=True, attn_implementation=attention
            ).eval()
        except (TypeError, ValueError):  # an architecture without a choice of attention
            attention = "default"
    if model is None:
        model = AutoModel.from_pretrained(str(spec.transformer), local_files_only=True).eval()
    # Texts of different lengths, so the example is padded: the trace keeps the attention mask
    # only when the example needs it (an unpadded one bakes "no mask" into the graph).
    example = tokenizer(
        ["a short text", "a somewhat longer text to pad the other"],
        padding=True,
        return_tensors="pt",
    )
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in example and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and about traced branches; the
        # probe check, not the warnings, decides whether the graph is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(model),
            tuple(example[name] for name in names),
            str(target),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes={**dict.fromkeys(names, axes), "token_embeddings": axes},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return attention, model.config


def _fuse(spec: ModelSpec, raw: Path, target: Path, config: Any) -> dict[str, int] | None:
    """ONNX Runtime's transformer optimizer on the raw graph, saved at target: the fused
    operators' counts, or None when nothing fused, the optimizer failed, or the fused graph's
    vectors differ from the raw graph's on the probe texts (then the raw graph serves)."""
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            optimized = optimize_model(
                str(raw), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1
            )
            counts = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
            if not counts:
                return None
            optimized.save_model_to_file(str(target))
    except Exception as exc:  # an architecture the optimizer does not know: keep the raw graph
        log.warning("ONNX Runtime's optimizer could not fuse %s (%s); unfused", spec.folder, exc)
        return None
    cosine = _agreement(spec, raw, target)
    if cosine < MIN_FUSED_COSINE:
        log.warning(
            "the fused graph of %s agrees with the unfused one to a mean cosine of %.6f only; "
            "serving the unfused graph",
            spec.folder,
            cosine,
        )
        return None
    return counts


def _agreement(spec: ModelSpec, a: Path, b: Path) -> float:
    """Mean cosine between two graphs' pooled vectors over the probe texts, each text alone
    and all in one padded batch (padding is where a fused attention mask could go wrong)."""
    left = OnnxEncoder(spec, a.read_bytes(), backend="onnx", threads=available_cores())
    right = OnnxEncoder(spec, b.read_bytes(), backend="onnx", threads=available_cores())
    cosines = []
    for texts in [[t] for t in PROBE_TEXTS] + [list(PROBE_TEXTS)]:
        cosines.append((left.embed(texts) * right.embed(texts)).sum(axis=1))
    return float(np.concatenate(cosines).mean())


class _QuietQuantizer(logging.Filter):
    # quantize_dynamic logs a hint to pre-process on the root logger every time, and a line
    # per tensor it skips; the optimizer logs each fusion it tries.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    quiet = _QuietQuantizer()
    root = logging.getLogger()
    root.addFilter(quiet)
    for handler in root.handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        for handler in root.handlers:
            handler.removeFilter(quiet)


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # The fused operators (Attention, SkipLayerNormalization) are in Microsoft's
            # domain, whose outputs shape inference cannot type: they are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _probe_check(encoder: OnnxEncoder, spec: ModelSpec, backend: str, path: Path) -> ProbeCheck:
    """Cosines to torch's vectors, each probe text encoded alone and all in one padded batch."""
    from sentence_transformers import SentenceTransformer

    log.info("checking %s against torch on %d probe texts", path, len(PROBE_TEXTS))
    reference = SentenceTransformer(str(spec.folder), device="cpu", local_files_only=True)
    expected = reference.encode(
        list(PROBE_TEXTS), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
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
