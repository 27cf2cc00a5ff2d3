"""The admin page (/admin): a login form with a session cookie, and one server-rendered page
whose plain JavaScript drives the admin API (with the session's CSRF token)."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from web import auth
from web.contract import operation

bp = Blueprint(
    "admin_page",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def init(app: Flask) -> None:
    # Sessions are signed with a key derived from the API key: rotating it logs everyone out.
    # The cookie's flags and lifetime are set in create_app, which knows about loopback.
    key = app.config["RECSEARCH_API_KEY"].encode()
    app.secret_key = hmac.new(key, b"recsearch admin session", hashlib.sha256).hexdigest()
    app.register_blueprint(bp)


_PAGE = {"tag": "admin page", "access": "public"}
_FORM = {"password": "the API key", "csrf": "the token issued with the login form"}


@bp.get("/login")
@operation(summary="The sign-in form", responses={200: "text/html"}, **_PAGE)
def login_form() -> ResponseReturnValue:
    return _form(None, 200)


@bp.post("/login")
@operation(
    summary="Sign in with the API key (form post)",
    form=_FORM,
    responses={
        302: "signed in: to the admin page",
        401: "text/html",
        403: "text/html",
        429: "text/html",
    },
    **_PAGE,
)
def login() -> ResponseReturnValue:
    limits = auth.failures()
    wait_s = limits.retry_after_s(auth.client_address())
    if wait_s:
        message = f"Too many failed sign-ins; try again in {wait_s} s."
        return _form(message, 429, {"Retry-After": str(wait_s)})
    # The token must be the one issued with this client's form, kept in its own session
    # cookie: a client without a cookie has no token, and never matches.
    if not auth.has_csrf_token(request.form.get("csrf", "")):
        return _form("The form expired; try again.", 403)
    if not auth.is_api_key(request.form.get("password", "")):
        return _form("Wrong key.", 401)
    auth.sign_in()
    return redirect(url_for("admin_page.page"))


@bp.post("/logout")
@operation(
    summary="Sign out (ends the session in every server process)",
    form={"csrf": "the session's CSRF token"},
    responses={302: "to the sign-in form"},
    **_PAGE,
)
def logout() -> ResponseReturnValue:
    if auth.has_csrf_token(request.form.get("csrf", "")):
        auth.sign_out()
    return redirect(url_for("admin_page.login_form"))


@bp.get("/")
@operation(
    summary="The admin page", responses={200: "text/html", 302: "to the sign-in form"}, **_PAGE
)
def page() -> ResponseReturnValue:
    if not auth.is_signed_in():
        return redirect(url_for("admin_page.login_form"))
    return render_template("admin.html", csrf=session["csrf"])


def _form(
    error: str | None, status: int, headers: dict[str, str] | None = None
) -> ResponseReturnValue:
    # A browser drops a Secure cookie sent over plain HTTP (except to localhost): say so
    # instead of coming back here after each sign-in.
    is_cookie_lost = (
        current_app.config["SESSION_COOKIE_SECURE"]
        and not request.is_secure
        and urlsplit(f"//{request.host}").hostname not in LOCAL_HOSTS
    )
    html = render_template(
        "login.html", error=error, csrf=auth.csrf_token(), is_cookie_lost=is_cookie_lost
    )
    return html, status, headers or {}
