"""A sentence-transformers model run by ONNX Runtime: the model's own tokenizer and truncation,
the exported transformer graph, then its pooling and L2 normalization in numpy.

engine/encoder/onnx_export.py makes the graph (once per model, checked against torch),
engine/encoder/onnx_cache.py keeps it, with the tokenizer saved beside it
(engine/encoder/fast_tokenizer.py), and builds this: serving imports neither transformers nor
torch.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.encoder.fast_tokenizer import FastTokenizer, from_transformers, transformers_tokenizer

FALLBACK = "set RECSEARCH_ENCODER=torch to encode with torch instead"


@dataclass(frozen=True)
class ModelSpec:
    """What the torch model does around its transformer, read from its configuration files."""

    folder: Path  # the sentence-transformers folder
    transformer: Path  # the folder of the transformer module (tokenizer and weights)
    max_seq_length: int  # tokens; longer texts are truncated
    do_lower_case: bool
    pooling: tuple[str, ...]  # sentence-transformers pooling modes, concatenated in this order
    normalize: bool  # the model ends with a Normalize module
    # Pooling's include_prompt: False leaves a prompt's tokens out of the pooling (they still
    # go through the transformer), as instructor-style models are trained.
    include_prompt: bool = True


def model_folder(settings: Settings) -> Path:
    """The local sentence-transformers folder RECSEARCH_MODEL names (a hub name resolves to
    its local snapshot); ConfigError when there is none."""
    path = settings.model_path()
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=settings.model_offline))
    except Exception as exc:  # an invalid repo id, a missing snapshot, no network
        raise ConfigError(
            f"RECSEARCH_MODEL={settings.model!r}: cannot load the model from {path!r} ({exc}). "
            "Point it at a sentence-transformers folder, or set RECSEARCH_MODEL_OFFLINE=0 to "
            "allow downloads."
        ) from exc


def read_spec(folder: Path, model_setting: str) -> ModelSpec:
    """The model's modules (modules.json) as a ModelSpec; ConfigError for a module this
    backend cannot reproduce (Dense, ...). Prompts are engine.encoder.prompts' business."""

    def unsupported(what: str) -> ConfigError:
        return ConfigError(
            f"RECSEARCH_MODEL={model_setting!r}: {what} is not supported by the ONNX encoder; "
            f"{FALLBACK}"
        )

    modules_file = folder / "modules.json"
    # A plain transformers folder: sentence-transformers adds mean pooling.
    modules = read_json(modules_file) if modules_file.is_file() else [{"type": "Transformer"}]
    transformer: Path | None = None
    pooling: tuple[str, ...] = ("mean",) if not modules_file.is_file() else ()
    normalize = False
    include_prompt = True
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = folder / module.get("path", "")
        if kind == "Transformer" and transformer is None:
            transformer = path
        elif kind == "Pooling" and transformer is not None and not pooling:
            pooling_config = read_json(path / "config.json")
            pooling = _pooling_modes(pooling_config)
            include_prompt = bool(pooling_config.get("include_prompt", True))
        elif kind == "Normalize" and pooling:
            normalize = True
        else:
            raise unsupported(f"module {module.get('type')!r} in {modules_file}")
    if transformer is None or not pooling:
        raise unsupported(f"a module list without a Transformer and a Pooling ({modules_file})")
    bert_config = transformer / "sentence_bert_config.json"
    config = read_json(bert_config) if bert_config.is_file() else {}
    max_len = config.get("max_seq_length")
    if max_len is None:
        # sentence-transformers 6 saves it as the tokenizer's model_max_length, capped by the
        # model's positions (a folder it saved has no max_seq_length of its own).
        model_config = read_json(transformer / "config.json")
        max_len = int(model_config.get("max_position_embeddings", 512))
        tokenizer_file = transformer / "tokenizer_config.json"
        tokenizer_max = (
            read_json(tokenizer_file).get("model_max_length") if tokenizer_file.is_file() else None
        )
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < max_len:
            max_len = tokenizer_max
    return ModelSpec(
        folder=folder,
        transformer=transformer,
        max_seq_length=int(max_len),
        do_lower_case=bool(config.get("do_lower_case", False)),
        pooling=pooling,
        normalize=normalize,
        include_prompt=include_prompt,
    )


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    # sentence-transformers 6 writes "pooling_mode"; older folders one boolean per mode, which
    # it concatenates in this order.
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return (mode,)
    if isinstance(mode, list):
        return tuple(mode)
    legacy = {
        "pooling_mode_cls_token": "cls",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens": "weightedmean",
        "pooling_mode_lasttoken": "lasttoken",
    }
    return tuple(m for key, m in legacy.items() if config.get(key)) or ("mean",)


def pool(
    token_embeddings: np.ndarray,
    attention_mask: np.ndarray,
    modes: Sequence[str],
    *,
    prompt_tokens: int = 0,
) -> np.ndarray:
    """Sentence vectors as sentence-transformers' Pooling computes them.

    token_embeddings (batch, seq, hidden) float32, attention_mask (batch, seq) of 0/1;
    returns (batch, hidden * len(modes)) float32, the modes concatenated. prompt_tokens: the
    first tokens of each text (after any left padding) left out, as Pooling(include_prompt=
    False) leaves out a prompt's.
    """
    x = token_embeddings.astype(np.float32, copy=False)
    batch, seq, _ = x.shape
    rows = np.arange(batch)
    original_mask = attention_mask
    if prompt_tokens:
        start = attention_mask.argmax(axis=1) + prompt_tokens  # (batch,) past padding and prompt
        attention_mask = np.where(np.arange(seq)[None, :] < start[:, None], 0, attention_mask)
    mask = attention_mask.astype(np.float32)[:, :, None]  # (batch, seq, 1)
    parts: list[np.ndarray] = []
    for mode in modes:
        if mode == "cls":  # the first unmasked token (the first one, with right padding)
            parts.append(x[rows, attention_mask.argmax(axis=1)])
        elif mode == "max":
            parts.append(np.where(mask > 0, x, -np.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = np.clip(mask.sum(axis=1), 1e-9, None)
            parts.append((x * mask).sum(axis=1) / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "weightedmean":
            pad = original_mask.argmax(axis=1)[:, None, None]  # left padding, if any
            weights = mask * (np.arange(1, seq + 1, dtype=np.float32)[None, :, None] - pad)
            parts.append((x * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None))
        elif mode == "lasttoken":
            flipped = attention_mask[:, ::-1]
            last = seq - 1 - flipped.argmax(axis=1)
            last = np.where(flipped.max(axis=1) == 0, 0, last)
            parts.append((x * mask)[rows, last])
        else:
            raise ConfigError(f"pooling mode {mode!r} is not supported by the ONNX encoder")
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as torch.nn.functional.normalize (eps 1e-12)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class OnnxEncoder:
    """Texts → unit vectors with an exported graph in ONNX Runtime and the model's tokenizer."""

    def __init__(
        self,
        spec: ModelSpec,
        model_bytes: bytes,
        *,
        backend: str,
        threads: int,
        device: str = "cpu",
        tokenizer: Any = None,
        path: Path | None = None,
    ) -> None:
        """tokenizer: a FastTokenizer (the saved one, engine.encoder.fast_tokenizer) or
        transformers' tokenizer; None loads transformers' (which imports torch). path: the
        file model_bytes were read from (checked), for the one-thread session (embed)."""
        import onnxruntime as ort

        self.spec = spec
        self.backend = backend
        self.tokenizer = (
            tokenizer if tokenizer is not None else transformers_tokenizer(spec.transformer)
        )
        fast = (
            self.tokenizer
            if isinstance(self.tokenizer, FastTokenizer)
            else from_transformers(self.tokenizer, spec.max_seq_length)
        )
        self._core = fast.backend_tokenizer if fast is not None else None
        self._special_ids = set(getattr(fast or self.tokenizer, "all_special_ids", ()))
        # Fast tokenizers fail with "Already borrowed" when one instance tokenizes in two threads.
        self._tokenize_lock = threading.Lock()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads would spin for a while after each encode, taking the cores the
        # rest of the search (and other workers) needs right then.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: no provider chatter on every start
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: CUDA libs from pip
                ort.preload_dlls()
            device_id = int(device.partition(":")[2] or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(model_bytes, options, providers=providers)
        # A one-thread session over the same graph (read again from path), made on first use:
        # see embed(narrow=True). None: narrow calls use self.session.
        self._narrow: Any = None
        self._narrow_from = path if threads > 1 and device == "cpu" else None
        self._narrow_lock = threading.Lock()
        self.providers: list[str] = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        hidden = self.session.get_outputs()[0].shape[-1]
        self.dim = int(hidden) * len(spec.pooling)
        self._prompt_tokens: dict[str, int] = {}

    def embed(self, texts: Sequence[str], *, prompt: str = "", narrow: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized; prompt goes before each text, as
        sentence-transformers' encode(texts, prompt=prompt) puts it.

        narrow: run on one thread, not the session's pool, because other work (a request
        beside this one, another worker's) wants the other cores right now. On two cores with
        two workers, every core per call took about a tenth off the throughput at 4 and 16
        connections (its threads wait on each other while the other worker holds a core),
        and one thread per call a quarter onto a lone request's latency (web/server.py)."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        batch = [prompt + t for t in texts]
        if self.spec.do_lower_case:
            batch = [t.lower() for t in batch]
        tokens = self.tokenize(batch)
        feeds = {name: tokens[name] for name in self.input_names}
        session = self._narrow_session() if narrow else self.session
        (token_embeddings,) = session.run(None, feeds)  # (batch, seq, hidden)
        skip = self.prompt_tokens(prompt) if prompt and not self.spec.include_prompt else 0
        return l2_normalize(
            pool(token_embeddings, tokens["attention_mask"], self.spec.pooling, prompt_tokens=skip)
        )

    def window(self) -> tuple[Any, int]:
        return self.tokenizer, self.spec.max_seq_length

    def _narrow_session(self) -> Any:
        """The one-thread session, made the first time it is asked for; self.session where
        that already has one thread, runs on a GPU or came from no file."""
        if self._narrow is None and self._narrow_from is not None:
            with self._narrow_lock:
                source = self._narrow_from
                if self._narrow is None and source is not None:
                    import onnxruntime as ort

                    options = ort.SessionOptions()
                    options.intra_op_num_threads = 1
                    options.inter_op_num_threads = 1
                    options.log_severity_level = 3
                    self._narrow = ort.InferenceSession(
                        str(source), options, providers=["CPUExecutionProvider"]
                    )
                    self._narrow_from = None
        return self._narrow if self._narrow is not None else self.session

    def prepare_narrow(self) -> None:
        """Make the one-thread session now (at a server's start), not in a request."""
        self._narrow_session()

    def prompt_tokens(self, prompt: str) -> int:
        """How many leading tokens prompt makes, as sentence-transformers counts them for
        Pooling(include_prompt=False): the prompt tokenized alone, less a closing special token
        ([SEP]), so [CLS] counts as the prompt's."""
        count = self._prompt_tokens.get(prompt)
        if count is None:
            text = prompt.lower() if self.spec.do_lower_case else prompt
            ids = self.tokenize([text])["input_ids"][0]
            special = self._special_ids
            count = len(ids) - (1 if len(ids) and int(ids[-1]) in special else 0)
            self._prompt_tokens[prompt] = count
        return count

    def tokenize(self, batch: list[str]) -> dict[str, np.ndarray]:
        """The graph's inputs (and attention_mask) as (batch, seq) int64 arrays: what
        tokenizer(batch, padding=True, truncation="longest_first", max_length=...) returns."""
        with self._tokenize_lock:
            if self._core is not None:
                encodings = self._core.encode_batch(batch)
                return {
                    "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
                }
            tokens = self.tokenizer(
                batch,
                padding=True,
                truncation="longest_first",
                max_length=self.spec.max_seq_length,
                return_tensors="np",
            )
        return {name: np.asarray(values, dtype=np.int64) for name, values in tokens.items()}


def tokenizer_core(tokenizer: Any, max_length: int) -> Any:
    """transformers' tokenizer's Rust core, set to truncate and pad as the encoder calls it
    (engine.encoder.fast_tokenizer.from_transformers); None where it keeps transformers' call."""
    fast = from_transformers(tokenizer, max_length)
    return fast.backend_tokenizer if fast is not None else None


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
