"""Making the ONNX graph of a sentence-transformers model: the transformer traced with eager
attention, fused by ONNX Runtime's transformer optimizer (Attention, SkipLayerNormalization,
BiasGelu, ...) when the fused graph agrees with the unfused one, else left unfused; and its
dynamic int8 quantization. engine.encoder.onnx_cache decides when to make one and keeps it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from engine.encoder.onnx_encoder import (
    ModelSpec,
    OnnxEncoder,
    available_cores,
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


def export_graph(spec: ModelSpec, target: Path) -> dict[str, Any]:
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


def quantize(source: Path, target: Path) -> None:
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
