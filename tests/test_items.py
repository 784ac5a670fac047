from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from candidfashion.items import (
    Item,
    ItemError,
    extract_items,
    render_overlay,
    rle_decode,
    rle_encode,
    write_parse_outputs,
)
from candidfashion.taxonomy import CLASS_COLOURS, CLASS_ID

PARSER_ONNX = Path(__file__).resolve().parents[1] / "models" / "parser.onnx"
H, W = 400, 300


def _blank() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((H, W, 3), 235, dtype=np.uint8)
    labels = np.zeros((H, W), dtype=np.uint8)
    return image, labels


def _paint(image, labels, cls, x0, y0, x1, y1, rgb=(40, 40, 40)) -> None:
    labels[y0:y1, x0:x1] = CLASS_ID[cls]
    image[y0:y1, x0:x1] = rgb


def _by_category(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for it in items:
        out.setdefault(it.category, []).append(it)
    return out


def test_two_shoes_are_one_footwear_item() -> None:
    image, labels = _blank()
    _paint(image, labels, "footwear", 40, 360, 90, 390)
    _paint(image, labels, "footwear", 200, 360, 250, 390)  # far apart, still one pair
    items = extract_items(image, labels)
    assert [it.category for it in items] == ["footwear"]
    shoe = items[0]
    assert shoe.box == (40, 360, 250, 390)
    assert shoe.area == 2 * 50 * 30
    assert shoe.mask.shape == (30, 210) and shoe.mask.sum() == shoe.area


def test_two_small_shoes_still_make_an_item() -> None:
    # Each shoe is under the item threshold, the pair together is over it.
    image, labels = _blank()
    _paint(image, labels, "footwear", 40, 370, 57, 385)  # 255 px
    _paint(image, labels, "footwear", 200, 370, 217, 385)
    min_area_frac = 400 / (H * W)
    items = extract_items(image, labels, min_area_frac=min_area_frac)
    assert [it.category for it in items] == ["footwear"]
    assert items[0].area == 510


def test_two_distant_bags_are_two_items_and_close_parts_one() -> None:
    image, labels = _blank()
    _paint(image, labels, "bag", 10, 150, 60, 210)  # left hand
    _paint(image, labels, "bag", 240, 160, 290, 220)  # right hand, 180 px away
    # A top split in two by a 4 px strap: one item.
    _paint(image, labels, "top", 80, 60, 140, 160, rgb=(200, 25, 35))
    _paint(image, labels, "top", 144, 60, 210, 160, rgb=(200, 25, 35))
    items = extract_items(image, labels)
    cats = _by_category(items)
    assert len(cats["bag"]) == 2
    assert sorted(b.box for b in cats["bag"]) == [(10, 150, 60, 210), (240, 160, 290, 220)]
    assert len(cats["top"]) == 1 and cats["top"][0].box == (80, 60, 210, 160)
    assert [it.index for it in items] == list(range(len(items)))


def test_specks_are_dropped_and_nearby_fragments_merged() -> None:
    image, labels = _blank()
    _paint(image, labels, "pants", 100, 200, 200, 340)
    _paint(image, labels, "pants", 205, 300, 212, 307)  # fragment next to the pants
    _paint(image, labels, "pants", 10, 10, 16, 16)  # speck far away
    _paint(image, labels, "hat", 250, 10, 255, 15)  # a lone tiny hat: not an item
    items = extract_items(image, labels)
    assert [it.category for it in items] == ["pants"]
    assert items[0].box == (100, 200, 212, 340)
    assert items[0].area == 100 * 140 + 49


def test_scores_colours_and_cutout() -> None:
    image, labels = _blank()
    _paint(image, labels, "dress", 50, 50, 150, 250, rgb=(200, 25, 35))
    confidence = np.full((H, W), 0.2, dtype=np.float32)
    confidence[50:150, 50:150] = 0.9
    (item,) = extract_items(image, labels, confidence)
    assert item.score == pytest.approx((0.9 + 0.2) / 2, abs=1e-6)
    assert item.colours[0].name == "red" and item.colours[0].fraction > 0.95
    assert item.cutout.shape == (200, 100, 4)
    assert (item.cutout[..., 3] == 255).all()
    np.testing.assert_array_equal(item.cutout[..., :3], image[50:250, 50:150])
    assert extract_items(image, labels)[0].score == 1.0


def test_cutout_alpha_is_the_mask() -> None:
    image, labels = _blank()
    cv2.circle(labels, (150, 200), 60, CLASS_ID["skirt"], -1)
    image[labels > 0] = (20, 30, 60)
    (item,) = extract_items(image, labels)
    np.testing.assert_array_equal(item.cutout[..., 3] == 255, item.mask)
    assert (item.cutout[~item.mask][:, :3] == 255).all()  # transparent white outside
    assert item.colours[0].name == "navy"


def test_non_items_and_ignore_label_are_ignored() -> None:
    image, labels = _blank()
    _paint(image, labels, "skin", 0, 0, 100, 100)
    _paint(image, labels, "hair", 100, 0, 200, 100)
    labels[200:300, 0:100] = 255  # ignore
    assert extract_items(image, labels) == []


def test_json_rle_round_trip() -> None:
    image, labels = _blank()
    cv2.ellipse(labels, (150, 200), (70, 40), 30, 0, 360, CLASS_ID["bag"], -1)
    (item,) = extract_items(image, labels)
    data = json.loads(json.dumps(item.to_json()))
    assert data["category"] == "bag" and data["box"] == list(item.box)
    assert data["mask"]["size"] == list(item.mask.shape)
    np.testing.assert_array_equal(rle_decode(data["mask"]), item.mask)
    # A mask starting with a set pixel starts with a zero-length run (COCO convention).
    full = np.ones((2, 3), dtype=bool)
    assert rle_encode(full) == {"size": [2, 3], "counts": [0, 6]}
    with pytest.raises(ItemError):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def test_bad_inputs_raise_item_error() -> None:
    image, labels = _blank()
    with pytest.raises(ItemError, match="label map is"):
        extract_items(image, labels[:-1])
    with pytest.raises(ItemError, match="HxWx3"):
        extract_items(image[..., 0], labels)
    with pytest.raises(ItemError, match="integer"):
        extract_items(image, labels.astype(np.float32))
    with pytest.raises(ItemError, match="confidence"):
        extract_items(image, labels, np.ones((3, 3), np.float32))
    with pytest.raises(ItemError, match="min_area_frac"):
        extract_items(image, labels, min_area_frac=1.5)


def test_overlay_draws_outlines_in_class_colour() -> None:
    image, labels = _blank()
    _paint(image, labels, "pants", 100, 200, 200, 340)
    _paint(image, labels, "bag", 10, 150, 60, 210)
    items = extract_items(image, labels)
    overlay = render_overlay(image, items)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    pants_colour = np.array(CLASS_COLOURS[CLASS_ID["pants"]])
    # The right edge of the pants (far from the label box) is drawn in the pants colour.
    edge = overlay[300, 197:201].astype(int)
    assert (np.abs(edge - pants_colour).sum(axis=1) < 30).any()
    assert not np.array_equal(overlay, image)
    pants_index = next(it.index for it in items if it.category == "pants")
    lit = render_overlay(image, items, highlight=pants_index)
    # Outside the highlighted item the photo is dimmed.
    assert lit[5, 150].mean() < image[5, 150].mean() - 50
    with pytest.raises(ItemError):
        render_overlay(image, items, highlight=99)


def _parser_or_skip() -> Path:
    if not PARSER_ONNX.is_file():
        pytest.skip(f"no parser model at {PARSER_ONNX}")
    return PARSER_ONNX


@pytest.mark.slow
def test_real_parser_on_a_ccp_photo(tmp_path: Path, ccp_dir: Path, settings) -> None:
    model = _parser_or_skip()
    photo = ccp_dir / "photos" / "0001.jpg"
    out = tmp_path / "out"
    (out).mkdir()
    (out / "item_9_hat.png").write_bytes(b"stale")  # an earlier run's cut-out
    (out / "notes.txt").write_text("keep me")
    items = write_parse_outputs(photo, out, str(model), settings)
    assert items, "the parser found nothing in a full-body street photo"
    record = json.loads((out / "items.json").read_text())
    assert record["width"] == 550 and record["height"] == 832
    assert len(record["items"]) == len(items)
    for it, rec in zip(items, record["items"], strict=True):
        png = cv2.imread(str(out / rec["cutout"]), cv2.IMREAD_UNCHANGED)
        assert png.shape == (*it.mask.shape, 4)
        assert 0.0 < it.score <= 1.0
    assert (out / "overlay.png").is_file()
    assert not (out / "item_9_hat.png").exists() or any(
        it.index == 9 and it.category == "hat" for it in items
    )
    assert (out / "notes.txt").read_text() == "keep me"
    # Street photos show clothes: at least one garment from the core classes.
    assert {it.category for it in items} & {"top", "outerwear", "dress", "pants", "skirt"}


def test_sleeves_either_side_of_a_pinafore_are_one_top() -> None:
    # A shirt under a pinafore shows as two sleeves 110 px apart: one top, not two.
    image, labels = _blank()
    _paint(image, labels, "top", 40, 80, 80, 200, rgb=(245, 245, 245))
    _paint(image, labels, "dress", 80, 80, 190, 300)
    _paint(image, labels, "top", 190, 80, 230, 200, rgb=(245, 245, 245))
    cats = _by_category(extract_items(image, labels))
    assert len(cats["top"]) == 1 and cats["top"][0].box == (40, 80, 230, 200)
    assert cats["top"][0].colours[0].name == "white"
    # The same layout for bags is two bags.
    labels[labels == CLASS_ID["top"]] = CLASS_ID["bag"]
    assert len(_by_category(extract_items(image, labels))["bag"]) == 2
