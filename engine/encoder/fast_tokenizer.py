"""The model's tokenizer as the ONNX encoder runs it, saved beside the export, so that a start
reads it with the `tokenizers` library alone: transformers (which imports torch, 1-2 s of every
`recsearch search` and server worker start) loads only where the file is made.

The file (TOKENIZER_FILE in the export folder, engine.encoder.onnx_cache) holds transformers'
fast tokenizer's Rust core, set to truncate and pad as
tokenizer(batch, padding=True, truncation="longest_first", max_length=max_seq_length) does, and
what the encoder reads besides (the special token ids); with the model hash, the window and the
transformers and tokenizers versions it was made by, and the core's sha256. A file that does not
parse, or whose hash, window, versions or sha256 differ, is made again from transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.core.files import write_json_durably

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer-core.json"
# Bump when what the file holds, or how it is made, changes.
TOKENIZER_FORMAT = 1


class FastTokenizer:
    """What the ONNX encoder and the chunker (engine.encoder.chunking) read of transformers'
    fast tokenizer: is_fast, backend_tokenizer (the Rust core, truncating and padding as the
    encoder calls it) and all_special_ids."""

    is_fast = True

    def __init__(self, core: Any, all_special_ids: Sequence[int]) -> None:
        self.backend_tokenizer = core  # a tokenizers.Tokenizer
        self.all_special_ids = [int(i) for i in all_special_ids]


def from_transformers(tokenizer: Any, max_length: int) -> FastTokenizer | None:
    """transformers' tokenizer as a FastTokenizer: its Rust core, copied and set once to
    truncate and pad as tokenizer(batch, padding=True, truncation="longest_first",
    max_length=max_length) does; None for a tokenizer that has no core (a slow one) or no
    padding token, which keep that call.

    That call sets truncation and padding on the shared core and wraps the result in
    transformers' Python layers each time: 0.46 ms of a query's encode here, against
    0.13 ms for the core's own encode_batch and the arrays (bench/onnx_fusion.py times
    both). The copy is only read, so nothing is reset per call.
    """
    from tokenizers import Tokenizer

    if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token_id is None:
        return None
    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    core.enable_truncation(
        max_length, stride=0, strategy="longest_first", direction=tokenizer.truncation_side
    )
    core.enable_padding(
        direction=tokenizer.padding_side,
        pad_id=tokenizer.pad_token_id,
        pad_type_id=tokenizer.pad_token_type_id,
        pad_token=tokenizer.pad_token,
    )
    return FastTokenizer(core, getattr(tokenizer, "all_special_ids", ()))


def transformers_tokenizer(transformer: Path) -> Any:
    """The model's tokenizer as sentence-transformers loads it (imports transformers)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(transformer), local_files_only=True)


def cached_tokenizer(transformer: Path, max_length: int, folder: Path, model_hash: str) -> Any:
    """The tokenizer saved in folder when it is whole and made for this model, window and
    these library versions; else transformers' tokenizer, saved there for later starts (a
    FastTokenizer is returned either way, unless the model's tokenizer has no fast core:
    then transformers' own, and nothing is saved)."""
    path = folder / TOKENIZER_FILE
    problem, saved = _read(path, model_hash, max_length)
    if saved is not None:
        return saved
    if path.exists():
        log.warning("saved tokenizer %s is unusable (%s); making it again", path, problem)
    tokenizer = transformers_tokenizer(transformer)
    fast = from_transformers(tokenizer, max_length)
    if fast is None:
        return tokenizer
    core = fast.backend_tokenizer.to_str()
    record = {
        **_expected(model_hash, max_length),
        "all_special_ids": fast.all_special_ids,
        "core_sha256": hashlib.sha256(core.encode()).hexdigest(),
        "core": core,
    }
    try:
        write_json_durably(path, record)
    except OSError as exc:  # a read-only cache: this start works, the next makes it again
        log.warning("could not save the tokenizer to %s (%s)", path, exc)
    return fast


def tokenizer_problem(folder: Path, model_hash: str, max_length: int) -> str | None:
    """Why the tokenizer saved in folder cannot serve, or None."""
    return _read(folder / TOKENIZER_FILE, model_hash, max_length)[0]


def _read(path: Path, model_hash: str, max_length: int) -> tuple[str | None, FastTokenizer | None]:
    from tokenizers import Tokenizer

    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError) as exc:
        return f"unreadable: {exc}", None
    if not isinstance(record, dict):
        return "not a JSON object", None
    for key, value in _expected(model_hash, max_length).items():
        if record.get(key) != value:
            return f"{key} {record.get(key)!r}, expected {value!r}", None
    core = record.get("core")
    if not isinstance(core, str) or hashlib.sha256(core.encode()).hexdigest() != record.get(
        "core_sha256"
    ):
        return "sha256 differs from its record", None
    try:
        return None, FastTokenizer(Tokenizer.from_str(core), record["all_special_ids"])
    except Exception as exc:  # a core this tokenizers version cannot read
        return f"does not load: {exc}", None


def _expected(model_hash: str, max_length: int) -> dict[str, Any]:
    return {
        "format": TOKENIZER_FORMAT,
        "model_hash": model_hash,
        "max_seq_length": max_length,
        "versions": {name: _version(name) for name in ("transformers", "tokenizers")},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
