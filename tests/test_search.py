"""ShopTheLook end to end on the real models and the real demo catalog (FAISS + SQLite)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from candidfashion.config import REPO_MODELS_DIR, Settings
from candidfashion.search import (
    COLOUR_MAX_DELTA_E,
    MAX_K,
    SearchError,
    SearchFilters,
    ShopTheLook,
    wanted_lab,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ShopTheLook:
    for model in ("parser.onnx", "embedder.onnx"):
        if not (REPO_MODELS_DIR / model).is_file():
            pytest.skip(f"shipped model {REPO_MODELS_DIR / model} is missing")
    from candidfashion.demo import ensure_demo_catalog

    settings = Settings(data_dir=tmp_path_factory.mktemp("search-data"), threads=1)
    ensure_demo_catalog(settings)
    return ShopTheLook.from_settings(settings)


@pytest.fixture(scope="module")
def photo() -> Path:
    from candidfashion.demo import demo_photos

    return {p.stem: p for p in demo_photos()}["2_posture"]


@pytest.fixture(scope="module")
def look(engine: ShopTheLook, photo: Path):
    return engine.look_from_path(photo, k=6)


def test_look_items_matches_and_timings(look) -> None:
    from candidfashion.imageio import sha256_bytes

    assert look.photo_sha256 == sha256_bytes(look_photo_path().read_bytes())
    cats = [r.item.category for r in look.items]
    assert "outerwear" in cats and "pants" in cats, cats
    for result in look.items:
        # The demo catalog sells jackets, pants and shirts only: shoes find nothing.
        in_catalog = result.item.category in ("outerwear", "pants", "top")
        assert (1 if in_catalog else 0) <= len(result.matches) <= 6
        assert all(m.product.category == result.item.category for m in result.matches)
        scores = [m.score for m in result.matches]
        assert scores == sorted(scores, reverse=True)
        assert result.vector is not None and abs(np.linalg.norm(result.vector) - 1) < 1e-3
    assert set(look.timings) == {"parse_ms", "items_ms", "embed_ms", "search_ms", "total_ms"}
    assert look.timings["total_ms"] >= look.timings["parse_ms"] > 0
    data = look.to_json()
    assert data["items"][0]["matches"][0]["product"]["id"]


def look_photo_path() -> Path:
    from candidfashion.demo import demo_photos

    return {p.stem: p for p in demo_photos()}["2_posture"]


def test_denim_jacket_found(look) -> None:
    jacket = next(r for r in look.items if r.item.category == "outerwear")
    shown = [m.product.id for m in jacket.matches]
    # The light-wash and the black distressed denim jackets of the openvto demo catalog.
    assert {"openvto-jackets-1", "openvto-jackets-2"} & set(shown), shown


def test_all_items_embedded_in_one_call(engine: ShopTheLook, photo: Path) -> None:
    calls: list[int] = []
    real = engine.embedder.embed

    def counting(images):  # passes through to the real model
        calls.append(len(images))
        return real(images)

    engine.embedder.embed = counting  # type: ignore[method-assign]
    try:
        look = engine.look_from_path(photo, k=3)
    finally:
        del engine.embedder.embed
    assert calls == [len(look.items)]


def test_category_filter_keeps_only_that_item(engine: ShopTheLook, photo: Path) -> None:
    look = engine.look_from_path(photo, SearchFilters(category="pants"), k=2)
    assert [r.item.category for r in look.items] == ["pants"]


def test_colour_reranking_is_filter_then_visual_order(engine: ShopTheLook, look) -> None:
    from candidfashion.colours import delta_e

    jacket = next(r for r in look.items if r.item.category == "outerwear")
    for colour in ("black", "denim blue", "#c41e2e"):
        got = engine.search_vector(jacket.vector, SearchFilters("outerwear", colour=colour), k=5)
        # The same ranking computed by hand from the full unfiltered list.
        everything = engine.search_vector(jacket.vector, SearchFilters("outerwear"), k=MAX_K)
        target = wanted_lab(colour)
        expected = [
            m.product.id
            for m in everything
            if m.product.colour
            and delta_e(target, wanted_lab(m.product.colour)) <= COLOUR_MAX_DELTA_E
        ][:5]
        assert [m.product.id for m in got] == expected, colour
        assert all(m.colour_distance is not None for m in got)


def test_query_lab_overrides_colour_name(engine: ShopTheLook, look) -> None:
    jacket = next(r for r in look.items if r.item.category == "outerwear")
    by_name = engine.search_vector(jacket.vector, SearchFilters("outerwear", colour="black"), k=4)
    by_lab = engine.search_vector(
        jacket.vector, SearchFilters("outerwear"), k=4, query_lab=wanted_lab("black")
    )
    assert [m.product.id for m in by_name] == [m.product.id for m in by_lab]


def test_price_stock_keyword_filters(engine: ShopTheLook, look) -> None:
    jacket = next(r for r in look.items if r.item.category == "outerwear")
    priced = [m.product.price for m in jacket.matches if m.product.price is not None]
    if priced:
        cap = min(priced)
        got = engine.search_vector(jacket.vector, SearchFilters(max_price=cap, in_stock=True), k=10)
        assert all(m.product.price <= cap and m.product.in_stock for m in got)
    got = engine.search_vector(jacket.vector, SearchFilters(keyword="jacket"), k=10)
    allowed = {p.id for p in engine.db.search_text("jacket", limit=1000)}
    assert got and {m.product.id for m in got} <= allowed


def test_search_image_with_rgba_cutout(engine: ShopTheLook, look) -> None:
    jacket = next(r for r in look.items if r.item.category == "outerwear")
    got = engine.search_image(jacket.item.cutout, SearchFilters("outerwear"), k=3)
    assert [m.product.id for m in got] == [m.product.id for m in jacket.matches[:3]]


@pytest.mark.parametrize(
    ("filters", "k", "message"),
    [
        (SearchFilters(category="spaceship"), 5, "unknown category"),
        (SearchFilters(colour="plaid"), 5, "unknown colour"),
        (SearchFilters(min_price=-1), 5, "non-negative"),
        (SearchFilters(min_price=float("nan")), 5, "non-negative"),
        (SearchFilters(min_price=10, max_price=5), 5, "greater than"),
        (SearchFilters(keyword="x" * 201), 5, "longer than"),
        (SearchFilters(), 0, "k must be"),
        (SearchFilters(), MAX_K + 1, "k must be"),
    ],
)
def test_bad_filters_raise(engine: ShopTheLook, look, filters, k, message) -> None:
    vec = look.items[0].vector
    with pytest.raises(SearchError, match=message):
        engine.search_vector(vec, filters, k=k)


def test_bad_vector_and_image(engine: ShopTheLook) -> None:
    with pytest.raises(SearchError, match="values"):
        engine.search_vector(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        engine.search_image(np.zeros((10, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="RGB"):
        engine.look(np.zeros((10, 10, 4), dtype=np.uint8))


def test_concurrent_looks_agree(engine: ShopTheLook, photo: Path) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            look = engine.look_from_path(photo, k=3)
            results.append([m.product.id for r in look.items for m in r.matches])
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3 and results[0] == results[1] == results[2]


def test_wanted_lab_accepts_names_and_hex() -> None:
    assert wanted_lab("Red") == pytest.approx(wanted_lab("#c41e2e"), abs=1e-6)
    assert wanted_lab("gray") == wanted_lab("grey")
    with pytest.raises(SearchError):
        wanted_lab("#12345")
