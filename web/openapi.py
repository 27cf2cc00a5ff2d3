"""/openapi.json (OpenAPI 3.1), generated from the routes and their typed models, and /docs.

A thin generator over pydantic's JSON Schema rather than a Flask OpenAPI extension: OpenAPI
3.1 *is* JSON Schema 2020-12, which pydantic already writes, so the spec needs only the
routes (Flask's url_map) and each view's `@operation` (web/contract.py). An extension
(flask-openapi3, spectree, apispec) would own routing or validation, which engine/ already
does through engine.core.contract, and would add a second idea of what a valid request is.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from web.contract import Operation, operation
from web.schemas import ErrorBody

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
DOCS_PAGE = Path(__file__).with_name("static") / "docs.html"
_CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_ERRORS = {
    400: "malformed request (bad JSON, nested too deeply)",
    401: "no API key (send `Authorization: Bearer <key>`), or an unknown, revoked or expired one",
    403: "the key's scope does not cover the route (insufficient_scope), or a missing or wrong "
    "CSRF token",
    404: "no such item, user, job or version",
    405: "method not allowed",
    409: "conflicts with the current state (a job of this kind is active, ...)",
    413: "body larger than RECSEARCH_MAX_REQUEST_BYTES, or a batch over its limit",
    422: "a field breaks the contract: `problems` names each",
    429: "too many wrong keys or failed sign-ins from this address, or over the rate limit "
    "(RECSEARCH_RATE_LIMIT_PER_S): see Retry-After",
    503: "not ready: no index published yet",
}


def init(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("/openapi.json")
@operation(summary="This API's OpenAPI 3.1 description", tag="docs", access="public")
def openapi_json() -> ResponseReturnValue:
    return jsonify(spec(current_app))


@bp.get("/docs")
@operation(
    summary="Human-readable API docs (HTML)",
    tag="docs",
    access="public",
    responses={200: "text/html"},
)
def docs() -> ResponseReturnValue:
    return Response(DOCS_PAGE.read_bytes(), mimetype="text/html")


def spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document for every route of the app that declares an @operation."""
    operations: list[tuple[str, str, Operation, list[dict[str, Any]]]] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        op: Operation | None = getattr(view, "openapi", None)
        if op is None:
            continue
        path, params = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operations.append((path, method.lower(), op, params))

    # Every model in one pass, so shared ones are defined once under one name.
    wanted: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]

    def want(model: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
        if (model, mode) not in wanted:
            wanted.append((model, mode))
        return {}

    for _, _, op, _ in operations:
        for model in (op.query, op.body):
            if model is not None:
                want(model)
        if op.body_schema is not None:
            op.body_schema(want)
        for response in op.responses.values():
            if isinstance(response, type):
                want(response, "serialization")
    keys, components = models_json_schema(wanted, ref_template=REF)

    def ref(model: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
        return keys[(model, mode)]  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for path, method, op, params in operations:
        paths.setdefault(path, {})[method] = _operation(op, method, path, params, ref)
    try:
        release = version("recsearch")
    except PackageNotFoundError:
        release = "0"
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "recsearch",
            "version": release,
            "description": "Personalized search and recommendations. Errors share one shape: "
            "ErrorBody.",
        },
        "paths": paths,
        "components": {
            "schemas": components.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the data dir's key (admin), or a scoped key from "
                    "`recsearch key create`: search (search, similar, item reads), events "
                    "(search and events) or admin (everything)",
                },
                "adminSession": {"type": "apiKey", "in": "cookie", "name": "session"},
            },
        },
    }
    _apply_limits(document, app)
    return document


def _apply_limits(document: dict[str, Any], app: Flask) -> None:
    """The server's own bounds (RECSEARCH_MAX_K, _MAX_BATCH_ITEMS) where models say defaults."""
    from web.extensions import runtime_of

    settings = runtime_of(app).settings
    schemas = document["components"]["schemas"]
    if "SearchQuery" in schemas:
        schemas["SearchQuery"]["properties"]["k"]["maximum"] = settings.max_k
    for methods in document["paths"].values():
        for op in methods.values():
            for parameter in op.get("parameters", []):
                if parameter["name"] == "k" and parameter["in"] == "query":
                    parameter["schema"]["maximum"] = settings.max_k
    items = document["paths"].get("/v1/items", {}).get("post")
    if items:
        for choice in items["requestBody"]["content"]["application/json"]["schema"]["oneOf"]:
            if choice.get("type") == "array":
                choice["maxItems"] = settings.max_batch_items


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params: list[dict[str, Any]] = []

    def convert(match: re.Match[str]) -> str:
        converter, name = match.group(1) or "string", match.group(2)
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if converter == "int":
            schema = {"type": "integer", "minimum": 0}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return _CONVERTER.sub(convert, rule), params


def _operation(
    op: Operation, method: str, path: str, params: list[dict[str, Any]], ref: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_"),
    }
    if op.description:
        out["description"] = op.description
    parameters = list(params)
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in schema.get("required", []),
                    "schema": _query_schema(prop),
                    **({"description": prop["description"]} if "description" in prop else {}),
                }
            )
    if parameters:
        out["parameters"] = parameters
    if op.body is not None or op.body_schema is not None:
        schema = op.body_schema(ref) if op.body_schema is not None else ref(op.body)
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    elif op.form:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            n: {"type": "string", "description": d} for n, d in op.form.items()
                        },
                    }
                }
            },
        }
    responses: dict[str, Any] = {}
    for status, body in op.responses.items():
        if isinstance(body, str) and "/" in body:  # a media type
            responses[str(status)] = {"description": body, "content": {body: {}}}
        elif isinstance(body, str):  # a description only, e.g. a redirect
            responses[str(status)] = {"description": body}
        else:
            responses[str(status)] = {
                "description": body.__doc__.splitlines()[0] if body.__doc__ else "OK",
                "content": {"application/json": {"schema": ref(body, "serialization")}},
            }
    if not responses:
        responses["200"] = {"description": "OK", "content": {"application/json": {}}}
    error = {"content": {"application/json": {"schema": ref(ErrorBody, "serialization")}}}
    for status, why in _ERRORS.items():
        if str(status) not in responses:
            responses[str(status)] = {"description": why, **error}
    out["responses"] = responses
    if op.access == "key":
        out["security"] = [{"apiKey": []}]
    elif op.access == "admin":
        out["security"] = [{"apiKey": []}, {"adminSession": []}]
    elif op.access == "key-or-open":
        out["security"] = [{}, {"apiKey": []}]
    return out


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A body field's schema as a query parameter: values arrive as text, lists as a,b."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
    if schema.get("type") == "array":
        return {"type": "string", "description": "comma-separated"}
    return schema
