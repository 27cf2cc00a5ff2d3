"""One process's engine objects: settings, database, encoder and searcher, created once."""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from engine.catalog.item_watch import ItemWatch
from engine.core.clock import Clock, utcnow
from engine.core.config import Settings
from engine.core.errors import ConfigError, NotReady
from engine.core.files import make_private_dir
from engine.encoder.embedder import Embedder
from engine.encoder.onnx_encoder import model_folder
from engine.encoder.prompts import built_document_prompt, resolve_prompts
from engine.index.ann import item_writer
from engine.index.artifact import IndexStore, LiveIndex
from engine.index.chunks import embed_chunks
from engine.index.delta import Delta
from engine.index.embedding_follower import EmbeddingFollower
from engine.index.encoder_store import build_encoder, encoder_settings
from engine.index.vectors import ItemVectors
from engine.ranking.experiments import ExperimentCache
from engine.ranking.model_store import ModelStore, live_model
from engine.ranking.rule_store import RuleCache
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from engine.search.response import SearchOut
from engine.store.api_keys import KeyCache
from engine.store.db import (
    SQLITE_AUTOCOMMIT,
    WRITE_INTENT,
    ensure_schema,
    make_engine,
    session_factory,
)
from engine.store.election import leadership_for
from engine.store.notify import Listener
from engine.store.published import PublishedVersions, share, unshare
from engine.store.replicas import ReplicaRouter, replica_urls
from engine.users.impressions import ImpressionLog
from engine.users.taste import TasteFollower

log = logging.getLogger(__name__)


class Runtime:
    """Holds what a CLI command or a server shares across calls.

    The schema is brought to head on creation, so a new database works with no extra step.
    The encoder loads on first use (seconds), or is handed in (tests share one).
    """

    def __init__(
        self, settings: Settings, *, embedder: Embedder | None = None, clock: Clock = utcnow
    ) -> None:
        self.settings = settings
        # "Now" for searches (decay, freshness, rule windows), impressions and what a build
        # reads of the catalog; tests hand in a fixed or a moved clock instead of sleeping.
        self.clock = clock
        prepare_data_dir(settings.data_dir)
        self.db: Engine = make_engine(settings)
        ensure_schema(self.db)
        self.sessions: sessionmaker[Session] = session_factory(self.db)
        # Searches read PostgreSQL through a pool of their own, SQLite through the same pool
        # without BEGIN (see read_session).
        self.search_db: Engine = (
            make_engine(settings, for_searches=True)
            if self.db.dialect.name == "postgresql"
            else self.db.execution_options(**SQLITE_AUTOCOMMIT)
        )
        self._search_sessions = session_factory(self.search_db)
        # PostgreSQL streaming replicas, if any, serve searches that may read them (None: the
        # primary serves every search, at no cost per search).
        self.replicas: ReplicaRouter | None = (
            ReplicaRouter(
                settings,
                self.db,
                lambda url: make_engine(
                    settings.model_copy(update={"database_url": url}), for_searches=True
                ),
            )
            if replica_urls(settings)
            else None
        )
        self._searcher: Searcher | None = None
        self._lock = threading.Lock()
        # Encoders by name: RECSEARCH_MODEL's and tuned versions (engine.index.encoder_store),
        # each loaded on first use. Serving follows the live index's encoder.
        self._embedders: dict[str, Embedder] = {embedder.name: embedder} if embedder else {}
        self._crowded: Callable[[], bool] | None = None  # set by share_cores
        # RECSEARCH_VERSION_SHARING=database: index and model versions are published to, and
        # followed from, the database (engine.store.published); registered for the folders,
        # so every store of them in this process (a build, a promote) shares them too.
        self.shared_versions: list[tuple[Path, PublishedVersions]] = []
        if settings.version_sharing == "database":
            for root, store in ((settings.index_dir, "index"), (settings.model_dir, "models")):
                published = PublishedVersions(self.db, store)
                share(root, published)
                self.shared_versions.append((root, published))
        self.live = LiveIndex(
            IndexStore(settings.index_dir),
            settings.index_poll_s,
            self._check_encoder,
        )
        for versions in (self.live.store, ModelStore(settings.model_dir)):
            try:  # what builds and trainings killed mid-way left (a crash, a full disk)
                for path in versions.remove_leftovers():
                    log.info("removed %s, left by a build that did not finish", path)
            except OSError:
                log.warning("could not remove leftovers in %s", versions.root, exc_info=True)
        # Item vectors come from the index; only items newer than it load the encoder.
        self.vectors = ItemVectors(
            self.live, lambda name: self.embedder_for(name or settings.model_name())
        )
        self.model = live_model(settings.model_dir, settings.models_poll_s)
        # Merchandising rules and the running online experiment (if any): read on the first
        # search, then again every second by threads of their own (engine.core.reloaded).
        self.rules = RuleCache(self.sessions)
        self.experiments = ExperimentCache(self.sessions, ModelStore(settings.model_dir))
        # Scoped API keys this process has checked, trusted for a few seconds each.
        self.api_keys = KeyCache(self.sessions)
        self.impressions = ImpressionLog(
            self.sessions, settings.impression_retention_days, clock=lambda: self.clock()
        )
        # New items are embedded once, by whichever server process holds the election; the
        # follower polls twice as often as the delta, so an item written anywhere is on every
        # server within 1.5 polls (0.75 s by default) plus its encode. Both start with the
        # first search, so CLI jobs that never search do not take part. The leader's own
        # delta does not wait for the follower's poll: it runs it when items wait.
        self.follower = EmbeddingFollower(
            self.sessions,
            self.live,
            lambda texts: self.embedder.encode(texts),
            leadership_for(self.db, "embedding-follower"),
            settings.delta_poll_s / 2,
            on_stored=lambda: self.delta.wake(),
            embed_chunks=lambda texts: embed_chunks(self.embedder, self.settings, texts),
        )
        # Users' taste vectors follow the serving encoder (engine.users.taste): the same
        # elected process re-encodes them after a switch, once workers have had a few index
        # polls to follow, then once more.
        self.tastes = TasteFollower(
            self.sessions,
            settings,
            self.vectors,
            self.follower.leadership,
            max(settings.index_poll_s, 1.0),
            settle_s=5 * max(settings.index_poll_s, 1.0),
        )
        # With Milvus, the follower also writes each new vector (and each deletion) into the
        # serving collection; FAISS has no writer (None): its delta serves new items.
        self.follower.set_sink(item_writer(settings))
        # Items' popularity and deletions for this process's searches, polled like the delta.
        self.watch = ItemWatch(self.sessions, settings.delta_poll_s)
        self.delta = Delta(
            self.sessions,
            self.live,
            settings.delta_poll_s,
            on_start=self._start_following,
            catch_up=self.follower.catch_up,
        )
        # Every item write, in any process, wakes both at commit (engine.store.notify): a new item
        # is then on every server in an encode and a read, polls being the floor.
        self.listener = Listener(self.db, [self.follower.wake, self.delta.wake])

    def _start_following(self) -> None:
        self.follower.start()
        self.tastes.start()
        self.listener.start()

    def _check_encoder(self, manifest: dict[str, Any]) -> None:
        """NotReady for an index this process cannot encode for: built with an encoder it
        does not know, or its items encoded after another document prompt than the one this
        process would give new items (engine.encoder.prompts)."""
        name = str(manifest["model"]["name"])
        settings = encoder_settings(self.settings, name)
        loaded = self._embedders.get(name)
        try:
            ours = (
                loaded.prompts.document
                if loaded is not None
                else resolve_prompts(settings, model_folder(settings)).document
            )
        except ConfigError:
            return  # no folder to read here: the encoder itself says why when it loads
        built = built_document_prompt(manifest)
        if built != ours:
            raise NotReady(
                f"index {manifest.get('version')} was built with document prompt {built!r} but "
                f"this process encodes items with {ours!r} (RECSEARCH_DOCUMENT_PROMPT or the "
                "model's prompts): set it back, or run `recsearch build`"
            )

    @property
    def embedder(self) -> Embedder:
        """The encoder of the serving index (RECSEARCH_MODEL's before the first build)."""
        artifact = self.live.get_or_none()
        return self.embedder_for(
            artifact.model_name if artifact is not None else self.settings.model_name()
        )

    def embedder_for(self, name: str) -> Embedder:
        """The encoder called name (RECSEARCH_MODEL's, or a tuned version's), loaded once;
        NotReady for a name neither knows."""
        found = self._embedders.get(name)
        if found is None:
            with self._lock:
                found = self._embedders.get(name)
                if found is None:
                    found = Embedder(encoder_settings(self.settings, name))
                    found.name = name
                    if self._crowded is not None:
                        found.share_cores(self._crowded)
                    self._embedders[name] = found
        return found

    def share_cores(self, crowded: Callable[[], bool]) -> None:
        """Serving: every encoder, now and later, encodes a query on every core only while
        crowded() says no other request is under way (Embedder.share_cores)."""
        with self._lock:
            self._crowded = crowded
            embedders = list(self._embedders.values())
        for embedder in embedders:
            embedder.share_cores(crowded)

    def build_embedder(self, version: str | None = None) -> Embedder:
        """What a build embeds with: encoder `version`, else the promoted one, else
        RECSEARCH_MODEL (engine.index.encoder_store.build_encoder)."""
        name, _ = build_encoder(self.settings, version)
        return self.embedder_for(name)

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            embedder = self.embedder
            with self._lock:
                if self._searcher is None:
                    self._searcher = Searcher(
                        self.settings,
                        embedder,
                        live=self.live,
                        vectors=self.vectors,
                        ranker=self.model.get,
                        impressions=self.impressions,
                        delta=self.delta,
                        rules=self.rules.get,
                        experiments=self.experiments.get,
                        watch=self.watch,
                        clock=lambda: self.clock(),
                        encoder_for=lambda artifact: self.embedder_for(artifact.model_name),
                    )
        return self._searcher

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session committed on success, rolled back on error, always closed.

        write=True for read-modify-write of rows others may write too (events → user
        features, upserts): SQLite then takes its write lock up front, so concurrent writers
        queue instead of failing to upgrade a read snapshot; PostgreSQL needs nothing extra.
        """
        with self.sessions() as session:
            if write:
                session.connection(execution_options=WRITE_INTENT)
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads that need no transaction of their own, such as a search.

        On PostgreSQL it runs in autocommit: each statement sees what was committed when it
        ran, and the session sends no BEGIN and no COMMIT. Its pool does not ping connections
        at checkout either. That leaves an anonymous search one round trip of the four it
        had, each of which waits for the server process to get a core on a busy machine. A
        search nearly always reads one statement, so it needs no transaction; a connection
        the server dropped is what `search` retries. On SQLite the session sends no BEGIN
        either (engine.store.db.SQLITE_AUTOCOMMIT): each statement reads in its own transaction.
        """
        with self._search_sessions() as session:
            yield session

    def search(self, request: SearchRequest) -> SearchOut:
        """The searcher's answer, read in a read_session.

        A search only reads (its impressions are logged afterwards), so one that met a
        connection the database had dropped runs once more: SQLAlchemy has by then discarded
        every connection of the pool older than the failure, so it gets a fresh one. With
        read replicas, the search reads the one the router picks (engine.store.replicas), and
        a search that fails there runs on the primary.
        """
        router = self.replicas
        replica = router.pick(request.user_id) if router is not None else None
        if router is not None and replica is not None:
            try:
                with replica.sessions() as session:
                    return self.searcher.search(session, request)
            except DBAPIError as error:  # a replica that fails costs a search nothing
                router.failed(replica)
                log.warning(
                    "replica %s failed a search; the primary serves it: %s", replica.name, error
                )
        try:
            with self.read_session() as session:
                return self.searcher.search(session, request)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
            log.warning("a search met a dropped database connection; searching again")
        with self.read_session() as session:
            return self.searcher.search(session, request)

    def write_session(self, *, users: Collection[str] = ()) -> AbstractContextManager[Session]:
        """A write; `users` names those whose own state it changes (events), whose next
        searches then read the primary until the replicas have it (read-your-writes)."""
        if self.replicas is None or not users:
            return self.session(write=True)
        return self._user_write(self.replicas, users)

    @contextmanager
    def _user_write(self, replicas: ReplicaRouter, users: Collection[str]) -> Iterator[Session]:
        with self.session(write=True) as session:
            replicas.announce_writes(session, list(users))  # to every server, at commit
            yield session
        replicas.note_write(users)

    def close(self) -> None:
        if self.replicas is not None:
            self.replicas.close()
        self.listener.close()
        self.delta.close()
        self.watch.close()
        self.rules.close()
        self.experiments.close()
        self.api_keys.close()
        self.tastes.close()
        self.follower.close()
        self.impressions.close()
        self.db.dispose()
        self.search_db.dispose()
        for root, published in self.shared_versions:
            unshare(root, published)


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data dir readable by this user only (0700): it holds personal data.

    An existing folder keeps its mode (it may be opened to a server's group on purpose, or be
    a folder of the user's own), with a warning when others can enter it.
    """
    if not data_dir.is_dir():
        make_private_dir(data_dir)
        return
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "the data dir %s is open to other users (mode %03o); it holds personal data "
            "(events, users): chmod 700 it unless a server running as another user needs it",
            data_dir,
            mode,
        )
