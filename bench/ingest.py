"""Catalog ingestion throughput: images per second through load, normalise, colour, embed, write.

Generates ``--n`` product shots (``--size`` px, a garment-like shape in one of several colours
on a white backdrop, saved as JPEG), writes a CSV, and ingests it into a fresh data folder with
the shipped embedder (or ``--embedder``). Then ingests the same CSV again, which must report
every row unchanged without embedding anything.

    .venv/bin/python bench/ingest.py --n 200
    .venv/bin/python bench/ingest.py --n 200 --ray local
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from candidfashion.catalog import ingest
from candidfashion.config import Settings
from candidfashion.embed import Embedder

PALETTE = [
    (200, 20, 30), (20, 40, 200), (30, 160, 40), (15, 15, 15), (240, 220, 20),
    (120, 70, 30), (230, 230, 230), (250, 130, 170), (90, 90, 100), (20, 120, 130),
]  # fmt: skip
CATEGORIES = ["jeans", "jacket", "t-shirt", "dress", "skirt", "sneakers", "bag", "shorts"]


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.full((size, size, 3), 255, dtype=np.uint8)
        cx, cy = rng.uniform(0.35, 0.65, 2) * size
        rx, ry = rng.uniform(0.15, 0.35, 2) * size
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.int16)
        texture = rng.integers(-20, 20, (size, size, 3), dtype=np.int16)
        img[mask] = np.clip(colour + texture[mask], 0, 255).astype(np.uint8)
        path = folder / f"item{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        rows.append(
            {
                "id": f"item{i:05d}",
                "title": f"Generated product {i}",
                "price": f"{rng.uniform(5, 200):.2f}",
                "currency": "EUR",
                "image": path.name,
                "category": CATEGORIES[i % len(CATEGORIES)],
                "brand": "bench",
            }
        )
    return rows


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="number of product images")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    ap.add_argument("--embedder", default=None, help="embedder model (default: settings)")
    ap.add_argument("--ray", default=None, help="'local' or a Ray address")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cf-ingest-bench-"))
    try:
        shop = work / "shop"
        shop.mkdir()
        t = time.perf_counter()
        rows = make_images(shop, args.n, args.size)
        gen_s = time.perf_counter() - t
        src = shop / "catalog.csv"
        with open(src, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        settings = Settings(data_dir=work / "data", threads=args.threads)
        if args.embedder:
            settings.embedder_model = args.embedder
        embedder = Embedder.from_settings(settings)
        cpu0 = _cpu_s()
        first = ingest(
            src,
            settings,
            embedder=embedder,
            batch_size=args.batch_size,
            ray_address=args.ray,
            parser=False,
            progress=True,
        )
        cpu_s = _cpu_s() - cpu0
        second = ingest(src, settings, embedder=embedder, parser=False, progress=False)
        result = {
            "n": args.n,
            "size": args.size,
            "embedder": str(embedder.path),
            "dim": embedder.dim,
            "ray": args.ray,
            "generate_s": round(gen_s, 2),
            "ingest_s": round(first.seconds, 2),
            "images_per_s": round(first.images_per_s, 1),
            # CPU seconds of this process (all threads): on a shared machine, wall-clock
            # rate understates what 2 dedicated cores do; 2 / cpu_per_image_s bounds it.
            "cpu_s": round(cpu_s, 2),
            "cpu_ms_per_image": round(1000 * cpu_s / max(first.embedded, 1), 1),
            "load_avg_1m": round(os.getloadavg()[0], 1),
            "added": first.added,
            "errors": len(first.errors),
            "rerun_s": round(second.seconds, 2),
            "rerun_unchanged": second.unchanged,
            "rerun_embedded": second.embedded,
        }
        print(json.dumps(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
