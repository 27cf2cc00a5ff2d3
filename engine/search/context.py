"""The context stage: query ⊕ user ⊕ session, weighted and renormalized, and what the user
should not be shown again; the user's row, with the co-visits of the user's latest items, is
read here in one statement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
from sqlalchemy.orm import Session

from engine.core.config import Settings
from engine.core.errors import NotFound
from engine.index.corpus import Corpus
from engine.search.request import SearchRequest
from engine.search.response import Mode
from engine.users.profile import UserState
from engine.users.state import StateView


@dataclass
class Context:
    """Everything about the asker that candidates and features need, as of `now`."""

    query: np.ndarray | None  # (dim,) float32 unit vectors, or None when absent
    user: UserState | None
    user_vector: np.ndarray | None
    session: np.ndarray | None  # the unit mean of the session's items
    now: datetime
    vector: np.ndarray | None  # what the ANN searches with; None: popular items instead
    exclude: set[str]  # item ids never to return
    # Items co-visited with the user's latest ones, best first, as the state read them with
    # the user (not yet filtered by exclude).
    covisits: list[tuple[str, float]] = field(default_factory=list)

    @property
    def mode(self) -> Mode:
        """The kind of search: "search" (a query), "recommend" (a user or a session only) or
        "popular" (nothing to go on)."""
        if self.vector is None:
            return "popular"
        return "search" if self.query is not None else "recommend"


def read(
    session: Session,
    request: SearchRequest,
    settings: Settings,
    state: StateView,
    corpus: Corpus,
    query: np.ndarray | None,
) -> Context:
    """The request's context: the user with the co-visits of the user's latest items (one
    read), the session's item vectors, or for similar_to the item's vector and co-visits.

    Raises NotFound for a similar_to item that does not exist.
    """
    user: UserState | None = None
    covisits: list[tuple[str, float]] = []
    # Twice as many co-visits are read as are kept when their damped weight re-ranks them
    # (engine.search.candidates._damped): the best damped are nearly all among them.
    covisit_reads = settings.covisit_candidates * (2 if settings.covisit_damping else 1)
    if request.user_id:
        # One read: the user's row and the co-visits of the user's latest items, enough
        # of them to drop what the context will exclude (its items, without a query).
        user, covisits = state.user_with_covisits(
            request.user_id,
            settings.covisit_window if settings.covisit_candidates > 0 else 0,
            covisit_reads + len(request.context_items),
        )
    if request.similar_to:
        # Items like this one: its vector is the context, its co-visits a source.
        if not state.live_items([request.similar_to]):
            raise NotFound(f"item {request.similar_to!r}")
        covisited = state.covisited([request.similar_to], covisit_reads, set())
        covisits = covisited + covisits
        request = replace(request, context_items=(request.similar_to,))
    session_vectors: list[np.ndarray] = []
    if request.context_items:
        vectors, found = corpus.vectors(session, request.context_items)
        session_vectors = list(vectors[found])
    context = build(request, settings, state.now, query, user, session_vectors, covisits)
    if request.similar_to:
        context.exclude.add(request.similar_to)
    return context


def build(
    request: SearchRequest,
    settings: Settings,
    now: datetime,
    query: np.ndarray | None,
    user: UserState | None,
    session_vectors: Sequence[np.ndarray],
    covisits: Sequence[tuple[str, float]] = (),
) -> Context:
    """The context of one request; session_vectors: the vectors of its context items;
    covisits: what StateView.user_with_covisits read with the user."""
    user_vector = user.unit_vector() if user else None
    session = mean_direction(session_vectors)
    vector = combine(
        [
            (settings.query_weight, query),
            (settings.user_weight, user_vector),
            (settings.session_weight, session),
        ]
    )
    exclude = _excluded(user, request.exclude_seen)
    if query is None:
        exclude |= set(request.context_items)  # "for you" should not echo the session
    return Context(query, user, user_vector, session, now, vector, exclude, list(covisits))


def _excluded(user: UserState | None, exclude_seen: str) -> set[str]:
    if user is None or exclude_seen == "none":
        return set()
    if exclude_seen == "all":
        return user.seen_items()
    return set(user.purchased)


def combine(parts: Sequence[tuple[float, np.ndarray | None]]) -> np.ndarray | None:
    """Σ wᵢ·vᵢ over the parts present, as a float32 unit vector; None when nothing is present.

    Each vᵢ is a unit vector, so a missing part simply drops out and the rest keep their
    relative weights (the renormalization the design asks for).
    """
    total: np.ndarray | None = None
    for weight, vector in parts:
        if vector is None or weight <= 0:
            continue
        total = weight * vector if total is None else total + weight * vector
    if total is None:
        return None
    norm = float(np.linalg.norm(total))
    if norm < 1e-9:
        return None
    return (total / norm).astype(np.float32)


def mean_direction(vectors: Sequence[np.ndarray]) -> np.ndarray | None:
    """The unit mean of some unit vectors (the session's items), or None."""
    if not vectors:
        return None
    return combine([(1.0, v) for v in vectors])
