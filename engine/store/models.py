"""SQL tables as typed SQLAlchemy 2.0 models: columns and relationships only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    """A catalog item; SQL is the source of truth, indexes are derived from it."""

    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(200), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    # sha256 of the item's canonical JSON: an upsert with the same hash changes nothing.
    content_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class IndexVersion(Base):
    """One published index artifact; the CURRENT file on disk says which one serves."""

    __tablename__ = "index_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    item_count: Mapped[int] = mapped_column(Integer)
    index_type: Mapped[str] = mapped_column(String(200))
    recall_at_10: Mapped[float | None] = mapped_column(Float)
    build_seconds: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)


# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_EventId = BigInteger().with_variant(Integer(), "sqlite")


class Event(Base):
    """One logged user action; the source for training and for rebuilding user features."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_user_ts", "user_id", "ts"),)

    id: Mapped[int] = mapped_column(_EventId, primary_key=True, autoincrement=True)
    # The client's id for idempotency: a repeated event_id is stored and counted once.
    event_id: Mapped[str | None] = mapped_column(String(256), unique=True)
    user_id: Mapped[str] = mapped_column(String(256))
    item_id: Mapped[str] = mapped_column(String(256), index=True)
    type: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float)
    ts: Mapped[datetime] = mapped_column(DateTime)
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime)


class UserFeatures(Base):
    """A user's features, maintained incrementally by every event (never by rescanning).

    Decayed sums are stored as of ref_ts (the newest event time): an event at t adds
    w·2^-(ref_ts - t)/half_life, and a newer event first decays everything to its own time,
    so the state is the same whatever order events arrive in.
    """

    __tablename__ = "user_features"

    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    first_ts: Mapped[datetime | None] = mapped_column(DateTime)
    last_ts: Mapped[datetime | None] = mapped_column(DateTime)
    ref_ts: Mapped[datetime | None] = mapped_column(DateTime)
    # (dim,) float64 decayed, weighted sum of item embeddings; its direction is the taste.
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    vector_weight: Mapped[float] = mapped_column(Float, default=0.0)
    # The encoder whose item vectors `vector` sums (an index's model name); NULL: unknown
    # (written before the first build, or before this column). engine.users.taste.
    vector_encoder: Mapped[str | None] = mapped_column(String(256))
    category_affinity: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    tag_affinity: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # [[item_id, type, iso_ts], ...] newest first, at most settings.recent_items.
    recent: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    purchased: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime)


class ItemStats(Base):
    """Per-item interaction statistics: decayed popularity and counts by event type."""

    __tablename__ = "item_stats"

    item_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    popularity: Mapped[float] = mapped_column(Float, default=0.0)
    ref_ts: Mapped[datetime | None] = mapped_column(DateTime)
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # When the row last changed (None before migration 0010): servers follow it (item_watch).
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)


class Impression(Base):
    """One result shown by /v1/search, with the exact features the ranker scored it on.

    A later click or purchase naming the request_id turns it into a positive; the others
    shown with it are real negatives. Written in batches after the response.
    """

    __tablename__ = "impressions"
    __table_args__ = (Index("ix_impressions_request", "request_id", "position"),)

    id: Mapped[int] = mapped_column(_EventId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(256))
    item_id: Mapped[str] = mapped_column(String(256))
    position: Mapped[int] = mapped_column(Integer)
    # {"names": [...], "values": [...]}: names repeat per row so old rows stay readable.
    features: Mapped[dict[str, list[object]]] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(64))
    index_version: Mapped[str] = mapped_column(String(64))
    # In an online experiment (team-draft interleaving): the experiment, and which ranking
    # ("live" or "candidate") contributed this result.
    experiment_id: Mapped[int | None] = mapped_column(Integer, index=True)
    team: Mapped[str | None] = mapped_column(String(9))
    ts: Mapped[datetime] = mapped_column(DateTime, index=True)
    # The search's text (None for a search without one): clicks on it teach the encoder.
    query: Mapped[str | None] = mapped_column(Text)


class Covisit(Base):
    """How often item_b was interacted with close to item_a by the same user (both ways)."""

    __tablename__ = "covisits"

    item_a: Mapped[str] = mapped_column(String(256), primary_key=True)
    item_b: Mapped[str] = mapped_column(String(256), primary_key=True)
    weight: Mapped[float] = mapped_column(Float, default=0.0)


# Rows in these states hold their kind's one slot (see uq_jobs_active_kind).
ACTIVE_JOB_STATES = "state IN ('queued', 'running')"


class Job(Base):
    """A background job (index build, model training): its state and live progress."""

    __tablename__ = "jobs"
    # One active job per kind, enforced by the database: a second server's insert fails.
    __table_args__ = (
        Index(
            "uq_jobs_active_kind",
            "kind",
            unique=True,
            sqlite_where=text(ACTIVE_JOB_STATES),
            postgresql_where=text(ACTIVE_JOB_STATES),
        ),
    )

    id: Mapped[int] = mapped_column(_EventId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)
    # queued | running | succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(20), index=True)
    params: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    phase: Mapped[str | None] = mapped_column(String(40))
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    rate: Mapped[float | None] = mapped_column(Float)  # units per second in this phase
    eta_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # A running job writes this at least every few seconds; a stale one was orphaned.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Runs so far (a worker lost mid-run gives the job back for one retry); who runs it now
    # ("host:pid"); and a cancel asked for by any process, seen at the job's next progress.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, object] | None] = mapped_column(JSON)


class ItemVector(Base):
    """An item's embedding, computed once by the elected follower for every server to load.

    Holds the vectors of items written since a build (the index version holds the others);
    text_hash (engine.catalog.items.text_hash of the model and the embedded text) says which text
    the vector belongs to, so a reader never uses a vector of an older text.
    """

    __tablename__ = "item_vectors"

    item_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    text_hash: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    # (dim,) float32, L2-normalized, little-endian bytes.
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    # The windows of the text after the first, (c, dim) float32 like vector (empty: a text
    # that fits one window), cut as chunk_spec says (engine.encoder.chunking.ChunkSpec.tag);
    # both None when stored without chunking.
    chunks: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    chunk_spec: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ItemTombstone(Base):
    """A deleted item, so the follower can tell a vector store to drop it; cleared when an
    item with the same id is written again."""

    __tablename__ = "item_tombstones"

    item_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class MerchandisingRule(Base):
    """A pin, boost, bury or hide rule (engine.ranking.rules), managed from the admin API."""

    __tablename__ = "rules"
    __table_args__ = (Index("uq_rules_fingerprint", "fingerprint", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(8))
    item_id: Mapped[str | None] = mapped_column(String(256))
    # The filters as the user wrote them; parsed against the catalog when loaded.
    where: Mapped[dict[str, object] | None] = mapped_column(JSON)
    query: Mapped[str | None] = mapped_column(String(1000))  # normalized (engine.ranking.rules)
    position: Mapped[int | None] = mapped_column(Integer)
    weight: Mapped[float | None] = mapped_column(Float)
    starts_at: Mapped[datetime | None] = mapped_column(DateTime)
    ends_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # What the rule does to what, and when (engine.ranking.rule_store.fingerprint): unique, so
    # two writes of one rule leave one. NULL on copies stored before the index (0013).
    fingerprint: Mapped[str | None] = mapped_column(String(64))


RUNNING_EXPERIMENT = "state = 'running'"


class Experiment(Base):
    """An online experiment: the live model interleaved with a candidate
    (engine.ranking.experiments)."""

    __tablename__ = "experiments"
    # One running experiment, enforced by the database: a second start's insert fails.
    __table_args__ = (
        Index(
            "uq_experiments_running",
            "state",
            unique=True,
            sqlite_where=text(RUNNING_EXPERIMENT),
            postgresql_where=text(RUNNING_EXPERIMENT),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate: Mapped[str] = mapped_column(String(64))
    live: Mapped[str] = mapped_column(String(64))  # the live model when it started
    traffic: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(10))  # running, stopped, promoted
    started_at: Mapped[datetime] = mapped_column(DateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)


class PublishedVersion(Base):
    """An index or model version copied into the database (RECSEARCH_VERSION_SHARING=database),
    so that servers with data dirs of their own install and serve it (engine.store.published).

    A row is committed with all of its files in one transaction: a version here is whole.
    """

    __tablename__ = "published_versions"

    store: Mapped[str] = mapped_column(String(16), primary_key=True)  # "index" or "models"
    version: Mapped[str] = mapped_column(String(16), primary_key=True)
    manifest: Mapped[dict[str, object]] = mapped_column(JSON)
    file_count: Mapped[int] = mapped_column(Integer)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class PublishedFile(Base):
    """One chunk (at most engine.store.published.CHUNK_BYTES) of a published version's file."""

    __tablename__ = "published_files"

    store: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(16), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)  # relative, with "/"
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0, 1, ... in file order
    data: Mapped[bytes] = mapped_column(LargeBinary)


class PublishedCurrent(Base):
    """Which published version of a store serves, for every process that shares the database."""

    __tablename__ = "published_current"

    store: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class ApiKey(Base):
    """A scoped API key (engine.store.api_keys), kept as its SHA-256 only: the key itself is
    shown once, when it is created. Every server that shares the database accepts it."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The key's public start, "rs_<scope>_" and 8 random characters: names it in lists, logs
    # and `recsearch key revoke`, and finds its row; the rest of the key is secret.
    prefix: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(8))  # search | events | admin
    key_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the whole key, hex
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Written at most once a minute per key and server process, in the background.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
