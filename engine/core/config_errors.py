"""How a bad setting is told: one line per problem, naming the variable, the value given and
what is expected (engine.core.config's Settings raise ConfigError with it)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import get_args

from pydantic import ValidationError
from pydantic.fields import FieldInfo

PREFIX = "RECSEARCH_"


def describe(error: ValidationError, fields: Mapping[str, FieldInfo]) -> str:
    """One line per bad field: the variable, the value given, what is expected."""
    lines = []
    for problem in error.errors():
        where = problem["loc"][0] if problem["loc"] else None
        if where is None:  # a check across fields
            lines.append(str(problem["msg"]).removeprefix("Value error, "))
            continue
        name = f"{PREFIX}{str(where).upper()}"
        value = problem.get("input")
        kind = problem["type"]
        if kind == "extra_forbidden":
            lines.append(f"{where} is not a recsearch setting{nearest(str(where), fields)}")
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            bound = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}.get(
                kind, "<="
            )
            limit = next(iter((problem.get("ctx") or {}).values()), "?")
            lines.append(f"{name}={value!r} is out of range: expected {bound} {limit}")
        elif kind == "bool_parsing":
            lines.append(f"{name}={value!r}: expected true/false")
        elif kind in _EXPECTED:
            lines.append(f"{name}={value!r}: {_EXPECTED[kind]}")
        elif kind == "literal_error":
            allowed = get_args(fields[str(where)].annotation)
            lines.append(f"{name}={value!r}: expected one of {', '.join(map(str, allowed))}")
        else:
            message = str(problem["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}={value!r}: {message}")
    return "; ".join(lines)


_EXPECTED = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "string_too_short": "must not be empty",
    "string_type": "expected text",
    "path_type": "expected a path",
}


def nearest(field: str, fields: Mapping[str, FieldInfo]) -> str:
    """ " (did you mean RECSEARCH_X?)" for the setting nearest field's spelling, else ""."""
    close = difflib.get_close_matches(field, list(fields), n=1)
    return f" (did you mean {PREFIX}{close[0].upper()}?)" if close else ""
