"""Whole items: a text longer than the model's window is cut into overlapping windows of it.

The encoder reads the first max_seq_length tokens of a text and drops the rest (71 % of
SciFact's abstracts are longer than MiniLM's 256). The item's vector stays what it always was,
the first window; the chunker gives the windows after it, as text, so any encoder (and a Ray
pool) embeds them like any other text. An item's query similarity is then the best of its
windows (MaxP: engine.index.chunks).

Windows are cut on the model's own tokens and taken back to the text by their character
offsets, so a window re-tokenizes to what it was cut from. Each holds the tokens the model
reads after its special tokens and the document prompt; neighbours share `overlap` tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChunkSpec:
    """How items are cut: recorded in a version's manifest, so a build reuses the chunk
    vectors of a version cut the same way only."""

    window: int  # tokens of item text a window holds
    overlap: int
    most: int  # windows an item has at most, the first included

    @property
    def stride(self) -> int:
        return max(1, self.window - self.overlap)

    def tag(self) -> str:
        return f"chunks:{self.window}/{self.overlap}/{self.most}"

    def to_dict(self) -> dict[str, int]:
        return {"window": self.window, "overlap": self.overlap, "max_chunks": self.most}

    @classmethod
    def from_dict(cls, found: dict[str, Any] | None) -> ChunkSpec | None:
        if not found:
            return None
        return cls(int(found["window"]), int(found["overlap"]), int(found["max_chunks"]))


class Chunker:
    """Text → its windows after the first (none for a text that fits the model's window)."""

    def __init__(self, tokenizer: Any, max_seq_length: int, prompt: str, overlap: int, most: int):
        """tokenizer: the model's fast tokenizer (transformers'); its Rust core is copied, set
        to cut nothing and add no special tokens."""
        from tokenizers import Tokenizer

        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("chunking needs the model's fast tokenizer (tokenizer.json)")
        core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        core.no_truncation()
        core.no_padding()
        self._core = core
        self._lock = threading.Lock()  # a fast tokenizer is not to be shared by two threads
        special = 2  # [CLS] … [SEP], or <s> … </s>
        prompt_tokens = len(core.encode(prompt, add_special_tokens=False).ids) if prompt else 0
        window = max_seq_length - special - prompt_tokens
        if window < 16:
            raise ValueError(f"a window of {window} tokens is too short to chunk")
        self.spec = ChunkSpec(window, min(overlap, window // 2), most)

    def extra(self, text: str) -> list[str]:
        """The windows of text after the first, at most spec.most - 1, in order."""
        spec = self.spec
        if spec.most <= 1 or len(text) < spec.window:  # a token has at least one character
            return []
        with self._lock:
            encoding = self._core.encode(text, add_special_tokens=False)
        offsets, words = encoding.offsets, encoding.word_ids
        n = len(offsets)
        out: list[str] = []
        start = 0
        while start + spec.window < n and len(out) < spec.most - 1:
            # Windows begin and end on whole words: a word cut in two reads as another.
            begin = start + spec.stride
            while (
                begin > start + 1 and words[begin] is not None and words[begin - 1] == words[begin]
            ):
                begin -= 1
            end = min(begin + spec.window, n)
            while (
                end < n
                and end > begin + 1
                and words[end] is not None
                and words[end - 1] == words[end]
            ):
                end -= 1
            start = begin
            out.append(text[offsets[begin][0] : offsets[end - 1][1]])
        return out

    def split(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """Every text's extra windows, flat, and the position in texts each came from."""
        chunks: list[str] = []
        owners: list[int] = []
        for i, text in enumerate(texts):
            found = self.extra(text)
            chunks += found
            owners += [i] * len(found)
        return chunks, owners
