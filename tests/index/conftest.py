"""A real Milvus standalone server (2.3.5, the `milvus` package) for the vector-store suite:
started once per run on loopback, with authorization and TLS on, so every test on it also
proves that credentials and a CA bundle reach the server; stopped by its PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import milvus_server
from tests.milvus_server import MilvusTarget


@pytest.fixture(scope="session")
def milvus_server_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusTarget]:
    why = milvus_server.available()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("milvus-server")
    cert, key = milvus_server.self_signed(folder)
    server = milvus_server.start(folder / "server", auth=True, tls=(cert, key))
    try:
        yield MilvusTarget(
            "server",
            server.uri,
            {
                "milvus_uri": server.uri,
                "milvus_token": milvus_server.ROOT_TOKEN,
                "milvus_ca_cert": str(cert),
            },
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One Milvus Lite database for the module (its server starts once per process)."""
    return str(tmp_path_factory.mktemp("milvus") / "lite.db")


@pytest.fixture(params=["lite", "server"])
def milvus_target(request: pytest.FixtureRequest, lite_uri: str) -> MilvusTarget:
    """Milvus Lite, and a real Milvus server."""
    if request.param == "server":
        target: MilvusTarget = request.getfixturevalue("milvus_server_target")
        return target
    return MilvusTarget("lite", lite_uri, {"milvus_uri": lite_uri})
