"""The admin page (/admin): a login form with a session cookie, and one server-rendered page
whose plain JavaScript drives the admin API (with the session's CSRF token)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

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

bp = Blueprint(
    "admin_page",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


def init(app: Flask) -> None:
    # Sessions are signed with a key derived from the API key: rotating it logs everyone out.
    key = app.config["RECSEARCH_API_KEY"].encode()
    app.secret_key = hmac.new(key, b"recsearch admin session", hashlib.sha256).hexdigest()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    app.register_blueprint(bp)


@bp.get("/login")
def login_form() -> ResponseReturnValue:
    return render_template("login.html", error=None, csrf=_csrf())


@bp.post("/login")
def login() -> ResponseReturnValue:
    if not hmac.compare_digest(request.form.get("csrf", ""), session.get("csrf", "")):
        return render_template(
            "login.html", error="The form expired; try again.", csrf=_csrf()
        ), 403
    password = request.form.get("password", "")
    expected = current_app.config["RECSEARCH_API_KEY"]
    if not hmac.compare_digest(password.encode(), expected.encode()):
        return render_template("login.html", error="Wrong key.", csrf=_csrf()), 401
    session.clear()
    session["admin"] = True
    session["csrf"] = secrets.token_urlsafe(32)
    return redirect(url_for("admin_page.page"))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    if hmac.compare_digest(request.form.get("csrf", ""), session.get("csrf", "")):
        session.clear()
    return redirect(url_for("admin_page.login_form"))


@bp.get("/")
def page() -> ResponseReturnValue:
    if not session.get("admin"):
        return redirect(url_for("admin_page.login_form"))
    return render_template("admin.html", csrf=session["csrf"])


def _csrf() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])
