"""The demo page in a real browser (Debian's chromium via Playwright) against a real
uvicorn server: type, see suggestions, pick one with ArrowDown + Enter, see the
session effect on the next suggestions."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from qac.server import ServerConfig, create_app
from tests.test_server import train_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = train_model(tmp_path_factory.mktemp("demo") / "model")
    app = create_app(ServerConfig(model_dir=str(model)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


def _browser_page(url: str) -> tuple[Playwright, Browser, Page]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install -y chromium); never `playwright install`")
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.set_default_timeout(5000)
    page.goto(url)
    return pw, browser, page


def test_type_pick_submit_and_see_the_session_effect(server: str) -> None:
    pw, browser, page = _browser_page(server)
    try:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        box = page.locator("#q")
        options = page.locator("#suggestions li")

        # the answer to "pl" itself, not one to "p" that came first
        with page.expect_response(lambda r: "/v1/complete?q=pl&" in r.url):
            box.press_sequentially("pl", delay=20)
        expect(options.first).to_contain_text("playstation")
        expect(options.first.locator(".source")).to_have_text("model")

        # no context yet: "playstation" leads; pick it with ArrowDown + Enter
        box.press("ArrowDown")
        expect(options.first).to_have_attribute("aria-selected", "true")
        with page.expect_response(lambda r: "/v1/sessions/" in r.url) as resp:
            box.press("Enter")
        assert resp.value.status == 200
        expect(page.locator("#history li")).to_have_text(["playstation"])
        expect(box).to_have_value("")

        # type a query and submit the typed text: it becomes the previous query
        box.press_sequentially("rose of jericho", delay=5)
        with page.expect_response(lambda r: "/v1/sessions/" in r.url):
            box.press("Enter")
        expect(page.locator("#history li")).to_have_text(["playstation", "rose of jericho"])

        box.press_sequentially("pl", delay=20)
        expect(options.first).to_contain_text("plant care tips")
        if os.environ.get("QAC_DEMO_SCREENSHOT"):
            page.screenshot(path=os.environ["QAC_DEMO_SCREENSHOT"])

        # the session id lives in sessionStorage and the server saw both queries
        session = page.evaluate("sessionStorage.getItem('qac-session')")
        assert session and len(session) == 32
        got = page.request.get(f"{server}/v1/complete?q=pl&k=1&session={session}").json()
        assert got["completions"][0]["text"] == "plant care tips"
        assert not errors, errors
    finally:
        browser.close()
        pw.stop()


def test_stale_answers_are_ignored(server: str) -> None:
    """A slow answer to an older keystroke must not replace a newer one."""
    pw, browser, page = _browser_page(server)
    try:
        # delay the answer for "g" in the page itself (a Python route handler would
        # block Playwright's dispatcher and serialize the requests)
        page.evaluate("""() => {
            const real = window.fetch;
            window.fetch = async (url, opts) => {
                const res = await real(url, opts);
                if (String(url).includes("q=g&")) await new Promise(r => setTimeout(r, 400));
                return res;
            };
        }""")
        box = page.locator("#q")
        box.press_sequentially("g")
        box.press("Backspace")
        box.press_sequentially("p")
        expect(page.locator("#suggestions li").first).to_contain_text("playstation")
        page.wait_for_timeout(600)  # the answer for "g" has arrived by now
        texts = page.locator("#suggestions li").all_inner_texts()
        assert texts and all(t.startswith("p") for t in texts), texts
    finally:
        browser.close()
        pw.stop()


def test_a_highlighted_suggestion_survives_a_late_answer(server: str) -> None:
    """An answer landing between ArrowDown and Enter keeps the highlighted text if it
    is still in the list (and the highlight moves with it); otherwise it goes."""
    pw, browser, page = _browser_page(server)
    try:
        box = page.locator("#q")
        options = page.locator("#suggestions li")
        with page.expect_response(lambda r: "/v1/complete?q=pl&" in r.url):
            box.press_sequentially("pl", delay=20)
        expect(options.first).to_contain_text("playstation")
        box.press("ArrowDown")
        expect(options.first).to_have_attribute("aria-selected", "true")
        # a late answer for the same text (as if a request had been in flight)
        with page.expect_response(lambda r: "/v1/complete?q=pl&" in r.url):
            box.dispatch_event("input")
        expect(options.first).to_contain_text("playstation")
        expect(options.first).to_have_attribute("aria-selected", "true")
        # an answer whose list lacks the highlighted text drops the highlight
        with page.expect_response(lambda r: "/v1/complete?q=plan&" in r.url):
            box.press_sequentially("an", delay=20)
        expect(options.first).to_contain_text("plant care tips")
        assert "playstation" not in " ".join(options.all_inner_texts())
        assert page.locator('#suggestions li[aria-selected="true"]').count() == 0
    finally:
        browser.close()
        pw.stop()
