"""The engine's exceptions; web/errors.py maps each class to one HTTP status.

An error names the bad value, but never echoes all of it: a value is shown up to
SHOWN_CHARS characters, then "…" and its full length (`shown`), and every error message and
Problem passes through `readable`, which cuts any run over LONG_RUN_CHARS characters without
a space (a 400-digit number, a 100 kB id) the same way, wherever the message was written.
"""

from __future__ import annotations

import re

from pydantic import Field, TypeAdapter, field_validator
from pydantic.dataclasses import dataclass

# How much of a value an error message shows.
SHOWN_CHARS = 60
# A run without spaces this long in a message is an echoed value, not words; a message, one
# Problem's or a whole error's, is cut at MAX_MESSAGE_CHARS.
LONG_RUN_CHARS = 200
MAX_MESSAGE_CHARS = 2_000
_LONG_RUN = re.compile(rf"\S{{{LONG_RUN_CHARS + 1},}}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _absent(value: object) -> bool:
    return value is None


def clip(text: str, limit: int = SHOWN_CHARS, unit: str = "characters") -> str:
    """`text` if it is at most `limit` characters, else its start, "…" and its full length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} {unit})"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """repr(value) as an error message shows it: `'abc'`, `1000000000… (401 digits)`."""
    if isinstance(value, int) and not isinstance(value, bool):
        sign = "-" if value < 0 else ""
        try:
            digits = str(abs(value))
        except ValueError:  # over Python's int_max_str_digits (4,300)
            return f"an integer of about {int(abs(value).bit_length() * 0.30103):,} digits"
        return sign + clip(digits, min(limit, 20), "digits")
    return clip(repr(value), limit)


def readable(message: str) -> str:
    """A message with every echoed value (a long run without spaces) cut to a readable length,
    and at most MAX_MESSAGE_CHARS characters in all; a lone surrogate (from a JSON key, say)
    escaped as `\\udfff`, so that the message can be written as UTF-8."""
    if _SURROGATE.search(message):
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) > LONG_RUN_CHARS:
        message = _LONG_RUN.sub(lambda m: clip(m.group(), SHOWN_CHARS), message)
    return clip(message, MAX_MESSAGE_CHARS)


class RecsearchError(Exception):
    """Base class of every error the engine raises on purpose; its text is `readable`."""

    def __str__(self) -> str:
        return readable(super().__str__())


class NotFound(RecsearchError):
    """An unknown item, user or version (HTTP 404)."""


class InvalidInput(RecsearchError):
    """Input that breaks the contract; `problems` names each field (HTTP 422)."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class TooLarge(RecsearchError):
    """A request or batch over a configured bound (HTTP 413)."""


class NotReady(RecsearchError):
    """The engine cannot answer yet, e.g. no index is published (HTTP 503)."""


class ConfigError(RecsearchError):
    """A setting that cannot be used, named with its environment variable."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input row: where it is, which field, and why. Error bodies
    (422) and rejects files show it as it is (line and source only when known)."""

    field: str
    message: str
    line: int | None = Field(default=None, exclude_if=_absent)
    source: str | None = Field(default=None, exclude_if=_absent)

    @field_validator("field", "message")
    @classmethod
    def _readable(cls, text: str) -> str:
        return readable(text)

    def to_dict(self) -> dict[str, object]:
        """As JSON shows it."""
        return _PROBLEM.dump_python(self, mode="json")  # type: ignore[no-any-return]

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where += self.source
        if self.line is not None:
            where += f":{self.line}" if where else f"line {self.line}"
        prefix = f"{where}: " if where else ""
        return f"{prefix}{self.field}: {self.message}"


_PROBLEM = TypeAdapter(Problem)


class Conflict(RecsearchError):
    """The request clashes with the current state, e.g. a build refused by a quality gate (409)."""


class Unauthenticated(RecsearchError):
    """A missing, unknown, revoked or expired API key (HTTP 401)."""


class NotPermitted(RecsearchError):
    """A valid API key whose scope does not cover the request (HTTP 403)."""
