"""The web UI in a real headless Chromium against a real uvicorn server on 127.0.0.1.

Needs the ``playwright`` Python package and a system Chromium at /usr/bin/chromium (Debian's
``chromium`` package); Playwright's own browser download is never used. Without them the tests
skip, except under CI (env ``CI`` set), where a missing browser is a failure.

Screenshots go to ``artifacts/browser/`` (or ``$CANDIDFASHION_ARTIFACTS_DIR``); the desktop
one is also written to ``docs/img/look.png`` for the README.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from candidfashion.config import REPO_MODELS_DIR, Settings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("CANDIDFASHION_ARTIFACTS_DIR", REPO / "artifacts" / "browser"))
DOCS_IMG = REPO / "docs" / "img"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for model in ("parser.onnx", "embedder.onnx"):
        if not (REPO_MODELS_DIR / model).is_file():
            _missing(f"shipped model {REPO_MODELS_DIR / model} is missing")
    import uvicorn

    from candidfashion.api import create_app
    from candidfashion.demo import ensure_demo_catalog

    settings = Settings(data_dir=tmp_path_factory.mktemp("browser-data"), threads=1)
    ensure_demo_catalog(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def demo_photo() -> Path:
    from candidfashion.demo import demo_photos

    return {p.stem: p for p in demo_photos()}["2_posture"]


class Console:
    """Collects console errors and uncaught page exceptions."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def _upload(page, photo: Path) -> dict:
    with page.expect_response(lambda r: r.url.endswith("/api/v1/looks"), timeout=60_000) as resp:
        page.set_input_files("#file-input", str(photo))
    assert resp.value.status == 200
    page.wait_for_selector("#chips .chip", timeout=30_000)
    return resp.value.json()


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path


def test_shop_the_look_desktop(server: str, browser, demo_photo: Path) -> None:
    from candidfashion.items import rle_decode

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    console = Console(page)
    page.goto(server + "/")
    page.wait_for_selector("#demo-list button")
    look = _upload(page, demo_photo)
    categories = page.eval_on_selector_all(
        "#chips .chip", "els => els.map(e => e.dataset.category)"
    )
    assert "outerwear" in categories, categories

    # Pick another item first, then click the jacket on the photo itself.
    other = next(i for i in look["items"] if i["category"] != "outerwear")
    page.click(f'#chips .chip[data-item="{other["index"]}"]')
    jacket = next(i for i in look["items"] if i["category"] == "outerwear")
    # The point deepest inside the jacket's mask, so the click cannot land on its edge.
    mask = rle_decode(jacket["mask"]).astype(np.uint8)
    depth = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    px, py = jacket["box"][0] + x + 0.5, jacket["box"][1] + y + 0.5
    box = page.locator("#overlay").bounding_box()
    page.mouse.click(
        box["x"] + px / look["width"] * box["width"], box["y"] + py / look["height"] * box["height"]
    )
    chip = page.locator('#chips .chip[data-category="outerwear"]')
    assert chip.get_attribute("aria-pressed") == "true"
    shown = page.eval_on_selector_all(
        "#results .product", "els => els.map(e => e.dataset.productId)"
    )
    # The light-wash or the black distressed denim jacket of the demo catalog.
    assert {"openvto-jackets-1", "openvto-jackets-2"} & set(shown), shown
    assert page.locator("#cutout").evaluate("img => img.complete && img.naturalWidth > 0")
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].slice(0, 4)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    _shot(page, "look-desktop.png")
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    # The README picture: the outlined photo, the selected item and the first matches.
    viewport = page.viewport_size
    page.set_viewport_size({"width": 1280, "height": 1120})
    page.evaluate(
        "window.scrollTo(0, document.querySelector('#overlay').getBoundingClientRect().top"
        " + window.scrollY - 80)"
    )
    page.screenshot(path=str(DOCS_IMG / "look.png"))
    page.set_viewport_size(viewport)

    # Colour filter: results come back from /items/search, all near the chosen colour.
    with page.expect_response(lambda r: r.url.endswith("/api/v1/items/search")) as resp:
        page.click('#swatches [data-colour="black"]')
    assert resp.value.status == 200
    products = resp.value.json()["products"]
    assert all(p["colour_distance"] is not None for p in products)
    page.wait_for_function("document.querySelector('#status').textContent.includes('black')")
    assert page.locator('#swatches [data-colour="black"]').get_attribute("aria-pressed") == "true"
    shown = page.locator("#results .product").count()
    assert shown == len(products) or (not products and page.locator("#results .empty").count())
    _shot(page, "look-desktop-black.png")

    # Feedback buttons answer and disable themselves.
    if products:
        page.locator("#results .product").first.get_by_role("button", name="Good match").click()
        page.wait_for_function("document.querySelector('#status').textContent.includes('Thanks')")
    assert console.errors == []
    page.close()


def test_shop_the_look_phone(server: str, browser, demo_photo: Path) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    console = Console(page)
    page.goto(server + "/")
    _upload(page, demo_photo)
    # Nothing overflows sideways on a phone.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    page.locator("#photo-wrap").scroll_into_view_if_needed()
    _shot(page, "look-phone.png")
    page.locator("#results").scroll_into_view_if_needed()
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].slice(0, 4)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    _shot(page, "look-phone-results.png")
    assert console.errors == []
    context.close()


def test_demo_button_keyboard_and_other_pages(server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    console = Console(page)
    page.goto(server + "/")
    page.wait_for_selector("#demo-list button")
    # Keyboard only: focus the first demo photo and press Enter.
    page.focus("#demo-list button")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/looks"), timeout=60_000):
        page.keyboard.press("Enter")
    page.wait_for_selector("#chips .chip")
    page.goto(server + "/catalog.html")
    page.wait_for_selector("#results .product")
    page.fill("#q", "jacket")
    page.click("#search-form button[type=submit]")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Showing')")
    assert page.locator("#results .product").count() >= 1
    _shot(page, "catalog.png")
    page.goto(server + "/about.html")
    page.wait_for_function("document.querySelector('#facts tbody').children.length > 3")
    _shot(page, "about.png")
    page.goto(server + "/docs")
    page.wait_for_selector(".swagger-ui, #endpoints .endpoint", timeout=15_000)
    assert console.errors == []
    page.close()


def test_clear_error_messages(server: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server + "/")
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    page.set_input_files("#file-input", str(text))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 200)
    with page.expect_response(lambda r: r.url.endswith("/api/v1/looks")) as resp:
        page.set_input_files("#file-input", str(broken))
    assert resp.value.status in (400, 415)
    page.wait_for_function("document.querySelector('#error').textContent.length > 10")
    message = page.inner_text("#error").lower()
    assert "photo" in message or "image" in message, message
    _shot(page, "error.png")
    page.close()
