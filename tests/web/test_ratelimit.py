"""The rate limit on the open endpoints (web/ratelimit.py) and the client's address behind a
trusted proxy (web/proxy.py), through the Flask test client on a built catalog, clock faked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.runtime import Runtime
from web import create_app
from web.ratelimit import RATE_LIMIT, TokenBuckets

PROXY = "10.0.0.1"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """One request a second per address, two for the key, bursts of 3; search and events open;
    10.0.0.1 and 192.168.0.0/16 trusted proxies."""
    return Settings(
        data_dir=tmp_path / "var",
        database_url=db_url,
        index_poll_s=0.0,
        open_endpoints="search,events",
        rate_limit_per_s=1.0,
        rate_limit_key_per_s=2.0,
        rate_limit_burst=3,
        trusted_proxies=f"{PROXY}, 192.168.0.0/16",
    )


@pytest.fixture
def clock(app: Any) -> list[float]:
    now = [1000.0]
    limits = app.extensions[RATE_LIMIT]
    limits.addresses.clock = limits.key.clock = lambda: now[0]
    return now


def _search(client: Any, address: str, **headers: str) -> Any:
    return client.get(
        "/v1/search?q=beach&k=2", headers=headers, environ_base={"REMOTE_ADDR": address}
    )


def test_an_address_gets_its_burst_then_429_with_retry_after(
    built: Runtime, app: Any, clock: list[float]
) -> None:
    client = app.test_client()
    assert [_search(client, "198.51.100.1").status_code for _ in range(3)] == [200] * 3
    refused = _search(client, "198.51.100.1")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"] == "too_many_requests"
    assert "from 198.51.100.1" in refused.get_json()["message"]
    assert _search(client, "198.51.100.2").status_code == 200  # another address: its own bucket
    clock[0] += 1.0  # a token back
    assert _search(client, "198.51.100.1").status_code == 200
    assert _search(client, "198.51.100.1").status_code == 429


def test_the_api_key_has_one_bucket_wherever_it_comes_from(
    built: Runtime, app: Any, clock: list[float]
) -> None:
    client = app.test_client()
    key = {"Authorization": f"Bearer {app.config['RECSEARCH_API_KEY']}"}
    statuses = [_search(client, f"198.51.100.{i}", **key).status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = _search(client, "198.51.100.9", **key)
    assert "with this API key" in refused.get_json()["message"]
    assert _search(client, "198.51.100.9").status_code == 200  # its address is untouched
    # a wrong key counts against the address, not the key
    wrong = {"Authorization": "Bearer nope"}
    assert [_search(client, "198.51.100.7", **wrong).status_code for _ in range(4)] == [
        200,
        200,
        200,
        429,
    ]


def test_events_are_limited_and_keyed_and_health_endpoints_are_not(
    built: Runtime, app: Any, clock: list[float]
) -> None:
    client = app.test_client()
    event = {"user_id": "u1", "item_id": "paris-france", "type": "view"}
    statuses = [client.post("/v1/events", json=event).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert all(client.get("/healthz").status_code == 200 for _ in range(10))
    key = {"Authorization": f"Bearer {app.config['RECSEARCH_API_KEY']}"}
    user = [client.get("/v1/users/u1", headers=key).status_code for _ in range(10)]
    assert user == [200] * 10  # keyed-only endpoints are not "open": no limit


def test_behind_a_trusted_proxy_the_forwarded_address_counts(
    built: Runtime, app: Any, clock: list[float]
) -> None:
    client = app.test_client()
    for forwarded in ("203.0.113.5", "spoofed, 203.0.113.6", "203.0.113.7"):
        for _ in range(3):  # one proxy, three clients: each has its own three
            assert _search(client, PROXY, **{"X-Forwarded-For": forwarded}).status_code == 200
    assert _search(client, "192.168.4.4", **{"X-Forwarded-For": "203.0.113.5"}).status_code == 429
    # From a peer that is no proxy the header is ignored: the peer's own address counts.
    for i in range(3):
        untrusted = _search(client, "198.51.100.3", **{"X-Forwarded-For": f"203.0.113.{20 + i}"})
        assert untrusted.status_code == 200
    assert _search(client, "198.51.100.3", **{"X-Forwarded-For": "203.0.113.99"}).status_code == 429


def test_off_by_default_and_proxies_close_auto_on_loopback(runtime: Runtime) -> None:
    plain = runtime.settings.replace(
        rate_limit_per_s=0.0, rate_limit_key_per_s=0.0, trusted_proxies="", open_endpoints="auto"
    )
    behind = plain.replace(trusted_proxies="127.0.0.1")
    for settings, search_status in ((plain, 503), (behind, 401)):  # 503: no index built here
        other = Runtime(settings, embedder=runtime.embedder)
        try:
            app = create_app(runtime=other, loopback=True)
            assert RATE_LIMIT not in app.extensions
            client = app.test_client()
            statuses = {client.get("/v1/search?q=x").status_code for _ in range(30)}
            # Behind a proxy every client arrives from loopback: "auto" opens nothing.
            assert statuses == {search_status}
        finally:
            other.close()


def test_the_key_is_unlimited_without_a_rate_of_its_own(built: Runtime) -> None:
    other = Runtime(built.settings.replace(rate_limit_key_per_s=0.0), embedder=built.embedder)
    try:
        app = create_app(runtime=other)
        assert app.extensions[RATE_LIMIT].key is None
        app.extensions[RATE_LIMIT].addresses.clock = lambda: 0.0
        client = app.test_client()
        key = {"Authorization": f"Bearer {app.config['RECSEARCH_API_KEY']}"}
        assert {_search(client, "198.51.100.1", **key).status_code for _ in range(10)} == {200}
        assert [_search(client, "198.51.100.1").status_code for _ in range(4)][-1] == 429
    finally:
        other.close()


def test_a_bad_proxy_list_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RECSEARCH_TRUSTED_PROXIES='nginx'"):
        Settings.from_env({"RECSEARCH_TRUSTED_PROXIES": "nginx"})


@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_buckets_grant_no_more_than_the_burst_plus_the_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    buckets = TokenBuckets(rate, burst)
    now = [0.0]
    buckets.clock = lambda: now[0]
    granted = 0
    for gap in gaps:
        now[0] += gap
        wait_s = buckets.take("c")
        if wait_s == 0:
            granted += 1
        else:  # and the wait it names is right: a token is there then, not before
            assert 0 < wait_s <= 1 / rate + 1e-9
    assert granted <= burst + rate * now[0] + 1e-6
    assert granted >= 1


def test_buckets_stay_bounded() -> None:
    buckets = TokenBuckets(1.0, 2, max_clients=100)
    for i in range(1_000):
        buckets.take(f"client {i}")
    assert len(buckets._buckets) <= 100
