"""Ray Data ingestion gives the same products and vectors as the single-process path."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from candidfashion.catalog import CatalogDB, ingest
from candidfashion.config import Settings
from candidfashion.embed import Embedder
from candidfashion.index import FaissIndex
from candidfashion.ingest_ray import RayUnavailable, init_ray

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None, reason="Ray is not installed ([scale] extra)"
    ),
]


def test_ray_ingest_matches_local(settings: Settings, tmp_path: Path) -> None:
    import ray

    from test_catalog import EMBED_DIM, build_tiny_embedder, good_rows, write_csv

    model = build_tiny_embedder(tmp_path / "embedder.onnx")
    root = tmp_path / "shop"
    rows = good_rows(root, n=7)
    rows.append({"id": "bad", "title": "broken", "image": "img/broken.png"})
    (root / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    src = write_csv(root / "catalog.csv", rows)

    def run(data_dir: Path, ray_address: str | None) -> tuple[dict, dict, list]:
        s = Settings(data_dir=data_dir, embedder_model=str(model), threads=1)
        s.parser_model = str(tmp_path / "no-parser.onnx")
        report = ingest(
            src,
            s,
            embedder=Embedder(str(model), threads=1),
            ray_address=ray_address,
            batch_size=3,
            progress=False,
            parser=False,
        )
        with CatalogDB(s.resolved_catalog_db()) as db:
            products = {p.id: p for p in db.list(limit=100)}
        vectors = FaissIndex(data_dir / "index", EMBED_DIM).get_vectors(list(products))
        return products, vectors, [(e.line, e.message) for e in report.errors]

    local_products, local_vectors, local_errors = run(tmp_path / "local", None)
    start = time.perf_counter()
    try:
        init_ray("local")
    except RayUnavailable as err:
        # Only the start-up of Ray itself is excused (e.g. an overloaded machine).
        pytest.skip(f"Ray could not start here: {err}")
    try:
        ray_products, ray_vectors, ray_errors = run(tmp_path / "ray", "local")
    finally:
        ray.shutdown()
    print(f"ray ingest incl. start-up: {time.perf_counter() - start:.1f} s")
    assert sorted(ray_products) == sorted(local_products) == [f"p{i}" for i in range(7)]
    assert ray_errors == local_errors and ray_errors[0][0] == 9
    for pid, prod in local_products.items():
        other = ray_products[pid]
        # Same fields; the stored copy lives in each run's own data folder.
        assert other.model_copy(update={"image_path": prod.image_path}) == prod
        assert Path(other.image_path or "").parent == tmp_path / "ray" / "images"
        np.testing.assert_allclose(ray_vectors[pid], local_vectors[pid], atol=1e-5)
