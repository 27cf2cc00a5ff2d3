"""Settings: defaults, the RECSEARCH_* contract, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.core.config import Settings
from engine.core.errors import ConfigError


def test_defaults_are_embedded() -> None:
    s = Settings.from_env({})
    assert s.data_dir == Path("var") and s.index_type == "auto" and s.model_offline
    assert s.db_url == f"sqlite:///{Path('var/recsearch.db').resolve()}"
    assert s.model_name() == "all-MiniLM-L6-v2"
    assert (Path(s.model_path()) / "modules.json").is_file()


def test_contract_names() -> None:
    s = Settings.from_env(
        {
            "RECSEARCH_DATA_DIR": "/srv/rs",
            "RECSEARCH_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "RECSEARCH_MODEL": "/models/mine",
            "RECSEARCH_INDEX_TYPE": "hnsw",
            "RECSEARCH_HNSW_EF_SEARCH": "256",
            "RECSEARCH_MODEL_OFFLINE": "false",
            "RECSEARCH_MIN_RECALL": "0.95",
            "OTHER": "ignored",
        }
    )
    assert s.data_dir == Path("/srv/rs") and s.db_url == "postgresql+psycopg://u@h/db"
    assert s.model_path() == "/models/mine" and s.model_name() == "/models/mine"
    assert (s.index_type, s.hnsw_ef_search, s.model_offline, s.min_recall) == (
        "hnsw",
        256,
        False,
        0.95,
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("RECSEARCH_HNSW_M", "many", "RECSEARCH_HNSW_M='many'"),
        ("RECSEARCH_MIN_RECALL", "1.5", "RECSEARCH_MIN_RECALL=1.5 is out of range"),
        ("RECSEARCH_MODEL_OFFLINE", "maybe", "expected true/false"),
        ("RECSEARCH_MAX_K", "0", "RECSEARCH_MAX_K=0 is out of range"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert fragment in str(info.value)


def test_unsupported_database_is_named(tmp_path: Path) -> None:
    from engine.store.db import make_engine

    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        make_engine(Settings(database_url="mysql://u@h/db"))


def test_unloadable_model_is_a_config_error(tmp_path: Path) -> None:
    from engine.encoder.embedder import Embedder

    with pytest.raises(ConfigError, match="RECSEARCH_MODEL="):
        Embedder(Settings(model=str(tmp_path / "no-model")))


def test_vector_store_settings(tmp_path: Path) -> None:
    s = Settings.from_env({})
    assert (s.vector_store, s.milvus_uri, s.milvus_collection) == ("faiss", "", "recsearch")
    lite = Settings.from_env(
        {"RECSEARCH_VECTOR_STORE": "milvus", "RECSEARCH_DATA_DIR": str(tmp_path / "var")}
    )
    # No URI: Milvus Lite in the data dir, made absolute for the manifest.
    assert lite.milvus_target == str((tmp_path / "var" / "milvus.db").resolve())
    server = Settings.from_env(
        {"RECSEARCH_VECTOR_STORE": "milvus", "RECSEARCH_MILVUS_URI": "http://milvus:19530"}
    )
    assert server.milvus_target == "http://milvus:19530"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("RECSEARCH_VECTOR_STORE", "qdrant", "RECSEARCH_VECTOR_STORE='qdrant': expected one of"),
        ("RECSEARCH_MILVUS_URI", "var/milvus", "ending in .db"),
        ("RECSEARCH_MILVUS_URI", "ftp://host", "http://host:19530"),
        ("RECSEARCH_MILVUS_URI", "http://", "http://host:19530"),
        ("RECSEARCH_MILVUS_COLLECTION", "items; drop", "RECSEARCH_MILVUS_COLLECTION="),
        ("RECSEARCH_MILVUS_COLLECTION", "9lives", "a letter or underscore"),
    ],
)
def test_bad_vector_store_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert fragment in str(info.value)
