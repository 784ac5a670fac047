"""From a parsed photo to shoppable items: one cut-out per product.

A label map says which pixels are "footwear", not how many products there are. The rules:

* ``footwear`` and ``legwear`` (taxonomy.PAIRED_CLASSES) come in pairs: all their parts
  form ONE item (two shoes are one product);
* for other classes, big parts far apart are separate items (a bag in each hand is two
  bags), big parts close together are one item (a top split by a bag strap);
* small fragments join the nearest item of their class when close to it, and are dropped
  otherwise (parser specks).

"Big" means at least ``min_area_frac`` of the photo; "close" means a gap (between the
pixels) no wider than the square root of the bigger part's area, about its width. A person
wears one top and one pair of trousers, so body garments (``BODY_CLASSES``) use a looser
gap: twice the square root of the class's whole area, which keeps the two sleeves of a
shirt under a pinafore together (CCP photo 0054) while two people stay apart.
Fragments always use the tight gap.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from candidfashion.colours import Colour, dominant_colours
from candidfashion.taxonomy import CLASS_COLOURS, CLASS_ID, ITEM_CLASSES, PAIRED_CLASSES

if TYPE_CHECKING:
    from candidfashion.config import Settings

log = logging.getLogger(__name__)

#: Gap (in units of sqrt(area) of the bigger part) up to which parts are one item.
GAP_FACTOR = 1.0
#: Garments one person wears one of; their gap is relative to the class's whole area.
BODY_CLASSES: frozenset[str] = frozenset({"top", "outerwear", "dress", "skirt", "pants", "shorts"})
BODY_GAP_FACTOR = 2.0
#: A part of a paired class counts as a main part from this share of min_area (one shoe
#: is half the product).
PAIRED_PART_SHARE = 0.25


class ItemError(ValueError):
    """Inputs to item extraction that don't fit together."""


@dataclass
class Item:
    index: int
    category: str
    score: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 exclusive, in photo pixels
    mask: np.ndarray = field(repr=False)  # bool, cropped to box
    cutout: np.ndarray = field(repr=False)  # RGBA uint8 cropped to box, alpha = mask
    colours: list[Colour]
    area: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; the mask as COCO uncompressed RLE relative to the box."""
        return {
            "index": self.index,
            "category": self.category,
            "score": round(float(self.score), 4),
            "box": [int(v) for v in self.box],
            "area": int(self.area),
            "colours": [
                {
                    "name": c.name,
                    "hex": c.hex,
                    "lab": [round(v, 2) for v in c.lab],
                    "fraction": round(c.fraction, 4),
                }
                for c in self.colours
            ],
            "mask": rle_encode(self.mask),
        }


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise ItemError(f"not an uncompressed RLE mask: {err}") from err
    if counts.sum() != h * w or (counts < 0).any():
        raise ItemError(f"RLE counts sum to {counts.sum()}, expected {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


@dataclass
class _Part:
    label: int  # connected-component id
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 exclusive


def _parts(mask: np.ndarray) -> tuple[np.ndarray, list[_Part]]:
    n, cc, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    parts = [
        _Part(
            i,
            int(stats[i, cv2.CC_STAT_AREA]),
            (
                int(stats[i, cv2.CC_STAT_LEFT]),
                int(stats[i, cv2.CC_STAT_TOP]),
                int(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH]),
                int(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT]),
            ),
        )
        for i in range(1, n)
    ]
    return cc, parts


def _gap(dist_to: np.ndarray, cc: np.ndarray, part: _Part) -> float:
    """Smallest distance from ``part``'s pixels to the region ``dist_to`` was computed for."""
    x0, y0, x1, y1 = part.box
    window = cc[y0:y1, x0:x1] == part.label
    return float(dist_to[y0:y1, x0:x1][window].min())


def _distance_to(region: np.ndarray) -> np.ndarray:
    # Distance of every pixel to the nearest pixel of ``region`` (zero inside it).
    return cv2.distanceTransform((~region).view(np.uint8), cv2.DIST_L2, 3)


def _group(mask: np.ndarray, min_area: float, category: str) -> list[np.ndarray]:
    """Split one class's mask into item masks following the module's rules."""
    cc, parts = _parts(mask)
    if not parts:
        return []
    paired = category in PAIRED_CLASSES
    body_gap = BODY_GAP_FACTOR * math.sqrt(sum(p.area for p in parts))

    def max_gap(area: float) -> float:
        return body_gap if category in BODY_CLASSES else GAP_FACTOR * math.sqrt(area)

    main_area = min_area * PAIRED_PART_SHARE if paired else min_area
    mains = sorted((p for p in parts if p.area >= main_area), key=lambda p: -p.area)
    fragments = [p for p in parts if p.area < main_area]
    if not mains:
        return []

    # Union-find over the main parts: close ones (or any, for pairs) join.
    parent = list(range(len(mains)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if paired:
        parent = [0] * len(mains)
    elif len(mains) > 1:
        for i, a in enumerate(mains):
            dist_a = _distance_to(cc == a.label)
            for j in range(i + 1, len(mains)):
                b = mains[j]
                if _gap(dist_a, cc, b) <= max_gap(max(a.area, b.area)):
                    parent[find(j)] = find(i)

    groups: dict[int, list[_Part]] = {}
    for i, p in enumerate(mains):
        groups.setdefault(find(i), []).append(p)
    masks = [np.isin(cc, [p.label for p in members]) for members in groups.values()]
    areas = [sum(p.area for p in members) for members in groups.values()]

    if fragments:
        dists = [_distance_to(m) for m in masks]
        extra: list[list[int]] = [[] for _ in masks]
        for frag in fragments:
            gaps = [_gap(d, cc, frag) for d in dists]
            best = int(np.argmin(gaps))
            # Fragments attach only when close: a speck across the photo is noise.
            if gaps[best] <= GAP_FACTOR * math.sqrt(areas[best]):
                extra[best].append(frag.label)
        for k, labels in enumerate(extra):
            if labels:
                masks[k] |= np.isin(cc, labels)
    return [m for m in masks if m.sum() >= min_area]


def _check_inputs(
    image_rgb: np.ndarray, label_map: np.ndarray, confidence: np.ndarray | None
) -> None:
    if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8:
        raise ItemError("image must be a uint8 numpy array")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ItemError(f"image must be HxWx3 RGB, got shape {image_rgb.shape}")
    if not isinstance(label_map, np.ndarray) or label_map.ndim != 2:
        raise ItemError("label map must be a 2-D array of taxonomy ids")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ItemError(f"label map must hold integer class ids, got {label_map.dtype}")
    if label_map.shape != image_rgb.shape[:2]:
        raise ItemError(
            f"label map is {label_map.shape[1]}x{label_map.shape[0]} but the image is "
            f"{image_rgb.shape[1]}x{image_rgb.shape[0]}"
        )
    if confidence is not None and (
        not isinstance(confidence, np.ndarray) or confidence.shape != label_map.shape
    ):
        raise ItemError("confidence must be an array the same size as the label map")


def extract_items(
    image_rgb: np.ndarray,
    label_map: np.ndarray,
    confidence: np.ndarray | None = None,
    *,
    min_area_frac: float = 0.002,
) -> list[Item]:
    """The shoppable items in a parsed photo, in taxonomy order, then largest first.

    ``label_map`` holds taxonomy ids (other values, such as 255 = ignore, count as
    background); ``confidence`` is the parser's per-pixel probability of its label.
    """
    _check_inputs(image_rgb, label_map, confidence)
    if not 0.0 <= min_area_frac < 1.0:
        raise ItemError(f"min_area_frac must be in [0, 1), got {min_area_frac}")
    h, w = label_map.shape
    min_area = max(1.0, min_area_frac * h * w)
    # (category, item mask inside its class's bounding box, that box's x0, y0)
    found: list[tuple[str, np.ndarray, int, int]] = []
    for category in ITEM_CLASSES:
        mask = label_map == CLASS_ID[category]
        if mask.sum() < min_area:
            continue
        # Group inside the class's bounding box: connected components and distance
        # transforms then cost the class's area, not the photo's.
        bx, by, bw, bh = cv2.boundingRect(mask.view(np.uint8))
        groups = _group(mask[by : by + bh, bx : bx + bw], min_area, category)
        groups.sort(key=lambda m: -int(m.sum()))
        found.extend((category, m, bx, by) for m in groups)

    items = []
    for index, (category, group, bx, by) in enumerate(found):
        gx, gy, gw, gh = cv2.boundingRect(group.view(np.uint8))
        mask = group[gy : gy + gh, gx : gx + gw]
        x0, y0 = bx + gx, by + gy
        x1, y1 = x0 + gw, y0 + gh
        crop = image_rgb[y0:y1, x0:x1]
        cutout = np.full((y1 - y0, x1 - x0, 4), 255, dtype=np.uint8)
        cutout[mask, :3] = crop[mask]  # outside the item: transparent white
        cutout[..., 3] = np.where(mask, 255, 0)
        score = 1.0 if confidence is None else float(confidence[y0:y1, x0:x1][mask].mean())
        items.append(
            Item(
                index=index,
                category=category,
                score=score,
                box=(x0, y0, x1, y1),
                mask=mask,
                cutout=cutout,
                colours=dominant_colours(crop[mask]),
                area=int(mask.sum()),
            )
        )
    return items


def _full_mask(item: Item, shape: tuple[int, int]) -> np.ndarray:
    full = np.zeros(shape, dtype=np.uint8)
    x0, y0, x1, y1 = item.box
    full[y0:y1, x0:x1] = item.mask
    return full


def render_overlay(
    image_rgb: np.ndarray, items: list[Item], highlight: int | None = None
) -> np.ndarray:
    """The photo with each item's outline and category drawn in its class colour.

    With ``highlight`` (an item index), the rest of the photo is dimmed and that item's
    outline drawn thicker, so one item stands out.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ItemError("overlay needs an HxWx3 uint8 RGB image")
    h, w = image_rgb.shape[:2]
    canvas = image_rgb.copy()
    thickness = max(2, round(min(h, w) / 250))
    font_scale = max(0.4, min(h, w) / 900)
    if highlight is not None:
        chosen = [it for it in items if it.index == highlight]
        if not chosen:
            raise ItemError(f"no item with index {highlight}")
        keep = _full_mask(chosen[0], (h, w)).astype(bool)
        dimmed = (canvas.astype(np.float32) * 0.35 + 255 * 0.15).astype(np.uint8)
        canvas = np.where(keep[..., None], canvas, dimmed)
    for item in items:
        colour = tuple(int(c) for c in CLASS_COLOURS[CLASS_ID[item.category]])
        contours, _ = cv2.findContours(
            _full_mask(item, (h, w)), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        t = thickness * 2 if item.index == highlight else thickness
        cv2.drawContours(canvas, contours, -1, colour, t, lineType=cv2.LINE_AA)
    placed: list[tuple[int, int, int, int]] = []  # label boxes drawn so far
    for item in items:
        colour = tuple(int(c) for c in CLASS_COLOURS[CLASS_ID[item.category]])
        # Text in black or white, whichever reads better on the label's colour.
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
        text = item.category
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        x0, y0 = item.box[0], item.box[1]
        x0 = min(max(0, x0), max(0, w - tw - 6))
        y0 = max(th + base + 4, y0)
        # Items often share a corner (a top under a jacket): stack their labels instead.
        while (
            any(
                x0 < px1 and px0 < x0 + tw + 6 and y0 - th - base - 4 < py1 and py0 < y0
                for px0, py0, px1, py1 in placed
            )
            and y0 + th + base + 4 <= h
        ):
            y0 += th + base + 4
        placed.append((x0, y0 - th - base - 4, x0 + tw + 6, y0))
        cv2.rectangle(canvas, (x0, y0 - th - base - 4), (x0 + tw + 6, y0), colour, cv2.FILLED)
        cv2.putText(
            canvas,
            text,
            (x0 + 3, y0 - base - 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            ink,
            1,
            cv2.LINE_AA,
        )
    return canvas


_CUTOUT_NAME = re.compile(r"^item_\d+_[a-z]+\.png$")


def write_parse_outputs(
    photo: Path, out_dir: Path, model_source: str, settings: Settings
) -> list[Item]:
    """Parse ``photo`` and write ``items.json``, ``overlay.png`` and one RGBA PNG per item.

    Cut-outs left in ``out_dir`` by an earlier run (``item_<i>_<category>.png``) are removed
    so the folder always matches its ``items.json``; nothing else there is touched.
    """
    from PIL import Image

    from candidfashion.imageio import load_image, sha256_bytes
    from candidfashion.parse import Parser

    photo = Path(photo)
    image = load_image(photo, max_pixels=settings.max_image_pixels)
    parser = Parser(model_source, threads=settings.threads, cache_dir=settings.data_dir / "models")
    labels, confidence = parser.parse_with_confidence(image)
    items = extract_items(image, labels, confidence)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():
        if _CUTOUT_NAME.match(old.name):
            old.unlink()
    files = []
    for item in items:
        name = f"item_{item.index}_{item.category}.png"
        Image.fromarray(item.cutout, mode="RGBA").save(out_dir / name)
        files.append(name)
    Image.fromarray(render_overlay(image, items)).save(out_dir / "overlay.png")
    record = {
        "photo": str(photo),
        "photo_sha256": sha256_bytes(photo.read_bytes()),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "model": {"source": model_source, "sha256": parser.sha256},
        "items": [dict(it.to_json(), cutout=f) for it, f in zip(items, files, strict=True)],
    }
    (out_dir / "items.json").write_text(json.dumps(record, indent=2))
    log.info("parsed %s: %d items -> %s", photo, len(items), out_dir)
    return items
