"""The client's address behind a reverse proxy (deploy/nginx.conf): X-Forwarded-For is
believed only from the peers RECSEARCH_TRUSTED_PROXIES names."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from engine.core.values import parse_networks

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxy:
    """WSGI middleware: on a request from a trusted proxy, REMOTE_ADDR becomes the last
    X-Forwarded-For entry (the address the proxy saw), so every limit keyed by address (wrong
    keys, the rate limit) counts clients, not the proxy. The proxy's own address is kept in
    environ["recsearch.proxy"].

    Only the last entry: the ones before it are whatever the client sent, and deploy/nginx.conf
    replaces the header rather than appending to it. From any other peer the header is
    ignored, so a client cannot name itself someone else by sending it.
    """

    def __init__(self, app: Any, proxies: Iterable[Network]) -> None:
        self.app = app
        self.proxies = tuple(proxies)
        self._trusted: dict[str, bool] = {}  # peer address -> trusted; few distinct peers

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        peer = environ.get("REMOTE_ADDR") or ""
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded and self._is_trusted(peer):
            client = forwarded.rsplit(",", 1)[-1].strip()
            if _is_address(client):
                environ["recsearch.proxy"] = peer
                environ["REMOTE_ADDR"] = client
        return self.app(environ, start_response)

    def _is_trusted(self, peer: str) -> bool:
        trusted = self._trusted.get(peer)
        if trusted is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                return False
            trusted = any(address in network for network in self.proxies)
            if len(self._trusted) < 1_024:  # bounded: peers are the proxies, and a few others
                self._trusted[peer] = trusted
        return trusted


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def trust_proxies(app: Any, proxies: str) -> Any:
    """`app` (a WSGI callable) behind the proxies named, or `app` itself when none is."""
    networks = parse_networks(proxies)
    return TrustedProxy(app, networks) if networks else app
