"""The app's JSON responses (orjson) read back as Flask's own provider's would."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from web.json_provider import OrjsonProvider


@dataclass
class Point:
    x: int
    when: datetime


def _apps() -> tuple[Flask, Flask]:
    ours, flasks = Flask("ours"), Flask("flasks")
    ours.json = OrjsonProvider(ours)
    assert type(flasks.json) is DefaultJSONProvider
    for app in (ours, flasks):
        app.json.sort_keys = False  # type: ignore[attr-defined]
    return ours, flasks


def _body(app: Flask, value: Any) -> tuple[bytes, str | None]:
    with app.app_context():
        response = app.json.response(value)
    return response.get_data(), response.mimetype


WHEN = datetime(2026, 12, 3, 12, 30, 5, 123456, tzinfo=UTC)
VALUES = [
    {"results": [{"id": "sf-1", "title": "Café ☕ 😀", "score": 0.123456, "tags": []}]},
    {"z": 1, "a": 2, "m": [3, {"y": None, "b": True}]},  # insertion order, not sorted
    {"when": WHEN, "day": date(2026, 1, 2), "naive": datetime(2026, 1, 2, 3, 4, 5)},
    {"point": Point(1, WHEN), "decimal": Decimal("1.10"), "uuid": uuid.UUID(int=7)},
    {1: "one", 2.5: "two and a half"},  # keys as json.dumps writes them
    {"f64": np.float64(0.1), "small": 1e-300, "third": 1 / 3},
    {"big": 2**70, "surrogate": "bad\udfffvalue"},  # orjson refuses: the json module writes
    ["a", 1, 2.0, None],
    None,
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_a_response_reads_back_as_flasks_own(value: Any) -> None:
    ours, flasks = _apps()
    body, mimetype = _body(ours, value)
    expected, expected_mimetype = _body(flasks, value)
    assert mimetype == expected_mimetype == "application/json"
    assert body.endswith(b"\n") and not body.endswith(b"\n\n")
    assert json.loads(body) == json.loads(expected)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        assert list(json.loads(body)) == list(value)  # the order the view built


def test_numpy_values_and_non_finite_floats_are_still_json() -> None:
    ours, _ = _apps()
    value = {"vector": np.arange(3, dtype=np.float32), "i64": np.int64(-3), "nan": math.nan}
    body, _ = _body(ours, value)  # Flask's own refuses the first two and writes NaN (not JSON)
    assert json.loads(body) == {"vector": [0.0, 1.0, 2.0], "i64": -3, "nan": None}


def test_what_neither_encoder_can_write_raises_the_json_modules_error() -> None:
    ours, _ = _apps()
    with pytest.raises(TypeError, match="not JSON serializable"):
        _body(ours, {"object": object()})


def test_debug_responses_are_indented_and_dumps_takes_sort_keys() -> None:
    ours, _ = _apps()
    ours.debug = True
    body, _ = _body(ours, {"b": 1, "a": 2})
    assert body == b'{\n  "b": 1,\n  "a": 2\n}\n'
    with ours.app_context():
        assert ours.json.dumps({"b": 1, "a": 2}, sort_keys=True) == '{"a":2,"b":1}'


def test_the_app_answers_with_it(client: Any) -> None:
    response = client.get("/healthz")
    assert response.get_data() == b'{"status":"ok"}\n'
    assert response.mimetype == "application/json"
