"""Reading a request against the typed contract, and declaring each route's contract.

A view reads its input with `body(Model)` or `query(Model)` (engine.core.contract turns every
problem into a 422 naming the field) and declares what it takes and returns with
`@operation(...)`, which is all web/openapi.py needs to describe the route.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import Response, current_app, request
from pydantic import BaseModel
from werkzeug.exceptions import BadRequest

from engine.core.contract import validate

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
    Python's recursion limit is a 400; over RECSEARCH_MAX_REQUEST_BYTES a 413."""
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
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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
