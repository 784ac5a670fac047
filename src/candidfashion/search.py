"""Shop the look: photo -> items -> one embedding per item -> filtered catalog search.

:class:`ShopTheLook` owns the models and stores, is built once per process and is safe to
share between threads: ONNX Runtime sessions run concurrently, while catalog and index
calls (SQLite connections, FAISS writes) are serialised by one lock because they are short.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from candidfashion.taxonomy import ITEM_CLASSES

if TYPE_CHECKING:
    from candidfashion.catalog import CatalogDB, Product
    from candidfashion.config import Settings
    from candidfashion.embed import Embedder
    from candidfashion.index import VectorIndex
    from candidfashion.items import Item
    from candidfashion.parse import Parser

log = logging.getLogger(__name__)

#: Products whose dominant colour is further than this (CIEDE2000) from the wanted colour
#: are dropped when a colour is asked for. Neighbouring palette colours pass (red/burgundy
#: 17, blue/navy 20), other hues do not (red/brown 21, red/orange 29, blue/teal 28).
COLOUR_MAX_DELTA_E = 20.0
#: When filters are applied after the vector search, fetch this many times k first.
OVERFETCH_FACTOR = 20
OVERFETCH_MIN = 200
MAX_K = 100
#: Photos are processed with their longest side at most this many pixels. The parser sees
#: 384 px anyway; finer masks only cost time (label upsampling and item extraction scale
#: with the pixel count: 1200 -> 800 px saves about 40% of a look's CPU time).
WORK_MAX_SIDE = 800

_HEX_RE = re.compile(r"^#?([0-9a-fA-F]{6})$")


class SearchError(ValueError):
    """A search request that cannot be served as asked (bad filter values and the like)."""


@dataclass
class SearchFilters:
    """What the shopper wants besides visual similarity. ``None`` means no constraint."""

    category: str | None = None
    colour: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool | None = None
    keyword: str | None = None

    def validated(self) -> SearchFilters:
        """A copy with normalised values; raises :class:`SearchError` on nonsense."""
        category = (self.category or "").strip().lower() or None
        if category is not None and category not in ITEM_CLASSES:
            from candidfashion.catalog import normalise_category

            # Shoppers and shops say "jeans" or "jackets"; map them onto the taxonomy.
            category = normalise_category(category) or category
        if category is not None and category not in ITEM_CLASSES:
            raise SearchError(
                f"unknown category {self.category!r}; expected one of {', '.join(ITEM_CLASSES)}"
            )
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise SearchError(f"{name} must be a non-negative number, got {value!r}")
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise SearchError(
                f"min_price {self.min_price} is greater than max_price {self.max_price}"
            )
        colour = (self.colour or "").strip().lower() or None
        if colour is not None:
            wanted_lab(colour)  # raises SearchError for an unknown colour
        keyword = (self.keyword or "").strip() or None
        if keyword is not None and len(keyword) > 200:
            raise SearchError("keyword is longer than 200 characters")
        return SearchFilters(
            category=category,
            colour=colour,
            min_price=self.min_price,
            max_price=self.max_price,
            in_stock=self.in_stock,
            keyword=keyword,
        )


@dataclass
class Match:
    product: Product
    score: float
    colour_distance: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "product": self.product.model_dump(mode="json"),
            "score": round(float(self.score), 5),
            "colour_distance": None
            if self.colour_distance is None
            else round(float(self.colour_distance), 2),
        }


@dataclass
class ItemResult:
    item: Item
    matches: list[Match]
    #: The item's embedding, kept so a refined search needs no second model run.
    vector: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {**self.item.to_json(), "matches": [m.to_json() for m in self.matches]}


@dataclass
class Look:
    id: str
    photo_sha256: str
    width: int
    height: int
    items: list[ItemResult]
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "photo_sha256": self.photo_sha256,
            "width": self.width,
            "height": self.height,
            "items": [r.to_json() for r in self.items],
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


def wanted_lab(colour: str) -> tuple[float, float, float]:
    """Lab of a colour the shopper asked for: a palette name (``red``) or ``#rrggbb``."""
    from candidfashion.colours import COLOUR_NAMES, ColourError, colour_lab, rgb_to_lab

    text = colour.strip().lower()
    hex_match = _HEX_RE.match(text)
    if hex_match:
        value = hex_match.group(1)
        rgb = np.array([int(value[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.uint8)
        l_, a, b = (float(v) for v in rgb_to_lab(rgb))
        return (l_, a, b)
    try:
        return colour_lab(text)
    except ColourError:
        raise SearchError(
            f"unknown colour {colour!r}; use #rrggbb or one of {', '.join(COLOUR_NAMES)}"
        ) from None


def product_lab(product: Product) -> tuple[float, float, float] | None:
    """The product's dominant colour in Lab, or None when the catalog does not know it."""
    name = (product.colour or "").strip()
    if not name:
        return None
    try:
        return wanted_lab(name)
    except SearchError:
        return None


class ShopTheLook:
    """Parser + item extraction + embedder + catalog search, loaded once and shared."""

    def __init__(
        self,
        parser: Parser,
        embedder: Embedder,
        db: CatalogDB,
        index: VectorIndex,
        *,
        max_pixels: int | None = None,
        colour_max_delta_e: float = COLOUR_MAX_DELTA_E,
    ) -> None:
        if index.dim != embedder.dim:
            raise ValueError(
                f"vector store dimension {index.dim} does not match the embedder's {embedder.dim}; "
                "rebuild the catalog index with this embedder"
            )
        self.parser = parser
        self.embedder = embedder
        self.db = db
        self.index = index
        self.max_pixels = max_pixels
        self.colour_max_delta_e = colour_max_delta_e
        self._store_lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ShopTheLook:
        from candidfashion.catalog import open_catalog
        from candidfashion.embed import Embedder
        from candidfashion.parse import Parser

        parser = Parser.from_settings(settings)
        embedder = Embedder.from_settings(settings)
        db, index = open_catalog(settings)
        return cls(parser, embedder, db, index, max_pixels=settings.max_image_pixels)

    @property
    def store_lock(self) -> threading.RLock:
        """Held around every catalog/index call; writers (the API's upsert) take it too."""
        return self._store_lock

    # -- the whole job -------------------------------------------------------------------

    def look(
        self,
        image_rgb: np.ndarray,
        filters: SearchFilters | None = None,
        k: int = 10,
        *,
        photo_sha256: str | None = None,
    ) -> Look:
        """Every item in the photo and its ``k`` best products.

        Boxes, masks and ``Look.width/height`` refer to :func:`working_image` of the photo
        (the same picture, longest side at most :data:`WORK_MAX_SIDE`).

        ``filters.category`` keeps only the items of that category; the other filters apply
        to every item's search. Each item searches its own category.
        """
        k = _check_k(k)
        wanted = (filters or SearchFilters()).validated()
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError("the photo must be an HxWx3 uint8 RGB array")
        from candidfashion.items import extract_items

        timings: dict[str, float] = {}
        start = time.perf_counter()
        if photo_sha256 is None:
            from candidfashion.imageio import sha256_bytes

            photo_sha256 = sha256_bytes(np.ascontiguousarray(image_rgb).tobytes())
        image_rgb = working_image(image_rgb)
        labels, confidence = self.parser.parse_with_confidence(image_rgb)
        t1 = time.perf_counter()
        items = extract_items(image_rgb, labels, confidence)
        if wanted.category is not None:
            items = [it for it in items if it.category == wanted.category]
        t2 = time.perf_counter()
        # One batch for all items: one ONNX Runtime call instead of one per garment.
        vectors = (
            self.embedder.embed([it.cutout for it in items])
            if items
            else np.zeros((0, self.embedder.dim), dtype=np.float32)
        )
        t3 = time.perf_counter()
        results = self._search_items(items, vectors, wanted, k)
        t4 = time.perf_counter()
        timings["parse_ms"] = (t1 - start) * 1000
        timings["items_ms"] = (t2 - t1) * 1000
        timings["embed_ms"] = (t3 - t2) * 1000
        timings["search_ms"] = (t4 - t3) * 1000
        timings["total_ms"] = (t4 - start) * 1000
        h, w = image_rgb.shape[:2]
        return Look(
            id=uuid.uuid4().hex,
            photo_sha256=photo_sha256,
            width=int(w),
            height=int(h),
            items=results,
            timings=timings,
        )

    def look_from_path(
        self, path: str | Path, filters: SearchFilters | None = None, k: int = 10
    ) -> Look:
        from candidfashion.imageio import load_image, read_image_bytes, sha256_bytes

        data = read_image_bytes(Path(path))
        image = load_image(data, max_pixels=self.max_pixels)
        return self.look(image, filters, k, photo_sha256=sha256_bytes(data))

    def _search_items(
        self, items: list[Item], vectors: np.ndarray, wanted: SearchFilters, k: int
    ) -> list[ItemResult]:
        results = []
        for item, vec in zip(items, vectors, strict=True):
            per_item = SearchFilters(**{**wanted.__dict__, "category": item.category})
            matches = self.search_vector(vec, per_item, k)
            results.append(ItemResult(item=item, matches=matches, vector=vec))
        return results

    # -- single searches -----------------------------------------------------------------

    def search_image(
        self, image: np.ndarray, filters: SearchFilters | None = None, k: int = 10
    ) -> list[Match]:
        """Products like one garment image (an RGBA cut-out or an RGB product shot)."""
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise ValueError("the image must be an HxWx3 (RGB) or HxWx4 (RGBA) uint8 array")
        vec = self.embedder.embed([image])[0]
        return self.search_vector(vec, filters, k)

    def search_vector(
        self,
        vec: np.ndarray,
        filters: SearchFilters | None = None,
        k: int = 10,
        query_lab: tuple[float, float, float] | None = None,
    ) -> list[Match]:
        """The ``k`` products nearest to ``vec`` that pass the filters, best first.

        With a colour (``filters.colour`` or ``query_lab``), candidates are over-fetched,
        those whose dominant colour is within :data:`COLOUR_MAX_DELTA_E` of the wanted
        colour are kept and stay ordered by visual score: "the same, but in red".
        """
        from candidfashion.index import VectorFilter

        k = _check_k(k)
        wanted = (filters or SearchFilters()).validated()
        if query_lab is None and wanted.colour is not None:
            query_lab = wanted_lab(wanted.colour)
        vec = np.asarray(vec, dtype=np.float32).reshape(1, -1)
        if vec.shape[1] != self.embedder.dim:
            raise SearchError(
                f"query vector has {vec.shape[1]} values, expected {self.embedder.dim}"
            )
        # Colour is matched by distance here rather than by the store's exact-name filter.
        vfilter = VectorFilter(
            category=wanted.category,
            min_price=wanted.min_price,
            max_price=wanted.max_price,
            in_stock=wanted.in_stock,
        )
        post_filtered = query_lab is not None or wanted.keyword is not None
        with self._store_lock:
            total = self.index.count()
            if total == 0:
                return []
            fetch = min(total, max(k * OVERFETCH_FACTOR, OVERFETCH_MIN)) if post_filtered else k
            hits = self.index.search(vec, fetch, vfilter)[0]
            allowed: set[str] | None = None
            if wanted.keyword is not None:
                try:
                    found = self.db.search_text(wanted.keyword, limit=max(fetch, 1000))
                except ValueError as err:  # a query the full-text index refuses
                    raise SearchError(str(err)) from err
                allowed = {p.id for p in found}
            ids = [h.id for h in hits if allowed is None or h.id in allowed]
            products = self.db.get_many(ids)
        matches: list[Match] = []
        for hit in hits:
            product = products.get(hit.id)
            if product is None:  # in the index but deleted from the catalog meanwhile
                continue
            distance = None
            if query_lab is not None:
                lab = product_lab(product)
                if lab is None:
                    continue
                from candidfashion.colours import delta_e

                distance = float(delta_e(query_lab, lab))
                if distance > self.colour_max_delta_e:
                    continue
            matches.append(Match(product=product, score=float(hit.score), colour_distance=distance))
            if len(matches) == k:
                break
        return matches

    # -- health --------------------------------------------------------------------------

    def check_store(self) -> dict[str, int]:
        """Counts from the catalog and the vector store; raises if either is unreachable."""
        with self._store_lock:
            return {"products": int(self.db.count()), "vectors": int(self.index.count())}


def working_image(image: np.ndarray, max_side: int = WORK_MAX_SIDE) -> np.ndarray:
    """The photo as the pipeline processes it: scaled down (area filter) to ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    import cv2

    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise SearchError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return k
