"""The product catalog: SQLite (WAL, FTS5 keyword search) plus the vector index.

Ingestion reads a CSV, a JSON-lines file or a folder of images, validates every row, loads
and normalises each product image, names its dominant colour, embeds the images in batches
and upserts rows and vectors by product id. Bad rows are reported with their line number and
skipped; the rest go in. Every commit batch writes the vectors first and the rows second, so
a run killed at any point loses nothing committed and a re-run resumes: rows whose content
hash is unchanged are reported as such and not embedded again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TimeElapsedColumn,
)
from rich.text import Text

from candidfashion.config import Settings
from candidfashion.taxonomy import BACKGROUND, CLASS_ID, CLASSES, ITEM_CLASSES

if TYPE_CHECKING:
    from candidfashion.embed import Embedder
    from candidfashion.index import VectorIndex
    from candidfashion.parse import Parser

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
#: Longest side of the stored copy of a product image (what the web UI shows).
STORED_MAX_SIDE = 512
MAX_ID_LENGTH = 256
MAX_TITLE_LENGTH = 500
#: Catalog images are product shots; a bigger file than this is a mistake or an attack.
MAX_CATALOG_IMAGE_BYTES = 30 * 1024 * 1024


class CatalogError(ValueError):
    """A catalog that cannot be opened or a request the catalog refuses."""


class RowProblem(ValueError):
    """One row that cannot be ingested; the message says why."""


class Product(BaseModel):
    """One product as stored in the catalog."""

    id: str
    title: str
    price: float | None = None
    currency: str | None = None
    url: str | None = None
    #: The image as the catalog gave it: a path (relative to the base folder) or a URL.
    image: str
    #: The normalised copy under ``<data_dir>/images`` that the web app serves.
    image_path: str | None = None
    category: str | None = None
    brand: str | None = None
    in_stock: bool = True
    #: Name of the dominant colour of the product (foreground pixels), see ``colours``.
    colour: str | None = None
    extra_images: list[str] = Field(default_factory=list)

    def vector_metadata(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "price": self.price,
            "in_stock": self.in_stock,
            "colour": self.colour,
        }


@dataclass
class RowError:
    line: int
    message: str


@dataclass
class IngestReport:
    added: int
    updated: int
    unchanged: int
    errors: list[RowError]
    seconds: float = 0.0
    embedded: int = 0

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------
# Categories

_CATEGORY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "top": (
        "top", "tops", "shirt", "shirts", "t-shirt", "t-shirts", "tshirt", "tee", "tees",
        "blouse", "blouses", "sweater", "sweaters", "jumper", "jumpers", "pullover",
        "hoodie", "hoodies", "sweatshirt", "sweatshirts", "tank top", "camisole", "polo",
        "polo shirt", "knitwear", "vest", "tunic", "bodysuit", "crop top",
    ),
    "outerwear": (
        "outerwear", "jacket", "jackets", "coat", "coats", "blazer", "blazers", "parka",
        "parkas", "cardigan", "cardigans", "anorak", "windbreaker", "trench", "trench coat",
        "puffer", "gilet", "cape", "poncho", "suit jacket", "bomber",
    ),
    "dress": (
        "dress", "dresses", "gown", "gowns", "jumpsuit", "jumpsuits", "romper", "rompers",
        "playsuit", "sundress",
    ),
    "skirt": ("skirt", "skirts", "miniskirt", "maxi skirt"),
    "pants": (
        "pants", "pant", "trousers", "trouser", "jeans", "jean", "denim", "chinos", "chino",
        "leggings", "joggers", "sweatpants", "slacks", "cargo pants",
    ),
    "shorts": ("shorts", "short", "bermuda", "bermudas", "hot pants"),
    "footwear": (
        "footwear", "shoes", "shoe", "sneakers", "sneaker", "trainers", "trainer", "boots",
        "boot", "sandals", "sandal", "heels", "heel", "pumps", "loafers", "loafer", "flats",
        "slippers", "clogs", "mules", "wedges", "espadrilles",
    ),
    "bag": (
        "bag", "bags", "handbag", "handbags", "purse", "purses", "backpack", "backpacks",
        "tote", "totes", "clutch", "wallet", "satchel", "crossbody",
    ),
    "hat": ("hat", "hats", "cap", "caps", "beanie", "beanies", "beret", "fedora", "headwear"),
    "accessory": (
        "accessory", "accessories", "belt", "belts", "scarf", "scarves", "sunglasses",
        "glasses", "jewellery", "jewelry", "necklace", "earrings", "bracelet", "watch",
        "watches", "gloves", "tie", "ties",
    ),
    "legwear": ("legwear", "socks", "sock", "tights", "stockings", "hosiery"),
}  # fmt: skip
_CATEGORY_LOOKUP: dict[str, str] = {
    syn: cls for cls, syns in _CATEGORY_SYNONYMS.items() for syn in syns
}


def normalise_category(text: str | None) -> str | None:
    """A free-text category ("Jeans", "Men > Jackets & Coats") -> a taxonomy class, or None.

    Tries the whole text, then each part of a breadcrumb (last part first, since shops write
    "Women > Clothing > Jeans"), then single words.
    """
    if text is None:
        return None
    cleaned = re.sub(r"[_\s]+", " ", str(text).strip().lower())
    if not cleaned:
        return None
    if cleaned in _CATEGORY_LOOKUP:
        return _CATEGORY_LOOKUP[cleaned]
    parts = [p.strip() for p in re.split(r"[>/|,;&]|\band\b", cleaned) if p.strip()]
    for part in reversed(parts):
        if part in _CATEGORY_LOOKUP:
            return _CATEGORY_LOOKUP[part]
    for part in reversed(parts):
        words = re.findall(r"[a-z][a-z-]*", part)
        for w in reversed(words):
            if w in _CATEGORY_LOOKUP:
                return _CATEGORY_LOOKUP[w]
    return None


# --------------------------------------------------------------------------------------
# SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    price REAL,
    currency TEXT,
    url TEXT,
    image TEXT NOT NULL,
    image_path TEXT,
    category TEXT,
    brand TEXT,
    in_stock INTEGER NOT NULL DEFAULT 1,
    colour TEXT,
    extra_images TEXT NOT NULL DEFAULT '[]',
    content_hash TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS products_category ON products(category);
CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE VIRTUAL TABLE IF NOT EXISTS products_fts USING fts5(
    title, brand, category, content='products', content_rowid='rowid',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS products_ai AFTER INSERT ON products BEGIN
    INSERT INTO products_fts(rowid, title, brand, category)
    VALUES (new.rowid, new.title, new.brand, new.category);
END;
CREATE TRIGGER IF NOT EXISTS products_ad AFTER DELETE ON products BEGIN
    INSERT INTO products_fts(products_fts, rowid, title, brand, category)
    VALUES ('delete', old.rowid, old.title, old.brand, old.category);
END;
CREATE TRIGGER IF NOT EXISTS products_au AFTER UPDATE ON products BEGIN
    INSERT INTO products_fts(products_fts, rowid, title, brand, category)
    VALUES ('delete', old.rowid, old.title, old.brand, old.category);
    INSERT INTO products_fts(rowid, title, brand, category)
    VALUES (new.rowid, new.title, new.brand, new.category);
END;
"""

_COLUMNS = (
    "id, title, price, currency, url, image, image_path, category, brand, in_stock, colour, "
    "extra_images"
)


def _row_to_product(row: sqlite3.Row | tuple) -> Product:
    (pid, title, price, currency, url, image, image_path, category, brand, stock, colour, extra) = (
        tuple(row)
    )
    return Product(
        id=pid,
        title=title,
        price=price,
        currency=currency,
        url=url,
        image=image,
        image_path=image_path,
        category=category,
        brand=brand,
        in_stock=bool(stock),
        colour=colour,
        extra_images=json.loads(extra or "[]"),
    )


def fts_query(text: str) -> str | None:
    """User text -> a safe FTS5 query: every word must match (prefix match on each)."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return None
    return " ".join(f'"{w}"*' for w in words[:20])


class CatalogDB:
    """Products in one SQLite file (WAL mode) with an FTS5 index kept in sync by triggers.

    One connection shared by the threads of a process (guarded by a lock); other processes
    can read while one writes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a killed process.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise CatalogError(f"cannot open catalog {self.path}: {err}") from err

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> CatalogDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def upsert(
        self, products: Product | Sequence[Product], hashes: Sequence[str | None] | None = None
    ) -> None:
        """Insert or replace products by id, in one transaction."""
        items = [products] if isinstance(products, Product) else list(products)
        if hashes is not None and len(hashes) != len(items):
            raise CatalogError("hashes and products differ in length")
        now = time.time()
        rows = [
            (
                p.id,
                p.title,
                p.price,
                p.currency,
                p.url,
                p.image,
                p.image_path,
                p.category,
                p.brand,
                1 if p.in_stock else 0,
                p.colour,
                json.dumps(p.extra_images),
                None if hashes is None else hashes[i],
                now,
            )
            for i, p in enumerate(items)
        ]
        with self.transaction() as conn:
            conn.executemany(
                f"""INSERT INTO products ({_COLUMNS}, content_hash, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET
                    title=excluded.title, price=excluded.price, currency=excluded.currency,
                    url=excluded.url, image=excluded.image, image_path=excluded.image_path,
                    category=excluded.category, brand=excluded.brand,
                    in_stock=excluded.in_stock, colour=excluded.colour,
                    extra_images=excluded.extra_images, content_hash=excluded.content_hash,
                    updated_at=excluded.updated_at""",
                rows,
            )

    def get(self, product_id: str) -> Product | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM products WHERE id = ?", (product_id,)
            ).fetchone()
        return None if row is None else _row_to_product(row)

    def get_many(self, ids: Iterable[str]) -> dict[str, Product]:
        wanted = list(dict.fromkeys(ids))
        out: dict[str, Product] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                    f"SELECT {_COLUMNS} FROM products WHERE id IN ({marks})", chunk
                ):
                    product = _row_to_product(row)
                    out[product.id] = product
        return out

    def hashes(self, ids: Iterable[str]) -> dict[str, str | None]:
        """Stored content hash per existing id (None for rows written without one)."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, str | None] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                out.update(
                    self._conn.execute(
                        f"SELECT id, content_hash FROM products WHERE id IN ({marks})", chunk
                    ).fetchall()
                )
        return out

    def delete(self, ids: Iterable[str]) -> int:
        wanted = list(dict.fromkeys(ids))
        removed = 0
        with self.transaction() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                removed += conn.execute(
                    f"DELETE FROM products WHERE id IN ({marks})", chunk
                ).rowcount
        return removed

    def search_text(self, q: str, limit: int = 20) -> list[Product]:
        """Keyword search over title, brand and category, best match first."""
        query = fts_query(q)
        if query is None:
            return []
        cols = ", ".join(f"p.{c.strip()}" for c in _COLUMNS.split(","))
        try:
            with self._lock:
                rows = self._conn.execute(
                    f"""SELECT {cols} FROM products_fts f JOIN products p ON p.rowid = f.rowid
                    WHERE products_fts MATCH ? ORDER BY bm25(products_fts) LIMIT ?""",
                    (query, int(limit)),
                ).fetchall()
        except sqlite3.OperationalError as err:
            raise CatalogError(f"cannot search for {q!r}: {err}") from err
        return [_row_to_product(r) for r in rows]

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT id FROM products ORDER BY id")]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM products").fetchone()[0])

    def categories(self) -> dict[str, int]:
        """Product count per category (products without one are not listed)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT category, COUNT(*) FROM products WHERE category IS NOT NULL "
                "GROUP BY category ORDER BY category"
            ).fetchall()
        return {c: int(n) for c, n in rows}

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM catalog_meta WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO catalog_meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def check_fts(self) -> None:
        """Raise if the FTS index disagrees with the table (used by tests and `stats`)."""
        with self._lock:
            self._conn.execute("INSERT INTO products_fts(products_fts) VALUES ('integrity-check')")

    def list(self, limit: int = 50, offset: int = 0, category: str | None = None) -> list[Product]:
        sql = f"SELECT {_COLUMNS} FROM products"
        args: list[Any] = []
        if category is not None:
            sql += " WHERE category = ?"
            args.append(category)
        sql += " ORDER BY id LIMIT ? OFFSET ?"
        args += [int(limit), int(offset)]
        with self._lock:
            return [_row_to_product(r) for r in self._conn.execute(sql, args)]


# --------------------------------------------------------------------------------------
# Reading catalog files


@dataclass
class RawRow:
    """A validated catalog row, before its image is loaded."""

    line: int
    id: str
    title: str
    image: str
    price: float | None = None
    currency: str | None = None
    url: str | None = None
    category_text: str | None = None
    brand: str | None = None
    in_stock: bool = True
    extra_images: list[str] = field(default_factory=list)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    s = str(value).strip()
    return s or None


def parse_price(value: Any) -> float | None:
    text = _text(value)
    if text is None:
        return None
    if isinstance(value, bool):
        raise RowProblem(f"bad price {value!r}")
    cleaned = text.replace(",", ".") if text.count(",") == 1 and "." not in text else text
    cleaned = cleaned.replace(" ", "")
    try:
        price = float(cleaned)
    except ValueError:
        raise RowProblem(f"bad price {text!r}: not a number") from None
    if not math.isfinite(price):
        raise RowProblem(f"bad price {text!r}: not a finite number")
    if price < 0:
        raise RowProblem(f"bad price {text!r}: negative")
    return price


_TRUE = {"1", "true", "yes", "y", "t", "in stock", "instock", "available"}
_FALSE = {"0", "false", "no", "n", "f", "out of stock", "outofstock", "sold out"}


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value)
    if text is None:
        return True
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise RowProblem(f"bad {name} {text!r}: use true/false, yes/no or 1/0")


def validate_row(data: dict[str, Any], line: int) -> RawRow:
    """Check one row's fields; raises :class:`RowProblem` with a readable message."""
    if not isinstance(data, dict):
        raise RowProblem(f"expected an object with product fields, got {type(data).__name__}")
    fields = {str(k).strip().lower(): v for k, v in data.items() if k is not None}
    pid = _text(fields.get("id"))
    title = _text(fields.get("title"))
    image = _text(fields.get("image"))
    missing = [n for n, v in (("id", pid), ("title", title), ("image", image)) if v is None]
    if missing:
        raise RowProblem(f"missing {', '.join(missing)}")
    assert pid is not None and title is not None and image is not None
    if len(pid) > MAX_ID_LENGTH or any(ord(c) < 32 for c in pid):
        raise RowProblem(f"bad id {pid[:40]!r}: at most {MAX_ID_LENGTH} printable characters")
    if len(title) > MAX_TITLE_LENGTH:
        raise RowProblem(f"title longer than {MAX_TITLE_LENGTH} characters")
    extra = fields.get("extra_images")
    extra_list: list[str] = []
    if isinstance(extra, list):
        extra_list = [s for s in (_text(v) for v in extra) if s]
    elif _text(extra):
        extra_list = [s.strip() for s in str(extra).split("|") if s.strip()]
    currency = _text(fields.get("currency"))
    if currency is not None and not re.fullmatch(r"[A-Za-z]{3}", currency):
        raise RowProblem(f"bad currency {currency!r}: use a 3-letter code such as EUR")
    url = _text(fields.get("url"))
    if url is not None and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise RowProblem(f"bad url {url[:60]!r}: only http(s) links are allowed")
    return RawRow(
        line=line,
        id=pid,
        title=title,
        image=image,
        price=parse_price(fields.get("price")),
        currency=None if currency is None else currency.upper(),
        url=url,
        category_text=_text(fields.get("category")),
        brand=_text(fields.get("brand")),
        in_stock=parse_bool(fields.get("in_stock"), "in_stock"),
        extra_images=extra_list,
    )


def _rows_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            return
        header = {h.strip().lower() for h in reader.fieldnames if h}
        needed = {"id", "title", "image"} - header
        if needed:
            raise CatalogError(
                f"{path}: the header has no {', '.join(sorted(needed))} column "
                f"(found: {', '.join(reader.fieldnames)})"
            )
        start = reader.line_num + 1
        for record in reader:
            if None in record:  # more cells than header columns
                yield start, RowProblem("more values than header columns")
            else:
                yield start, record
            start = reader.line_num + 1


def _rows_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, RowProblem(f"malformed JSON: {err.msg} (column {err.colno})")
                continue
            yield line_no, data


def _rows_folder(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for n, file in enumerate(files, 1):
        rel = file.relative_to(path)
        stem = file.stem
        title = re.sub(r"[_-]+", " ", stem).strip().capitalize() or stem
        category = file.parent.name if file.parent != path else None
        yield (
            n,
            {"id": stem, "title": title, "image": rel.as_posix(), "category": category},
        )


def source_kind(source: Path) -> str:
    if source.is_dir():
        return "folder"
    suffix = source.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise CatalogError(
        f"{source}: unknown catalog format; use a .csv, a .jsonl file or a folder of images"
    )


def read_rows(source: Path) -> Iterator[tuple[int, dict[str, Any] | RowProblem]]:
    """(line number, raw row or problem) for every row of a catalog source, lazily."""
    kind = source_kind(source)
    if kind != "folder" and not source.exists():
        raise CatalogError(f"{source}: no such file")
    if kind == "csv":
        return _rows_csv(source)
    if kind == "jsonl":
        return _rows_jsonl(source)
    return _rows_folder(source)


def _count_rows(source: Path) -> int | None:
    """Rows to expect, for the progress bar (None for pipes and folders being walked)."""
    try:
        if source.is_dir():
            return sum(
                1 for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        if not source.is_file():
            return None
        with open(source, "rb") as fh:
            lines = sum(1 for line in fh if line.strip())
        return max(lines - 1, 0) if source.suffix.lower() == ".csv" else lines
    except OSError:
        return None


# --------------------------------------------------------------------------------------
# Images


class _OnlyHTTPRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-http URL", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(
    urllib.request.HTTPHandler, urllib.request.HTTPSHandler, _OnlyHTTPRedirects
)


def fetch_remote_image(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """Download an image over http(s): bounded time and size, image/* content type only."""
    req = urllib.request.Request(url, headers={"User-Agent": "candidfashion-catalog/0.1"})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise RowProblem(f"{url}: content type {ctype or 'missing'!r} is not an image")
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise RowProblem(f"{url}: {int(length)} bytes is over the {max_bytes} limit")
            data = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as err:
        raise RowProblem(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RowProblem(f"{url}: cannot fetch ({reason})") from None
    if len(data) > max_bytes:
        raise RowProblem(f"{url}: more than {max_bytes} bytes")
    if not data:
        raise RowProblem(f"{url}: empty response")
    return data


def resolve_local_image(reference: str, base_dir: Path) -> Path:
    """The file a local image reference names, refusing anything outside ``base_dir``."""
    ref = reference
    if ref.startswith("file://"):
        ref = urllib.request.url2pathname(urllib.parse.urlsplit(ref).path)
    candidate = Path(ref).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    resolved = candidate.resolve()
    base = base_dir.resolve()
    if not resolved.is_relative_to(base):
        raise RowProblem(f"image {reference!r} is outside the catalog folder {base}")
    if not resolved.is_file():
        raise RowProblem(f"image {reference!r} not found")
    return resolved


def is_remote(reference: str) -> bool:
    return urllib.parse.urlsplit(reference).scheme in ("http", "https")


def _check_reference(reference: str, base_dir: Path, allow_remote: bool) -> Path | None:
    """Validate an image reference; returns the local file, or None for an allowed URL."""
    scheme = urllib.parse.urlsplit(reference).scheme
    if scheme in ("http", "https"):
        if not allow_remote:
            raise RowProblem(
                f"image {reference!r} is a URL; pass --allow-remote to fetch remote images"
            )
        return None
    if scheme not in ("", "file") and not re.fullmatch(r"[A-Za-z]", scheme):
        raise RowProblem(f"image {reference!r}: unsupported scheme {scheme!r}")
    return resolve_local_image(reference, base_dir)


def stored_image_name(product_id: str, transparent: bool) -> str:
    """File name of a product's stored image: the id itself when it is a safe file name."""
    suffix = ".png" if transparent else ".jpg"
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", product_id):
        return product_id + suffix
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", product_id).strip("._")[:60] or "product"
    digest = hashlib.sha1(product_id.encode()).hexdigest()[:10]
    return f"{safe}-{digest}{suffix}"


def normalise_image(rgba: np.ndarray) -> tuple[np.ndarray, bool]:
    """Shrink to at most STORED_MAX_SIDE; returns (RGB or RGBA array, has transparency)."""
    transparent = bool((rgba[..., 3] < 250).any())
    im = Image.fromarray(rgba if transparent else np.ascontiguousarray(rgba[..., :3]))
    if max(im.size) > STORED_MAX_SIDE:
        scale = STORED_MAX_SIDE / max(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im), transparent


def save_image_atomic(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    im = Image.fromarray(image)
    if path.suffix == ".png":
        im.save(buf, format="PNG", optimize=False)
    else:
        im.save(buf, format="JPEG", quality=90)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def foreground_pixels(image: np.ndarray, at_most: int | None = None) -> np.ndarray:
    """(N, 3) RGB pixels of the product, not of its backdrop.

    Transparent images: the opaque pixels. Otherwise: pixels that differ from the median
    border colour (product shots are on a plain backdrop). Falls back to every pixel when the
    "foreground" is implausibly small. With ``at_most``, an even stride keeps about that
    many (picked by index, so the full pixel list is never built).
    """
    image = np.ascontiguousarray(image)
    if image.shape[2] == 4:
        mask = image[..., 3] >= 128
    else:
        from candidfashion.imageio import border_pixels, near_colour

        h, w = image.shape[:2]
        backdrop = np.median(border_pixels(image, max(1, min(h, w) // 50)), axis=0)
        # Foreground: any channel more than 28 levels from the backdrop.
        mask = near_colour(image, backdrop, 28) == 0
    flat = image.reshape(-1, image.shape[2])
    index = np.flatnonzero(mask)
    if len(index) < 0.02 * mask.size:
        index = np.arange(len(flat))
    if at_most is not None and len(index) > at_most:
        index = index[:: len(index) // at_most]
    return flat[index, :3]


def dominant_colour_name(image: np.ndarray) -> str | None:
    from candidfashion.colours import dominant_colours

    # A few thousand evenly spread pixels name the colour as well as all of them, 5x faster.
    pixels = foreground_pixels(image, at_most=3000)
    colours = dominant_colours(np.ascontiguousarray(pixels), k=3)
    return colours[0].name if colours else None


def infer_category(parser: Parser, image_rgb: np.ndarray) -> str | None:
    """Majority item class over the parser's non-background, non-body pixels."""
    labels = parser.parse(image_rgb)
    counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
    for body in (BACKGROUND, CLASS_ID["skin"], CLASS_ID["hair"]):
        counts[body] = 0
    best = int(counts.argmax())
    # Fewer than 2% of the pixels is noise, not a garment.
    if counts[best] < 0.02 * labels.size or CLASSES[best] not in ITEM_CLASSES:
        return None
    return CLASSES[best]


# --------------------------------------------------------------------------------------
# Preparing products (shared by the single-process path, Ray workers and the API)


@dataclass
class WorkItem:
    """A row whose content changed: everything a worker needs to prepare it."""

    row: RawRow
    content_hash: str
    local_path: str | None  # resolved file, or None for a remote URL
    image_bytes: bytes | None = None


@dataclass
class PreparedBatch:
    """Products ready to write, with their vectors and index metadata (same order)."""

    products: list[Product]
    vectors: np.ndarray
    metadata: list[dict[str, Any]]
    hashes: list[str | None] = field(default_factory=list)


def content_hash(row: RawRow, image_digest: str, model_sha: str) -> str:
    """What decides whether a row must be processed again: fields, image bytes, model."""
    payload = json.dumps(
        {
            "id": row.id,
            "title": row.title,
            "price": row.price,
            "currency": row.currency,
            "url": row.url,
            "image": row.image,
            "category": row.category_text,
            "brand": row.brand,
            "in_stock": row.in_stock,
            "extra": row.extra_images,
            "image_sha256": image_digest,
            "model": model_sha,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class _Loaded:
    products: list[Product]
    images: list[np.ndarray]
    hashes: list[str | None]
    errors: list[RowError]
    lines: dict[str, int]


class Preparer:
    """Loads, normalises, stores, colours, categorises and embeds product images.

    Created once per process (a Ray actor holds its own); ``prepare`` handles one batch.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        *,
        allow_remote: bool = False,
        parser: Parser | bool | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.allow_remote = allow_remote
        self.images_dir = settings.data_dir / "images"
        self.max_bytes = min(settings.max_upload_bytes * 2, MAX_CATALOG_IMAGE_BYTES)
        # parser: None = load lazily when a row needs it; False = never infer categories.
        self._parser: Parser | bool | None = parser
        self._parser_lock = threading.Lock()

    def _get_parser(self) -> Parser | None:
        with self._parser_lock:
            if self._parser is None:
                try:
                    from candidfashion.parse import Parser

                    self._parser = Parser.from_settings(self.settings)
                except (ImportError, ValueError, OSError) as err:
                    log.warning(
                        "no parser to infer missing categories (%s); leaving them empty", err
                    )
                    self._parser = False
            return None if isinstance(self._parser, bool) else self._parser

    def _load(self, item: WorkItem) -> np.ndarray:
        from candidfashion.imageio import ImageError, load_image_rgba

        data = item.image_bytes
        if data is None:
            if item.local_path is not None:
                data = Path(item.local_path).read_bytes()
            else:
                if not self.allow_remote:
                    raise RowProblem(f"image {item.row.image!r} is remote and remote is off")
                data = fetch_remote_image(
                    item.row.image,
                    timeout=self.settings.remote_timeout_s,
                    max_bytes=self.max_bytes,
                )
        try:
            return load_image_rgba(
                data, max_bytes=self.max_bytes, max_pixels=self.settings.max_image_pixels
            )
        except ImageError as err:
            raise RowProblem(f"image {item.row.image!r}: {err}") from None

    def prepare(self, items: Sequence[WorkItem]) -> tuple[PreparedBatch, list[RowError]]:
        return self.embed(self.load(items))

    def load(self, items: Sequence[WorkItem]) -> _Loaded:
        """Everything but the embedding (pure Python/PIL/numpy: can overlap with ``embed``)."""
        products: list[Product] = []
        images: list[np.ndarray] = []
        hashes: list[str | None] = []
        errors: list[RowError] = []
        for item in items:
            row = item.row
            try:
                rgba = self._load(item)
                stored, transparent = normalise_image(rgba)
                name = stored_image_name(row.id, transparent)
                path = self.images_dir / name
                save_image_atomic(stored, path)
                # Drop a stale copy in the other format (the product changed transparency).
                other = path.with_suffix(".jpg" if transparent else ".png")
                with contextlib.suppress(FileNotFoundError):
                    other.unlink()
                rgb = stored[..., :3] if not transparent else _on_white(stored)
                category = normalise_category(row.category_text)
                if category is None:
                    parser = self._get_parser()
                    if parser is not None:
                        category = infer_category(parser, rgb)
                products.append(
                    Product(
                        id=row.id,
                        title=row.title,
                        price=row.price,
                        currency=row.currency,
                        url=row.url,
                        image=row.image,
                        image_path=str(path),
                        category=category,
                        brand=row.brand,
                        in_stock=row.in_stock,
                        colour=dominant_colour_name(stored),
                        extra_images=row.extra_images,
                    )
                )
                images.append(stored)
                hashes.append(item.content_hash)
            except RowProblem as err:
                errors.append(RowError(row.line, str(err)))
            except OSError as err:
                errors.append(RowError(row.line, f"image {row.image!r}: {err}"))
        lines = {it.row.id: it.row.line for it in items}
        return _Loaded(products, images, hashes, errors, lines)

    def embed(self, loaded: _Loaded) -> tuple[PreparedBatch, list[RowError]]:
        products, images, hashes, errors = (
            loaded.products,
            loaded.images,
            loaded.hashes,
            loaded.errors,
        )
        vectors = np.zeros((0, self.embedder.dim), dtype=np.float32)
        if images:
            vectors = np.asarray(self.embedder.embed(images), dtype=np.float32)
            # A degenerate embedding cannot be searched; report it rather than abort the run.
            norms = np.linalg.norm(vectors, axis=1)
            good = np.isfinite(norms) & (norms > 1e-6)
            if not good.all():
                for p in (p for p, g in zip(products, good, strict=True) if not g):
                    errors.append(
                        RowError(loaded.lines[p.id], "the embedder returned an empty vector")
                    )
                products = [p for p, g in zip(products, good, strict=True) if g]
                hashes = [h for h, g in zip(hashes, good, strict=True) if g]
                vectors = vectors[good]
        return (
            PreparedBatch(
                products=products,
                vectors=vectors,
                metadata=[p.vector_metadata() for p in products],
                hashes=hashes,
            ),
            errors,
        )


def _on_white(rgba: np.ndarray) -> np.ndarray:
    from candidfashion.imageio import composite_on_white

    return composite_on_white(rgba)


def prepare_products(
    rows: Sequence[Any],
    settings: Settings,
    embedder: Embedder,
    *,
    base_dir: Path | None = None,
    allow_remote: bool | None = None,
) -> tuple[PreparedBatch, list[RowError]]:
    """Validate and prepare products sent as a JSON list (the API's upsert).

    ``RowError.line`` is the 0-based position in ``rows``. Local image paths must lie in
    ``base_dir`` (default: ``settings.catalog_base_dir`` or the data folder).
    """
    base = Path(base_dir or settings.catalog_base_dir or settings.data_dir)
    remote = settings.allow_remote_images if allow_remote is None else allow_remote
    work: list[WorkItem] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    for pos, data in enumerate(rows):
        try:
            row = validate_row(data, pos)
            if row.id in seen:
                raise RowProblem(f"duplicate id {row.id!r} in this request")
            seen.add(row.id)
            local = _check_reference(row.image, base, remote)
            work.append(
                WorkItem(row=row, content_hash="", local_path=str(local) if local else None)
            )
        except RowProblem as err:
            errors.append(RowError(pos, str(err)))
    preparer = Preparer(settings, embedder, allow_remote=remote)
    batch, more = preparer.prepare(work)
    batch.hashes = [None] * len(batch.products)  # a later file ingest re-checks these rows
    return batch, errors + more


# --------------------------------------------------------------------------------------
# Ingestion


def open_catalog(settings: Settings, dim: int | None = None) -> tuple[CatalogDB, VectorIndex]:
    """The catalog database and the vector index named by the settings.

    ``dim`` defaults to the dimension recorded in the catalog (set by the first ingest), or
    the embedder's when nothing was ingested yet.
    """
    from candidfashion.index import open_index

    db = CatalogDB(settings.resolved_catalog_db())
    if dim is None:
        dim = _recorded_dim(db)
    if dim is None:
        from candidfashion.embed import Embedder

        dim = Embedder.from_settings(settings).dim
    index = open_index(settings.resolved_vector_store(), dim)
    return db, index


def _recorded_dim(db: CatalogDB) -> int | None:
    value = db.get_meta("dim")
    return None if value is None else int(value)


def _default_base_dir(source: Path) -> Path:
    return source if source.is_dir() else source.parent


class ImagesPerSecond(ProgressColumn):
    """Progress column: images embedded per second since the start."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.fields.get("embedded", 0)
        rate = done / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:5.1f} images/s", style="cyan")


def progress_bar(progress: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        ImagesPerSecond(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
        transient=False,
    )


def ingest(
    source: Path,
    settings: Settings,
    *,
    base_dir: Path | None = None,
    allow_remote: bool = False,
    ray_address: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    commit_every: int | None = None,
    embedder: Embedder | None = None,
    parser: Parser | bool | None = None,
) -> IngestReport:
    """Add or update the products of a CSV, JSONL or image folder (upsert by id).

    Rows are validated and hashed as they are read; changed rows are prepared and embedded
    ``batch_size`` at a time; every ``commit_every`` rows (default: max(batch_size, 256) or
    10 seconds, whichever first) the vectors are flushed and then the rows committed.
    """
    source = Path(source)
    if batch_size < 1:
        raise CatalogError("batch_size must be at least 1")
    kind = source_kind(source)
    if kind == "folder" and not source.is_dir():
        raise CatalogError(f"{source}: no such folder")
    rows = read_rows(source)
    base = Path(base_dir or settings.catalog_base_dir or _default_base_dir(source)).resolve()
    if not base.is_dir():
        raise CatalogError(f"base folder {base} does not exist")
    if embedder is None:
        from candidfashion.embed import Embedder

        embedder = Embedder.from_settings(settings)
    db, index = open_catalog(settings, dim=embedder.dim)
    try:
        recorded = _recorded_dim(db)
        if recorded is not None and recorded != embedder.dim:
            raise CatalogError(
                f"the catalog was built with {recorded}-d embeddings but the embedder makes "
                f"{embedder.dim}-d ones; use a new data folder or rebuild the catalog"
            )
        db.set_meta("dim", str(embedder.dim))
        db.set_meta("embedder_sha256", embedder.sha256)
        run = _IngestRun(
            db=db,
            index=index,
            embedder=embedder,
            settings=settings,
            base=base,
            allow_remote=allow_remote,
            batch_size=batch_size,
            commit_every=commit_every or max(batch_size, 256),
            parser=parser,
        )
        total = _count_rows(source) if progress else None
        if ray_address is not None:
            from candidfashion.ingest_ray import ingest_with_ray

            return ingest_with_ray(run, rows, ray_address, progress=progress, total=total)
        return run.run_local(rows, progress=progress, total=total)
    finally:
        index.close()
        db.close()


@dataclass
class _IngestRun:
    db: CatalogDB
    index: VectorIndex
    embedder: Embedder
    settings: Settings
    base: Path
    allow_remote: bool
    batch_size: int
    commit_every: int
    parser: Parser | bool | None = None
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    embedded: int = 0
    errors: list[RowError] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _pending: list[PreparedBatch] = field(default_factory=list)
    _pending_rows: int = 0
    _last_commit: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.perf_counter)

    # -- reading and hashing --------------------------------------------------------------

    def changed_rows(
        self, rows: Iterator[tuple[int, dict[str, Any] | RowProblem]]
    ) -> Iterator[list[WorkItem]]:
        """Validate, dedupe and hash rows; yield batches of rows that need processing."""
        chunk: list[tuple[RawRow, Path | None, str]] = []
        for line, data in rows:
            try:
                if isinstance(data, RowProblem):
                    raise data
                row = validate_row(data, line)
                if row.id in self._seen:
                    raise RowProblem(
                        f"duplicate id {row.id!r} (first on line {self._seen[row.id]})"
                    )
                self._seen[row.id] = line
                local = _check_reference(row.image, self.base, self.allow_remote)
                row.extra_images = [self._check_extra(e) for e in row.extra_images]
                if local is not None:
                    digest = _file_sha256(local, self.settings)
                else:
                    digest = "url:" + row.image  # re-fetched when the URL changes
                chunk.append((row, local, content_hash(row, digest, self.embedder.sha256)))
            except RowProblem as err:
                self.errors.append(RowError(line, str(err)))
            except OSError as err:
                self.errors.append(RowError(line, f"cannot read image: {err}"))
            if len(chunk) >= self.batch_size:
                yield self._filter_unchanged(chunk)
                chunk = []
        if chunk:
            yield self._filter_unchanged(chunk)

    def _check_extra(self, reference: str) -> str:
        local = _check_reference(reference, self.base, self.allow_remote)
        return reference if local is None else str(local)

    def _filter_unchanged(self, chunk: list[tuple[RawRow, Path | None, str]]) -> list[WorkItem]:
        stored = self.db.hashes(r.id for r, _, _ in chunk)
        work = []
        for row, local, digest in chunk:
            if stored.get(row.id) == digest:
                self.unchanged += 1
                continue
            work.append(
                WorkItem(row=row, content_hash=digest, local_path=str(local) if local else None)
            )
        return work

    # -- writing --------------------------------------------------------------------------

    def add_prepared(self, batch: PreparedBatch, errors: list[RowError]) -> None:
        self.errors.extend(errors)
        if batch.products:
            self.index.upsert([p.id for p in batch.products], batch.vectors, batch.metadata)
            self._pending.append(batch)
            self._pending_rows += len(batch.products)
            self.embedded += len(batch.products)
        due = time.monotonic() - self._last_commit > 10.0
        if self._pending_rows >= self.commit_every or (due and self._pending_rows):
            self.commit()

    def commit(self) -> None:
        """Vectors first, rows second: a crash in between only means re-embedding."""
        if not self._pending:
            return
        self.index.flush()
        products = [p for b in self._pending for p in b.products]
        hashes = [h for b in self._pending for h in b.hashes]
        existing = self.db.hashes(p.id for p in products)
        self.db.upsert(products, hashes)
        for p in products:
            if p.id in existing:
                self.updated += 1
            else:
                self.added += 1
        self._pending.clear()
        self._pending_rows = 0
        self._last_commit = time.monotonic()

    def report(self) -> IngestReport:
        self.errors.sort(key=lambda e: e.line)
        return IngestReport(
            added=self.added,
            updated=self.updated,
            unchanged=self.unchanged,
            errors=self.errors,
            seconds=time.perf_counter() - self.started,
            embedded=self.embedded,
        )

    def done(self) -> int:
        return self.unchanged + self.embedded + len(self.errors)

    def run_local(
        self,
        rows: Iterator[tuple[int, dict[str, Any] | RowProblem]],
        *,
        progress: bool,
        total: int | None,
    ) -> IngestReport:
        preparer = Preparer(
            self.settings, self.embedder, allow_remote=self.allow_remote, parser=self.parser
        )
        # Two-stage pipeline: a thread loads/colours batch i+1 while ONNX Runtime embeds
        # batch i (both release the GIL for most of their work).
        with progress_bar(progress) as bar, ThreadPoolExecutor(1, "cf-load") as pool:
            task = bar.add_task("ingesting", total=total, embedded=0)
            pending: Future[_Loaded] | None = None
            for work in self.changed_rows(rows):
                if not work:  # all unchanged
                    bar.update(task, completed=self.done(), embedded=self.embedded)
                    continue
                nxt = pool.submit(preparer.load, work)
                if pending is not None:
                    self.add_prepared(*preparer.embed(pending.result()))
                    bar.update(task, completed=self.done(), embedded=self.embedded)
                pending = nxt
            if pending is not None:
                self.add_prepared(*preparer.embed(pending.result()))
            self.commit()
            bar.update(task, completed=self.done(), embedded=self.embedded)
        return self.report()


def _file_sha256(path: Path, settings: Settings) -> str:
    size = path.stat().st_size
    limit = min(settings.max_upload_bytes * 2, MAX_CATALOG_IMAGE_BYTES)
    if size > limit:
        raise RowProblem(f"image {path.name!r} is {size} bytes, over the {limit} limit")
    if size == 0:
        raise RowProblem(f"image {path.name!r} is empty")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Small entry points used by the CLI and the API


def remove_products(ids: Sequence[str], settings: Settings) -> int:
    """Delete products (rows, vectors and stored images); returns how many rows existed."""
    db = CatalogDB(settings.resolved_catalog_db())
    try:
        dim = _recorded_dim(db)
        found = db.get_many(ids)
        if dim is not None:
            from candidfashion.index import open_index

            index = open_index(settings.resolved_vector_store(), dim)
            try:
                index.delete(list(ids))
                index.flush()
            finally:
                index.close()
        removed = db.delete(ids)
        for p in found.values():
            if p.image_path:
                with contextlib.suppress(OSError):
                    Path(p.image_path).unlink()
        return removed
    finally:
        db.close()


def list_products(settings: Settings, limit: int = 50, query: str | None = None) -> list[Product]:
    with CatalogDB(settings.resolved_catalog_db()) as db:
        if query:
            return db.search_text(query, limit=limit)
        return db.list(limit=limit)


def catalog_stats(settings: Settings) -> dict[str, Any]:
    """Counts per category, vector count and where everything lives."""
    with CatalogDB(settings.resolved_catalog_db()) as db:
        stats: dict[str, Any] = {
            "products": db.count(),
            "categories": db.categories(),
            "catalog_db": str(settings.resolved_catalog_db()),
            "vector_store": settings.resolved_vector_store(),
        }
        dim = _recorded_dim(db)
        stats["dim"] = dim
        if dim is not None:
            from candidfashion.index import open_index

            index = open_index(settings.resolved_vector_store(), dim)
            try:
                stats["vectors"] = index.count()
            finally:
                index.close()
        else:
            stats["vectors"] = 0
    return stats
