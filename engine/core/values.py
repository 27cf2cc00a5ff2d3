"""The parsers and checks behind Settings' values (engine.core.config): event weights, open
endpoints, trusted proxies, devices and Milvus URIs. Plain functions, importable without
pydantic."""

from __future__ import annotations

import ipaddress

OPEN_AREAS = ("search", "events", "metrics")


def parse_weights(text: str) -> dict[str, float]:
    """type=weight pairs separated by commas: {"view": 1.0, ...}."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"expected type=weight pairs separated by commas, e.g. view=1,click=2; bad "
                f"part {part!r}"
            ) from None
    return weights


def parse_open_endpoints(text: str, loopback: bool = False) -> set[str]:
    """ "auto" (all of OPEN_AREAS on loopback, none elsewhere), "none" or "", or a comma list
    of OPEN_AREAS; an unknown name is an error."""
    value = text.strip().lower()
    if value == "auto":
        return set(OPEN_AREAS) if loopback else set()
    if value in ("", "none"):
        return set()
    areas = {part.strip() for part in value.split(",") if part.strip()}
    unknown = sorted(areas - set(OPEN_AREAS))
    if unknown:
        raise ValueError(
            f"unknown {', '.join(map(repr, unknown))}: expected auto, none, or a comma list "
            f"of {', '.join(OPEN_AREAS)}"
        )
    return areas


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses or networks, comma-separated ("127.0.0.1,10.0.0.0/8"); "" is none."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(
                    f"expected IP addresses or networks separated by commas; bad part {part!r}"
                ) from None
    return tuple(networks)


def check_networks(text: str) -> str:
    """`text` itself when parse_networks reads it (a pydantic validator)."""
    parse_networks(text)
    return text


def is_device(device: str) -> bool:
    """auto, cpu, cuda or cuda:<index>."""
    kind, sep, index = device.partition(":")
    if sep:
        return kind == "cuda" and index.isdigit()
    return device in ("auto", "cpu", "cuda")


def is_lite_uri(uri: str) -> bool:
    """A local Milvus Lite database (pymilvus treats a URI ending in .db as one)."""
    return "://" not in uri and uri.endswith(".db")


def is_milvus_uri(uri: str) -> bool:
    """A Milvus Lite .db path, or an http(s)/tcp URL with a host."""
    if is_lite_uri(uri):
        return True
    scheme, sep, rest = uri.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https", "tcp") and bool(rest.strip("/"))
