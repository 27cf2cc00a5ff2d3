"""A rate limit on the open endpoints (search, events, /metrics: the views whose OpenAPI access
is "key-or-open"), per client address and for the API key, off by default
(RECSEARCH_RATE_LIMIT_PER_S, RECSEARCH_RATE_LIMIT_KEY_PER_S, RECSEARCH_RATE_LIMIT_BURST).

Token buckets: each client's bucket holds up to `burst` requests and refills at its rate a
second; a request finding it empty is answered 429, with Retry-After in whole seconds until
a token is back and the usual {"error", "message"} body. A request carrying the API key
counts against the key, all its callers together (an application's backend, often many
users behind few addresses: it gets a rate of its own, and a bucket of at least one
second's worth); any other request against its address, which behind a proxy is the
client's (web/proxy.py). A wrong key counts as no key.

Per server process: with `recsearch serve --workers N` a client whose requests spread over
the workers (through nginx's pooled connections they do) gets up to N × the rate and N × the
burst; one on a single kept-alive connection gets the rate. Set a rate divided by N for a
bound across the server. Sharing the buckets between workers would put a lock held across
processes on every search.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from flask import Flask, current_app, request
from werkzeug.exceptions import TooManyRequests

from engine.core.config import Settings
from web.auth import client_address, same_secret

RATE_LIMIT = "recsearch_rate_limit"
LIMITED_ACCESS = "key-or-open"  # the access web.contract.operation gives the open endpoints


class TokenBuckets:
    """One token bucket per client, thread-safe; at most `max_clients` remembered (a bucket
    that has refilled holds nothing worth keeping and goes first)."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 10_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1: {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self.clock: Callable[[], float] = time.monotonic
        # client -> (tokens, when counted); insertion order is last use, oldest first
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take a token from `client`'s bucket: 0.0 when there was one, else the seconds
        until there will be (nothing is taken then)."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
            if tokens >= 1.0:
                tokens -= 1.0
                wait_s = 0.0
            else:
                wait_s = (1.0 - tokens) / self.rate_per_s
            if len(self._buckets) >= self.max_clients:
                self._forget(now)
            self._buckets[client] = (tokens, now)
            return wait_s

    def _forget(self, now: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        for client, (_, then) in list(self._buckets.items()):
            if now - then >= full_after_s:
                del self._buckets[client]
        while len(self._buckets) >= self.max_clients:  # all busy: the least recently seen go
            del self._buckets[next(iter(self._buckets))]


class RateLimits:
    """The buckets of addresses and of the key; None where that kind is unlimited."""

    def __init__(self, settings: Settings) -> None:
        burst = settings.rate_limit_burst
        per_address, per_key = settings.rate_limit_per_s, settings.rate_limit_key_per_s
        self.addresses = TokenBuckets(per_address, burst) if per_address > 0 else None
        self.key = TokenBuckets(per_key, max(burst, math.ceil(per_key))) if per_key > 0 else None

    @property
    def is_on(self) -> bool:
        return self.addresses is not None or self.key is not None


def init(app: Flask, settings: Settings) -> None:
    """Limit the open endpoints when a rate is set; otherwise add nothing (no hook, no cost
    per request)."""
    limits = RateLimits(settings)
    if limits.is_on:
        app.extensions[RATE_LIMIT] = limits
        app.before_request(_limit)


def _limit() -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    spec = getattr(view, "openapi", None)
    if spec is None or spec.access != LIMITED_ACCESS:
        return
    limits: RateLimits = current_app.extensions[RATE_LIMIT]
    if _has_api_key():
        buckets, client, who = limits.key, "key", "with this API key"
    else:
        address = client_address()
        buckets, client, who = limits.addresses, address, f"from {address}"
    if buckets is None:
        return
    wait_s = buckets.take(client)
    if wait_s > 0:
        retry_after_s = max(1, math.ceil(wait_s))
        raise TooManyRequests(
            f"more than {buckets.rate_per_s:g} requests a second (bursts of {buckets.burst}) "
            f"{who}; try again in {retry_after_s} s",
            retry_after=retry_after_s,
        )


def _has_api_key() -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and same_secret(
        token.strip(), current_app.config["RECSEARCH_API_KEY"]
    )
