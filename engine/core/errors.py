"""The engine's exceptions; web/errors.py maps each class to one HTTP status."""

from __future__ import annotations

from dataclasses import dataclass


class RecsearchError(Exception):
    """Base class of every error the engine raises on purpose."""


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
    """One thing wrong with one input row: where it is, which field, and why."""

    field: str
    message: str
    line: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where += self.source
        if self.line is not None:
            where += f":{self.line}" if where else f"line {self.line}"
        prefix = f"{where}: " if where else ""
        return f"{prefix}{self.field}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"field": self.field, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        if self.source is not None:
            out["source"] = self.source
        return out


class Conflict(RecsearchError):
    """The request clashes with the current state, e.g. a build refused by a quality gate (409)."""
