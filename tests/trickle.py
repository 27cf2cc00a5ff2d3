"""Slow clients and a normal one, for tests/web/test_slow_clients.py and bench/slow_clients.py.

Trickle keeps N connections open to a server, each sending one byte a second of a request it
never finishes: half send the request line and headers that slowly (slowloris), half send
their headers at once and then a body that slowly. One thread drives them all; a connection
the server closes (a timeout, an answer) is opened again at once, so N stay open throughout.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

HEADER_TRICKLE = b"GET /v1/search?q=a+very+slow+client HTTP/1.1\r\nHost: x\r\nX-Padding: " + (
    b"z" * 4000
)
BODY_LENGTH = 100_000
BODY_HEAD = (
    f"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    f"Content-Length: {BODY_LENGTH}\r\n\r\n"
).encode()
BODY_TRICKLE = b'{"q": "' + b"s" * BODY_LENGTH


@dataclass
class _Slow:
    sock: socket.socket
    payload: bytes
    sent: int = 0


@dataclass
class Trickle:
    """`connections` slow clients against host:port until stop(); counts reopenings."""

    host: str
    port: int
    connections: int
    interval_s: float = 1.0
    reopened: int = 0
    _clients: list[_Slow] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Trickle:
        for i in range(self.connections):
            self._clients.append(self._open(i))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for client in self._clients:
            client.sock.close()
        self._clients.clear()

    def _open(self, i: int) -> _Slow:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        if i % 2:  # a body trickler: its headers now, the body a byte a second
            sock.sendall(BODY_HEAD)
        sock.setblocking(False)
        return _Slow(sock, BODY_TRICKLE if i % 2 else HEADER_TRICKLE)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for i, client in enumerate(self._clients):
                if self._stop.is_set():
                    return
                if not self._step(client):
                    client.sock.close()
                    try:
                        self._clients[i] = self._open(i)
                        self.reopened += 1
                    except OSError:
                        pass  # the server refuses connections: try again next round

    def _step(self, client: _Slow) -> bool:
        """Send the next byte; False when the server has closed or answered."""
        try:
            readable, _, _ = select.select([client.sock], [], [], 0)
            if readable:
                return False  # an answer (408, 400) or the end: either way, this one is done
            if client.sent >= len(client.payload):
                return False
            client.sent += client.sock.send(client.payload[client.sent : client.sent + 1])
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Probe:
    """One normal client's search: how long it took and what came back (0: no answer)."""

    seconds: float
    status: int


def search_once(host: str, port: int, text: str, timeout_s: float = 10.0) -> Probe:
    """A GET /v1/search on a new connection, as a client arriving fresh would send it."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", "/v1/search?" + urllib.parse.urlencode({"q": text, "k": 5}))
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:  # a timeout or a refused connection: no answer
        status = 0
    finally:
        connection.close()
    return Probe(time.perf_counter() - started, status)


WORDS = (
    "quiet beach town with seafood markets",
    "mountain hiking trails and alpine lakes",
    "old city museums and cathedrals",
    "street food night markets",
    "wine region vineyards tasting",
    "desert canyons and stargazing",
    "island snorkeling coral reef",
    "ski resort winter holidays",
)


def query_text(i: int) -> str:
    """A different search text for each i, so no answer comes from a cache."""
    return f"{WORDS[i % len(WORDS)]} {i}"
