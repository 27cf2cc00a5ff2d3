"""What gunicorn refuses before the app sees it (a request line over the limit, a NUL in a
header, a request line that is not HTTP) is answered in the API's JSON shape, not HTML."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.serving import get
from web.server import LIMIT_REQUEST_LINE_BYTES
from web.worker import write_json_error


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP/1.1 response on a closed-after connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    parsed = json.loads(body)
    assert set(parsed) == {"error", "message"}, parsed
    assert parsed["error"] and parsed["message"].strip()
    assert len(parsed["message"]) < 2_100  # an echoed request line is cut


def test_gunicorn_error_pages_are_written_as_json() -> None:
    left, right = socket.socketpair()
    with left, right:
        write_json_error(left, 414, "URI Too Long", "Request Line is too large (9000 > 8190)")
        left.shutdown(socket.SHUT_WR)
        status, headers, body = read_response(right)
    assert_json_error(status, headers, body, 414)
    assert json.loads(body) == {
        "error": "uri_too_long",
        "message": "Request Line is too large (9000 > 8190)",
    }


def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        return read_response(sock)


@pytest.mark.slow
def test_requests_gunicorn_refuses_get_the_json_error_shape(tmp_path: Path, serve: Any) -> None:
    # No index is needed: gunicorn answers these before the app runs.
    env = dict(os.environ, RECSEARCH_DATA_DIR=str(tmp_path / "var"))
    server = serve(env, workers=1, threads=2)
    deadline = time.monotonic() + 180
    while True:
        assert server.process.poll() is None, "".join(server.lines)
        try:
            if get(f"{server.base}/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "".join(server.lines)
        time.sleep(0.2)

    # A GET whose request line is just over the limit (many context_items): 414.
    items = ",".join(f"item-{i:04d}-{'x' * 140}" for i in range(60))
    line = f"GET /v1/search?q=beach&context_items={items} HTTP/1.1\r\n".encode()
    assert len(line) > LIMIT_REQUEST_LINE_BYTES
    status, headers, body = raw_request(server.port, line + b"Host: x\r\n\r\n")
    assert_json_error(status, headers, body, 414)
    assert json.loads(body)["error"] == "uri_too_long"

    # One that fits the raised limit (gunicorn's default was 4094) reaches the app.
    fits = ",".join(f"item-{i:04d}" for i in range(50)) + "," + "x" * 6_000
    request = f"GET /v1/search?context_items={fits} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    assert 4094 < len(request.split(b"\r\n")[0]) <= LIMIT_REQUEST_LINE_BYTES
    status, headers, body = raw_request(server.port, request)
    assert status < 500 and status != 414, body
    assert headers["content-type"] == "application/json"

    # A NUL in a header, a header name with a space, a request line that is not HTTP: 400.
    for bad in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trace: a\x00b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ):
        status, headers, body = raw_request(server.port, bad)
        assert_json_error(status, headers, body, 400)
        assert json.loads(body)["error"] == "bad_request"

    # The server is still up and the app still answers as before.
    assert get(f"{server.base}/healthz")[0] == 200
