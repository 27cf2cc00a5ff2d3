"""Milvus for the vector-store suite: Milvus Lite in this process, and the real Milvus
standalone server (tests/conftest.py's milvus_server_target, shared with tests/web)."""

from __future__ import annotations

import pytest

from tests.milvus_server import MilvusTarget


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
