"""API keys: every write endpoint and the admin API need `Authorization: Bearer <key>`;
search, events and /metrics are open or keyed by configuration (open on 127.0.0.1 by default).
A key is the data dir's admin key (engine.core.secrets) or a scoped key from SQL
(engine.store.api_keys: search, events or admin). The admin page's sign-in sessions, and a
limit on wrong keys per client address."""

from __future__ import annotations

import hmac
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from flask import Flask, Request, current_app, request, session
from flask import Response as FlaskResponse
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin
from werkzeug.exceptions import Forbidden, TooManyRequests, Unauthorized

from engine.core.config import Settings
from engine.core.errors import NotPermitted, Unauthenticated
from engine.core.files import create_private_file, make_private_dir
from engine.core.secrets import api_key
from engine.store.api_keys import allows
from web.extensions import runtime_of

SIGN_INS = "recsearch_sign_ins"
FAILURES = "recsearch_auth_failures"
# How long a sign-in lasts, counted from the sign-in, however active the session is.
SESSION_LIFETIME = timedelta(hours=12)
# Wrong keys and failed sign-ins from one address before it must wait (HTTP 429).
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
# The scope a key needs for each area when the area is not configured open; a request of no
# area (writes, user profiles, the admin API) needs an admin key. /metrics is operational
# detail no browser needs: admin too.
NEEDED_SCOPE = {"search": "search", "events": "events", "metrics": "admin"}


class SignIns:
    """Admin sign-ins, one empty file each in DATA_DIR/admin_sessions named by session id.

    The cookie is signed, so only the server can issue one; but a signed cookie stays valid
    until it expires. Keeping the live sessions on disk lets sign-out end a session in every
    server process that shares the data dir (gunicorn workers, like the indexes they serve),
    at one stat() per admin request, and an unknown or deleted session is refused.
    """

    def __init__(self, folder: Path, lifetime_s: float) -> None:
        self.folder = folder
        self.lifetime_s = lifetime_s
        self.clock: Callable[[], float] = time.time  # wall clock: compared with file mtimes

    def open(self) -> str:
        """Record a new session; returns its id."""
        make_private_dir(self.folder)
        self._prune()
        session_id = secrets.token_hex(16)
        create_private_file(self.folder / session_id)
        return session_id

    def is_open(self, session_id: object) -> bool:
        """Whether the session was opened here, not closed, and is younger than the lifetime."""
        if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
            return False
        try:
            opened_at = (self.folder / session_id).stat().st_mtime
        except FileNotFoundError:
            return False
        return self.clock() - opened_at < self.lifetime_s

    def close(self, session_id: object) -> None:
        if isinstance(session_id, str) and _SESSION_ID.fullmatch(session_id):
            (self.folder / session_id).unlink(missing_ok=True)

    def _prune(self) -> None:
        # Sessions never signed out would pile up; each is dead after the lifetime anyway.
        now = self.clock()
        for path in self.folder.iterdir():
            try:
                if now - path.stat().st_mtime >= self.lifetime_s:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass  # pruned by another process


class FailureLimit:
    """Wrong API keys and failed sign-ins per client address, over a sliding window.

    In-process: with several workers an address gets MAX_FAILURES per worker, still a
    few guesses a second at most instead of thousands.
    """

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        max_addresses: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock: Callable[[], float] = time.monotonic
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after_s(self, address: str) -> int:
        """Seconds until `address` may try again; 0 when it is not blocked."""
        with self._lock:
            now = self.clock()
            recent = self._recent(address, now)
            if recent is None or len(recent) < self.max_failures:
                return 0
            return max(1, math.ceil(recent[0] + self.window_s - now))

    def record(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            recent = self._recent(address, now)
            if recent is None:
                if len(self._failures) >= self.max_addresses:
                    self._forget(now)
                recent = self._failures[address] = deque(maxlen=self.max_failures)
            recent.append(now)

    def check(self, address: str) -> None:
        """Raise 429 with Retry-After while `address` is blocked."""
        wait_s = self.retry_after_s(address)
        if wait_s:
            raise TooManyRequests(
                f"too many wrong keys from {address}; try again in {wait_s} s",
                retry_after=wait_s,
            )

    def _recent(self, address: str, now: float) -> deque[float] | None:
        recent = self._failures.get(address)
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        return recent

    def _forget(self, now: float) -> None:
        # Bounded memory under many addresses: drop quiet ones, then the oldest.
        for address in list(self._failures):
            if not self._recent(address, now):
                del self._failures[address]
        while len(self._failures) >= self.max_addresses:
            del self._failures[next(iter(self._failures))]


def open_areas(settings: Settings, loopback: bool) -> set[str]:
    """Which of search/events/metrics answer without a key: 'auto' opens all of them, only
    on loopback."""
    return settings.open_areas(loopback)


def init(app: Flask, settings: Settings, loopback: bool) -> None:
    app.config["RECSEARCH_API_KEY"] = api_key(settings)
    app.config["RECSEARCH_OPEN"] = open_areas(settings, loopback)
    lifetime_s = SESSION_LIFETIME.total_seconds()
    app.extensions[SIGN_INS] = SignIns(settings.data_dir / "admin_sessions", lifetime_s)
    app.extensions[FAILURES] = FailureLimit()
    app.session_interface = AdminSessions()


class AdminSessions(SecureCookieSessionInterface):
    """The signed sign-in cookie, read and written under /admin only.

    Only the admin page and its API sign in with a session; /v1 and the probes take a key or
    nothing. Flask otherwise builds the cookie's signer on every request (HMAC setup, the
    cookie lookup, a Vary header): 40-50 µs of a /healthz that takes 200 here, on every
    search. Elsewhere a request gets an empty session that is never saved, so the cookie a
    signed-in browser sends along to /v1 is neither read nor rewritten there.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if _is_admin(request):
            return super().open_session(app, request)
        return self.session_class()

    def save_session(self, app: Flask, session: SessionMixin, response: FlaskResponse) -> None:
        if _is_admin(request):
            super().save_session(app, session, response)


def _is_admin(request: Request) -> bool:
    return request.path == "/admin" or request.path.startswith("/admin/")


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of any two strings; an empty one never matches.

    hmac.compare_digest refuses str with non-ASCII characters (a 500), and .encode() refuses
    lone surrogates, so both sides go through UTF-8 with surrogatepass.
    """
    if not given or not expected:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def failures() -> FailureLimit:
    return current_app.extensions[FAILURES]  # type: ignore[no-any-return]


def client_address() -> str:
    return request.remote_addr or "unknown"


def is_api_key(given: str) -> bool:
    """Whether `given` is the API key; a wrong one counts against the client's address."""
    if same_secret(given.strip(), current_app.config["RECSEARCH_API_KEY"]):
        return True
    failures().record(client_address())
    return False


def require_key(area: str | None = None) -> None:
    """Let the request through when `area` is configured open, or its key's scope covers
    NEEDED_SCOPE[area] (admin without an area).

    No key: 401 (werkzeug's Unauthorized). An unknown, revoked or expired key: 401, saying
    which (Unauthenticated), counted against the client's address. A valid key of too narrow
    a scope: 403 naming the scope needed (NotPermitted). After MAX_FAILURES wrong keys from
    one address within FAILURE_WINDOW_S, every keyed request from it gets 429 until the
    window passes, the right key too: answering that one differently would let the guessing
    go on.
    """
    if area is not None and area in current_app.config["RECSEARCH_OPEN"]:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the API key as `Authorization: Bearer <key>`")
    failures().check(client_address())
    scope = key_scope(token.strip())
    needed = NEEDED_SCOPE.get(area or "", "admin")
    if not allows(scope, needed):
        rule = request.url_rule.rule if request.url_rule is not None else request.path
        raise NotPermitted(
            f"this key's scope is {scope!r}; {request.method} {rule} needs a key with "
            f"scope {needed!r}"
        )


def key_scope(token: str) -> str:
    """The scope of a presented key: "admin" for the data dir's key, else the scoped key's.

    Raises Unauthenticated (after counting a failure for the client's address) for any
    other token.
    """
    if same_secret(token, current_app.config["RECSEARCH_API_KEY"]):
        return "admin"
    try:
        return runtime_of(current_app).api_keys.verify(token).scope
    except Unauthenticated:
        failures().record(client_address())
        raise


def csrf_token() -> str:
    """The session's CSRF token, issued on first use (with the login form, before sign-in)."""
    if not isinstance(session.get("csrf"), str):
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def has_csrf_token(given: str) -> bool:
    """Whether `given` is the token this client's session was issued."""
    expected = session.get("csrf")
    return isinstance(expected, str) and same_secret(given, expected)


def sign_in() -> None:
    """Start an admin session: a new server-side record, a new cookie, a new CSRF token."""
    session.clear()  # nothing from before the sign-in carries over
    session["sid"] = current_app.extensions[SIGN_INS].open()
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True  # the cookie expires with SESSION_LIFETIME
    session["admin"] = True


def sign_out() -> None:
    current_app.extensions[SIGN_INS].close(session.get("sid"))
    session.clear()


def is_signed_in() -> bool:
    return session.get("admin") is True and current_app.extensions[SIGN_INS].is_open(
        session.get("sid")
    )


def require_admin() -> None:
    """The API key, or a live admin sign-in session with its CSRF token on writes."""
    if is_signed_in():
        if request.method in ("GET", "HEAD"):
            return
        if has_csrf_token(request.headers.get("X-CSRF-Token", "")):
            return
        raise Forbidden("missing or wrong CSRF token")
    require_key()
