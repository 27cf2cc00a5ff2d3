"""One pymilvus client per process and Milvus URI, opened with the options a deployment set:
credentials (a token, or a user and password), TLS (an https URI or a CA bundle) and the
consistency level searches ask for.

Manifests record a Milvus URI without its credentials (shown_uri), so whoever opens a
version's collection later finds the options here, under that URI: a process registers
them from its Settings (remember) before it opens anything, as the runtime, a build and a
writer do.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.core.files import held_elsewhere
from engine.core.values import is_lite_uri

INSTALL_HINT = "pip install 'recsearch[milvus]'"
# Seconds a first connection may take before the command fails naming the address.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Options:
    """How to reach one Milvus and how fresh its searches must be."""

    consistency: str = "Bounded"
    token: str = ""
    user: str = ""
    password: str = ""
    ca_cert: str = ""
    server_name: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Options:
        return cls(
            consistency=settings.milvus_consistency,
            token=settings.milvus_token,
            user=settings.milvus_user,
            password=settings.milvus_password,
            ca_cert=settings.milvus_ca_cert,
            server_name=settings.milvus_server_name,
        )

    def client_kwargs(self, uri: str) -> dict[str, Any]:
        """MilvusClient's keyword arguments for uri (none of them for Milvus Lite)."""
        if is_lite_uri(uri):
            return {}
        # dedicated: pymilvus would otherwise share one connection among clients of the
        # same address and token, whatever their TLS options.
        kwargs: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_S, "dedicated": True}
        if self.token:
            kwargs["token"] = self.token
        elif self.user:
            kwargs["user"], kwargs["password"] = self.user, self.password
        if self.ca_cert or uri.startswith("https://"):
            kwargs["secure"] = True
            if self.ca_cert:
                kwargs["server_pem_path"] = self.ca_cert
            if self.server_name:
                kwargs["server_name"] = self.server_name
        return kwargs


_clients: dict[tuple[int, str], Any] = {}
_options: dict[str, Options] = {}
_lock = threading.Lock()


def remember(settings: Settings) -> Options:
    """Register the settings' connection options for their Milvus URI; return them. A client
    already open for the URI keeps its connection (credentials are read at connect)."""
    options = Options.from_settings(settings)
    with _lock:
        _options[shown_uri(settings.milvus_target)] = options
    return options


def options_for(uri: str) -> Options:
    """The options registered for uri (defaults when none were)."""
    return _options.get(shown_uri(uri), Options())


def client(uri: str) -> Any:
    """A MilvusClient for uri, one per process (a forked worker opens its own).

    Raises ConfigError naming the address when pymilvus is not installed, when the server
    cannot be reached or refuses the credentials, or when a Milvus Lite file is open in
    another process (Lite serves one process; several need a Milvus server).
    """
    key = (os.getpid(), uri)
    with _lock:
        found = _clients.get(key)
        if found is not None:
            return found
        try:
            from pymilvus import MilvusClient
            from pymilvus.exceptions import MilvusException
        except ImportError:
            raise ConfigError(
                f"RECSEARCH_VECTOR_STORE=milvus needs pymilvus: {INSTALL_HINT}"
            ) from None
        if is_lite_uri(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        options = _options.get(shown_uri(uri), Options())
        try:
            made = MilvusClient(uri, **options.client_kwargs(uri))
        except MilvusException as exc:
            if is_lite_uri(uri) and _lite_locked(uri):
                raise ConfigError(
                    f"the Milvus Lite database {uri} is open in another process: Milvus Lite "
                    "serves one process at a time. Run one (`recsearch serve --workers 1`, and "
                    "rebuild from the admin page or with the server stopped), or point "
                    "RECSEARCH_MILVUS_URI at a Milvus server (http://host:19530) for several "
                    "workers or hosts"
                ) from None
            raise ConfigError(
                f"cannot open Milvus at {shown_uri(uri)}: {exc.message or exc}"
            ) from None
        _clients[key] = made
        return made


def _lite_locked(uri: str) -> bool:
    """Whether another process holds Milvus Lite's lock on its folder (never this one: only
    asked after this process failed to open it)."""
    return held_elsewhere(Path(uri) / "LOCK")


def shown_uri(uri: str) -> str:
    """uri without credentials, for manifests and logs."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
