"""Slow clients against the production setup: `recsearch serve` behind Debian's nginx with
deploy/nginx.conf, all real processes on loopback.

Directly, gunicorn gives each connection a request thread until its request is whole: 8 that
send a byte a second hold all 2 × 4 threads and other searches wait 10 s (bench/slow_clients.py
shows that side). nginx reads requests whole before passing them on, so the same load costs
gunicorn nothing.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests import nginx_proxy
from tests.serving import built_env
from tests.trickle import Trickle, query_text, search_once

pytestmark = pytest.mark.slow

SLOW_CONNECTIONS = 64
TRICKLE_S = 12.0  # past nginx's 10 s header timeout: the slow clients it cuts come back


@pytest.fixture
def proxied(tmp_path: Path, seed_index: Path, serve: Any) -> Any:
    """(nginx, the server behind it), search open, nginx trusted for X-Forwarded-For."""
    why = nginx_proxy.available()
    if why:
        pytest.skip(why)
    env = built_env(
        tmp_path / "var",
        seed_index,
        RECSEARCH_TRUSTED_PROXIES="127.0.0.1",
        RECSEARCH_OPEN_ENDPOINTS="search",
    )
    server = serve(env, workers=2, threads=4)
    server.wait_ready()
    proxy = nginx_proxy.start(tmp_path / "nginx", server.port)
    yield proxy, server
    proxy.stop()


def test_searches_answer_while_64_connections_trickle_a_byte_a_second(proxied: Any) -> None:
    proxy, _ = proxied
    for i in range(5):  # warm: each worker's first searches load what they serve
        assert search_once("127.0.0.1", proxy.port, query_text(i)).status == 200
    assert _search_post(proxy.port, {"q": "beach", "k": 2}) == 2  # bodies pass, buffered

    trickle = Trickle("127.0.0.1", proxy.port, SLOW_CONNECTIONS).start()
    probes = []
    try:
        time.sleep(1.5)  # every slow connection open and sending
        deadline = time.monotonic() + TRICKLE_S
        i = 100
        while time.monotonic() < deadline:
            probes.append(search_once("127.0.0.1", proxy.port, query_text(i), timeout_s=5))
            i += 1
            time.sleep(0.1)
    finally:
        trickle.stop()

    assert len(probes) >= 20
    assert [p.status for p in probes] == [200] * len(probes), proxy.log()
    slowest = max(p.seconds for p in probes)
    assert slowest < 2.0, f"slowest search {slowest:.2f} s under {SLOW_CONNECTIONS} slow clients"
    # nginx cut the header tricklers at its 10 s timeout, and they came back: the load held.
    assert trickle.reopened >= SLOW_CONNECTIONS // 2


def _search_post(port: int, body: dict[str, Any]) -> int:
    """How many results a POST /v1/search through the proxy returns."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        connection.request("POST", "/v1/search", json.dumps(body), headers)
        response = connection.getresponse()
        assert response.status == 200
        return len(json.loads(response.read())["results"])
    finally:
        connection.close()
