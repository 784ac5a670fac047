"""Catalog: SQLite + FTS5, ingestion from CSV / JSONL / folders, remote images, crash resume.

Everything runs for real: a tiny ONNX embedder built here (wrapped by the real Embedder), a
tiny ONNX parser for category inference, SQLite on disk and the FAISS index on disk.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from candidfashion.catalog import (
    CatalogDB,
    CatalogError,
    Product,
    catalog_stats,
    ingest,
    list_products,
    normalise_category,
    open_catalog,
    prepare_products,
    remove_products,
)
from candidfashion.config import Settings
from candidfashion.embed import Embedder
from candidfashion.index import FaissIndex, VectorFilter
from candidfashion.taxonomy import CLASS_ID, CLASSES

EMBED_DIM = 32

# ---- real tiny models --------------------------------------------------------------------


def build_tiny_embedder(path: Path) -> Path:
    """A 2-layer conv net + global average pooling: 3x64x64 (0..255) -> 32-d, as ONNX."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 16).astype(np.float32)
    w2 = rng.normal(0, 0.3, (EMBED_DIM, 16, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, EMBED_DIM).astype(np.float32)
    nodes = [
        helper.make_node("Div", ["image", "scale"], ["x0"]),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["x1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["x1"], ["x2"]),
        helper.make_node("Conv", ["x2", "w2", "b2"], ["x3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["x3"], ["x4"]),
        helper.make_node("Flatten", ["x4"], ["x5"], axis=1),
        helper.make_node("LpNormalization", ["x5"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_embedder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBED_DIM])],
        [
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (
        ("candidfashion.kind", "embedder"),
        ("candidfashion.input_size", "64x64"),
        ("candidfashion.dim", str(EMBED_DIM)),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_red_is_top_parser(path: Path) -> Path:
    """A 1x1-conv "parser": strongly red pixels -> top, the rest -> background."""
    n = len(CLASSES)
    w = np.zeros((n, 3, 1, 1), dtype=np.float32)
    b = np.zeros(n, dtype=np.float32)
    top = CLASS_ID["top"]
    w[top, :, 0, 0] = [1.0, -1.0, -1.0]  # r - g - b: high only for red
    b[top] = -50.0
    b[0] = 0.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])],
        "tiny_parser",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n, 64, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (
        ("candidfashion.kind", "parser"),
        ("candidfashion.classes", json.dumps(list(CLASSES))),
        ("candidfashion.input_size", "64x64"),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_embedder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("models") / "embedder.onnx")


@pytest.fixture
def cat_settings(settings: Settings, tiny_embedder_path: Path, tmp_path: Path) -> Settings:
    settings.embedder_model = str(tiny_embedder_path)
    settings.parser_model = str(tmp_path / "no-parser.onnx")
    settings.threads = 1
    return settings


@pytest.fixture
def embedder(tiny_embedder_path: Path) -> Embedder:
    return Embedder(str(tiny_embedder_path), threads=1)


# ---- images ------------------------------------------------------------------------------

COLOURS = {
    "red": (200, 20, 30),
    "blue": (20, 40, 200),
    "green": (30, 160, 40),
    "black": (10, 10, 10),
    "yellow": (240, 220, 20),
}


def product_image(
    path: Path, colour: str, size: tuple[int, int] = (96, 128), shape: int = 0
) -> Path:
    """A garment-like blob of one colour on a white studio backdrop."""
    w, h = size
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    if shape % 2 == 0:
        mask = ((xx - w / 2) / (w * 0.3)) ** 2 + ((yy - h / 2) / (h * 0.35)) ** 2 < 1
    else:
        mask = (abs(xx - w / 2) < w * 0.3) & (abs(yy - h / 2) < h * 0.38)
    img[mask] = COLOURS[colour]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    cols = ["id", "title", "price", "currency", "url", "image", "category", "brand", "in_stock"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
    return path


def good_rows(folder: Path, n: int = 6) -> list[dict]:
    names = list(COLOURS)
    cats = ["Jeans", "jackets", "T-Shirt", "Sneakers", "Women > Dresses", ""]
    rows = []
    for i in range(n):
        colour = names[i % len(names)]
        product_image(folder / "img" / f"p{i}.png", colour, shape=i)
        rows.append(
            {
                "id": f"p{i}",
                "title": f"{colour.title()} thing {i}",
                "price": f"{10 + i}.50",
                "currency": "eur",
                "url": f"https://shop.example/p{i}",
                "image": f"img/p{i}.png",
                "category": cats[i % len(cats)],
                "brand": "Acme" if i % 2 else "Zed",
                "in_stock": "yes" if i % 3 else "no",
            }
        )
    return rows


# ---- categories and the database ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Jeans", "pants"),
        ("trousers", "pants"),
        ("Chinos", "pants"),
        ("jackets", "outerwear"),
        ("Blazer", "outerwear"),
        ("parka", "outerwear"),
        ("T-Shirt", "top"),
        ("blouse", "top"),
        ("Sweaters", "top"),
        ("sneakers", "footwear"),
        ("Boots", "footwear"),
        ("Women > Clothing > Dresses", "dress"),
        ("Men / Coats & Jackets", "outerwear"),
        ("denim skirt", "skirt"),
        ("  SHORTS ", "shorts"),
        ("handbags", "bag"),
        ("spaceship", None),
        ("", None),
        (None, None),
    ],
)
def test_normalise_category(text: str | None, want: str | None) -> None:
    assert normalise_category(text) == want


def test_catalog_db_crud_and_fts(tmp_path: Path) -> None:
    db = CatalogDB(tmp_path / "c.sqlite")
    products = [
        Product(
            id="a", title="Blue denim jacket", image="a.jpg", category="outerwear", brand="Lee"
        ),
        Product(id="b", title="Red summer dress", image="b.jpg", category="dress", price=30.0),
        Product(id="c", title="Café crème blouse", image="c.jpg", category="top", brand="Zara"),
    ]
    db.upsert(products)
    assert db.count() == 3
    assert db.get("b") == products[1]
    assert db.get("zz") is None
    assert set(db.get_many(["a", "c", "zz"])) == {"a", "c"}
    assert [p.id for p in db.search_text("denim")] == ["a"]
    assert [p.id for p in db.search_text("jack")] == ["a"]  # prefix match
    assert [p.id for p in db.search_text("zara")] == ["c"]  # brand
    assert [p.id for p in db.search_text("cafe creme")] == ["c"]  # diacritics folded
    assert db.search_text('"unbalanced AND OR (') == []
    assert db.search_text("   ") == []
    assert db.categories() == {"dress": 1, "outerwear": 1, "top": 1}
    # Updates and deletes keep FTS in sync.
    db.upsert(Product(id="a", title="Green parka", image="a.jpg", category="outerwear"))
    assert db.search_text("denim") == []
    assert [p.id for p in db.search_text("parka")] == ["a"]
    assert db.delete(["b", "zz"]) == 1
    assert db.search_text("dress") == []
    assert [p.id for p in db.list(category="top")] == ["c"]
    assert [p.id for p in db.list(limit=1, offset=1)] == ["c"]
    db.check_fts()
    db.close()
    # WAL mode, and the data is there after reopening.
    again = CatalogDB(tmp_path / "c.sqlite")
    mode = again._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert again.count() == 2


# ---- ingestion ---------------------------------------------------------------------------


def test_ingest_csv_reports_bad_rows_with_line_numbers(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "shop"
    rows = good_rows(root)
    (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    outside = product_image(tmp_path / "outside.png", "red")
    bad = [
        {"id": "", "title": "no id", "image": "img/p0.png"},  # line 8
        {"id": "n1", "title": "", "image": "img/p0.png"},  # line 9
        {"id": "n2", "title": "no image", "image": ""},  # line 10
        {"id": "n3", "title": "bad price", "image": "img/p0.png", "price": "abc"},  # 11
        {"id": "n4", "title": "negative", "image": "img/p0.png", "price": "-3"},  # 12
        {"id": "n5", "title": "broken", "image": "img/broken.jpg"},  # 13
        {"id": "n6", "title": "escape", "image": "../outside.png"},  # 14
        {"id": "n7", "title": "absolute", "image": str(outside)},  # 15
        {"id": "n8", "title": "missing", "image": "img/nope.png"},  # 16
        {"id": "p1", "title": "duplicate", "image": "img/p1.png"},  # 17
        {"id": "n9", "title": "url", "image": "https://example.com/x.png"},  # 18
    ]
    src = write_csv(root / "catalog.csv", rows + bad)
    report = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert (report.added, report.updated, report.unchanged) == (6, 0, 0)
    by_line = {e.line: e.message for e in report.errors}
    assert sorted(by_line) == list(range(8, 19))
    assert "missing id" in by_line[8]
    assert "missing title" in by_line[9]
    assert "missing image" in by_line[10]
    assert "abc" in by_line[11] and "not a number" in by_line[11]
    assert "negative" in by_line[12]
    assert "broken.jpg" in by_line[13]
    assert "outside the catalog folder" in by_line[14]
    assert "outside the catalog folder" in by_line[15]
    assert "not found" in by_line[16]
    assert "duplicate id 'p1' (first on line 3)" in by_line[17]
    assert "--allow-remote" in by_line[18]

    db, index = open_catalog(cat_settings)
    assert db.count() == 6 and index.count() == 6
    p0, p1 = db.get("p0"), db.get("p1")
    assert p0 is not None and p1 is not None
    assert (p0.category, p1.category) == ("pants", "outerwear")
    assert p0.price == 10.5 and p0.currency == "EUR" and p0.in_stock is False
    assert p1.in_stock is True and p1.brand == "Acme"
    assert p0.colour == "red" and p1.colour == "blue"
    assert db.get("p5").category is None  # type: ignore[union-attr]
    stored = Path(p0.image_path or "")
    assert stored.parent == cat_settings.data_dir / "images" and stored.name == "p0.jpg"
    assert max(Image.open(stored).size) <= 512
    # Each product finds itself first, also within its category.
    for pid in ("p0", "p3"):
        prod = db.get(pid)
        assert prod is not None
        vec = embedder.embed([np.asarray(Image.open(prod.image_path))])
        assert index.search(vec, 1)[0][0].id == pid
        hits = index.search(vec, 3, VectorFilter(category=prod.category))[0]
        assert hits[0].id == pid and hits[0].score > 0.99
    db.close()
    index.close()


def test_reingest_is_idempotent_and_detects_changes(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "shop"
    rows = good_rows(root, n=5)
    src = write_csv(root / "catalog.csv", rows)
    first = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert (first.added, first.embedded) == (5, 5)
    again = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert (again.added, again.updated, again.unchanged, again.embedded) == (0, 0, 5, 0)
    rows[1]["price"] = "99"
    product_image(root / "img" / "p2.png", "green", shape=1)  # same path, new pixels
    write_csv(src, rows)
    third = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert (third.added, third.updated, third.unchanged) == (0, 2, 3)
    db, index = open_catalog(cat_settings)
    assert db.get("p1").price == 99.0  # type: ignore[union-attr]
    assert db.get("p2").colour == "green"  # type: ignore[union-attr]
    assert db.count() == index.count() == 5
    db.close()


def test_ingest_jsonl_and_folder(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "shop"
    product_image(root / "a.png", "red")
    product_image(root / "b.png", "blue")
    lines = [
        json.dumps({"id": "a", "title": "A", "image": "a.png", "category": "jumper"}),
        "",
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "b", "title": "B", "image": "b.png", "price": 5, "in_stock": False}),
        json.dumps({"id": "c", "title": "C", "image": "b.png", "in_stock": "maybe"}),
    ]
    src = root / "c.jsonl"
    src.write_text("\n".join(lines) + "\n")
    report = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert report.added == 2
    assert [(e.line, e.message.split(":")[0]) for e in report.errors] == [
        (3, "malformed JSON"),
        (4, "expected an object with product fields, got list"),
        (6, "bad in_stock 'maybe'"),
    ]
    folder = tmp_path / "photos"
    product_image(folder / "Jeans" / "blue_slim_jeans.png", "blue")
    product_image(folder / "Jackets" / "rain-coat.jpg", "yellow")
    product_image(folder / "loose.png", "green")
    report = ingest(folder, cat_settings, embedder=embedder, progress=False, parser=False)
    assert (report.added, report.errors) == (3, [])
    db, _ = open_catalog(cat_settings)
    jeans = db.get("blue_slim_jeans")
    assert jeans is not None
    assert (jeans.title, jeans.category, jeans.image) == (
        "Blue slim jeans",
        "pants",
        "Jeans/blue_slim_jeans.png",
    )
    assert db.get("rain-coat").category == "outerwear"  # type: ignore[union-attr]
    assert db.get("loose").category is None  # type: ignore[union-attr]
    assert db.get("a").category == "top"  # type: ignore[union-attr]
    assert db.count() == 5
    db.close()


def test_missing_category_inferred_by_parser(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    from candidfashion.parse import Parser

    parser = Parser(str(build_red_is_top_parser(tmp_path / "parser.onnx")), threads=1)
    root = tmp_path / "shop"
    product_image(root / "r.png", "red")
    product_image(root / "g.png", "green")
    src = write_csv(
        root / "c.csv",
        [
            {"id": "r", "title": "Red", "image": "r.png"},
            {"id": "g", "title": "Green", "image": "g.png"},
            {"id": "k", "title": "Known", "image": "g.png", "category": "boots"},
        ],
    )
    ingest(src, cat_settings, embedder=embedder, progress=False, parser=parser)
    db, _ = open_catalog(cat_settings)
    assert db.get("r").category == "top"  # type: ignore[union-attr]
    assert db.get("g").category is None  # type: ignore[union-attr]
    assert db.get("k").category == "footwear"  # type: ignore[union-attr]
    db.close()


def test_transparent_product_and_weird_ids(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "shop"
    rgba = np.zeros((700, 300, 4), dtype=np.uint8)
    rgba[100:600, 50:250] = (20, 40, 200, 255)
    root.mkdir()
    Image.fromarray(rgba).save(root / "t.png")
    src = write_csv(root / "c.csv", [{"id": "sku/1 ü?", "title": "T", "image": "t.png"}])
    report = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert report.added == 1
    db, _ = open_catalog(cat_settings)
    prod = db.get("sku/1 ü?")
    assert prod is not None and prod.colour == "blue"
    path = Path(prod.image_path or "")
    assert path.parent == cat_settings.data_dir / "images" and path.suffix == ".png"
    assert "/" not in path.name and Image.open(path).size == (219, 512)
    db.close()


# ---- remote images -----------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    png = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/good.png":
            self._send(200, "image/png", self.png)
        elif self.path == "/page.html":
            self._send(200, "text/html", b"<html>not an image</html>")
        elif self.path == "/huge.png":
            self._send(200, "image/png", b"\x89PNG" + b"0" * 50_000)
        elif self.path == "/slow.png":
            time.sleep(1.5)
            self._send(200, "image/png", self.png)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        else:
            self._send(404, "text/plain", b"nope")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with __import__("contextlib").suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    path = product_image(tmp_path / "served.png", "red", size=(48, 64))
    _Handler.png = path.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_images(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path, image_server: str
) -> None:
    cat_settings.max_upload_bytes = 10_000  # catalog images: at most 20 000 bytes
    cat_settings.remote_timeout_s = 0.5
    names = ["good.png", "page.html", "huge.png", "slow.png", "missing.png", "redirect"]
    rows = [
        {"id": f"r{i}", "title": n, "image": f"{image_server}/{n}"} for i, n in enumerate(names)
    ]
    src = write_csv(tmp_path / "remote.csv", rows)
    refused = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert refused.added == 0 and len(refused.errors) == 6
    assert all("--allow-remote" in e.message for e in refused.errors)

    report = ingest(
        src, cat_settings, embedder=embedder, progress=False, parser=False, allow_remote=True
    )
    assert report.added == 1
    msgs = {e.line: e.message for e in report.errors}
    assert "'text/html' is not an image" in msgs[3]
    assert "over the 20000 limit" in msgs[4]
    assert "cannot fetch" in msgs[5] and "timed out" in msgs[5]
    assert "HTTP 404" in msgs[6]
    assert "302" in msgs[7] and "file:///etc/passwd" in msgs[7]  # redirect not followed
    db, _ = open_catalog(cat_settings)
    prod = db.get("r0")
    assert prod is not None and prod.colour == "red" and Path(prod.image_path or "").is_file()
    db.close()


# ---- crash safety ------------------------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
from candidfashion.catalog import ingest
from candidfashion.config import Settings
from candidfashion.embed import Embedder
settings = Settings(data_dir=Path(sys.argv[2]), embedder_model=sys.argv[3], threads=1)
ingest(Path(sys.argv[1]), settings, embedder=Embedder(sys.argv[3], threads=1),
       batch_size=4, commit_every=4, progress=False, parser=False)
print("finished")
"""


def test_sigkill_mid_ingest_then_resume(
    cat_settings: Settings, tiny_embedder_path: Path, embedder: Embedder, tmp_path: Path
) -> None:
    """Kill -9 an ingest that is part-way through, then re-run: nothing committed is lost,
    nothing is duplicated, the re-run finishes the job.

    The child reads its JSONL from a named pipe, so the test decides exactly how far it
    gets: 10 rows are written (batches of 4). Batch 1 is embedded and committed; batch 2 is
    loaded (the loader runs one batch ahead) but waits for batch 3 to be read before it is
    embedded; rows 9-10 are read but do not fill a batch. Then the child is killed."""
    root = tmp_path / "shop"
    rows = good_rows(root, n=20)
    lines = [json.dumps(r) + "\n" for r in rows]
    fifo = root / "feed.jsonl"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(fifo),
            str(cat_settings.data_dir),
            str(tiny_embedder_path),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with open(fifo, "w") as feed:
            feed.writelines(lines[:10])
            feed.flush()
            db_path = cat_settings.resolved_catalog_db()
            deadline = time.monotonic() + 60
            count = 0
            while time.monotonic() < deadline:
                if db_path.exists():
                    with CatalogDB(db_path) as db:
                        count = db.count()
                if count >= 4:
                    break
                time.sleep(0.05)
            time.sleep(0.5)  # give it time to (wrongly) commit more, if it would
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    with CatalogDB(cat_settings.resolved_catalog_db()) as db:
        assert db.count() == 4
    assert FaissIndex(cat_settings.data_dir / "index", EMBED_DIM).count() == 4

    fifo.unlink()
    src = write_csv(root / "catalog.csv", rows)
    report = ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    assert (report.added, report.updated, report.unchanged, report.errors) == (16, 0, 4, [])
    db, index = open_catalog(cat_settings)
    assert db.count() == 20 and index.count() == 20
    assert sorted(db.ids()) == sorted(r["id"] for r in rows)
    db.check_fts()
    db.close()


# ---- entry points ------------------------------------------------------------------------


def test_remove_list_stats_and_api_prepare(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    root = tmp_path / "shop"
    src = write_csv(root / "catalog.csv", good_rows(root, n=4))
    ingest(src, cat_settings, embedder=embedder, progress=False, parser=False)
    stats = catalog_stats(cat_settings)
    assert stats["products"] == 4 and stats["vectors"] == 4 and stats["dim"] == EMBED_DIM
    assert stats["categories"] == {"footwear": 1, "outerwear": 1, "pants": 1, "top": 1}
    assert [p.id for p in list_products(cat_settings, limit=2)] == ["p0", "p1"]
    assert [p.id for p in list_products(cat_settings, query="blue")] == ["p1"]
    image_path = Path(list_products(cat_settings, query="blue")[0].image_path or "")
    assert remove_products(["p1", "nope"], cat_settings) == 1
    assert not image_path.exists()
    stats = catalog_stats(cat_settings)
    assert stats["products"] == 3 and stats["vectors"] == 3

    # The API's upsert path: JSON objects, positions as "lines", base dir confinement.
    cat_settings.catalog_base_dir = str(root)
    batch, errors = prepare_products(
        [
            {"id": "api1", "title": "From the API", "image": "img/p0.png", "category": "coat"},
            {"id": "api2", "title": "Bad", "image": "/etc/passwd"},
            "not an object",
        ],
        cat_settings,
        embedder,
    )
    assert [p.id for p in batch.products] == ["api1"]
    assert batch.vectors.shape == (1, EMBED_DIM)
    assert batch.metadata[0]["category"] == "outerwear"
    assert [e.line for e in errors] == [1, 2]


def test_ingest_refuses_bad_sources(
    cat_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    with pytest.raises(CatalogError, match="unknown catalog format"):
        ingest(tmp_path / "c.xlsx", cat_settings, embedder=embedder, progress=False)
    with pytest.raises(CatalogError, match="no such file"):
        ingest(tmp_path / "c.csv", cat_settings, embedder=embedder, progress=False)
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("sku,name\n1,x\n")
    with pytest.raises(CatalogError, match="no id, image, title column"):
        ingest(bad_header, cat_settings, embedder=embedder, progress=False)
