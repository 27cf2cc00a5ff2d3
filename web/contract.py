"""Reading a request against the typed contract, and declaring each route's contract.

A view reads its input with `body(Model)` or `query(Model)` (engine.core.contract turns every
problem into a 422 naming the field) and declares what it takes and returns with
`@operation(...)`, which is all web/openapi.py needs to describe the route.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import Response, current_app, request
from pydantic import BaseModel
from werkzeug.exceptions import BadRequest

from engine.core.contract import field_name, too_many_digits, validate
from engine.core.errors import InvalidInput, Problem

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

# Who may call a route: anyone, the API key, or the key unless configured open (search,
# events: open on loopback by default).
Access = Literal["public", "key", "key-or-open", "admin"]


@dataclass(frozen=True)
class Operation:
    """What one route takes and returns, for /openapi.json."""

    summary: str
    tag: str
    access: Access = "key"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    # A schema for bodies a single model cannot express (one item, an array, or {"items"}).
    body_schema: Callable[[Callable[[type[BaseModel]], dict[str, Any]]], dict[str, Any]] | None = (
        None
    )
    body_required: bool = True
    form: dict[str, str] = field(default_factory=dict)  # urlencoded form fields: description
    responses: Mapping[int, type[BaseModel] | str] = field(default_factory=dict)
    description: str = ""


def operation(**spec: Any) -> Callable[[F], F]:
    """Attach an Operation to a view function (put it under the route decorator)."""

    def mark(view: F) -> F:
        view.__dict__["openapi"] = Operation(**spec)
        return view

    return mark


def respond(model: BaseModel, status: int = 200) -> Response:
    """A typed body as the response: the model is the serializer, as /openapi.json says."""
    return Response(model.model_dump_json() + "\n", status=status, mimetype="application/json")


def json_payload(*, required: bool = True) -> Any:
    """The parsed JSON body. Missing (when required), malformed, NaN/Infinity or nested past
    Python's recursion limit is a 400; over RECSEARCH_MAX_REQUEST_BYTES a 413; an integer
    longer than Python reads (4,300 digits) a 422 naming where it is. A number beyond a
    double's range (1e400) reads as an infinity, which every numeric field refuses (422)."""
    data = request.get_data(cache=True)
    if not data.strip():
        if required:
            raise BadRequest("the request body is empty; send JSON")
        return None
    if not request.is_json:
        raise BadRequest("the request body is not JSON: send Content-Type: application/json")
    try:
        return json.loads(data, parse_constant=_no_constants)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        # Not the syntax: NaN or Infinity, or an integer past int_max_str_digits.
        too_long = _too_long_integers(data)
        if too_long:
            problems = [
                Problem(field_name(loc) if loc else "(body)", too_many_digits(n))
                for loc, n in too_long
            ]
            raise InvalidInput("; ".join(str(p) for p in problems[:20]), problems) from None
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _LongInteger:
    """Stands in for an integer too long to read, so the parse can go on and say where."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _long_integer(text: str) -> Any:
    digits = len(text.lstrip("-"))
    return _LongInteger(digits) if digits > sys.get_int_max_str_digits() > 0 else int(text)


def _too_long_integers(data: bytes) -> list[tuple[tuple[int | str, ...], int]]:
    """(location, digits) of each integer in `data` too long to read; [] when the body fails
    to parse for another reason as well. Only on this error path: the hook costs a call per
    integer."""
    try:
        parsed = json.loads(data, parse_constant=_no_constants, parse_int=_long_integer)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    found: list[tuple[tuple[int | str, ...], int]] = []
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), parsed)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, _LongInteger):
            found.append((loc, value.digits))
        elif isinstance(value, dict):
            stack.extend(((*loc, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(value))
    return sorted(
        found, key=lambda f: [(1, 0, p) if isinstance(p, str) else (0, p, "") for p in f[0]]
    )


def body(model: type[M], *, required: bool = True, **context: Any) -> M:
    """The JSON body validated as `model`; an absent optional body validates as {}."""
    payload = json_payload(required=required)
    return validate(model, {} if payload is None else payload, context=_context(context))


def query(model: type[M], *, lists: tuple[str, ...] = (), **context: Any) -> M:
    """The query string validated as `model`; `lists` may repeat (?a=1&a=2) or be a,b."""
    raw: dict[str, Any] = {}
    for name in request.args:
        values = request.args.getlist(name)
        raw[name] = ",".join(values) if name in lists else values[-1]
    return validate(model, raw, context=_context(context))


def _context(extra: dict[str, Any]) -> dict[str, Any]:
    from web.extensions import runtime_of

    settings = runtime_of(current_app).settings
    return {"max_k": settings.max_k, **extra}
