"""Vector stores: FAISS (real, on disk) and Milvus Lite (real, in-process)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from candidfashion.index import (
    FaissIndex,
    Hit,
    MilvusIndex,
    VectorFilter,
    VectorIndex,
    VectorIndexError,
    milvus_expression,
    open_index,
)

DIM = 16
CATS = ["top", "pants", "outerwear"]
COLOURS = ["red", "blue", None]


def _data(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = [f"p{i}" for i in range(n)]
    meta = [
        {
            "category": CATS[i % 3],
            "price": None if i % 7 == 0 else float(i % 50),
            "in_stock": i % 4 != 0,
            "colour": COLOURS[i % 3 if i % 5 else 2],
        }
        for i in range(n)
    ]
    return ids, vecs, meta


def _brute(vecs: np.ndarray, meta: list[dict], q: np.ndarray, k: int, f: VectorFilter) -> list[int]:
    """Exact filtered top-k row numbers, computed independently with numpy."""

    def ok(m: dict) -> bool:
        if f.category is not None and m["category"] != f.category:
            return False
        price = m["price"]
        if f.min_price is not None and (price is None or price < f.min_price):
            return False
        if f.max_price is not None and (price is None or price > f.max_price):
            return False
        if f.in_stock is not None and m["in_stock"] != f.in_stock:
            return False
        return not (f.colour is not None and m["colour"] != f.colour)

    normed = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q)
    rows = np.array([i for i, m in enumerate(meta) if ok(m)], dtype=int)
    if len(rows) == 0:
        return []
    scores = normed[rows] @ qn
    return rows[np.argsort(-scores, kind="stable")[:k]].tolist()


FILTERS = [
    VectorFilter(),
    VectorFilter(category="pants"),
    VectorFilter(category="top", max_price=20.0),
    VectorFilter(min_price=10.0, max_price=30.0, in_stock=True),
    VectorFilter(colour="red", in_stock=False),
    VectorFilter(category="outerwear", colour="blue", min_price=5.0),
    VectorFilter(category="no-such-category"),
    VectorFilter(colour="no-such-colour"),
]


def _make(backend: str, tmp_path: Path, dim: int = DIM) -> VectorIndex:
    if backend == "faiss":
        return open_index(f"faiss://{tmp_path / 'idx'}", dim)
    return open_index(f"milvus-lite://{tmp_path / 'm.db'}", dim)


HAVE_MILVUS = importlib.util.find_spec("milvus_lite") is not None
BACKENDS = [
    "faiss",
    pytest.param(
        "milvus",
        marks=pytest.mark.skipif(not HAVE_MILVUS, reason="milvus-lite not installed ([scale])"),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_filters_upsert_delete_match_brute_force(backend: str, tmp_path: Path) -> None:
    ids, vecs, meta = _data(300)
    index = _make(backend, tmp_path)
    index.upsert(ids, vecs, meta)
    assert index.count() == 300
    rng = np.random.default_rng(1)
    for f in FILTERS:
        for q in rng.normal(size=(3, DIM)).astype(np.float32):
            got = index.search(q[None], 10, f)[0]
            want = [ids[i] for i in _brute(vecs, meta, q, 10, f)]
            assert [h.id for h in got] == want, f
            # Scores are cosine similarities, best first.
            expect = vecs[[int(h.id[1:]) for h in got]] @ q
            expect /= np.linalg.norm(vecs[[int(h.id[1:]) for h in got]], axis=1) * np.linalg.norm(q)
            np.testing.assert_allclose([h.score for h in got], expect, atol=1e-4)

    # Upsert replaces: same id, new vector and category; the count stays the same.
    new_vec = -vecs[5:6]
    index.upsert(["p5"], new_vec, [{"category": "hat", "price": 1.0, "in_stock": True}])
    assert index.count() == 300
    top = index.search(new_vec, 1)[0][0]
    assert top.id == "p5" and top.score == pytest.approx(1.0, abs=1e-5)
    assert [h.id for h in index.search(new_vec, 5, VectorFilter(category="hat"))[0]] == ["p5"]
    assert all(h.id != "p5" for h in index.search(vecs[5:6], 300, VectorFilter(category="top"))[0])

    assert index.delete(["p1", "p2", "missing"]) == 2
    assert index.count() == 298
    hits = index.search(vecs[1:3], 300)
    assert all(h.id not in {"p1", "p2"} for row in hits for h in row)
    index.flush()
    index.close()


@pytest.mark.skipif(not HAVE_MILVUS, reason="milvus-lite not installed ([scale])")
def test_milvus_lite_persists_and_checks_dim(tmp_path: Path) -> None:
    ids, vecs, meta = _data(20)
    index = _make("milvus", tmp_path)
    index.upsert(ids, vecs, meta)
    assert isinstance(index, MilvusIndex)
    # What a new Milvus Lite process finds on disk: the collection exists but is released.
    index._client.release_collection(index.collection)
    index.close()
    again = _make("milvus", tmp_path)
    assert again.count() == 20
    assert again.search(vecs[3:4], 1)[0][0].id == "p3"
    assert isinstance(again, MilvusIndex)
    got = again.get_vectors(["p3", "nope"])
    assert list(got) == ["p3"]
    np.testing.assert_allclose(got["p3"], vecs[3] / np.linalg.norm(vecs[3]), atol=1e-6)
    again.close()
    with pytest.raises(VectorIndexError, match="16-d"):
        MilvusIndex(f"milvus-lite://{tmp_path / 'm.db'}", 8)


def test_milvus_expression() -> None:
    assert milvus_expression(None) == ""
    expr = milvus_expression(
        VectorFilter(category='to"p', min_price=1, max_price=2.5, in_stock=False, colour="red")
    )
    assert expr == (
        'category == "to\\"p" and price >= 1.0 and price <= 2.5 and in_stock == false '
        'and colour == "red"'
    )


def test_faiss_persists_and_reloads(tmp_path: Path) -> None:
    ids, vecs, meta = _data(200)
    index = FaissIndex(tmp_path / "idx", DIM)
    index.upsert(ids, vecs, meta)
    before = index.search(vecs[:5], 10, VectorFilter(category="top", in_stock=True))
    index.flush()
    again = FaissIndex(tmp_path / "idx", DIM)
    assert again.count() == 200
    got = again.get_vectors(["p7", "nope"])
    assert list(got) == ["p7"]
    np.testing.assert_allclose(got["p7"], vecs[7] / np.linalg.norm(vecs[7]), atol=1e-6)
    assert again.search(vecs[:5], 10, VectorFilter(category="top", in_stock=True)) == before
    with pytest.raises(VectorIndexError, match="16-d vectors but 8-d"):
        FaissIndex(tmp_path / "idx", 8)


def test_faiss_crash_during_flush_keeps_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, vecs, meta = _data(100)
    index = FaissIndex(tmp_path / "idx", DIM)
    index.upsert(ids[:50], vecs[:50], meta[:50])
    index.flush()
    index.upsert(ids[50:], vecs[50:], meta[50:])
    real_write = faiss.write_index
    calls = {"n": 0}

    def dying_write(idx: faiss.Index, path: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard file of this flush
            Path(path).write_bytes(b"half a file")
            raise OSError("disk died")
        real_write(idx, path)

    monkeypatch.setattr(faiss, "write_index", dying_write)
    with pytest.raises(OSError, match="disk died"):
        index.flush()
    monkeypatch.setattr(faiss, "write_index", real_write)
    survivor = FaissIndex(tmp_path / "idx", DIM)
    assert survivor.count() == 50
    assert survivor.search(vecs[10:11], 1)[0][0].id == "p10"
    # The interrupted writer can finish its flush later.
    index._generation = survivor._generation
    index.flush()
    assert FaissIndex(tmp_path / "idx", DIM).count() == 100


def test_faiss_reader_picks_up_writer_and_stale_writer_refused(tmp_path: Path) -> None:
    ids, vecs, meta = _data(60)
    writer = FaissIndex(tmp_path / "idx", DIM)
    writer.upsert(ids[:30], vecs[:30], meta[:30])
    writer.flush()
    reader = FaissIndex(tmp_path / "idx", DIM, reload_check_s=0.0)
    other = FaissIndex(tmp_path / "idx", DIM)
    _, other_vecs, other_meta = _data(5, seed=9)
    other.upsert([f"x{i}" for i in range(5)], other_vecs, other_meta)  # unsaved
    writer.upsert(ids[30:], vecs[30:], meta[30:])
    writer.flush()
    assert reader.count() == 60
    assert reader.search(vecs[45:46], 1)[0][0].id == "p45"
    # `other` built on generation 1 and the writer saved generation 2 meanwhile:
    # refusing to overwrite beats silently losing the writer's rows.
    with pytest.raises(VectorIndexError, match="changed by another process"):
        other.flush()
    assert FaissIndex(tmp_path / "idx", DIM).count() == 60


def _clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim)).astype(np.float32)
    which = rng.integers(0, 50, n)
    vecs = centres[which] + rng.normal(scale=0.6, size=(n, dim)).astype(np.float32)
    return vecs.astype(np.float32), which % 3


def test_faiss_ivf_shards_keep_recall(tmp_path: Path) -> None:
    dim = 32
    vecs, cat = _clustered(12_000, dim)
    ids = [f"v{i}" for i in range(len(vecs))]
    meta = [{"category": CATS[c], "price": float(i % 100)} for i, c in enumerate(cat)]
    index = FaissIndex(tmp_path / "idx", dim, ivf_threshold=2_000)
    index.upsert(ids, vecs, meta)
    kinds = {name: s.kind for name, s in index._shards.items()}
    assert kinds == {"top": "ivf", "pants": "ivf", "outerwear": "ivf"}
    assert all(s.nprobe < s.index.nlist for s in index._shards.values())
    rng = np.random.default_rng(3)
    queries = vecs[rng.choice(len(vecs), 50, replace=False)] + rng.normal(
        scale=0.3, size=(50, dim)
    ).astype(np.float32)
    for f in (VectorFilter(), VectorFilter(category="pants"), VectorFilter(max_price=30.0)):
        got = index.search(queries, 10, f)
        found = 0
        for q, row in zip(queries, got, strict=True):
            want = {ids[i] for i in _brute(vecs, meta_full(meta), q, 10, f)}
            found += len(want & {h.id for h in row})
        assert found / (10 * len(queries)) >= 0.95, f
    # Flush + reload keep IVF shards and their nprobe.
    index.flush()
    again = FaissIndex(tmp_path / "idx", dim)
    assert {n: (s.kind, s.nprobe) for n, s in again._shards.items()} == {
        n: (s.kind, s.nprobe) for n, s in index._shards.items()
    }
    # Upsert into and delete from an IVF shard.
    again.upsert(["v0"], -vecs[:1], [{"category": "pants"}])
    assert again.search(-vecs[:1], 1, VectorFilter(category="pants"))[0][0].id == "v0"
    assert again.delete(["v0", "v1"]) == 2
    assert again.count() == len(vecs) - 2


def meta_full(meta: list[dict]) -> list[dict]:
    return [{"in_stock": True, "colour": None, **m} for m in meta]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ix: ix.upsert(["a"], np.ones((1, 3)), [{}]), "shape"),
        (lambda ix: ix.upsert(["a"], np.full((1, DIM), np.nan), [{}]), "NaN"),
        (lambda ix: ix.upsert(["a"], np.zeros((1, DIM)), [{}]), "all-zero"),
        (lambda ix: ix.upsert(["a", "a"], np.ones((2, DIM)), [{}, {}]), "duplicate"),
        (lambda ix: ix.upsert(["a"], np.ones((2, DIM)), [{}]), "differ in length"),
        (lambda ix: ix.upsert([""], np.ones((1, DIM)), [{}]), "non-empty"),
        (lambda ix: ix.search(np.ones((1, DIM)), 0), "k must be positive"),
    ],
)
def test_faiss_rejects_bad_input(call, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    index = FaissIndex(tmp_path / "idx", DIM)
    with pytest.raises(VectorIndexError, match=message):
        call(index)
    assert index.count() == 0


def test_open_index_uris(tmp_path: Path) -> None:
    assert isinstance(open_index(f"faiss://{tmp_path / 'a'}", 4), FaissIndex)
    assert isinstance(open_index(str(tmp_path / "b"), 4), FaissIndex)
    with pytest.raises(VectorIndexError, match="unknown vector store"):
        open_index("redis://localhost", 4)
    with pytest.raises(VectorIndexError, match=r"\.db"):
        MilvusIndex(f"milvus-lite://{tmp_path / 'x.sqlite'}", 4)


def test_empty_index_and_hit_type(tmp_path: Path) -> None:
    index = FaissIndex(tmp_path / "idx", DIM)
    assert index.search(np.ones((2, DIM)), 5) == [[], []]
    ids, vecs, meta = _data(3)
    index.upsert(ids, vecs, meta)
    row = index.search(vecs[:1], 10)[0]
    assert len(row) == 3 and isinstance(row[0], Hit)
    manifest = tmp_path / "idx" / "manifest.json"
    assert not manifest.exists()
    index.flush()
    assert json.loads(manifest.read_text())["dim"] == DIM
