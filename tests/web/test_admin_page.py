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

from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from tests.conftest import PG_URL, ROOT
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

    # The latency chart, from the /metrics histogram: the playground's search shows as a point
    # at the next refresh (every 5 s). tests/web/test_admin_page_26.py checks its axes.
    page.wait_for_function("document.querySelectorAll('#latency-chart .points-p50 circle').length")
    text = page.text_content("#latency-text") or ""
    figures = r"p50 [\d.]+ ms · p95 [\d.]+ ms · p99 [\d.]+ ms over \d+ search(es)? \([\d.]+/s\)"
    assert re.fullmatch(figures + r", last 15 min, this process", text), text
    assert "recsearch_http_request_duration_seconds" in (
        page.get_attribute("#latency-text", "title") or ""
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)


def test_inspector_catalog_rules_and_experiments(
    page, server: tuple[str, str], built: Runtime
) -> None:  # type: ignore[no-untyped-def]
    from engine.ranking.model_store import ModelStore
    from engine.ranking.ranker import LinearRanker
    from indexer.events import load_events

    with built.write_session() as session:
        load_events(built, session, ROOT / "data" / "events.jsonl")
    prior = LinearRanker.prior()
    candidate = ModelStore(built.settings.model_dir).save(
        LinearRanker(prior.names, -prior.weights, -prior.bias), {"note": "test"}, promote=False
    )
    base, key = server
    sign_in(page, base, key)
    ARTIFACTS.mkdir(exist_ok=True)

    # The user inspector: profile, latest events, recommendations with explanations.
    page.fill("#user-id", "luxury-2")
    page.click("#user-look")
    page.wait_for_selector("#user-recs li.result .contrib")
    assert page.locator("#user-recs li.result").count() == 10
    assert page.locator("#user-events tbody tr").count() > 0
    assert "events" in (page.text_content("#user-meta") or "")
    page.locator("#users-panel").screenshot(path=str(ARTIFACTS / "admin-users.png"))

    # The catalog browser: filters, then an item page with its similar items.
    page.fill("#catalog-filters", '{"country": "Japan"}')
    page.click("#catalog-search")
    page.wait_for_selector("#catalog-results li.result")
    assert page.locator("#catalog-results li.result").count() == 7
    page.locator("#catalog-results li.result").first.click()
    page.wait_for_selector("#item-similar li.result")
    assert page.locator("#item-similar li.result").count() == 8
    shown = page.text_content("#item-fields") or ""
    assert "Japan" in shown
    page.locator("#catalog-panel").screenshot(path=str(ARTIFACTS / "admin-catalog.png"))

    # The rules editor: a pin shows in the playground, with its rule named.
    page.select_option("#rule-action", "pin")
    page.fill("#rule-item", "paris-france")
    page.fill("#rule-position", "1")
    page.click("#rule-add")
    page.wait_for_selector("#rules tbody tr")
    assert page.text_content("#rules tbody tr td:nth-child(3)") == "paris-france"
    page.select_option("#rule-action", "boost")
    page.fill("#rule-where", '{"colour": "red"}')
    page.click("#rule-add")
    page.wait_for_function("document.getElementById('rule-text').textContent.includes('colour')")
    page.fill("#q", "snowy mountains")
    page.click("#search")
    page.wait_for_selector("#results li.result")
    first = page.locator("#results li.result").first
    assert first.get_attribute("data-id") == "paris-france"
    assert "pin" in (first.locator(".rule-note").text_content() or "")
    page.locator("#rules-panel").screenshot(path=str(ARTIFACTS / "admin-rules.png"))
    page.click("#rules tbody tr .rule-delete")
    page.wait_for_function("document.querySelectorAll('#rules tbody tr').length === 0")

    # The experiment report: start, see it running, stop it, promote the candidate.
    page.click("#experiment-start")
    page.wait_for_selector("#experiments tbody tr .experiment-stop")
    row = page.locator("#experiments tbody tr").first
    assert candidate in (row.text_content() or "") and "running" in (row.text_content() or "")
    page.locator("#experiments-panel").screenshot(path=str(ARTIFACTS / "admin-experiments.png"))
    state = "document.querySelector('#experiments tbody tr td:nth-child(4)')?.textContent"
    row.locator(".experiment-stop").click()
    page.wait_for_function(f"{state} === 'stopped'")
    page.locator("#experiments tbody tr .experiment-promote").click()
    page.wait_for_function(f"{state} === 'promoted'")
    assert ModelStore(built.settings.model_dir).current_version() == candidate


def test_tune_encoder_job_with_progress(page, server: tuple[str, str], built: Runtime) -> None:  # type: ignore[no-untyped-def]
    if PG_URL and built.settings.database_url.startswith("sqlite"):
        pytest.skip("one database is enough for a browser walk: PostgreSQL runs it")
    from engine.index.encoder_store import EncoderStore
    from indexer.events import load_events

    with built.write_session() as session:  # same-visit engagements: the encoder's positives
        load_events(built, session, ROOT / "data" / "events.jsonl")
    base, key = server
    sign_in(page, base, key)
    page.fill("#tune-epochs", "1")
    page.check("#tune-promote")
    page.click("#tune-encoder")
    page.wait_for_function(
        "/^running · tune \\d+%/.test(document.getElementById('tune-text').textContent)"
    )
    page.wait_for_function(
        "document.getElementById('tune-text').textContent.startsWith('done: encoder')",
        timeout=300_000,
    )
    assert page.text_content("#tune-text") == "done: encoder v000001"
    store = EncoderStore.of(built.settings)
    assert store.current_version() == "v000001"  # promoted: the next build embeds with it
    report = store.manifest("v000001")["report"]
    assert report["sources"]["events"] > 0 and report["promoted"] is True
    page.wait_for_selector("#jobs tbody tr td:text('train-encoder')")
