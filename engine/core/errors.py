"""The engine's exceptions; web/errors.py maps each class to one HTTP status."""

from __future__ import annotations

from pydantic import Field, TypeAdapter
from pydantic.dataclasses import dataclass


def _absent(value: object) -> bool:
    return value is None


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
    """One thing wrong with one input row: where it is, which field, and why. Error bodies
    (422) and rejects files show it as it is (line and source only when known)."""

    field: str
    message: str
    line: int | None = Field(default=None, exclude_if=_absent)
    source: str | None = Field(default=None, exclude_if=_absent)

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
