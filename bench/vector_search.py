"""Vector search benchmark: build time, load time, latency and recall on clustered vectors.

Vectors are a gaussian mixture around ``--centres`` centres (each centre belongs to one of
``--categories`` categories), which is how product embeddings look: tight groups of similar
items, not uniform noise. Queries are fresh draws from the same mixture. Recall@10 is measured
against exact (brute force) search over the same vectors, with and without a category filter.

    .venv/bin/python bench/vector_search.py --sizes 100000
    .venv/bin/python bench/vector_search.py --sizes 100000,1000000 --dim 512
    .venv/bin/python bench/vector_search.py --sizes 100000 --milvus
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from candidfashion.index import FaissIndex, MilvusIndex, VectorFilter, VectorIndex


def clustered(
    n: int, dim: int, centres: int, categories: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, category per vector, centre vectors, centre categories)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    c_cat = np.arange(centres) % categories
    vecs = np.empty((n, dim), dtype=np.float32)
    which = rng.integers(0, centres, n)
    step = 100_000
    for s in range(0, n, step):
        w = which[s : s + step]
        vecs[s : s + len(w)] = c[w] + rng.normal(scale=1.0, size=(len(w), dim)).astype(np.float32)
    return vecs, c_cat[which], c, c_cat


def queries_from(
    c: np.ndarray, c_cat: np.ndarray, nq: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(c), nq)
    q = c[which] + rng.normal(scale=1.0, size=(nq, c.shape[1])).astype(np.float32)
    return q.astype(np.float32), c_cat[which]


def exact_topk(
    vecs: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """Exact top-k row numbers by cosine (over `rows` only when given)."""
    base = vecs if rows is None else vecs[rows]
    index = faiss.IndexFlatIP(vecs.shape[1])
    normed = base / np.linalg.norm(base, axis=1, keepdims=True)
    index.add(np.ascontiguousarray(normed, dtype=np.float32))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    _, got = index.search(np.ascontiguousarray(qn, dtype=np.float32), k)
    return got if rows is None else rows[got]


def time_queries(
    index: VectorIndex, q: np.ndarray, k: int, filters: list[VectorFilter | None]
) -> tuple[list[list[str]], float, float]:
    """One query at a time (as the API does); returns ids, p50 ms, p95 ms."""
    times, out = [], []
    index.search(q[:1], k, filters[0])  # warm-up
    for i in range(len(q)):
        t = time.perf_counter()
        hits = index.search(q[i : i + 1], k, filters[i])[0]
        times.append((time.perf_counter() - t) * 1000)
        out.append([h.id for h in hits])
    return out, float(np.percentile(times, 50)), float(np.percentile(times, 95))


def recall(got: list[list[str]], truth: np.ndarray, k: int) -> float:
    found = sum(len({f"v{r}" for r in t[:k]} & set(g[:k])) for g, t in zip(got, truth, strict=True))
    return found / (k * len(truth))


def bench_size(args: argparse.Namespace, n: int, backend: str) -> dict:
    vecs, cats, c, c_cat = clustered(n, args.dim, args.centres, args.categories, seed=0)
    q, q_cat = queries_from(c, c_cat, args.queries, seed=1)
    names = [f"cat{i}" for i in range(args.categories)]
    ids = [f"v{i}" for i in range(n)]
    meta = [{"category": names[k], "in_stock": True} for k in cats.tolist()]
    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    result: dict = {"backend": backend, "n": n, "dim": args.dim}
    try:
        t = time.perf_counter()
        index: VectorIndex
        if backend == "faiss":
            index = FaissIndex(workdir / "idx", args.dim)
        else:
            index = MilvusIndex(f"milvus-lite://{workdir / 'm.db'}", args.dim)
        step = 50_000 if backend == "milvus" else n
        for s in range(0, n, step):
            index.upsert(ids[s : s + step], vecs[s : s + step], meta[s : s + step])
        index.flush()
        result["build_s"] = round(time.perf_counter() - t, 2)
        if backend == "faiss":
            assert isinstance(index, FaissIndex)
            result["shards"] = {
                name: {"kind": s.kind, "n": s.index.ntotal, "nprobe": s.nprobe}
                for name, s in list(index._shards.items())[:2]
            }
            del index
            gc.collect()
            t = time.perf_counter()
            index = FaissIndex(workdir / "idx", args.dim)
            result["load_s"] = round(time.perf_counter() - t, 3)
            result["disk_mb"] = round(
                sum(p.stat().st_size for p in (workdir / "idx").iterdir()) / 2**20, 1
            )
        truth_all = exact_topk(vecs, q, args.k)
        got, p50, p95 = time_queries(index, q, args.k, [None] * len(q))
        result["unfiltered"] = {
            "p50_ms": round(p50, 2),
            "p95_ms": round(p95, 2),
            "recall@10": round(recall(got, truth_all, args.k), 4),
        }
        # Category-filtered: each query asks for its own centre's category.
        truth_cat = np.empty((len(q), args.k), dtype=np.int64)
        for ci in range(args.categories):
            sel = np.nonzero(q_cat == ci)[0]
            if len(sel):
                truth_cat[sel] = exact_topk(vecs, q[sel], args.k, rows=np.nonzero(cats == ci)[0])
        filters: list[VectorFilter | None] = [VectorFilter(category=names[ci]) for ci in q_cat]
        got, p50, p95 = time_queries(index, q, args.k, filters)
        result["category_filtered"] = {
            "p50_ms": round(p50, 2),
            "p95_ms": round(p95, 2),
            "recall@10": round(recall(got, truth_cat, args.k), 4),
        }
        index.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000", help="comma-separated catalog sizes")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument("--categories", type=int, default=10)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--milvus", action="store_true", help="also run Milvus Lite (100k or less)")
    ap.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: default)")
    ap.add_argument("--json", type=Path, help="also write results here")
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        res = bench_size(args, n, "faiss")
        print(json.dumps(res), flush=True)
        results.append(res)
        if args.milvus and n <= 100_000:
            res = bench_size(args, n, "milvus")
            print(json.dumps(res), flush=True)
            results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
