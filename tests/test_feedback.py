"""The feedback store: real SQLite files, validation, JSONL export."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from candidfashion.config import Settings
from candidfashion.feedback import FeedbackError, FeedbackStore

SHA = "ab" * 32


def test_add_and_export_round_trip(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite")
    first = store.add(photo_sha256=SHA, item_index=0, category="outerwear", verdict="good",
                      product_id="jacket-1", look_id="l1")  # fmt: skip
    second = store.add(photo_sha256=SHA.upper(), item_index=2, category="pants",
                       verdict="outline_wrong", product_id="ignored")  # fmt: skip
    assert second > first
    out = tmp_path / "export" / "fb.jsonl"
    assert store.export_jsonl(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["verdict"] == "good" and rows[0]["product_id"] == "jacket-1"
    assert rows[0]["look_id"] == "l1" and rows[0]["category"] == "outerwear"
    # The outline verdict is about the item: a product id sent along is not kept.
    assert rows[1]["product_id"] is None
    assert rows[1]["photo_sha256"] == SHA  # normalised to lower case
    assert rows[1]["created_at"].endswith("Z")
    assert not out.with_name("fb.jsonl.tmp").exists()


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).add(
        photo_sha256=SHA, item_index=1, category="top", verdict="wrong", product_id="p"
    )
    assert FeedbackStore(path).count() == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"photo_sha256": "xyz"}, "64 hexadecimal"),
        ({"item_index": -1}, "non-negative"),
        ({"category": "spaceship"}, "unknown category"),
        ({"verdict": "meh"}, "verdict must be one of"),
        ({"product_id": None}, "needs the product_id"),
    ],
)
def test_bad_records_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite")
    base = {
        "photo_sha256": SHA,
        "item_index": 0,
        "category": "top",
        "verdict": "good",
        "product_id": "p1",
    }
    with pytest.raises(FeedbackError, match=message):
        store.add(**{**base, **kwargs})
    assert store.count() == 0


def test_concurrent_writers(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite")

    def write(n: int) -> None:
        for i in range(20):
            store.add(photo_sha256=SHA, item_index=n, category="top", verdict="good",
                      product_id=f"p{i}")  # fmt: skip

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 80


def test_from_settings_uses_data_dir(settings: Settings) -> None:
    store = FeedbackStore.from_settings(settings)
    assert store.path == settings.data_dir / "feedback.sqlite"
    assert store.export_jsonl(settings.data_dir / "empty.jsonl") == 0
    assert (settings.data_dir / "empty.jsonl").read_text() == ""
