"""The serving worker's response (web.worker.OneWriteResponse) against gunicorn's own, on real
gunicorn requests parsed from a socket: the same bytes on the wire in every case, and a
whole body sent in one write with its head."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import Response

from web.worker import one_write_response

BODY = b'{"results": []}\n'


class Recorded:
    """A socket that keeps what each write sent (gunicorn writes through sendall)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@contextmanager
def served(
    response_class: type, request: bytes, status: str, headers: list[tuple[str, str]]
) -> Iterator[tuple[Any, Recorded]]:
    """A response of response_class to the request as gunicorn parsed it, started."""
    client, server = socket.socketpair()
    with client, server:
        client.sendall(request)
        cfg = Config()
        req = next(RequestParser(cfg, server, ("127.0.0.1", 50000)))
        recorded = Recorded(server)
        response = response_class(req, recorded, cfg)
        response.start_response(status, headers)
        yield response, recorded


def wire(
    response_class: type,
    request: bytes,
    status: str,
    headers: list[tuple[str, str]],
    parts: list[bytes],
) -> list[bytes]:
    """What each write sent for the body in parts, closed as gunicorn closes it."""
    with served(response_class, request, status, headers) as (response, recorded):
        for part in parts:
            response.write(part)
        response.close()
        return recorded.writes


GET = b"GET /v1/search?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HEAD = b"HEAD /v1/search?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
JSON = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both responses write the same Date (gunicorn's clock, read at each head)."""
    monkeypatch.setattr(util, "http_date", lambda *_: "Mon, 07 Dec 2026 12:00:00 GMT")


def test_a_whole_body_goes_with_its_head_in_one_write() -> None:
    ours = wire(one_write_response(), GET, "200 OK", JSON, [BODY])
    theirs = wire(Response, GET, "200 OK", JSON, [BODY])
    assert len(theirs) == 2  # gunicorn: the head, then the body
    assert ours == [b"".join(theirs)]
    head, _, body = ours[0].partition(b"\r\n\r\n")
    assert body == BODY
    assert b"Content-Length: %d" % len(BODY) in head and b"Connection: keep-alive" in head


@pytest.mark.parametrize(
    ("request_line", "status", "headers", "parts"),
    [
        (GET, "200 OK", JSON, [BODY[:5], BODY[5:]]),  # a body written in parts
        (GET, "200 OK", [("Content-Type", "application/json")], [BODY]),  # chunked
        (HEAD, "200 OK", JSON, [BODY]),  # no body on the wire
        (GET, "204 No Content", [], [b""]),
        (GET, "200 OK", JSON, [BODY + b"beyond the length"]),  # cut to Content-Length
    ],
)
def test_every_other_response_is_gunicorns(
    request_line: bytes, status: str, headers: list[tuple[str, str]], parts: list[bytes]
) -> None:
    ours = wire(one_write_response(), request_line, status, headers, parts)
    theirs = wire(Response, request_line, status, headers, parts)
    assert ours == theirs
