"""The HTTP API against the real app: real ONNX models, real FAISS + SQLite demo catalog.

The app, models and demo catalog are built once for the module. Bad inputs of every kind are
sent, and the server is checked to keep answering afterwards. Upload caps are also checked
against a real uvicorn server over raw sockets, to prove a huge body is refused before it
has been read.
"""

from __future__ import annotations

import io
import json
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from candidfashion.config import REPO_MODELS_DIR, Settings

pytestmark = pytest.mark.slow

#: The two denim jackets of the openvto demo catalog (light wash; black distressed).
DENIM_JACKETS = {"openvto-jackets-1", "openvto-jackets-2"}
PARSER = REPO_MODELS_DIR / "parser.onnx"
EMBEDDER = REPO_MODELS_DIR / "embedder.onnx"


def _require_models() -> None:
    missing = [p.name for p in (PARSER, EMBEDDER) if not p.is_file()]
    if missing:
        pytest.skip(f"shipped models missing from {REPO_MODELS_DIR}: {', '.join(missing)}")


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    _require_models()
    data_dir = tmp_path_factory.mktemp("api-data")
    return Settings(
        data_dir=data_dir,
        parser_model=str(PARSER),
        embedder_model=str(EMBEDDER),
        max_upload_bytes=4 * 1024 * 1024,
        max_image_pixels=12_000_000,
        look_ttl_s=600,
        look_cache_size=20,
        threads=1,
    )


@pytest.fixture(scope="module")
def client(api_settings: Settings) -> Iterator:
    from fastapi.testclient import TestClient

    from candidfashion.api import create_app
    from candidfashion.demo import ensure_demo_catalog

    ensure_demo_catalog(api_settings)
    app = create_app(api_settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def demo_photo() -> Path:
    from candidfashion.demo import demo_photos

    photos = {p.stem: p for p in demo_photos()}
    # The woman in a denim jacket and jeans, walking in a park.
    return photos["2_posture"]


@pytest.fixture(scope="module")
def look(client, demo_photo: Path) -> dict:
    with demo_photo.open("rb") as fh:
        r = client.post(
            "/api/v1/looks", files={"photo": ("p.jpg", fh, "image/jpeg")}, data={"k": "8"}
        )
    assert r.status_code == 200, r.text
    return r.json()


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def _jpeg(size: tuple[int, int] = (64, 96), colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny, valid-looking PNG whose header claims a huge canvas."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _post_photo(client, data: bytes, name: str = "p.jpg", ctype: str = "image/jpeg", **form):
    return client.post("/api/v1/looks", files={"photo": (name, data, ctype)}, data=form)


# --- health -----------------------------------------------------------------------------


def test_health_and_ready(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["products"] > 0 and body["vectors"] == body["products"]


def test_not_ready_without_models(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from candidfashion.api import create_app

    settings = Settings(data_dir=tmp_path, parser_model=str(tmp_path / "missing.onnx"))
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200
        err = _error(c.get("/readyz"), 503, "not_ready")
        assert "missing.onnx" in err["message"]
        _error(_post_photo(c, _jpeg()), 503, "not_ready")


# --- looks ------------------------------------------------------------------------------


def test_look_finds_items_with_masks_and_products(look: dict) -> None:
    assert len(look["id"]) == 32 and len(look["photo_sha256"]) == 64
    # Processed at the working size: the 896x1200 photo with its longest side at 800 px.
    assert (look["width"], look["height"]) == (597, 800)
    categories = [item["category"] for item in look["items"]]
    assert "outerwear" in categories and "pants" in categories, categories
    for item in look["items"]:
        x0, y0, x1, y1 = item["box"]
        assert 0 <= x0 < x1 <= look["width"] and 0 <= y0 < y1 <= look["height"]
        assert item["mask"]["size"] == [y1 - y0, x1 - x0]
        assert sum(item["mask"]["counts"]) == (y1 - y0) * (x1 - x0)
        assert item["cutout_url"].endswith(f"/items/{item['index']}/cutout.png")
        # The demo catalog sells jackets, pants and shirts only: shoes find nothing.
        in_catalog = item["category"] in ("outerwear", "pants", "top")
        assert (1 if in_catalog else 0) <= len(item["products"]) <= 8
        scores = [p["score"] for p in item["products"]]
        assert scores == sorted(scores, reverse=True)
        for p in item["products"]:
            assert p["category"] == item["category"]
            assert p["image_url"] == f"/api/v1/products/{p['id']}/image"
    for stage in ("parse_ms", "items_ms", "embed_ms", "search_ms", "total_ms"):
        assert look["timings"][stage] >= 0


def test_denim_jacket_is_matched(look: dict) -> None:
    jacket = next(item for item in look["items"] if item["category"] == "outerwear")
    shown = [p["id"] for p in jacket["products"]]
    assert set(shown) & DENIM_JACKETS, shown


def test_product_shot_finds_itself_first(client) -> None:
    from candidfashion.demo import demo_products

    for product in demo_products()[::3]:
        r = client.post(
            "/api/v1/items/search",
            files={"cutout": ("shot.jpg", product.image.read_bytes(), "image/jpeg")},
            data={"k": "3"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["products"][0]["id"] == product.id


def test_cutout_and_overlay_images(client, look: dict) -> None:
    item = look["items"][0]
    r = client.get(item["cutout_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    cut = Image.open(io.BytesIO(r.content))
    x0, y0, x1, y1 = item["box"]
    assert cut.mode == "RGBA" and cut.size == (x1 - x0, y1 - y0)
    r = client.get(look["overlay_url"])
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (look["width"], look["height"])
    r = client.get(item["overlay_url"])
    assert r.status_code == 200
    _error(client.get(f"/api/v1/looks/{look['id']}/overlay.png?highlight=99"), 404)
    _error(client.get(f"/api/v1/looks/{look['id']}/items/99/cutout.png"), 404, "item_not_found")
    assert client.get(f"/api/v1/looks/{look['id']}").json()["id"] == look["id"]


# --- refine -----------------------------------------------------------------------------


def _jacket(look: dict) -> dict:
    return next(item for item in look["items"] if item["category"] == "outerwear")


def test_refine_by_colour_keeps_close_colours(client, look: dict) -> None:
    from candidfashion.colours import colour_lab, delta_e
    from candidfashion.search import COLOUR_MAX_DELTA_E

    jacket = _jacket(look)
    body = {"look_id": look["id"], "item": jacket["index"], "colour": "black", "k": 10}
    r = client.post("/api/v1/items/search", json=body)
    assert r.status_code == 200, r.text
    products = r.json()["products"]
    assert products, "the demo catalog has dark jackets"
    for p in products:
        assert p["category"] == "outerwear"
        assert p["colour_distance"] <= COLOUR_MAX_DELTA_E
        assert delta_e(colour_lab("black"), colour_lab(p["colour"])) <= COLOUR_MAX_DELTA_E
    scores = [p["score"] for p in products]
    assert scores == sorted(scores, reverse=True)


def test_refine_category_price_stock_keyword(client, look: dict) -> None:
    jacket = _jacket(look)
    base = {"look_id": look["id"], "item": jacket["index"]}
    r = client.post("/api/v1/items/search", json={**base, "category": "pants", "k": 3})
    assert r.status_code == 200
    products = r.json()["products"]
    assert products and all(p["category"] == "pants" for p in products) and len(products) <= 3
    prices = [p["price"] for p in jacket["products"] if p["price"] is not None]
    if prices:
        cap = sorted(prices)[len(prices) // 2]
        r = client.post("/api/v1/items/search", json={**base, "max_price": cap, "in_stock": True})
        for p in r.json()["products"]:
            assert p["price"] is not None and p["price"] <= cap and p["in_stock"]
    r = client.post("/api/v1/items/search", json={**base, "keyword": "jacket 2"})
    assert r.status_code == 200
    keyword_ids = {
        p["id"] for p in client.get("/api/v1/products?q=jacket 2&limit=200").json()["products"]
    }
    assert r.json()["products"]
    assert {p["id"] for p in r.json()["products"]} <= keyword_ids


def test_search_by_uploaded_cutout_matches_look(client, look: dict) -> None:
    jacket = _jacket(look)
    png = client.get(jacket["cutout_url"]).content
    r = client.post(
        "/api/v1/items/search",
        files={"cutout": ("cut.png", png, "image/png")},
        data={"category": "outerwear", "k": "5"},
    )
    assert r.status_code == 200, r.text
    got = [p["id"] for p in r.json()["products"]]
    assert got[:3] == [p["id"] for p in jacket["products"][:3]]


# --- catalog ------------------------------------------------------------------------------


def test_products_browse_search_and_get(client) -> None:
    page = client.get("/api/v1/products?limit=5").json()
    assert len(page["products"]) == 5 and page["total"] >= 5
    second = client.get("/api/v1/products?limit=5&offset=5").json()
    assert not {p["id"] for p in page["products"]} & {p["id"] for p in second["products"]}
    cats = client.get("/api/v1/categories").json()
    counts = {c["name"]: c["count"] for c in cats["categories"]}
    assert sum(counts.values()) == page["total"]
    assert any(c["name"] == "red" for c in cats["colours"])
    only = client.get("/api/v1/products?category=pants&limit=200").json()
    assert only["total"] == counts["pants"] == len(only["products"])
    assert all(p["category"] == "pants" for p in only["products"])
    found = client.get("/api/v1/products?q=jacket").json()["products"]
    assert found and all("jacket" in json.dumps(p).lower() for p in found)
    pid = page["products"][0]["id"]
    assert client.get(f"/api/v1/products/{pid}").json()["id"] == pid
    img = client.get(f"/api/v1/products/{pid}/image")
    assert img.status_code == 200 and img.headers["content-type"].startswith("image/")


def test_catalog_writes_need_key_or_localhost(
    client, api_settings: Settings, demo_photo: Path
) -> None:
    from candidfashion.demo import demo_photos

    # Any readable image inside the catalog's image folder works as a product shot.
    image_dir = Path(api_settings.catalog_base_dir or api_settings.data_dir)
    shot = image_dir / "api-test-shot.jpg"
    Image.open(demo_photos()[0]).convert("RGB").resize((200, 260)).save(shot)
    product = {
        "id": "api-test-1",
        "title": "Test hoodie",
        "price": 12.5,
        "currency": "EUR",
        "url": "https://shop.example/hoodie",
        "image": str(shot),
        "category": "top",
    }
    try:
        api_settings.api_key = "s3cret"
        _error(client.post("/api/v1/products", json=[product]), 401, "unauthorized")
        _error(client.delete("/api/v1/products/api-test-1"), 401, "unauthorized")
        headers = {"X-API-Key": "s3cret"}
        r = client.post("/api/v1/products", json=[product], headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["added"] == 1 and r.json()["errors"] == []
        assert client.get("/api/v1/products/api-test-1").json()["title"] == "Test hoodie"
        bad = client.post("/api/v1/products", json=[{"id": "x"}], headers=headers)
        assert bad.status_code == 200 and bad.json()["errors"]
        _error(client.post("/api/v1/products", json={"id": 1}, headers=headers), 422)
        assert client.delete("/api/v1/products/api-test-1", headers=headers).status_code == 200
        _error(client.get("/api/v1/products/api-test-1"), 404, "product_not_found")
        _error(client.delete("/api/v1/products/api-test-1", headers=headers), 404)
        api_settings.api_key = ""
        api_settings.host = "0.0.0.0"
        err = _error(client.post("/api/v1/products", json=[product]), 403, "writes_disabled")
        assert "CANDIDFASHION_API_KEY" in err["message"]
    finally:
        api_settings.api_key = ""
        api_settings.host = "127.0.0.1"


# --- feedback -----------------------------------------------------------------------------


def test_feedback_is_stored(client, look: dict, api_settings: Settings) -> None:
    from candidfashion.feedback import FeedbackStore

    jacket = _jacket(look)
    pid = jacket["products"][0]["id"]
    r = client.post(
        "/api/v1/feedback",
        json={"look_id": look["id"], "item": jacket["index"], "verdict": "good", "product_id": pid},
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/api/v1/feedback",
        json={"look_id": look["id"], "item": jacket["index"], "verdict": "outline_wrong"},
    )
    assert r.status_code == 200
    _error(
        client.post(
            "/api/v1/feedback",
            json={"look_id": look["id"], "item": jacket["index"], "verdict": "good"},
        ),
        422,
        "bad_feedback",
    )
    _error(
        client.post("/api/v1/feedback", json={"look_id": look["id"], "item": 0, "verdict": "meh"}),
        422,
        "validation_error",
    )
    out = api_settings.data_dir / "fb.jsonl"
    assert FeedbackStore.from_settings(api_settings).export_jsonl(out) >= 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(r["verdict"] == "good" and r["product_id"] == pid for r in rows)
    assert all(r["photo_sha256"] == look["photo_sha256"] for r in rows)


# --- bad inputs ---------------------------------------------------------------------------


def test_bad_uploads_are_refused_clearly(client) -> None:
    _error(client.post("/api/v1/looks", json={"photo": "x"}), 415, "unsupported_media_type")
    _error(_post_photo(client, b"hello", "a.txt", "text/plain"), 415, "unsupported_media_type")
    _error(_post_photo(client, b""), 400, "empty")
    _error(_post_photo(client, b"GIF? no, just some bytes" * 10), 415, "not_an_image")
    jpeg = Image.open(io.BytesIO(_jpeg((400, 600))))
    buf = io.BytesIO()
    jpeg.save(buf, format="JPEG")
    _error(_post_photo(client, buf.getvalue()[: len(buf.getvalue()) // 2]), 400, "truncated")
    err = _error(_post_photo(client, _png_bomb(), "bomb.png", "image/png"), 413, "too_many_pixels")
    assert "pixels" in err["message"]
    big = b"\xff\xd8\xff" + bytes(5 * 1024 * 1024)
    _error(_post_photo(client, big), 413, "too_large")
    r = client.post(
        "/api/v1/looks", data={"k": "3"}, files={"other": ("x.jpg", _jpeg(), "image/jpeg")}
    )
    _error(r, 400, "missing_file")


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"k": "0"}, "validation_error"),
        ({"k": "abc"}, "validation_error"),
        ({"k": "1000"}, "validation_error"),
        ({"min_price": "-1"}, "validation_error"),
        ({"min_price": "nan"}, "validation_error"),
        ({"in_stock": "maybe"}, "validation_error"),
        ({"colour_please": "red"}, "validation_error"),
        ({"category": "spaceship"}, "bad_filter"),
        ({"colour": "plaid"}, "bad_filter"),
        ({"min_price": "50", "max_price": "10"}, "bad_filter"),
    ],
)
def test_malformed_filters_get_422(client, form: dict, code: str) -> None:
    _error(_post_photo(client, _jpeg(), **form), 422, code)


def test_malformed_search_requests(client, look: dict) -> None:
    _error(
        client.post(
            "/api/v1/items/search",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ),
        400,
        "bad_json",
    )
    _error(client.post("/api/v1/items/search", json=[1, 2]), 422)
    _error(client.post("/api/v1/items/search", json={"k": 3}), 422)
    _error(client.post("/api/v1/items/search", json={"look_id": look["id"], "item": -1}), 422)
    _error(client.post("/api/v1/items/search", json={"look_id": look["id"], "item": 99}), 404)
    _error(
        client.post("/api/v1/items/search", json={"look_id": look["id"], "item": 0, "k": "x"}),
        422,
    )
    _error(
        client.post("/api/v1/items/search", content=b"x", headers={"content-type": "text/plain"}),
        415,
    )
    _error(client.get("/api/v1/products?limit=0"), 422, "validation_error")
    _error(client.get("/api/v1/products?category=nope"), 422, "bad_filter")


def test_unknown_ids_are_404(client) -> None:
    _error(client.get("/api/v1/looks/nope"), 404, "look_not_found")
    _error(client.get("/api/v1/looks/nope/overlay.png"), 404, "look_not_found")
    _error(client.get("/api/v1/looks/nope/items/0/cutout.png"), 404, "look_not_found")
    _error(client.post("/api/v1/items/search", json={"look_id": "nope", "item": 0}), 404)
    _error(
        client.post(
            "/api/v1/feedback", json={"look_id": "nope", "item": 0, "verdict": "outline_wrong"}
        ),
        404,
    )
    _error(client.get("/api/v1/products/does-not-exist"), 404, "product_not_found")
    _error(client.get("/api/v1/products/does-not-exist/image"), 404)
    _error(client.get("/api/v1/demo/photos/999"), 404)
    _error(client.get("/api/v1/no/such/route"), 404, "not_found")
    _error(client.put("/api/v1/looks"), 405, "method_not_allowed")


def test_server_keeps_serving_after_bad_inputs(client, demo_photo: Path) -> None:
    test_bad_uploads_are_refused_clearly(client)
    r = _post_photo(client, demo_photo.read_bytes(), k="2")
    assert r.status_code == 200, r.text
    assert all(len(item["products"]) <= 2 for item in r.json()["items"])


# --- ops, docs, UI ------------------------------------------------------------------------


def test_metrics_count_requests_and_stages(client, look: dict) -> None:
    text = client.get("/metrics").text
    assert (
        'candidfashion_http_requests_total{method="POST",route="/api/v1/looks",status="200"}'
        in text
    )
    assert 'candidfashion_stage_seconds_count{stage="parse"}' in text
    assert "candidfashion_looks_cached" in text


def test_docs_work_offline(client) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/looks" in spec["paths"] and "/api/v1/items/search" in spec["paths"]
    r = client.get("/docs")
    assert r.status_code == 200
    html = r.text
    assert "cdn" not in html.lower() and "https://" not in html.split("<body>")[-1]
    if "/docs/assets/" in html:
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_web_pages_are_served(client) -> None:
    for page in ("/", "/catalog.html", "/about.html", "/api.html"):
        r = client.get(page)
        assert r.status_code == 200 and "<html" in r.text, page
        assert "http://" not in r.text and "https://" not in r.text, f"{page} loads from the web"
    js = client.get("/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    photos = client.get("/api/v1/demo/photos").json()["photos"]
    assert photos
    r = client.get(photos[0]["url"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")


def test_info_reports_models(client) -> None:
    info = client.get("/api/v1/info").json()
    assert len(info["parser"]["sha256"]) == 64 and info["embedder"]["dim"] > 0
    assert "/" not in info["parser"]["source"]


# --- the look cache -----------------------------------------------------------------------


def test_look_cache_ttl_and_size() -> None:
    from candidfashion.api import CachedLook, LookCache
    from candidfashion.search import Look

    def entry(i: int) -> CachedLook:
        return CachedLook(Look(f"id{i}", "0" * 64, 1, 1, [], {}), b"")

    cache = LookCache(ttl_s=60, max_size=3)
    for i in range(5):
        cache.put(entry(i))
    assert len(cache) == 3 and cache.get("id0") is None and cache.get("id4") is not None
    short = LookCache(ttl_s=0.05, max_size=10)
    short.put(entry(1))
    assert short.get("id1") is not None
    time.sleep(0.1)
    assert short.get("id1") is None and len(short) == 0


# --- a real server: caps enforced while streaming -------------------------------------------


@pytest.fixture(scope="module")
def live_server(client) -> Iterator[tuple[str, int]]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(client.app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield ("127.0.0.1", port)
    server.should_exit = True
    thread.join(timeout=10)


def _read_response(conn: socket.socket, timeout: float = 10) -> bytes:
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_huge_declared_upload_is_refused_before_reading(live_server: tuple[str, int]) -> None:
    host, port = live_server
    size = 50 * 1024 * 1024
    with socket.create_connection((host, port), timeout=10) as conn:
        head = (
            f"POST /api/v1/looks HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {size}\r\n\r\n"
        )
        conn.sendall(head.encode() + b"--xyz\r\n" + bytes(64 * 1024))
        started = time.monotonic()
        response = _read_response(conn)
        assert time.monotonic() - started < 5
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    body = response.split(b"\r\n\r\n", 1)[1]
    if body:
        assert b'"too_large"' in body


def test_chunked_upload_is_cut_off_at_the_cap(
    live_server: tuple[str, int], api_settings: Settings
) -> None:
    host, port = live_server
    sent = 0
    chunk = bytes(512 * 1024)
    response = b""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(
            (
                f"POST /api/v1/looks HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
            ).encode()
        )
        part = (
            b'--xyz\r\nContent-Disposition: form-data; name="photo"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
        )
        conn.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        try:
            while sent < 50 * 1024 * 1024:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable:
                    break
                conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = _read_response(conn)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    # The server answered long before 50 MB were sent.
    assert sent < api_settings.max_upload_bytes * 3, sent


def test_server_answers_after_cut_off_uploads(live_server: tuple[str, int]) -> None:
    import httpx

    host, port = live_server
    r = httpx.get(f"http://{host}:{port}/readyz", timeout=10)
    assert r.status_code == 200
    r = httpx.post(
        f"http://{host}:{port}/api/v1/looks",
        files={"photo": ("x.jpg", _jpeg((300, 450)), "image/jpeg")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["items"], list)


def test_looks_are_shared_between_worker_processes(tmp_path: Path) -> None:
    """With workers > 1 a refine request may reach another process than the upload."""
    from candidfashion.api import CachedLook, LookCache, SharedLookStore
    from candidfashion.items import extract_items
    from candidfashion.search import ItemResult, Look
    from candidfashion.taxonomy import CLASS_ID

    image = np.full((120, 80, 3), 200, dtype=np.uint8)
    labels = np.zeros((120, 80), dtype=np.uint8)
    labels[20:90, 10:70] = CLASS_ID["top"]
    items = extract_items(image, labels)
    look = Look("shared1", "0" * 64, 80, 120, [ItemResult(items[0], [], None)], {"total_ms": 1})
    path = tmp_path / "looks.sqlite"
    worker_a = LookCache(60, 5, SharedLookStore(path, 60, 10))
    worker_b = LookCache(60, 5, SharedLookStore(path, 60, 10))
    worker_a.put(CachedLook(look=look, photo=b"jpeg bytes"))
    got = worker_b.get("shared1")
    assert got is not None and got.photo == b"jpeg bytes"
    assert got.look.items[0].item.category == "top"
    assert np.array_equal(got.look.items[0].item.mask, items[0].mask)
    assert worker_b.get("missing") is None
    # Expired rows are not served.
    stale = LookCache(60, 5, SharedLookStore(path, 0.01, 10))
    time.sleep(0.05)
    assert stale.get("shared1") is None
