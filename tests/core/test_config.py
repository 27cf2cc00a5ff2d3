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
        ("RECSEARCH_HNSW_M", "many", "RECSEARCH_HNSW_M='many': expected an integer"),
        ("RECSEARCH_HNSW_M", "1", "RECSEARCH_HNSW_M='1' is out of range: expected >= 2"),
        ("RECSEARCH_MIN_RECALL", "1.5", "RECSEARCH_MIN_RECALL='1.5' is out of range"),
        ("RECSEARCH_MIN_RECALL", "nan", "RECSEARCH_MIN_RECALL='nan': expected a finite number"),
        ("RECSEARCH_MODEL_OFFLINE", "maybe", "expected true/false"),
        ("RECSEARCH_MAX_K", "0", "RECSEARCH_MAX_K='0' is out of range: expected >= 1"),
        ("RECSEARCH_INDEX_POLL_S", "-1", "RECSEARCH_INDEX_POLL_S='-1' is out of range"),
        ("RECSEARCH_MODELS_POLL_S", "-0.5", "RECSEARCH_MODELS_POLL_S='-0.5' is out of range"),
        ("RECSEARCH_DELTA_POLL_S", "0", "RECSEARCH_DELTA_POLL_S='0' is out of range"),
        ("RECSEARCH_HALF_LIFE_DAYS", "0", "RECSEARCH_HALF_LIFE_DAYS='0' is out of range"),
        ("RECSEARCH_IMPRESSION_RETENTION_DAYS", "-3", "is out of range: expected > 0"),
        ("RECSEARCH_MAX_REQUEST_BYTES", "100", "is out of range: expected >= 1024"),
        ("RECSEARCH_ENCODER", "onnx8", "RECSEARCH_ENCODER='onnx8': expected one of"),
        ("RECSEARCH_DEVICE", "gpu", "expected auto, cpu, cuda or cuda:<index>"),
        ("RECSEARCH_INDEX_TYPE", " ", "RECSEARCH_INDEX_TYPE=' '"),
        ("RECSEARCH_OPEN_ENDPOINTS", "serach", "unknown 'serach': expected auto, none"),
        ("RECSEARCH_EVENT_WEIGHTS", "view", "expected type=weight pairs"),
        ("RECSEARCH_COVISIT_WINDOW", "60", "RECSEARCH_COVISIT_WINDOW=60 is above"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert fragment in str(info.value)


def test_a_misspelt_variable_is_an_error_with_the_nearest_name() -> None:
    with pytest.raises(ConfigError, match=r"RECSEARCH_HNSW_EFSEARCH is not a recsearch setting "
                       r"\(did you mean RECSEARCH_HNSW_EF_SEARCH\?\)"):  # fmt: skip
        Settings.from_env({"RECSEARCH_HNSW_EFSEARCH": "64"})
    # The test suite's own variables share the prefix and are not settings.
    assert Settings.from_env({"RECSEARCH_TEST_DATABASE_URL": "x"}) == Settings()


def test_settings_built_in_code_are_checked_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RECSEARCH_CANDIDATES=0 is out of range"):
        Settings(data_dir=tmp_path, candidates=0)
    with pytest.raises(ConfigError, match="RECSEARCH_KEEP_VERSIONS=0 is out of range"):
        Settings(data_dir=tmp_path).replace(keep_versions=0)
    with pytest.raises(ConfigError, match="not_a_setting is not a recsearch setting"):
        Settings(not_a_setting=1)
    s = Settings(data_dir=tmp_path, hnsw_m="48", open_endpoints="search, metrics")
    assert s.hnsw_m == 48 and s.open_areas(loopback=False) == {"search", "metrics"}
    assert Settings().open_areas(loopback=True) == {"search", "events", "metrics"}
    assert Settings().open_areas(loopback=False) == set()


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
        ("RECSEARCH_MILVUS_CONSISTENCY", "Sometimes", "expected one of Strong, Bounded"),
        ("RECSEARCH_RAY_ACTORS", "-1", "RECSEARCH_RAY_ACTORS='-1' is out of range"),
        ("RECSEARCH_REPLICA_MAX_LAG_S", "0", "RECSEARCH_REPLICA_MAX_LAG_S='0' is out of range"),
    ],
)
def test_bad_vector_store_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert fragment in str(info.value)
