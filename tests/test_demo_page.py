"""The demo page in a real browser (Debian's chromium via Playwright) against a real
uvicorn server: the WAI-ARIA combobox, keyboard-only use, server-side highlights,
debounced and cancelled requests, the overlaying list, 375 px, the debug toggle,
retrieval results after a submit, and the server going away."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from sessionlog import PATTERNS, weeks_log

from qac.complete import Completer, CompleterConfig
from qac.retrieve import Retriever
from qac.server import ServerConfig, create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SLOW_PREFIX = b"q=pla&"  # the server answers this one 0.6 s late
SLOW_SECONDS = 0.6
# unhandled promise rejections and errors, collected by the page itself
TRAP = """window.__failures = [];
window.addEventListener("unhandledrejection", (e) => window.__failures.push(String(e.reason)));
window.addEventListener("error", (e) => window.__failures.push(String(e.message)));"""


def train(root: Path) -> tuple[Path, Path]:
    """A small completer (the server tests' sessions plus "we..." queries; the ranker
    shipped with qac, as ``qac demo`` uses; no generated queries) and a retriever."""
    log = weeks_log(patterns=PATTERNS[:-1], noise=())  # no "planet earth" sessions
    log.repeat(5, "w", "weather")
    log.repeat(3, "x", "web md")
    model = root / "model"
    Completer.train(log.events, CompleterConfig(index="hybrid", trie_depth=1, fit_days=0,
                                                generators=("history", "session"))).save(model)
    retriever = root / "retriever"
    Retriever.train([("https://shop.example/ps5", "playstation"),
                     ("https://shop.example/ps5", "playstation 5"),
                     ("https://garden.example/care", "plant care tips"),
                     ("https://weather.example/", "weather")]).save(retriever)
    return model, retriever


class LiveServer:
    """uvicorn in a thread on a fixed port, which can be stopped and started again."""

    def __init__(self, app: Any) -> None:
        self.app = app
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.sock: socket.socket | None = None

    def start(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no uvicorn"
            time.sleep(0.02)

    def stop(self) -> None:
        assert self.server is not None and self.thread is not None and self.sock is not None
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def slow_for(app: Any) -> Any:
    """``app`` with the answer to SLOW_PREFIX delayed (a request still in flight)."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("query_string", b"").startswith(SLOW_PREFIX):
            await asyncio.sleep(SLOW_SECONDS)
        await app(scope, receive, send)
    return wrapped


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def server(models: tuple[Path, Path]) -> Iterator[str]:
    model, retriever = models
    live = LiveServer(slow_for(create_app(ServerConfig(model_dir=str(model),
                                                       retrieval_dir=str(retriever)))))
    live.start()
    yield live.url
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install -y chromium); never `playwright install`")
    pw: Playwright = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()


class Session:
    """A fresh page (own context, so its own sessionStorage) and its page errors."""

    def __init__(self, browser: Browser, url: str, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.context.add_init_script(TRAP)
        self.page = self.context.new_page()
        self.page.set_default_timeout(5000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(url)

    def failures(self) -> list[str]:
        got: list[str] = self.page.evaluate("window.__failures")
        return self.errors + got


@pytest.fixture()
def session(browser: Browser, server: str) -> Iterator[Session]:
    s = Session(browser, server)
    yield s
    assert not s.failures(), s.failures()
    s.context.close()


def combobox(page: Page) -> Any:
    return page.get_by_role("combobox", name="Search")


def options(page: Page) -> Any:
    return page.locator("#suggestions [role=option]")


# -- the combobox pattern and keyboard-only use ---------------------------------------------

def test_suggestions_on_focus_before_typing_and_after_we(session: Session) -> None:
    page = session.page
    box = combobox(page)
    # autofocus ran before the script: the page still opens the list
    expect(box).to_be_focused()
    expect(options(page).first).to_have_text("playstation")  # the most popular query
    expect(box).to_have_attribute("aria-expanded", "true")
    # leaving closes the list; focusing again opens it
    page.keyboard.press("Tab")
    expect(page.locator("#suggestions")).to_be_hidden()
    expect(box).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("Shift+Tab")
    expect(box).to_be_focused()
    expect(options(page).first).to_have_text("playstation")
    box.press_sequentially("we", delay=30)
    # the two that start with "we" and a word-prefix match (scarce answers are filled),
    # each with what matched "we" lit: the start, or the later word's start
    expect(options(page)).to_have_count(3)
    assert sorted(options(page).all_inner_texts()) == ["new york weather", "weather",
                                                       "web md"]
    for i in range(3):
        expect(options(page).nth(i).locator("mark")).to_have_text("we")


def test_combobox_roles_names_and_live_region(session: Session) -> None:
    page = session.page
    box = combobox(page)
    expect(box).to_have_accessible_name("Search")
    expect(box).to_have_attribute("aria-autocomplete", "list")
    listbox = page.get_by_role("listbox", name="Suggestions")
    expect(box).to_have_attribute("aria-controls", listbox.get_attribute("id") or "?")
    live = page.locator("[aria-live=polite]")
    expect(live).to_have_count(1)
    expect(live).to_have_text("8 popular searches. Use Up and Down to choose, Enter to search.")
    ids = [options(page).nth(i).get_attribute("id") for i in range(options(page).count())]
    assert all(ids) and len(set(ids)) == len(ids), ids


def test_keyboard_only(session: Session) -> None:
    """Arrow keys move aria-activedescendant through the options' ids (wrapping),
    Escape closes then clears, Enter submits the highlighted option."""
    page = session.page
    box = combobox(page)
    with page.expect_response(lambda r: "/v1/complete?q=pl&" in r.url):
        box.press_sequentially("pl", delay=30)
    opts = options(page)
    expect(opts.first).to_have_text("playstation")
    texts = opts.all_inner_texts()
    assert len(texts) == 3 and "plant care tips" in texts, texts
    assert box.get_attribute("aria-activedescendant") is None

    def active() -> str:
        value = box.get_attribute("aria-activedescendant")
        assert value, "no aria-activedescendant"
        assert page.locator(f"#{value}").get_attribute("role") == "option"
        expect(page.locator(f"#{value}")).to_have_attribute("aria-selected", "true")
        expect(page.locator('[role=option][aria-selected="true"]')).to_have_count(1)
        return page.locator(f"#{value}").inner_text()

    for text in texts:
        box.press("ArrowDown")
        assert active() == text
    box.press("ArrowDown")  # wraps to the first
    assert active() == texts[0]
    box.press("ArrowUp")  # and back to the last
    assert active() == texts[-1]
    box.press("ArrowLeft")  # back to editing the text
    assert box.get_attribute("aria-activedescendant") is None
    expect(box).to_be_focused()

    box.press("Escape")  # closes the list, keeps the text
    expect(page.locator("#suggestions")).to_be_hidden()
    expect(box).to_have_attribute("aria-expanded", "false")
    expect(box).to_have_value("pl")
    box.press("Escape")  # clears the text
    expect(box).to_have_value("")
    box.press("ArrowDown")  # opens again
    expect(opts.first).to_have_text("playstation")

    box.press_sequentially("pl", delay=30)
    expect(opts).to_have_text(texts)
    box.press("ArrowDown")
    with page.expect_response(lambda r: "/v1/sessions/" in r.url) as resp:
        box.press("Enter")
    assert resp.value.status == 200
    expect(page.locator("#history li")).to_have_text(["playstation"])
    expect(box).to_have_value("")
    expect(box).to_be_focused()
    expect(page.locator("#suggestions")).to_be_hidden()  # the results stay in sight
    expect(page.locator("[aria-live=polite]")).to_contain_text("Searched for playstation")


def test_server_side_highlight_survives_capitals_and_double_spaces(session: Session) -> None:
    page = session.page
    with page.expect_response(lambda r: "/v1/complete?q=New++Y&" in r.url):
        combobox(page).press_sequentially("New  Y", delay=30)
    first = options(page).first
    expect(first).to_have_text(re.compile(r"^new york (times|weather)$"))
    expect(first.locator("mark")).to_have_text("new y")


@pytest.fixture()
def own_session(browser: Browser, models: tuple[Path, Path]) -> Iterator[Session]:
    """A page on a server of its own: the module's server learns live from every other
    test's submits ("playstation" many times), which would outweigh one session's
    context."""
    model, retriever = models
    live = LiveServer(create_app(ServerConfig(model_dir=str(model),
                                              retrieval_dir=str(retriever))))
    live.start()
    s = Session(browser, live.url)
    try:
        yield s
        assert not s.failures(), s.failures()
    finally:
        s.context.close()
        live.stop()


def test_submit_shows_retrieval_results_and_the_session_effect(own_session: Session) -> None:
    session = own_session
    page = session.page
    box = combobox(page)
    box.press_sequentially("rose of jericho", delay=5)
    with page.expect_response(lambda r: "/v1/search?" in r.url):
        box.press("Enter")
    expect(page.locator("#history li")).to_have_text(["rose of jericho"])
    # the next query's suggestions follow the session: after "rose of jericho" ...
    with page.expect_response(lambda r: "/v1/complete?q=pl&" in r.url):
        box.press_sequentially("pl", delay=30)
    expect(options(page).first).to_have_text("plant care tips")
    box.press("Escape")
    box.press("Escape")
    # the retriever's items for the submitted query, as links
    with page.expect_response(lambda r: "/v1/search?" in r.url):
        box.press_sequentially("playstation", delay=5)
        box.press("Enter")
    expect(page.locator("#results-title")).to_have_text("Results for “playstation”")
    link = page.locator("#results li a").first
    expect(link).to_have_text("https://shop.example/ps5")
    expect(link).to_have_attribute("href", "https://shop.example/ps5")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    if os.environ.get("QAC_DEMO_SCREENSHOT"):
        page.screenshot(path=os.environ["QAC_DEMO_SCREENSHOT"])
    session_id = page.evaluate("sessionStorage.getItem('qac-session')")
    assert session_id and len(session_id) == 32


# -- requests: debounced, cancelled, stale answers dropped -----------------------------------

def test_typing_is_debounced(session: Session) -> None:
    page = session.page
    expect(options(page).first).to_be_visible()  # the focus request is done
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/v1/complete" in r.url else None)
    with page.expect_response(lambda r: "/v1/complete?q=playst&" in r.url):
        combobox(page).press_sequentially("playst")
    expect(options(page).first).to_have_text("playstation")
    # six keystrokes and one pause: one request (a slow machine may split the burst)
    assert len(sent) <= 3, sent


def test_a_request_in_flight_is_aborted_and_its_answer_never_shows(session: Session) -> None:
    page = session.page
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    box = combobox(page)
    with page.expect_request(lambda r: "/v1/complete?q=pla&" in r.url):
        box.press_sequentially("pla", delay=30)
    box.press_sequentially("n", delay=30)  # before the slow answer for "pla"
    # "plan": its own answer first, then corrections (plan -> play); the answer for
    # "pla" would put "playstation" first
    expect(options(page).first).to_have_text("plant care tips")
    expect(options(page).nth(1)).to_have_text("playstation")
    page.wait_for_timeout(SLOW_SECONDS * 1000 + 200)  # the answer for "pla" is due
    expect(options(page).first).to_have_text("plant care tips")
    assert any("q=pla&" in u for u in failed), failed


def test_a_highlighted_option_survives_a_late_answer_that_still_has_it(
        session: Session) -> None:
    page = session.page
    box = combobox(page)
    with page.expect_response(lambda r: "/v1/complete?q=pl&" in r.url):
        box.press_sequentially("pl", delay=30)
    expect(options(page).first).to_have_text("playstation")
    with page.expect_response(lambda r: "/v1/complete?q=pla&" in r.url):
        box.press_sequentially("a", delay=30)
        expect(page.locator("#suggestions")).to_be_visible()
        box.press("ArrowDown")  # on the list of "pl", while "pla" is in flight
        assert box.get_attribute("aria-activedescendant")
    expect(page.locator('[role=option][aria-selected="true"]')).to_have_text("playstation")
    active = box.get_attribute("aria-activedescendant")
    expect(page.locator(f"#{active}")).to_have_text("playstation")


# -- layout, states and extras ----------------------------------------------------------------

def test_the_list_overlays_the_page_and_options_have_hover_state(session: Session) -> None:
    page = session.page
    box = combobox(page)
    box.press("Escape")
    expect(page.locator("#suggestions")).to_be_hidden()
    below = page.locator("#history-title").bounding_box()
    box.press("ArrowDown")
    expect(options(page).first).to_be_visible()
    assert page.locator("#history-title").bounding_box() == below
    listbox = page.locator("#suggestions").bounding_box()
    assert listbox and below and listbox["y"] + listbox["height"] > below["y"]  # over it
    first, second = options(page).nth(0), options(page).nth(1)
    box.press("ArrowLeft")
    plain = second.evaluate("e => getComputedStyle(e).backgroundColor")
    second.hover()
    hovered = second.evaluate("e => getComputedStyle(e).backgroundColor")
    assert hovered != plain
    assert first.evaluate("e => getComputedStyle(e).cursor") == "pointer"
    box.press("ArrowDown")
    selected = first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert selected not in (plain, hovered)


def test_debug_details_are_behind_a_toggle(session: Session) -> None:
    page = session.page
    expect(options(page).first).to_be_visible()
    meta = options(page).first.locator(".meta")
    session_id = page.evaluate("sessionStorage.getItem('qac-session')")
    expect(meta).to_have_count(0)
    expect(page.get_by_text(session_id)).to_be_hidden()
    expect(page.get_by_text("ms in the server")).to_be_hidden()
    combobox(page).press("Escape")  # the open list covers the toggle
    page.get_by_text("Debug details").click()
    combobox(page).click()
    expect(meta).to_be_visible()
    expect(meta).to_have_text(re.compile(r"^(model|mpc|history|session|suffix|word) -?\d"))
    expect(page.get_by_text(session_id)).to_be_visible()
    expect(page.locator("#debug-timing")).to_contain_text("ms in the server")


def test_favicon(session: Session, server: str) -> None:
    page = session.page
    expect(page.locator('link[rel="icon"]')).to_have_attribute("href", "/favicon.ico")
    got = page.request.get(f"{server}/favicon.ico")
    assert got.status == 200
    assert got.headers["content-type"] == "image/x-icon"
    assert got.body()[:4] == b"\x00\x00\x01\x00"  # an ICO header


def test_works_at_375px_with_touch(browser: Browser, server: str) -> None:
    s = Session(browser, server, viewport={"width": 375, "height": 667}, has_touch=True,
                is_mobile=True)
    try:
        page = s.page
        box = combobox(page)
        box.tap()
        expect(options(page).first).to_be_visible()
        box.press_sequentially("New  Y", delay=30)
        expect(options(page).first).to_have_text(re.compile(r"^new york (times|weather)$"))
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        for el in ("#suggestions", "#q", "button[type=submit]"):
            bb = page.locator(el).bounding_box()
            assert bb and bb["x"] >= 0 and bb["x"] + bb["width"] <= 375, (el, bb)
        tall = options(page).first.bounding_box()
        assert tall and tall["height"] >= 40  # a finger-sized target
        chosen = options(page).first.inner_text()
        with page.expect_response(lambda r: "/v1/search?" in r.url):
            options(page).first.tap()
        expect(page.locator("#history li")).to_have_text([chosen])
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert not s.failures(), s.failures()
    finally:
        s.context.close()


def test_the_server_going_away(browser: Browser, tmp_path: Path) -> None:
    """With the server stopped, typing shows an error and no stale list, Enter raises no
    unhandled error and keeps the text; with the server back, suggestions return."""
    model, _ = train(tmp_path)
    live = LiveServer(create_app(ServerConfig(model_dir=str(model))))  # no retriever
    live.start()
    s = Session(browser, live.url)
    page = s.page
    box = combobox(page)
    error = page.get_by_role("alert")
    try:
        expect(options(page).first).to_be_visible()
        expect(error).to_be_hidden()
        # no retrieval model: the submit still works and says so
        box.press_sequentially("weather", delay=5)
        box.press("Enter")
        expect(page.locator("#history li")).to_have_text(["weather"])
        expect(page.locator("#results-note")).to_contain_text("no retrieval model")
        with page.expect_response(lambda r: "/v1/complete?q=pl&" in r.url):
            box.press_sequentially("pl", delay=30)
        box.press("ArrowDown")
        expect(page.locator('[role=option][aria-selected="true"]')).to_have_count(1)
        live.stop()

        box.press_sequentially("a", delay=30)
        expect(error).to_contain_text("Connection error")
        expect(page.locator("#suggestions")).to_be_hidden()  # no stale list, nothing selected
        expect(box).to_have_attribute("aria-expanded", "false")
        assert box.get_attribute("aria-activedescendant") is None
        box.press("Enter")
        expect(error).to_contain_text("was not searched")
        expect(box).to_have_value("pla")
        expect(page.locator("#history li")).to_have_text(["weather"])
        page.wait_for_timeout(300)
        assert not s.failures(), s.failures()

        live.start()
        box.press_sequentially("n", delay=30)
        expect(options(page).first).to_have_text("plant care tips")
        expect(error).to_be_hidden()
        assert not s.failures(), s.failures()
    finally:
        s.context.close()
        if live.server is not None and not live.server.should_exit:
            live.stop()
