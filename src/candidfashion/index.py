"""Vector stores for product embeddings: FAISS on local disk (default) or Milvus.

Every store keeps L2-normalised float32 vectors and ranks by inner product, so a hit's score is
the cosine similarity. Each vector carries the metadata the search filters on: category,
price, in_stock and colour.

``open_index("faiss://DIR", dim)`` is the embedded default; ``milvus-lite://FILE.db`` runs
Milvus Lite in-process and ``http(s)://host:19530`` talks to a Milvus server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

# faiss logs which CPU build it picked at INFO on every import: noise in CLI output.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

import faiss as _faiss  # noqa: E402

log = logging.getLogger(__name__)

# The SWIG type stubs lack keyword arguments and subclass attributes used below.
faiss: Any = _faiss


class IndexError_(ValueError):
    """A bad request to a vector index (wrong dimension, bad URI, corrupt files, ...)."""


# Public name without shadowing the builtin inside this module.
VectorIndexError = IndexError_


@dataclass
class VectorFilter:
    """Conditions a hit must meet; ``None`` means no condition."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool | None = None
    colour: str | None = None

    def is_empty(self) -> bool:
        return (
            self.category is None
            and self.min_price is None
            and self.max_price is None
            and self.in_stock is None
            and self.colour is None
        )


@dataclass
class Hit:
    """A search result: product id and cosine similarity (higher is better)."""

    id: str
    score: float


@runtime_checkable
class VectorIndex(Protocol):
    dim: int

    def upsert(self, ids: list[str], vectors: np.ndarray, metadata: list[dict]) -> None: ...

    def delete(self, ids: Sequence[str]) -> int: ...

    def search(
        self, vectors: np.ndarray, k: int, filters: VectorFilter | None = None
    ) -> list[list[Hit]]: ...

    def count(self) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def normalise_rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Validate a (N, dim) batch and return an L2-normalised float32 C-contiguous copy."""
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise IndexError_(f"expected vectors of shape (N, {dim}), got {tuple(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise IndexError_("vectors contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise IndexError_("cannot index or search with an all-zero vector")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def _check_batch(ids: Sequence[str], n_vectors: int, metadata: Sequence[dict]) -> None:
    if len(ids) != n_vectors or len(metadata) != n_vectors:
        raise IndexError_(
            f"ids ({len(ids)}), vectors ({n_vectors}) and metadata ({len(metadata)}) "
            "differ in length"
        )
    for i in ids:
        if not isinstance(i, str) or not i:
            raise IndexError_(f"ids must be non-empty strings, got {i!r}")
    if len(set(ids)) != len(ids):
        raise IndexError_("duplicate ids in one upsert batch")


def _remove(index: faiss.Index, labels: list[int]) -> int:
    # IDSelectorArray is the one selector IVF's hash-table direct map can remove with.
    arr = np.ascontiguousarray(labels, dtype=np.int64)
    return int(index.remove_ids(faiss.IDSelectorArray(arr)))


def _merge_topk(
    scores: list[np.ndarray], labels: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (Q, k) results into the overall (Q, k) best by score."""
    if len(scores) == 1:
        return scores[0], labels[0]
    s = np.concatenate(scores, axis=1)
    lab = np.concatenate(labels, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(lab, order, axis=1)


# --------------------------------------------------------------------------------------
# FAISS


_MANIFEST = "manifest.json"
_FORMAT_VERSION = 1
_NO_CODE = -1


@dataclass
class _Shard:
    """The sub-index holding one category's vectors (faiss ids are our int64 labels)."""

    index: faiss.Index
    kind: str  # "flat" or "ivf"
    nprobe: int = 1
    trained_on: int = 0  # vectors the IVF quantizer was trained on
    file: str | None = None  # file it was last saved to (None: never saved)
    dirty: bool = True


class FaissIndex:
    """An embedded FAISS vector store persisted in a folder.

    Layout: one FAISS sub-index per category (so a category filter searches only that
    category's vectors), numpy arrays of per-vector metadata indexed by an int64 label, and a
    string-id -> label map. A sub-index is exact (``IndexFlatIP``) up to ``ivf_threshold``
    vectors and an IVF index trained on its own vectors above that, with ``nprobe`` tuned on a
    sample so recall@10 against exact search stays above ``target_recall``.

    ``flush()`` writes changed files under new names, then atomically replaces
    ``manifest.json``: a crash at any point leaves the previous complete state readable.
    One process writes at a time (a lock file guards flush); readers pick up a newer
    manifest automatically on their next search.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        dim: int,
        *,
        ivf_threshold: int = 20_000,
        target_recall: float = 0.97,
        reload_check_s: float = 1.0,
    ) -> None:
        if dim <= 0:
            raise IndexError_(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.path = Path(directory)
        self.ivf_threshold = int(ivf_threshold)
        self.target_recall = float(target_recall)
        self._reload_check_s = reload_check_s
        self._lock = threading.RLock()
        self._reset()
        self._manifest_stat: tuple[int, int] | None = None
        self._last_check = 0.0
        if (self.path / _MANIFEST).exists():
            self._load()

    # ---- state -------------------------------------------------------------------------

    def _reset(self) -> None:
        self._shards: dict[str, _Shard] = {}
        self._categories: list[str] = []  # code -> name ("" = no category)
        self._colours: list[str] = []
        self._cat_code: dict[str, int] = {}
        self._colour_code: dict[str, int] = {}
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._free: list[int] = []
        self._next_label = 0
        cap = 1024
        self._cat = np.full(cap, _NO_CODE, dtype=np.int16)
        self._price = np.full(cap, np.nan, dtype=np.float32)
        self._stock = np.zeros(cap, dtype=np.int8)
        self._colour = np.full(cap, _NO_CODE, dtype=np.int16)
        self._generation = 0
        self._meta_dirty = False

    def _grow(self, needed: int) -> None:
        cap = len(self._cat)
        if needed <= cap:
            return
        new = max(needed, cap * 2)

        def extend(a: np.ndarray, fill: float) -> np.ndarray:
            out = np.full(new, fill, dtype=a.dtype)
            out[:cap] = a
            return out

        self._cat = extend(self._cat, _NO_CODE)
        self._price = extend(self._price, np.nan)
        self._stock = extend(self._stock, 0)
        self._colour = extend(self._colour, _NO_CODE)

    def _code(self, table: list[str], codes: dict[str, int], name: str) -> int:
        code = codes.get(name)
        if code is None:
            if len(table) >= np.iinfo(np.int16).max:
                raise IndexError_("too many distinct category/colour values")
            code = len(table)
            table.append(name)
            codes[name] = code
        return code

    # ---- writes ------------------------------------------------------------------------

    def upsert(self, ids: list[str], vectors: np.ndarray, metadata: list[dict]) -> None:
        """Insert or replace vectors by product id (an existing id keeps its label)."""
        vecs = normalise_rows(vectors, self.dim)
        _check_batch(ids, len(vecs), metadata)
        with self._lock:
            self._check_not_stale()
            removals: dict[str, list[int]] = {}
            adds: dict[str, list[int]] = {}
            labels = np.empty(len(ids), dtype=np.int64)
            for row, (pid, meta) in enumerate(zip(ids, metadata, strict=True)):
                label = self._label_of.get(pid)
                if label is None:
                    label = self._free.pop() if self._free else self._next_label
                    if label == self._next_label:
                        self._next_label += 1
                        self._grow(self._next_label)
                    self._label_of[pid] = label
                    self._id_of[label] = pid
                else:
                    old = self._categories[self._cat[label]]
                    removals.setdefault(old, []).append(label)
                category = meta.get("category") or ""
                cat = self._code(self._categories, self._cat_code, str(category))
                self._cat[label] = cat
                price = meta.get("price")
                self._price[label] = np.nan if price is None else float(price)
                self._stock[label] = 1 if meta.get("in_stock", True) else 0
                colour = meta.get("colour")
                self._colour[label] = (
                    _NO_CODE
                    if not colour
                    else self._code(self._colours, self._colour_code, str(colour))
                )
                labels[row] = label
                adds.setdefault(self._categories[cat], []).append(row)
            for cat_name, labs in removals.items():
                shard = self._shards[cat_name]
                _remove(shard.index, labs)
                shard.dirty = True
            for cat_name, rows in adds.items():
                if cat_name not in self._shards:
                    self._shards[cat_name] = self._new_flat()
                shard = self._shards[cat_name]
                rows_arr = np.asarray(rows)
                shard.index.add_with_ids(vecs[rows_arr], labels[rows_arr])
                shard.dirty = True
                self._maybe_rebuild(cat_name)
            self._meta_dirty = True

    def delete(self, ids: Sequence[str]) -> int:
        """Remove vectors by id; returns how many existed."""
        with self._lock:
            self._check_not_stale()
            removals: dict[str, list[int]] = {}
            for pid in dict.fromkeys(ids):
                label = self._label_of.pop(pid, None)
                if label is None:
                    continue
                del self._id_of[label]
                removals.setdefault(self._categories[self._cat[label]], []).append(label)
                self._cat[label] = _NO_CODE
                self._colour[label] = _NO_CODE
                self._price[label] = np.nan
                self._free.append(label)
            removed = 0
            for cat_name, labs in removals.items():
                shard = self._shards[cat_name]
                removed += _remove(shard.index, labs)
                shard.dirty = True
            if removals:
                self._meta_dirty = True
            return int(removed)

    def _new_flat(self) -> _Shard:
        return _Shard(index=faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim)), kind="flat")

    def _maybe_rebuild(self, cat_name: str) -> None:
        """Switch a grown flat shard to IVF, or retrain an IVF shard that grew 4x."""
        shard = self._shards[cat_name]
        n = shard.index.ntotal
        grown_flat = shard.kind == "flat" and n > self.ivf_threshold
        outgrown_ivf = shard.kind == "ivf" and n > 4 * max(shard.trained_on, 1)
        if grown_flat or outgrown_ivf:
            self._shards[cat_name] = self._build_ivf(*self._shard_contents(shard))

    def _shard_contents(self, shard: _Shard) -> tuple[np.ndarray, np.ndarray]:
        """All (labels, vectors) stored in a shard."""
        index = shard.index
        if shard.kind == "flat":
            labels = faiss.vector_to_array(index.id_map).astype(np.int64)
            vecs = index.index.reconstruct_n(0, index.ntotal)
            return labels, np.ascontiguousarray(vecs, dtype=np.float32)
        ivf = faiss.extract_index_ivf(index)
        invlists = ivf.invlists
        all_labels, all_vecs = [], []
        for lst in range(ivf.nlist):
            size = invlists.list_size(lst)
            if size == 0:
                continue
            ids_ptr = invlists.get_ids(lst)
            codes_ptr = invlists.get_codes(lst)
            ids = faiss.rev_swig_ptr(ids_ptr, size).copy()
            codes = faiss.rev_swig_ptr(codes_ptr, size * invlists.code_size).copy()
            invlists.release_ids(lst, ids_ptr)
            invlists.release_codes(lst, codes_ptr)
            all_labels.append(ids.astype(np.int64))
            all_vecs.append(codes.view(np.float32).reshape(size, self.dim))
        if not all_labels:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        return np.concatenate(all_labels), np.ascontiguousarray(np.concatenate(all_vecs))

    def _build_ivf(self, labels: np.ndarray, vecs: np.ndarray) -> _Shard:
        """Train an IVF-Flat index on a shard's own vectors and tune nprobe for recall."""
        n = len(vecs)
        nlist = int(min(max(16, round(math.sqrt(n))), 8192, max(1, n // 39)))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        n_train = min(n, nlist * 40)
        train = vecs[rng.choice(n, n_train, replace=False)] if n_train < n else vecs
        index.cp.niter = 12
        index.train(np.ascontiguousarray(train))
        # A hash-table direct map keeps remove_ids working and allows reconstruct by label.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.add_with_ids(vecs, labels)
        nprobe = self._tune_nprobe(index, labels, vecs, rng)
        log.info("built IVF shard: %d vectors, nlist=%d, nprobe=%d", n, nlist, nprobe)
        return _Shard(index=index, kind="ivf", nprobe=nprobe, trained_on=n)

    def _tune_nprobe(
        self,
        index: faiss.IndexIVFFlat,
        labels: np.ndarray,
        vecs: np.ndarray,
        rng: np.random.Generator,
    ) -> int:
        """Smallest power-of-two nprobe whose recall@10 vs exact reaches the target.

        Queries are stored vectors plus noise, so they fall between items the way a real
        query embedding does rather than landing exactly on one.
        """
        n = len(vecs)
        nq = min(200, n)
        q = vecs[rng.choice(n, nq, replace=False)].copy()
        q += rng.normal(0.0, 0.5 / math.sqrt(self.dim), q.shape).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        k = min(10, n)
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(vecs)
        _, truth_rows = exact.search(q, k)
        truth = labels[truth_rows]
        nprobe = 1
        while nprobe < index.nlist:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            _, got = index.search(q, k, params=params)
            hits = sum(len(set(t) & set(g)) for t, g in zip(truth, got, strict=True))
            if hits / truth.size >= self.target_recall:
                break
            nprobe *= 2
        # Headroom: filtered searches see fewer candidates per list than the tuning did.
        return int(min(index.nlist, nprobe * 2))

    # ---- search ------------------------------------------------------------------------

    def _mask(self, f: VectorFilter) -> np.ndarray | None:
        """Boolean mask over labels for the non-category conditions (None: no condition)."""
        n = self._next_label
        mask: np.ndarray | None = None

        def both(m: np.ndarray) -> None:
            nonlocal mask
            mask = m if mask is None else (mask & m)

        if f.min_price is not None:
            both(self._price[:n] >= f.min_price)  # NaN (no price) compares False
        if f.max_price is not None:
            both(self._price[:n] <= f.max_price)
        if f.in_stock is not None:
            both(self._stock[:n] == (1 if f.in_stock else 0))
        if f.colour is not None:
            code = self._colour_code.get(f.colour)
            if code is None:
                return np.zeros(n, dtype=bool)
            both(self._colour[:n] == code)
        return mask

    def search(
        self, vectors: np.ndarray, k: int, filters: VectorFilter | None = None
    ) -> list[list[Hit]]:
        """Top-k hits per query row, best first; fewer when fewer vectors match."""
        if k <= 0:
            raise IndexError_(f"k must be positive, got {k}")
        queries = normalise_rows(vectors, self.dim)
        self.reload_if_changed()
        f = filters or VectorFilter()
        with self._lock:
            if f.category is not None:
                shard_names = [f.category] if f.category in self._shards else []
            else:
                shard_names = list(self._shards)
            mask = self._mask(f)
            results_s: list[np.ndarray] = []
            results_l: list[np.ndarray] = []
            bitmap = None
            if mask is not None:
                if not mask.any():
                    shard_names = []
                bitmap = np.packbits(mask, bitorder="little")
            for name in shard_names:
                shard = self._shards[name]
                if shard.index.ntotal == 0:
                    continue
                s, lab = self._search_shard(name, shard, queries, k, mask, bitmap)
                results_s.append(s)
                results_l.append(lab)
            if not results_s:
                return [[] for _ in range(len(queries))]
            scores, labels = _merge_topk(results_s, results_l, k)
            out: list[list[Hit]] = []
            for srow, lrow in zip(scores, labels, strict=True):
                hits = [
                    Hit(id=self._id_of[int(lab)], score=float(sc))
                    for sc, lab in zip(srow, lrow, strict=True)
                    if lab >= 0 and int(lab) in self._id_of
                ]
                out.append(hits)
            return out

    def _search_shard(
        self,
        name: str,
        shard: _Shard,
        queries: np.ndarray,
        k: int,
        mask: np.ndarray | None,
        bitmap: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, shard.index.ntotal)
        sel = None
        if bitmap is not None:
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))  # type: ignore[arg-type]
        if shard.kind == "flat":
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
            s, lab = shard.index.search(queries, kk, params=params)
        else:
            nprobe = shard.nprobe
            if mask is not None:
                # A selective filter leaves fewer candidates per list: probe more lists.
                labs = self._shard_label_count(name, mask)
                frac = max(labs / max(shard.index.ntotal, 1), 1e-6)
                nprobe = int(min(shard.index.nlist, math.ceil(nprobe / frac)))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
            s, lab = shard.index.search(queries, kk, params=params)
        if kk < k:
            pad = k - kk
            s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
            lab = np.pad(lab, ((0, 0), (0, pad)), constant_values=-1)
        s = np.where(lab < 0, -np.inf, s)
        return s, lab

    def _shard_label_count(self, name: str, mask: np.ndarray) -> int:
        code = self._cat_code[name]
        n = len(mask)
        return int(np.count_nonzero(mask & (self._cat[:n] == code)))

    def count(self) -> int:
        self.reload_if_changed()
        with self._lock:
            return len(self._label_of)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._label_of)

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored (normalised) vector of each id that exists."""
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for pid in ids:
                label = self._label_of.get(pid)
                if label is None:
                    continue
                shard = self._shards[self._categories[self._cat[label]]]
                out[pid] = np.asarray(shard.index.reconstruct(int(label)), dtype=np.float32)
        return out

    def category_counts(self) -> dict[str, int]:
        with self._lock:
            return {name or "": int(s.index.ntotal) for name, s in self._shards.items()}

    # ---- persistence -------------------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _disk_generation(self) -> int:
        try:
            return int(json.loads((self.path / _MANIFEST).read_text())["generation"])
        except FileNotFoundError:
            return 0

    def _check_not_stale(self) -> None:
        if self._meta_dirty:
            return
        # Nothing unsaved yet: adopt whatever another process saved since we loaded.
        if (self.path / _MANIFEST).exists() and self._disk_generation() != self._generation:
            self._load()

    def flush(self) -> None:
        """Persist all changes atomically (no-op when nothing changed)."""
        with self._lock:
            if not self._meta_dirty and not any(s.dirty for s in self._shards.values()):
                return
            with self._file_lock():
                on_disk = self._disk_generation()
                if on_disk != self._generation:
                    raise IndexError_(
                        f"{self.path} was changed by another process since it was opened "
                        f"(generation {on_disk}, ours {self._generation}); reopen and retry"
                    )
                gen = self._generation + 1
                for i, shard in enumerate(self._shards.values()):
                    if shard.dirty or shard.file is None:
                        fname = f"shard-{gen}-{i}.faiss"
                        self._write_atomic(fname, lambda p, s=shard: faiss.write_index(s.index, p))
                        shard.file = fname
                n = self._next_label
                labels = np.fromiter(self._id_of.keys(), dtype=np.int64, count=len(self._id_of))
                id_strs = np.array([self._id_of[int(x)] for x in labels], dtype=np.str_)
                meta_name = f"meta-{gen}.npz"
                self._write_atomic(
                    meta_name,
                    lambda p: _save_npz(
                        p,
                        cat=self._cat[:n],
                        price=self._price[:n],
                        stock=self._stock[:n],
                        colour=self._colour[:n],
                        labels=labels,
                        ids=id_strs,
                        free=np.asarray(self._free, dtype=np.int64),
                    ),
                )
                manifest = {
                    "format": _FORMAT_VERSION,
                    "dim": self.dim,
                    "generation": gen,
                    "next_label": n,
                    "categories": self._categories,
                    "colours": self._colours,
                    "meta": meta_name,
                    "shards": {
                        name: {
                            "file": s.file,
                            "kind": s.kind,
                            "nprobe": s.nprobe,
                            "trained_on": s.trained_on,
                        }
                        for name, s in self._shards.items()
                    },
                }
                self._write_atomic(
                    _MANIFEST, lambda p: Path(p).write_text(json.dumps(manifest, indent=1))
                )
                self._generation = gen
                for s in self._shards.values():
                    s.dirty = False
                self._meta_dirty = False
                self._manifest_stat = self._stat_manifest()
                self._remove_unreferenced(manifest)

    def _write_atomic(self, name: str, write: Any) -> None:
        tmp = self.path / f".{name}.tmp"
        write(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / name)

    def _remove_unreferenced(self, manifest: dict) -> None:
        keep = {_MANIFEST, manifest["meta"], ".lock"} | {
            s["file"] for s in manifest["shards"].values()
        }
        for p in self.path.iterdir():
            if p.name not in keep and (
                p.name.startswith(("shard-", "meta-")) or p.name.endswith(".tmp")
            ):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _stat_manifest(self) -> tuple[int, int] | None:
        try:
            st = (self.path / _MANIFEST).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _load(self) -> None:
        manifest_path = self.path / _MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise IndexError_(f"cannot read {manifest_path}: {err}") from err
        if manifest.get("format") != _FORMAT_VERSION:
            raise IndexError_(f"{manifest_path}: unsupported format {manifest.get('format')}")
        if int(manifest["dim"]) != self.dim:
            raise IndexError_(
                f"{self.path} holds {manifest['dim']}-d vectors but {self.dim}-d were requested; "
                "use a new index folder (or rebuild the catalog) after changing the embedder"
            )
        self._reset()
        meta = np.load(self.path / manifest["meta"], allow_pickle=False)
        n = int(manifest["next_label"])
        self._next_label = n
        self._grow(max(n, 1))
        self._cat[:n] = meta["cat"]
        self._price[:n] = meta["price"]
        self._stock[:n] = meta["stock"]
        self._colour[:n] = meta["colour"]
        labels = meta["labels"].tolist()
        ids = meta["ids"].tolist()
        self._id_of = dict(zip(labels, ids, strict=True))
        self._label_of = dict(zip(ids, labels, strict=True))
        self._free = meta["free"].tolist()
        self._categories = list(manifest["categories"])
        self._colours = list(manifest["colours"])
        self._cat_code = {c: i for i, c in enumerate(self._categories)}
        self._colour_code = {c: i for i, c in enumerate(self._colours)}
        for name, info in manifest["shards"].items():
            index = faiss.read_index(str(self.path / info["file"]))
            self._shards[name] = _Shard(
                index=index,
                kind=info["kind"],
                nprobe=int(info["nprobe"]),
                trained_on=int(info["trained_on"]),
                file=info["file"],
                dirty=False,
            )
        self._generation = int(manifest["generation"])
        self._meta_dirty = False
        self._manifest_stat = self._stat_manifest()

    def reload_if_changed(self) -> bool:
        """Load a newer state saved by another process (checked at most once a second)."""
        now = time.monotonic()
        if now - self._last_check < self._reload_check_s:
            return False
        self._last_check = now
        with self._lock:
            if self._meta_dirty:
                return False
            stat = self._stat_manifest()
            if stat is None or stat == self._manifest_stat:
                return False
            self._load()
            return True

    def close(self) -> None:
        self.flush()


def _save_npz(path: str, **arrays: np.ndarray) -> None:
    # np.savez appends ".npz" to names without it; write through a file handle instead.
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Milvus


def _milvus_literal(value: str) -> str:
    # JSON string escaping is what Milvus' expression parser accepts for string literals.
    return json.dumps(value, ensure_ascii=False)


def milvus_expression(f: VectorFilter | None) -> str:
    """A Milvus boolean expression for a filter ("" when there is no condition)."""
    if f is None:
        return ""
    parts: list[str] = []
    if f.category is not None:
        parts.append(f"category == {_milvus_literal(f.category)}")
    if f.min_price is not None:
        parts.append(f"price >= {float(f.min_price)!r}")
    if f.max_price is not None:
        parts.append(f"price <= {float(f.max_price)!r}")
    if f.in_stock is not None:
        parts.append(f"in_stock == {'true' if f.in_stock else 'false'}")
    if f.colour is not None:
        parts.append(f"colour == {_milvus_literal(f.colour)}")
    return " and ".join(parts)


class MilvusIndex:
    """Product vectors in a Milvus collection (Milvus Lite file or a Milvus server).

    Same interface and semantics as :class:`FaissIndex`: cosine scores via inner product on
    normalised vectors, filters as a Milvus boolean expression evaluated server-side.
    """

    def __init__(
        self,
        uri: str,
        dim: int,
        *,
        collection: str = "candidfashion_products",
        token: str | None = None,
    ) -> None:
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError as err:
            raise IndexError_(
                f"{uri} needs pymilvus (and milvus-lite for local files): "
                "pip install 'candidfashion[scale]'"
            ) from err
        self.dim = int(dim)
        self.uri = uri
        self.collection = collection
        self._lite = uri.startswith("milvus-lite://")
        if self._lite:
            path = Path(uri.removeprefix("milvus-lite://"))
            if path.suffix != ".db":
                raise IndexError_(f"a Milvus Lite file must end in .db, got {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._client = MilvusClient(str(path))
        else:
            token = token if token is not None else os.environ.get("CANDIDFASHION_MILVUS_TOKEN", "")
            self._client = MilvusClient(uri=uri, token=token)
        self._lock = threading.RLock()
        if self._client.has_collection(collection):
            info = self._client.describe_collection(collection)
            for field in info.get("fields", []):
                if field.get("name") == "vector":
                    have = int(field.get("params", {}).get("dim", self.dim))
                    if have != self.dim:
                        raise IndexError_(
                            f"Milvus collection {collection!r} holds {have}-d vectors but "
                            f"{self.dim}-d were requested"
                        )
            # A collection from an earlier process starts "released": load it to search.
            self._client.load_collection(collection)
        else:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            schema.add_field("category", DataType.VARCHAR, max_length=64, nullable=True)
            schema.add_field("price", DataType.FLOAT, nullable=True)
            schema.add_field("in_stock", DataType.BOOL)
            schema.add_field("colour", DataType.VARCHAR, max_length=32, nullable=True)
            params = self._client.prepare_index_params()
            # Milvus Lite only does exact search; a server picks its own ANN index.
            params.add_index(
                "vector", index_type="FLAT" if self._lite else "AUTOINDEX", metric_type="IP"
            )
            self._client.create_collection(collection, schema=schema, index_params=params)

    def upsert(self, ids: list[str], vectors: np.ndarray, metadata: list[dict]) -> None:
        vecs = normalise_rows(vectors, self.dim)
        _check_batch(ids, len(vecs), metadata)
        rows = []
        for pid, vec, meta in zip(ids, vecs, metadata, strict=True):
            if len(pid) > 512:
                raise IndexError_(f"id longer than 512 characters: {pid[:40]}...")
            price = meta.get("price")
            rows.append(
                {
                    "id": pid,
                    "vector": vec.tolist(),
                    "category": meta.get("category") or None,
                    "price": None if price is None else float(price),
                    "in_stock": bool(meta.get("in_stock", True)),
                    "colour": meta.get("colour") or None,
                }
            )
        with self._lock:
            self._client.upsert(self.collection, rows)

    def _existing(self, ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 1000):
            chunk = unique[start : start + 1000]
            rows = self._client.get(self.collection, ids=chunk, output_fields=["id"])
            found.extend(r["id"] for r in rows)
        return found

    def get_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored (normalised) vector of each id that exists."""
        out: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(ids))
        with self._lock:
            for start in range(0, len(unique), 1000):
                rows = self._client.get(
                    self.collection, ids=unique[start : start + 1000], output_fields=["vector"]
                )
                for r in rows:
                    out[str(r["id"])] = np.asarray(r["vector"], dtype=np.float32)
        return out

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            existing = self._existing(ids)
            if existing:
                self._client.delete(self.collection, ids=existing)
            return len(existing)

    def search(
        self, vectors: np.ndarray, k: int, filters: VectorFilter | None = None
    ) -> list[list[Hit]]:
        if k <= 0:
            raise IndexError_(f"k must be positive, got {k}")
        queries = normalise_rows(vectors, self.dim)
        with self._lock:
            res = self._client.search(
                self.collection,
                data=queries.tolist(),
                limit=k,
                filter=milvus_expression(filters),
                output_fields=["id"],
                search_params={"metric_type": "IP"},
            )
        return [[Hit(id=str(h["id"]), score=float(h["distance"])) for h in row] for row in res]

    def count(self) -> int:
        with self._lock:
            rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def flush(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            # Milvus Lite persists on every write; a server seals segments on flush.
            if not self._lite:
                self._client.flush(self.collection)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._client.close()


def open_index(uri: str, dim: int) -> VectorIndex:
    """Open (creating if needed) the vector store named by a URI.

    ``faiss://DIR`` (or a bare folder path), ``milvus-lite://FILE.db``, ``http(s)://host:port``.
    """
    if uri.startswith("faiss://"):
        return FaissIndex(uri.removeprefix("faiss://"), dim)
    if uri.startswith("milvus-lite://") or uri.startswith(("http://", "https://")):
        return MilvusIndex(uri, dim)
    if "://" in uri:
        raise IndexError_(
            f"unknown vector store {uri!r}; use faiss://DIR, milvus-lite://FILE.db or "
            "http(s)://host:19530"
        )
    return FaissIndex(uri, dim)
