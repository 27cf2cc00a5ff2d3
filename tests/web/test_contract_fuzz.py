"""Contract fuzzing on SQLite and PostgreSQL, over a built store (the sample catalog, indexed).

Three layers:
- a seeded Hypothesis fuzz of every route through Flask's test client: hostile JSON bodies,
  query strings, path segments, forms, headers and methods. Every answer is under 500, is
  strict JSON where it says JSON, and every 4xx of the API has the one error shape (a 422
  names its fields) with any value it echoes cut to a readable length; number literals no
  double holds and integers past Python's 4,300 digits (raw JSON text) go everywhere a value
  does, and into every numeric field of the contract, where each is a 422;
- sequences of valid requests with extreme values (huge ratings, old timestamps, wordless
  items, a model trained on them), checked the same way, and for exceptions that jobs and
  background threads log;
- schemathesis over every operation of the live /openapi.json, against a real HTTP server:
  no 5xx, no broken connection, and each status, content type and body as documented.
  bench/contract_fuzz.py is the same run at 10,000+ cases.

Each test records every bad answer and fails once at the end with all of them, grouped by
route and cause with the shortest request that showed each, instead of stopping (and
shrinking) at the first: one run lists everything there is to fix.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import HTTPException

from bench.contract_fuzz import (
    HUGE_LITERALS,
    NUMBER,
    NUMERIC_URLS,
    finish_jobs,
    fuzz,
    live_server,
    long_echo,
    numeric_bodies,
)
from engine.catalog.items import ItemIn
from engine.core.config import Settings
from engine.index.schemas import VersionBody
from engine.runtime import Runtime
from engine.search.request import SearchQuery
from engine.users.events import EVENT_TYPES, EventBody
from indexer.schemas import TrainBody, TrainEncoderBody
from tests.conftest import ROOT, SAMPLE_CATALOG

# A 100 kB id is a fair example; Hypothesis only warns that printing it costs something.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# Hypothesis examples per group of routes: well under a minute per database in all.
EXAMPLES = 300
# Sequences of valid requests (each up to 6 steps, a job waited for now and then).
SEQUENCES = 100
# schemathesis examples per operation and mode (positive, negative) against the live server.
LIVE_EXAMPLES = 25

# Every route of the app (url_map), so that a new route fails test_every_route_is_fuzzed
# until it gets a place in the fuzz below.
ROUTES = {
    ("GET", "/v1/search"),
    ("POST", "/v1/search"),
    ("POST", "/v1/items"),
    ("GET", "/v1/items/<path:item_id>"),
    ("DELETE", "/v1/items/<path:item_id>"),
    ("POST", "/v1/events"),
    ("GET", "/v1/users/<path:user_id>"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/metrics"),
    ("GET", "/static/<path:filename>"),
    ("POST", "/admin/api/rebuild"),
    ("POST", "/admin/api/train"),
    ("POST", "/admin/api/train-encoder"),
    ("GET", "/admin/api/jobs"),
    ("GET", "/admin/api/jobs/<int:job_id>"),
    ("POST", "/admin/api/jobs/<int:job_id>/cancel"),
    ("POST", "/admin/api/rollback"),
    ("POST", "/admin/api/promote"),
    ("GET", "/admin/api/search"),
    ("GET", "/admin/api/status"),
    ("POST", "/admin/api/rules"),
    ("GET", "/admin/api/rules"),
    ("DELETE", "/admin/api/rules/<int:rule_id>"),
    ("POST", "/admin/api/experiments"),
    ("GET", "/admin/api/experiments"),
    ("GET", "/admin/api/experiments/<int:experiment_id>"),
    ("POST", "/admin/api/experiments/<int:experiment_id>/stop"),
    ("POST", "/admin/api/experiments/<int:experiment_id>/promote"),
    ("GET", "/v1/items/<path:item_id>/similar"),
    ("GET", "/admin/api/users/<path:user_id>"),
    ("GET", "/admin/api/items/<path:item_id>"),
    ("GET", "/admin/"),
    ("GET", "/admin/login"),
    ("POST", "/admin/login"),
    ("POST", "/admin/logout"),
    ("GET", "/admin/static/<path:filename>"),
}
# Flask's <int:job_id> as OpenAPI's {job_id}.
OPENAPI_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")
# The admin page's own views answer in HTML, errors included (a form that says what failed).
HTML_PAGES = ("/admin/", "/admin/login", "/admin/logout")

# Characters that break naive code: NUL, lone surrogates, controls, separators, BOM, escapes.
NASTY_CHARS = [
    "\x00",
    "\udfff",
    "\ud800",
    "\x1f",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "\ufffd",
    "\U0010ffff",
    "\U0001f600",
    "%",
    "/",
    "\\",
    "..",
    ",",
    " ",
    "\t",
    "\n",
    "'",
    '"',
    "&",
    "=",
    "?",
    "#",
]
NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\udfff",
    "\ud800x",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e309",
    "-0",
    "0x10",
    "null",
    "true",
    "../../etc/passwd",
    "%00",
    "%ED%BF%BF",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "\r\n\r\nX-Injected: 1",
    "1970-01-01T00:00:00",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "v000001",
    "v" + "9" * 12,
    "a" * 257,
    "a" * 2_001,
    "x" * 100_001,
    "\U0001f600" * 300,
    "1" + "0" * 5_000,
    "1e400",
]
NASTY_NUMBERS = [
    0,
    -1,
    1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    -(10**300),
    0.5,
    1.0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    631_152_000,
    9_999_999_999.5,
    10**400,  # no double holds it: float() raises OverflowError
    -(10**400),
]
# HUGE_LITERALS (number literals json.dumps cannot write) go into bodies as raw JSON text in
# place of a marker (with_literals).
LITERAL_MARKERS = [f"\x01literal{i}\x01" for i in range(len(HUGE_LITERALS))]
# Bodies that are not JSON, or JSON that Python's parser chokes on.
RAW_BODIES = [
    b"",
    b"   ",
    b"{",
    b'{"q": "x"',
    b"[" * 5_000 + b"]" * 5_000,
    b"[" * 200_000 + b"]" * 200_000,
    b'{"a":' * 2_000 + b"1" + b"}" * 2_000,
    b"NaN",
    b'{"q": "x", "k": NaN}',
    b'{"k": Infinity}',
    b'{"k": -Infinity}',
    b'{"k": 1' + b"0" * 5_000 + b"}",
    b'{"value": 1e999}',
    b'{"q": "\xff\xfe"}',
    b'{"q": "\xed\xbf\xbf"}',
    b'"\\udfff"',
    b'{"q": "\\ud800"}',
    b'{"q": "\\u0000"}',
    b"\xef\xbb\xbf{}",
    b"\xff\xfe{\x00}\x00",
    b'{"q": "x", "q": 5}',
    b"null",
    b"0",
    b"[]",
    b"{}",
    b'{"items": []}',
    b'{"events": []}',
    b'{"events": {}}',
    b'{"events": null, "x": 1}',
]
QUERY_JUNK = ["%00", "%ED%BF%BF", "%FF%FE", "%C0%80", "%", "%Z", "%%", "+", "&", "=", ";", "#"]
PATH_JUNK = [
    "%00",
    "a%00b",
    "%ED%BF%BF",
    "%ED%A0%80",
    "%FF",
    "%C0%AE%C0%AE/",
    "..",
    "../",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "a/../../b",
    "%5c..%5c..%5cwindows",
    "%20",
    "%09",
    "%0d%0aX-Injected:%201",
    "~",
    "9" * 30,
    "-1",
    "0",
    "1e3",
    "0x1",
    "x" * 257,
    "x" * 5_000,
    "paris-france",
    "admin.js",
    "docs.html",
]


def nasty_text() -> st.SearchStrategy[str]:
    chars = st.one_of(st.characters(), st.sampled_from(NASTY_CHARS))
    return st.one_of(
        st.sampled_from(NASTY_STRINGS), st.lists(chars, max_size=24).map("".join), st.text()
    )


def numbers() -> st.SearchStrategy[int | float]:
    return st.one_of(
        st.sampled_from(NASTY_NUMBERS),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
    )


def with_literals(data: bytes) -> bytes:
    """JSON text with each literal marker replaced by its number literal (HUGE_LITERALS)."""
    for marker, literal in zip(LITERAL_MARKERS, HUGE_LITERALS, strict=True):
        data = data.replace(json.dumps(marker).encode(), literal.encode())
    return data


def json_values(names: list[str]) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars of every type (huge number literals as markers), and arrays
    and objects nested a few deep."""
    markers = st.sampled_from(LITERAL_MARKERS)
    scalars = st.one_of(st.none(), st.booleans(), numbers(), markers, nasty_text())
    keys = st.one_of(st.sampled_from(names), nasty_text())
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=20,
    )


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"a": [value]}
    return value


def first_catalog_id() -> str:
    with SAMPLE_CATALOG.open(encoding="utf-8") as fh:
        return str(json.loads(fh.readline())["id"])


# Per route: a valid body and its model's field names; near-valid bodies break one field.
BODY_ROUTES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "/v1/search": ({"q": "beach", "k": 5}, list(SearchQuery.model_fields)),
    "/v1/items": ({"id": "fuzz-item", "title": "Fuzz item"}, list(ItemIn.model_fields)),
    "/v1/events": (
        {"user_id": "fuzz-user", "item_id": first_catalog_id(), "type": "view"},
        list(EventBody.model_fields),
    ),
    "/admin/api/train": ({"source": "events"}, list(TrainBody.model_fields)),
    "/admin/api/train-encoder": ({"epochs": 1}, list(TrainEncoderBody.model_fields)),
    "/admin/api/rollback": ({"version": "v000001"}, list(VersionBody.model_fields)),
    "/admin/api/promote": ({"version": "v000001"}, list(VersionBody.model_fields)),
    "/admin/api/rebuild": ({}, []),
    "/admin/api/jobs/1/cancel": ({}, []),
}
ALL_FIELDS = sorted({name for _, names in BODY_ROUTES.values() for name in names})


@st.composite
def near_valid(draw: st.DrawFn, route: str) -> Any:
    """The route's valid body with some fields broken, dropped or added, in each wrapping."""
    base, names = BODY_ROUTES[route]
    body = dict(base)
    for name in draw(st.lists(st.sampled_from(names or ["x"]), max_size=3, unique=True)):
        action = draw(st.sampled_from(["replace", "replace", "drop"]))
        if action == "drop":
            body.pop(name, None)
        else:
            body[name] = draw(
                st.one_of(
                    json_values(ALL_FIELDS),
                    st.sampled_from([nested(60), nested(600), [base] * 3, {"": None}]),
                    st.sampled_from(LITERAL_MARKERS),
                )
            )
    if draw(st.booleans()) and draw(st.booleans()):
        body[draw(nasty_text())] = draw(json_values(ALL_FIELDS))
    if route == "/v1/items":
        return draw(st.sampled_from([body, [body], [body, body], {"items": [body, base]}]))
    if route == "/v1/events":
        return draw(st.sampled_from([body, {"events": [body]}, {"events": [base, body] * 3}]))
    return body


@st.composite
def json_requests(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """(route, body bytes, content type): near-valid, any JSON, or not JSON at all."""
    route = draw(st.sampled_from(sorted(BODY_ROUTES)))
    kind = draw(st.sampled_from(["near", "near", "any", "raw"]))
    if kind == "raw":
        data = draw(st.sampled_from(RAW_BODIES))
    else:
        value = near_valid(route) if kind == "near" else json_values(ALL_FIELDS)
        drawn = draw(value)
        if draw(st.booleans()):
            data = json.dumps(drawn).encode()  # lone surrogates as \udfff escapes
        else:  # lone surrogates as the invalid UTF-8 bytes a careless client sends
            data = json.dumps(drawn, ensure_ascii=False).encode("utf-8", "surrogatepass")
        data = with_literals(data)
    content_type = draw(
        st.sampled_from(
            ["application/json"] * 6
            + ["application/json; charset=latin-1", "text/plain", "application/vnd.x+json", None]
        )
    )
    return route, data, content_type


def encoded(text: str, safe: str = "") -> str:
    """Percent-encoded UTF-8, lone surrogates included (as a careless client would send them)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


def query_parts() -> st.SearchStrategy[str]:
    names = st.one_of(
        st.sampled_from([*SearchQuery.model_fields, "q[]", "__proto__", "K", ""]), nasty_text()
    )
    values = st.one_of(
        nasty_text(),
        numbers().map(str),
        st.sampled_from(["true", "false", "yes", "off", "all", "none", "purchased", "2", ""]),
        st.lists(st.sampled_from(["paris-france", "", " ", "x" * 300]), max_size=60).map(",".join),
    )
    pair = st.tuples(names, values).map(lambda p: f"{encoded(p[0])}={encoded(p[1])}")
    return st.one_of(
        pair,
        pair,
        st.sampled_from(QUERY_JUNK),
        st.sampled_from(QUERY_JUNK).map(lambda junk: f"q=a{junk}b"),
    )


QUERY_ROUTES = [
    "/v1/search",
    "/v1/search",
    "/admin/api/search",
    "/admin/api/search",
    "/v1/items/paris-france",
    "/v1/users/fuzz-user",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/docs",
    "/metrics",
    "/admin/api/jobs",
    "/admin/api/jobs/1",
    "/admin/api/status",
    "/admin/api/rules",
    "/admin/api/experiments",
    "/admin/api/experiments/1",
    "/v1/items/paris-france/similar",
    "/admin/api/users/fuzz-user",
    "/admin/api/items/paris-france",
    "/admin/login",
    "/admin/",
    "/static/docs.html",
]
SEGMENT_ROUTES = [
    ("GET", "/v1/items/{}"),
    ("DELETE", "/v1/items/{}"),
    ("GET", "/v1/users/{}"),
    ("GET", "/admin/api/jobs/{}"),
    ("POST", "/admin/api/jobs/{}/cancel"),
    ("DELETE", "/admin/api/rules/{}"),
    ("GET", "/static/{}"),
    ("GET", "/admin/static/{}"),
]


def segments() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(PATH_JUNK),
        nasty_text().map(encoded),
        nasty_text().map(lambda t: encoded(t, safe="/")),
        st.lists(st.sampled_from(PATH_JUNK), min_size=2, max_size=4).map("/".join),
    )


# Valid requests with extreme values, on a few users and items, so that they pile up: sums
# of ratings, decays of old events, features of new items, a model trained on all of it.
USERS = ["fuzz-u1", "fuzz-u2", "42"]
NEW_ITEMS = ["fuzz-i1", "fuzz-i2"]
CATALOG_ITEMS = [first_catalog_id(), "london-united-kingdom"]
EXTREME_VALUES = [1e308, -1e308, 1e300, 1e155, 5e-324, 2**63 - 1, -(2**63)]
TIMES: list[Any] = [
    None,
    631_152_000,
    631_152_000.5,
    "1990-01-01T00:00:00",
    "2000-02-29T12:00:00+14:00",
    "2020-01-01T00:00:00.000001Z",
]


def item_ids() -> st.SearchStrategy[str]:
    return st.sampled_from([*CATALOG_ITEMS, *NEW_ITEMS])


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "user_id": draw(st.sampled_from(USERS)),
        # Mostly items that exist: one unknown item refuses the whole batch.
        "item_id": draw(st.sampled_from([*CATALOG_ITEMS, *CATALOG_ITEMS, NEW_ITEMS[0]])),
        "type": draw(st.sampled_from(EVENT_TYPES)),
    }
    values = st.one_of(st.sampled_from(EXTREME_VALUES), st.floats(0, 5), numbers())
    if event["type"] == "rating" or draw(st.booleans()):
        event["value"] = draw(values)
    optional = {
        "ts": st.sampled_from(TIMES),
        "event_id": st.sampled_from(["e1", "e2", "e3"]),
        "request_id": st.sampled_from(["r" * 32, "x"]),
    }
    for name, strategy in optional.items():
        if draw(st.integers(0, 3)) == 0:
            event[name] = draw(strategy)
    return event


def items() -> st.SearchStrategy[dict[str, Any]]:
    words = st.sampled_from(["Beach", "x", "It", "the", "Up", "\u00e9t\u00e9", "\U0001f600", "a b"])
    return st.fixed_dictionaries(
        {"id": st.sampled_from(NEW_ITEMS), "title": words},
        optional={
            "text": st.one_of(st.none(), words, nasty_text()),
            "category": st.sampled_from([None, "beach", "city", "\u00e9t\u00e9"]),
            "tags": st.lists(words, max_size=3),
            "attributes": st.dictionaries(
                st.sampled_from(["avg_daily_cost_usd", "lat", "price", "family_friendly"]),
                st.one_of(numbers(), st.booleans(), words),
                max_size=3,
            ),
        },
    )


# Sequences that each found a bug once, always run first (their own users, so that the
# generated ones do not start from a broken state): two huge ratings by one user; a new item
# whose text has no word BM25 indexes; a model trained on huge event values.
PINNED_RATINGS: list[tuple[str, Any]] = [
    (
        "events",
        [
            {"user_id": "pin-u1", "item_id": item, "type": "rating", "value": 1e308}
            for item in CATALOG_ITEMS
        ],
    ),
    ("user", "pin-u1"),
    ("search", {"user_id": "pin-u1", "q": "beach", "explain": True}),
]
PINNED_WORDLESS_ITEM: list[tuple[str, Any]] = [
    ("items", [{"id": NEW_ITEMS[0], "title": "It"}]),
    ("search", {"q": "beach"}),
]
PINNED_TRAINING: list[tuple[str, Any]] = [
    (
        "events",
        [
            {"user_id": user, "item_id": item, "type": kind, "value": value}
            for user in ("pin-u2", "pin-u3", "pin-u4")
            for item, kind, value in [
                (CATALOG_ITEMS[0], "purchase", 1e308),
                (CATALOG_ITEMS[1], "view", 1e308),
                (CATALOG_ITEMS[0], "click", -1e308),
            ]
        ],
    ),
    ("job", ("train", {"source": "events", "promote": True})),
    ("search", {"q": "x", "explain": True}),
]


def sequence_steps() -> st.SearchStrategy[tuple[str, Any]]:
    search = st.fixed_dictionaries(
        {},
        optional={
            "q": st.sampled_from(["beach", "x", "the", "\u00e9t\u00e9 Beach"]),
            "user_id": st.sampled_from(USERS),
            "context_items": st.lists(item_ids(), max_size=3),
            "explain": st.booleans(),
            "exclude_seen": st.sampled_from(["purchased", "all", "none"]),
            "k": st.sampled_from([1, 10, 100]),
            "category": st.sampled_from(["beach", "city"]),
        },
    )
    return st.one_of(
        st.tuples(st.just("events"), st.lists(events(), min_size=1, max_size=6)),
        st.tuples(st.just("items"), st.lists(items(), min_size=1, max_size=2)),
        st.tuples(st.just("search"), search),
        st.tuples(st.just("user"), st.sampled_from(USERS)),
        st.tuples(st.just("item"), item_ids()),
        st.tuples(st.just("delete"), st.sampled_from(NEW_ITEMS)),
        st.tuples(
            st.just("job"),
            st.sampled_from(
                [("train", {"source": "events", "promote": True}), ("train", {}), ("rebuild", {})]
            ),
        ),
    )


class ServerLog(logging.Handler):
    """The exceptions the server logged (a 500's cause, a job's or a thread's crash)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[tuple[str, str]] = []  # (logger, one-line summary)

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.records.append((record.name, summarize(record.exc_info[1])))


def summarize(exc: BaseException) -> str:
    """`RuntimeWarning: overflow ... at engine/users/profile.py unit_vector (in _linalg.py)`."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return f"{type(exc).__name__}: {exc}"
    ours = [f for f in frames if is_ours(f.filename)]
    where, last = (ours or frames)[-1], frames[-1]
    # A SQLAlchemy error's own first line is advice about autoflush; the driver's says why.
    message = " / ".join(str(getattr(exc, "orig", None) or exc).splitlines()[:2])[:300]
    text = f"{type(exc).__name__}: {message} at {short_path(where.filename)}:{where.lineno}"
    text += f" {where.name}"
    if last is not where:
        text += f" (in {Path(last.filename).name}:{last.lineno})"
    return text


def is_ours(filename: str) -> bool:
    path = Path(filename)
    return path.is_relative_to(ROOT) and not path.is_relative_to(ROOT / ".venv")


def short_path(filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class Findings:
    """Bad answers, one entry per (method, route, status, cause) with its shortest request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = ServerLog()
        self.seen: dict[tuple[str, str, int, str], tuple[int, str, str]] = {}
        self.requests = 0
        self.statuses: Counter[int] = Counter()

    def check(self, method: str, path: str, request: str, response: Any) -> None:
        """Record the response if it is a bad answer (and close it either way)."""
        self.requests += 1
        self.statuses[response.status_code] += 1
        try:
            cause = self._cause(method, path, response)
            body = response.get_data(as_text=True)[:400] if cause else ""
        finally:
            response.close()  # a file response (/docs, /static) holds its file open until then
        if cause is None:
            return
        if response.status_code >= 500 and self.log.records:
            cause = f"{cause}: {self.log.records.pop()[1]}"  # logged by web/errors.py
        self.add((method, self._route(method, path), response.status_code, cause), request, body)

    def add(self, key: tuple[str, str, int, str], request: str, detail: str) -> None:
        """Count one more case of `key`, keeping the shortest request that showed it."""
        count, shown, shown_detail = self.seen.get(key, (0, request, detail))
        if len(request) < len(shown):
            shown, shown_detail = request, detail
        self.seen[key] = (count + 1, shown, shown_detail)

    def _cause(self, method: str, path: str, response: Any) -> str | None:
        status = response.status_code
        if status >= 500:
            return f"server error {status}"
        if response.mimetype == "application/json" and method != "HEAD":
            try:  # strict JSON: Python's encoder writes NaN and Infinity, which no parser takes
                json.loads(response.get_data(), parse_constant=_no_constant)
            except ValueError as exc:
                return f"body is not valid JSON: {exc}"
        page = path.split("?")[0] in HTML_PAGES and response.mimetype == "text/html"
        if status < 400 or page:
            return None
        if response.mimetype != "application/json":
            return f"{status} error is {response.mimetype}, not JSON"
        if method == "HEAD":
            return None  # no body, by definition
        body = response.get_json(silent=True)
        if not isinstance(body, dict):
            return "error body is not a JSON object"
        error, message = body.get("error"), body.get("message")
        if not isinstance(error, str) or not error:
            return "error body without an `error` code"
        if not isinstance(message, str) or not message.strip():
            return "error body without a `message`"
        if other := sorted(set(body) - {"error", "message", "problems"}):
            return f"error body with other keys: {other}"
        if echo := long_echo(body):
            return echo
        if status == 422:
            problems = body.get("problems")
            if not isinstance(problems, list) or not problems:
                return "422 without `problems`"
            for problem in problems:
                if not (
                    isinstance(problem, dict)
                    and isinstance(problem.get("field"), str)
                    and problem["field"]
                    and isinstance(problem.get("message"), str)
                    and problem["message"]
                ):
                    return "422 problem without a `field` or `message`"
        elif "problems" in body:
            return f"`problems` on a {status}"
        return None

    def _route(self, method: str, path: str) -> str:
        """The route's rule (/v1/items/<path:item_id>), to group findings by."""
        adapter = self.app.url_map.bind("localhost")
        for candidate in (method, "GET", "POST", "DELETE"):
            try:
                rule, _ = adapter.match(path.split("?")[0], method=candidate, return_rule=True)
                return str(rule.rule)
            except HTTPException:
                continue
        return "(no route)"

    def assert_clean(self) -> None:
        """No bad answer, and no exception logged by a job or a thread meanwhile."""
        finish_jobs(self.app)
        for logger, summary in self.log.records:
            self.add(("(logged)", logger, 0, summary), "(see the steps before)", "")
        self.log.records.clear()
        assert not self.seen, self.report()
        # A fuzz that never gets past validation, or never fails it, tests little.
        assert any(200 <= s < 300 for s in self.statuses), self.statuses
        assert any(400 <= s < 500 for s in self.statuses), self.statuses

    def report(self) -> str:
        statuses = dict(sorted(self.statuses.items()))
        lines = [f"{len(self.seen)} kind(s) of bad answer in {self.requests} requests {statuses}:"]
        for (method, route, status, cause), (count, request, body) in sorted(self.seen.items()):
            lines.append(
                f"- {method} {route} -> {status}: {cause} ({count}x)\n"
                f"    request:  {request[:600]}\n    response: {body!r}"
            )
        return "\n".join(lines)


def show(data: bytes | str) -> str:
    """A request body for a report: readable, escaped, long runs elided."""
    text = data if isinstance(data, str) else data.decode("utf-8", "backslashreplace")
    shown = text.encode("ascii", "backslashreplace").decode()
    return shown if len(shown) <= 300 else f"{shown[:200]}...({len(shown)} chars)...{shown[-60:]}"


@pytest.fixture
def fuzzed(app: Any, built: Runtime) -> Iterator[Findings]:
    """Findings over the built app; its background jobs are stopped before the runtime closes."""
    findings = Findings(app)
    logging.getLogger().addHandler(findings.log)
    try:
        yield findings
    finally:
        logging.getLogger().removeHandler(findings.log)
        finish_jobs(app)


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    # The function-scoped fixtures are shared on purpose: state grows across examples, as on a
    # real server. A body of 400 KB is a fair example; generating it is not "too slow".
    return settings(
        max_examples=examples,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def test_every_route_is_fuzzed(sqlite_settings: Settings) -> None:
    from web import create_app

    runtime = Runtime(sqlite_settings)
    try:
        app = create_app(runtime=runtime)
    finally:
        runtime.close()
    served = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    assert served == ROUTES


def test_hostile_json_bodies(client: Any, fuzzed: Findings) -> None:
    @fuzz_settings()
    @given(request=json_requests())
    def run(request: tuple[str, bytes, str | None]) -> None:
        route, data, content_type = request
        headers = {} if content_type is None else {"Content-Type": content_type}
        response = client.post(route, data=data, headers=headers)
        fuzzed.check("POST", route, f"POST {route} [{content_type}] {show(data)}", response)

    run()
    fuzzed.assert_clean()


def test_malformed_bodies_on_every_body_route(client: Any, fuzzed: Findings) -> None:
    # Each raw body on each route, not a sample: there are few, and each has hit a bug once.
    for route in sorted(BODY_ROUTES):
        for data in RAW_BODIES:
            response = client.post(route, data=data, content_type="application/json")
            fuzzed.check("POST", route, f"POST {route} {show(data)}", response)
    fuzzed.assert_clean()


def test_every_numeric_field_refuses_huge_numbers_with_a_422(client: Any, fuzzed: Findings) -> None:
    # The same cases as bench/contract_fuzz.py's fuzz_numbers, through the test client.
    marker = json.dumps(NUMBER)
    for route, template in numeric_bodies(first_catalog_id()):
        text = json.dumps(template)
        for literal in ["5", *HUGE_LITERALS]:
            data = text.replace(marker, literal).encode()
            response = client.post(route, data=data, content_type="application/json")
            status = response.status_code
            fuzzed.check("POST", route, f"POST {route} {show(data)}", response)
            if literal != "5" and status != 422:  # each names the field and the problem
                fuzzed.add(("POST", route, status, "huge number not a 422"), show(data), "")
    for method, template in NUMERIC_URLS:
        for literal in ["5", *HUGE_LITERALS]:
            path = template.format(quote(literal))
            response = client.open(path, method=method)
            fuzzed.check(method, path, f"{method} {show(path)}", response)
    fuzzed.assert_clean()


def test_hostile_query_strings(client: Any, fuzzed: Findings) -> None:
    @fuzz_settings()
    @given(route=st.sampled_from(QUERY_ROUTES), parts=st.lists(query_parts(), max_size=8))
    def run(route: str, parts: list[str]) -> None:
        query = "&".join(parts)
        response = client.get(route, query_string=query)
        fuzzed.check("GET", route, f"GET {route}?{show(query)}", response)

    run()
    fuzzed.assert_clean()


def test_hostile_path_segments(client: Any, fuzzed: Findings) -> None:
    @fuzz_settings()
    @given(route=st.sampled_from(SEGMENT_ROUTES), segment=segments())
    def run(route: tuple[str, str], segment: str) -> None:
        method, template = route
        path = template.format(segment)
        response = client.open(path, method=method)
        fuzzed.check(method, path, f"{method} {show(path)}", response)

    run()
    fuzzed.assert_clean()


def test_hostile_forms_headers_and_methods(app: Any, built: Runtime, fuzzed: Findings) -> None:
    # Another address than the key-holding client's: wrong keys and sign-ins here may block
    # this one (429) without blocking the other tests' client.
    stranger = app.test_client()
    stranger.environ_base["REMOTE_ADDR"] = "192.0.2.1"
    routes = sorted({rule for _, rule in ROUTES})
    form_fields = st.dictionaries(
        st.one_of(st.sampled_from(["csrf", "password", "next"]), nasty_text()),
        nasty_text(),
        max_size=4,
    )

    @fuzz_settings()
    @given(
        kind=st.sampled_from(["login", "logout", "auth", "cookie", "method"]),
        fields=form_fields,
        with_token=st.booleans(),
        value=nasty_text(),
        route=st.sampled_from(routes),
        method=st.sampled_from(["PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]),
    )
    def run(
        kind: str,
        fields: dict[str, str],
        with_token: bool,
        value: str,
        route: str,
        method: str,
    ) -> None:
        # Header values travel as bytes; a careless client sends the UTF-8 of anything.
        raw = value.encode("utf-8", "surrogatepass").decode("latin-1")
        raw = raw.replace("\r", "").replace("\n", "")  # no client can send those in a header
        path = route.replace("<path:filename>", "docs.html").replace("<int:job_id>", "1")
        path = path.replace("<path:item_id>", "paris-france").replace("<path:user_id>", "u")
        if kind in ("login", "logout"):
            if with_token:  # the form's own token, so the password is checked too
                page = stranger.get("/admin/login").get_data(as_text=True)
                fields = {**fields, "csrf": page.split('name="csrf" value="')[-1].split('"')[0]}
            data = "&".join(f"{encoded(k)}={encoded(v)}" for k, v in fields.items())
            response = stranger.post(
                f"/admin/{kind}",
                data=data,
                content_type="application/x-www-form-urlencoded",
            )
            fuzzed.check("POST", f"/admin/{kind}", f"POST /admin/{kind} {show(data)}", response)
        elif kind == "auth":
            response = stranger.get("/v1/users/u", headers={"Authorization": f"Bearer {raw}"})
            fuzzed.check("GET", "/v1/users/u", f"GET /v1/users/u Bearer {show(raw)}", response)
            response = stranger.get("/admin/api/status", headers={"Authorization": raw})
            fuzzed.check("GET", "/admin/api/status", f"Authorization: {show(raw)}", response)
        elif kind == "cookie":
            # As a header, not set_cookie(): that refuses what a hostile client sends.
            headers = {"Cookie": f"session={raw}", "X-CSRF-Token": raw}
            response = stranger.post("/admin/api/rebuild", headers=headers)
            fuzzed.check("POST", "/admin/api/rebuild", f"cookie session={show(raw)}", response)
        else:
            response = stranger.open(path, method=method)
            fuzzed.check(method, path, f"{method} {path}", response)

    run()
    fuzzed.assert_clean()


@pytest.mark.slow
def test_valid_requests_with_extreme_values_in_sequence(
    client: Any, fuzzed: Findings, built: Runtime
) -> None:
    jobs = client.application.extensions["recsearch_jobs"]

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = client.open(path, method=method, **kwargs)
        fuzzed.check(method, path, f"{method} {path} {show(json.dumps(kwargs))}", response)
        return response

    @fuzz_settings(SEQUENCES)
    @given(steps=st.lists(sequence_steps(), min_size=1, max_size=6))
    @example(steps=PINNED_RATINGS)
    @example(steps=PINNED_WORDLESS_ITEM)
    @example(steps=PINNED_TRAINING)
    def run(steps: list[tuple[str, Any]]) -> None:
        for kind, arg in steps:
            if kind == "events":
                call("POST", "/v1/events", json={"events": arg})
            elif kind == "items":
                call("POST", "/v1/items", json=arg)
            elif kind == "search":
                call("POST", "/v1/search", json=arg)
                query = {**arg, "context_items": ",".join(arg.get("context_items", []))}
                call("GET", "/v1/search", query_string=query)
                call("GET", "/admin/api/search", query_string=query)
            elif kind == "user":
                call("GET", f"/v1/users/{arg}")
            elif kind == "item":
                call("GET", f"/v1/items/{arg}")
            elif kind == "delete":
                call("DELETE", f"/v1/items/{arg}")
            else:  # a job, waited for, so that the next steps see what it published
                name, body = arg
                started = call("POST", f"/admin/api/{name}", json=body)
                if started.status_code == 202:
                    jobs.wait(started.get_json()["id"], timeout_s=120)
        # What the delta's background thread does with this state must not fail either.
        try:
            built.delta.refresh()
        except Exception as exc:
            key = ("(thread)", "delta.refresh()", 0, f"raised {type(exc).__name__}")
            fuzzed.add(key, show(repr(steps)), str(exc))

    run()
    fuzzed.assert_clean()


@pytest.fixture
def live(built: Runtime) -> Iterator[tuple[str, str]]:
    """(base URL, API key) of a real HTTP server over the built runtime, on 127.0.0.1."""
    from web import create_app

    app = create_app(runtime=built, loopback=True)
    with live_server(app) as url:  # stops the server and its jobs before the runtime closes
        yield url, app.config["RECSEARCH_API_KEY"]


@pytest.mark.slow
def test_schemathesis_every_operation_against_a_live_server(live: tuple[str, str]) -> None:
    url, key = live
    report = fuzz(f"{url}/openapi.json", key, examples=LIVE_EXAMPLES, seed=0)
    documented = {
        method + " " + OPENAPI_PARAM.sub(r"{\1}", rule)
        for method, rule in ROUTES
        if "/static/" not in rule
    }
    fuzzed = {t.operation for t in report.tallies.values() if t.cases}
    assert fuzzed == documented, report.table()
    totals = report.totals()
    assert not report.findings, (
        f"{totals.status_5xx} server errors, {totals.non_conforming} non-conforming, "
        f"{totals.broken} broken connections in {report.cases} cases\n"
        f"{report.table()}\n{report.describe_findings()}"
    )
