"""The admin page in a real browser (Debian's Chromium driven by Playwright): sign-in, a
rebuild with its progress bar, a playground search with explanation bars, and the latency
chart drawn from the /metrics histogram."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from engine.index_store import IndexStore
from engine.runtime import Runtime
from tests.conftest import ROOT
from web import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"
)


@pytest.fixture
def server(built: Runtime) -> Iterator[tuple[str, str]]:
    app = create_app(runtime=built)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}", app.config["RECSEARCH_API_KEY"]
    http.shutdown()
    thread.join()


@pytest.fixture
def page(server: tuple[str, str]):  # type: ignore[no-untyped-def]
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        tab = browser.new_page()
        tab.set_default_timeout(60_000)
        yield tab
        browser.close()


def sign_in(page, base: str, key: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/admin/")
    assert page.url.endswith("/admin/login")
    page.fill("#password", key)
    page.click("#signin")
    page.wait_for_selector("#index-status dd")


def test_wrong_key_is_refused(page, server: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    base, _ = server
    page.goto(f"{base}/admin/login")
    page.fill("#password", "not-the-key")
    page.click("#signin")
    assert page.text_content("#error") == "Wrong key."
    page.goto(f"{base}/admin/")
    assert page.url.endswith("/admin/login")


def test_sign_out_ends_the_session_for_good(page, server: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    base, key = server
    sign_in(page, base, key)
    cookies = page.context.cookies()
    (session,) = [c for c in cookies if c["name"] == "session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax" and session["expires"] > 0
    page.click("#signout")
    page.wait_for_url("**/admin/login")
    page.context.add_cookies([session])  # a copy of the cookie, kept from before sign-out
    page.goto(f"{base}/admin/")
    assert page.url.endswith("/admin/login")
    status = page.evaluate("fetch('/admin/api/status').then((r) => r.status)")
    assert status == 401


def test_rebuild_progress_and_playground(page, server: tuple[str, str], built: Runtime) -> None:  # type: ignore[no-untyped-def]
    base, key = server
    sign_in(page, base, key)
    before = IndexStore(built.settings.index_dir).current_version()
    assert page.text_content("#status-version") == before
    page.click("#rebuild")
    page.wait_for_function(
        "document.getElementById('progress-text').textContent.startsWith('done: published')"
    )
    after = IndexStore(built.settings.index_dir).current_version()
    assert after != before
    assert page.text_content("#progress-text") == f"done: published {after}"
    assert page.get_attribute("#progress-bar", "style") == "width: 100%;"
    page.wait_for_function(f"document.getElementById('status-version').textContent === '{after}'")

    page.fill("#q", "quiet beach with snorkeling")
    page.click("#search")
    page.wait_for_selector("#results li.result .contrib")
    assert page.locator("#results li.result").count() == 10
    assert page.locator("#results li.result").first.locator(".contrib .pos").count() >= 1

    # The latency chart, from the /metrics histogram: the playground's search lands in a
    # minute's bar at the next refresh (every 5 s), between two snapshots of the buckets.
    page.wait_for_function("document.querySelectorAll('#latency-chart rect').length > 0")
    text = page.text_content("#latency-text") or ""
    figures = r"p50 [\d.]+ ms · p95 [\d.]+ ms · p99 [\d.]+ ms over \d+ search(es)?"
    assert re.fullmatch(figures + r" \((since the server started|last 300 s), this process\)", text)
    assert "recsearch_http_request_duration_seconds" in (
        page.get_attribute("#latency-text", "title") or ""
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
