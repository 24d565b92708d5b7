"""The Gradio UI in headless Chromium against the real service: what it shows equals what the API answers.

The service (``create_app``: scheduler, limits, UI at ``/ui``) runs under uvicorn on a free loopback port;
Debian's Chromium is driven by Playwright. Every request the page makes outside that server is refused and
recorded, so the UI is checked to render and work with no internet access.
"""

from __future__ import annotations

import base64
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fastapi
import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from lychee_rerank.core import LocalReranker
from lychee_rerank.core.inputs import Document
from lychee_rerank.core.profiles import INSTRUCTION_PRESETS
from lychee_rerank.core.server.app import create_app
from lychee_rerank.core.server.settings import ServerSettings
from lychee_rerank.core.server.ui import mount_ui, parse_document_lines
from lychee_rerank.core.testing.replicas import running_ingress

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The UI shows six decimals; the API's float may differ from it by half a unit in the last place.
DISPLAY_TOLERANCE = 1e-6


@pytest.fixture(scope="module", params=["service", "ray-ingress"])
def service_url(request: pytest.FixtureRequest, tiny_reranker: LocalReranker) -> Iterator[str]:
    """The real service on the tiny model, under uvicorn in a background thread; or the Ray Serve ingress's
    app in front of it (the UI is then the ingress's, and its scoring is forwarded to the service app)."""
    if request.param == "ray-ingress":
        service = create_app(tiny_reranker, ServerSettings(log_level="warning", ui=False))
        with running_ingress(service, ServerSettings(log_level="warning")) as (url, _):
            yield url
        return
    app = create_app(tiny_reranker, ServerSettings(log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over, so no other process can take the port
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://{host}:{port}"
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium; the tests are skipped only when it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, service_url: str, tmp_path: Path) -> Iterator[Page]:
    """A page that may only reach the service; it is screenshotted into ``tmp_path`` at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    outside: list[str] = []

    def only_the_service(route: Route) -> None:
        if route.request.url.startswith(service_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    page.goto(f"{service_url}/ui/")
    expect(page.locator("#pair-score-button")).to_be_visible(timeout=20_000)
    yield page
    page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
    context.close()
    assert outside == [], f"the UI tried to reach the internet: {outside}"


def api_scores(service_url: str, body: dict[str, object]) -> dict[int, float]:
    """``POST /v1/rerank`` on the service: relevance score by document index."""
    response = httpx.post(f"{service_url}/v1/rerank", json=body, timeout=30)
    response.raise_for_status()
    return {result["index"]: result["relevance_score"] for result in response.json()["results"]}


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def choose_preset(page: Page, prefix: str, preset: str) -> None:
    page.locator(f"#{prefix}-preset input").click()
    page.get_by_role("option", name=preset, exact=True).click()
    expect(page.locator(f"#{prefix}-preset input")).to_have_value(preset)


def shown_score(page: Page) -> float:
    score_box = page.locator("#pair-score textarea")
    expect(score_box).not_to_have_value("", timeout=20_000)
    return float(score_box.input_value())


def test_pair_score_with_a_preset_equals_the_api_score(page: Page, service_url: str) -> None:
    query, document = "red evening dress", "A long red silk dress with a slit"
    page.locator("#pair-query-text textarea").fill(query)
    page.locator("#pair-document-text textarea").fill(document)
    choose_preset(page, "pair", "ecommerce")
    page.locator("#pair-score-button").click()
    score = shown_score(page)

    with_preset = api_scores(
        service_url, {"query": query, "documents": [document], "instruction": INSTRUCTION_PRESETS["ecommerce"]}
    )[0]
    with_default = api_scores(service_url, {"query": query, "documents": [document]})[0]
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(with_preset, abs=DISPLAY_TOLERANCE)
    # The preset reached the model: the default instruction gives another score.
    assert abs(with_preset - with_default) > 1e-4
    expect(page.locator("#pair-message textarea")).to_have_value("")


def test_pair_with_an_uploaded_image_equals_the_api_with_the_same_image(
    page: Page, service_url: str, image_files: list[Path]
) -> None:
    page.locator("#pair-query-text textarea").fill("a picture with a white ring")
    page.locator("#pair-document-text textarea").fill("a chart")
    page.locator("#pair-document-image input[type=file]").set_input_files(str(image_files[1]))
    expect(page.locator("#pair-document-image img")).to_be_visible()
    page.locator("#pair-score-button").click()
    score = shown_score(page)

    document = {"text": "a chart", "image": data_uri(image_files[1])}
    expected = api_scores(service_url, {"query": "a picture with a white ring", "documents": [document]})[0]
    text_only = api_scores(service_url, {"query": "a picture with a white ring", "documents": ["a chart"]})[0]
    assert score == pytest.approx(expected, abs=DISPLAY_TOLERANCE)
    assert abs(expected - text_only) > 1e-4  # the image was scored, not dropped


def test_pair_errors_clear_the_score_and_say_what_is_wrong(page: Page, service_url: str) -> None:
    query_text = page.locator("#pair-query-text textarea")
    message = page.locator("#pair-message textarea")
    query_text.fill("red dress")
    page.locator("#pair-document-text textarea").fill("a red dress")
    page.locator("#pair-score-button").click()
    shown_score(page)

    query_text.fill("")  # a query with neither text nor image
    page.locator("#pair-score-button").click()
    expect(message).to_have_value("Error: a Query needs text, an image, or both", timeout=20_000)
    expect(page.locator("#pair-score textarea")).to_have_value("")

    # The URL goes to the service as is, and its media policy refuses a loopback address.
    query_text.fill("red dress")
    page.locator("#pair-document-image-url input, #pair-document-image-url textarea").fill(f"{service_url}/health")
    page.locator("#pair-score-button").click()
    expect(message).to_have_value(re.compile(r"^Error: .*(private|loopback|forbidden|not allowed)", re.I))
    expect(page.locator("#pair-score textarea")).to_have_value("")


def test_batch_tab_shows_documents_sorted_by_score(page: Page, service_url: str, image_files: list[Path]) -> None:
    # One document of each kind the tab takes: a text line, a "text | image URL" line, an uploaded image.
    query = "a red dress"
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-query-text textarea").fill(query)
    page.locator("#batch-documents textarea").fill(f"a blue car\na photo | {data_uri(image_files[0])}")
    page.locator("#batch-gallery input[type=file]").set_input_files(str(image_files[2]))
    expect(page.locator("#batch-gallery img")).to_be_visible()
    page.locator("#batch-captions textarea").fill("a red dress on a hanger")
    page.locator("#batch-rerank-button").click()
    expect(page.locator("#batch-message textarea")).to_have_value("3 of 3 documents, best first", timeout=20_000)

    cells = "[role=gridcell]"  # ARIA roles, not tags: Gradio's table markup changes between layouts
    rows = page.locator("#batch-results [role=row]").filter(has=page.locator(cells))
    expect(rows).to_have_count(3)
    table = [[cell.inner_text() for cell in rows.nth(row).locator(cells).all()] for row in range(3)]
    ranks = [int(row[0]) for row in table]
    scores = [float(row[1]) for row in table]
    indices = [int(row[2]) for row in table]
    assert ranks == [1, 2, 3]
    assert scores == sorted(scores, reverse=True)
    assert sorted(indices) == [0, 1, 2]

    expected = api_scores(
        service_url,
        {
            "query": query,
            "documents": [
                "a blue car",
                {"text": "a photo", "image": data_uri(image_files[0])},
                {"text": "a red dress on a hanger", "image": data_uri(image_files[2])},
            ],
        },
    )
    for index, score in zip(indices, scores, strict=True):
        assert score == pytest.approx(expected[index], abs=DISPLAY_TOLERANCE)
    by_index = {index: row for index, row in zip(indices, table, strict=True)}
    assert by_index[1][3] == "a photo"
    assert by_index[1][4].startswith("data:image/png;base64,")
    assert by_index[2][3:] == ["a red dress on a hanger", "upload 1 (56×120)"]


def test_document_lines_take_an_image_only_after_a_bar() -> None:
    documents = parse_document_lines(
        "plain text\n\nA | B is text\n| https://example.com/a.png\ncap | data:image/png;base64,AA"
    )
    assert documents == [
        Document(text="plain text"),
        Document(text="A | B is text"),
        Document(image="https://example.com/a.png"),
        Document(text="cap", image="data:image/png;base64,AA"),
    ]


def test_ui_asks_for_the_api_key_when_the_service_has_one(tiny_reranker: LocalReranker) -> None:
    app = fastapi.FastAPI()
    mount_ui(app, tiny_reranker, api_key="s3cret")
    client = TestClient(app)
    assert client.get("/ui/config").status_code == 401
    assert client.post("/ui/login", data={"username": "anyone", "password": "wrong"}).status_code == 400
    assert client.post("/ui/login", data={"username": "anyone", "password": "s3cret"}).status_code == 200
    assert client.get("/ui/config").status_code == 200
