"""Demo catalog from the real openvto package files (skipped when openvto is missing)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from candidfashion.catalog import CatalogDB, open_catalog
from candidfashion.config import Settings

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvto") is None,
    reason="openvto is not installed (pip install --no-deps openvto)",
)


@pytest.fixture
def demo_settings(settings: Settings, tmp_path: Path) -> Settings:
    from test_catalog import build_tiny_embedder

    settings.embedder_model = str(build_tiny_embedder(tmp_path / "embedder.onnx"))
    settings.parser_model = str(tmp_path / "no-parser.onnx")
    settings.threads = 1
    return settings


def test_demo_products_photos_and_csv(tmp_path: Path) -> None:
    from candidfashion.demo import demo_photos, demo_products, demo_queries, write_demo_csv

    products = demo_products()
    assert len(products) == 12
    ids = [p.id for p in products]
    assert ids[:4] == [f"openvto-jackets-{i}" for i in range(1, 5)]
    assert {"openvto-pants-3", "openvto-shirts-4"} <= set(ids)
    jacket = products[0]
    assert jacket.title == "Jacket 1 (openvto demo)"
    assert jacket.image.name == "1_front.jpg" and jacket.image.is_file()
    assert [e.name for e in jacket.extra_images] == ["1_back.jpg"]
    queries = demo_queries()
    assert len(queries) == 12 and all(
        q.is_file() and q.name.endswith("_back.jpg") for q, _ in queries
    )

    photos = demo_photos()
    assert [p.name for p in photos] == [f"{i}_posture.jpg" for i in range(1, 5)]
    assert all(Image.open(p).size[1] >= 1000 for p in photos)

    path = write_demo_csv(tmp_path / "demo.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    assert rows[4]["id"] == "openvto-pants-1" and rows[4]["brand"] == "openvto demo"
    assert rows[4]["price"] == "" and rows[4]["url"] == ""
    assert rows[4]["extra_images"].endswith("pants/1_back.jpg")


def test_ensure_demo_catalog_builds_once(demo_settings: Settings) -> None:
    from candidfashion.demo import ensure_demo_catalog

    summary = ensure_demo_catalog(demo_settings)
    assert summary.startswith("demo catalog: 12 added, 0 updated, 0 unchanged, 0 skipped")
    db, index = open_catalog(demo_settings)
    assert db.count() == 12 and index.count() == 12
    assert db.categories() == {"outerwear": 4, "pants": 4, "top": 4}
    shirt = db.get("openvto-shirts-2")
    assert shirt is not None
    assert shirt.title == "Shirt 2 (openvto demo)" and shirt.price is None and shirt.url is None
    assert shirt.brand == "openvto demo" and shirt.category == "top"
    assert shirt.extra_images and Path(shirt.extra_images[0]).name == "2_back.jpg"
    stored = Path(shirt.image_path or "")
    assert stored.is_file() and Image.open(stored).size == (512, 512)
    assert db.get("openvto-pants-2").colour == "black"  # type: ignore[union-attr]
    db.close()
    index.close()

    assert "left as is" in ensure_demo_catalog(demo_settings)
    rebuilt = ensure_demo_catalog(demo_settings, rebuild=True)
    assert rebuilt.startswith("demo catalog: 12 added")
    with CatalogDB(demo_settings.resolved_catalog_db()) as db:
        assert db.count() == 12


def test_missing_openvto_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import candidfashion.demo as demo

    real = importlib.util.find_spec
    monkeypatch.setattr(
        demo.importlib.util, "find_spec", lambda name: None if name == "openvto" else real(name)
    )
    with pytest.raises(demo.DemoError, match="pip install --no-deps openvto"):
        demo.demo_products()
    assert demo.demo_photos() == []
