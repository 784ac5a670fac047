"""Shopper feedback on matches and outlines, kept in SQLite for re-ranking and retraining.

A record says, for one item of one photo (identified by the photo's SHA-256, never the photo
itself), whether a product was a good or wrong match, or that the item's outline was wrong.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from candidfashion.taxonomy import ITEM_CLASSES

if TYPE_CHECKING:
    from candidfashion.config import Settings

VERDICTS: tuple[str, ...] = ("good", "wrong", "outline_wrong")
_SHA_CHARS = frozenset("0123456789abcdef")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    photo_sha256 TEXT NOT NULL,
    look_id TEXT,
    item_index INTEGER NOT NULL,
    category TEXT NOT NULL,
    product_id TEXT,
    verdict TEXT NOT NULL CHECK (verdict IN ('good', 'wrong', 'outline_wrong'))
);
CREATE INDEX IF NOT EXISTS feedback_photo ON feedback (photo_sha256, item_index);
"""


class FeedbackError(ValueError):
    """A feedback record that does not make sense (unknown verdict, missing product...)."""


@dataclass
class FeedbackRecord:
    id: int
    created_at: float
    photo_sha256: str
    look_id: str | None
    item_index: int
    category: str
    product_id: str | None
    verdict: str


class FeedbackStore:
    """Append-only feedback table. One connection, serialised by a lock (writes are tiny)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        # WAL lets several server workers append while an export reads.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        self._conn.commit()

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackStore:
        return cls(settings.data_dir / "feedback.sqlite")

    def add(
        self,
        *,
        photo_sha256: str,
        item_index: int,
        category: str,
        verdict: str,
        product_id: str | None = None,
        look_id: str | None = None,
    ) -> int:
        """Store one record and return its id; raises :class:`FeedbackError` when invalid."""
        sha = photo_sha256.strip().lower()
        if len(sha) != 64 or not set(sha) <= _SHA_CHARS:
            raise FeedbackError("photo_sha256 must be 64 hexadecimal characters")
        if isinstance(item_index, bool) or not isinstance(item_index, int) or item_index < 0:
            raise FeedbackError(f"item_index must be a non-negative integer, got {item_index!r}")
        if category not in ITEM_CLASSES:
            raise FeedbackError(
                f"unknown category {category!r}; expected one of {', '.join(ITEM_CLASSES)}"
            )
        if verdict not in VERDICTS:
            raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        if verdict == "outline_wrong":
            product_id = None  # the outline is about the item, not a product
        elif not product_id:
            raise FeedbackError(f"a {verdict!r} verdict needs the product_id it is about")
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO feedback (created_at, photo_sha256, look_id, item_index, category,"
                " product_id, verdict) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), sha, look_id, item_index, category, product_id, verdict),
            )
            self._conn.commit()
            return int(cur.lastrowid or 0)

    def records(self) -> list[FeedbackRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, created_at, photo_sha256, look_id, item_index, category, product_id,"
                " verdict FROM feedback ORDER BY id"
            ).fetchall()
        return [FeedbackRecord(*row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def export_jsonl(self, path: str | Path) -> int:
        """Write every record as one JSON object per line; returns how many were written.

        Written to a temporary file first and renamed, so a reader never sees half a file.
        """
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        records = self.records()
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                row = asdict(rec)
                row["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.created_at))
                fh.write(json.dumps(row, sort_keys=True) + "\n")
        tmp.replace(out)
        return len(records)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
