"""iMaterialist (Kaggle CSV + RLE) and COCO/Fashionpedia readers on fixtures in the real formats.

Expected masks are written by hand with numpy slices, and the run-length strings in the
fixtures are produced by a deliberately naive encoder here, so the readers are checked
against an independent implementation.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import stat
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from candidfashion.datasets import DatasetError, open_dataset
from candidfashion.datasets.coco import (
    FASHIONPEDIA_BASE_URL,
    FASHIONPEDIA_FILES,
    CocoDataset,
    download_fashionpedia,
    download_file,
    segmentation_to_mask,
)
from candidfashion.datasets.imaterialist import (
    DownloadError,
    IMaterialistDataset,
    download_imaterialist,
    extract_archive,
    rle_decode,
    rle_encode,
)
from candidfashion.taxonomy import CLASS_ID

# The 46 iMaterialist 2020 / Fashionpedia categories, in id order, with supercategories.
CATEGORIES = [
    ("shirt, blouse", "upperbody"),
    ("top, t-shirt, sweatshirt", "upperbody"),
    ("sweater", "upperbody"),
    ("cardigan", "upperbody"),
    ("jacket", "upperbody"),
    ("vest", "upperbody"),
    ("pants", "lowerbody"),
    ("shorts", "lowerbody"),
    ("skirt", "lowerbody"),
    ("coat", "wholebody"),
    ("dress", "wholebody"),
    ("jumpsuit", "wholebody"),
    ("cape", "wholebody"),
    ("glasses", "head"),
    ("hat", "head"),
    ("headband, head covering, hair accessory", "head"),
    ("tie", "neck"),
    ("glove", "arms and hands"),
    ("watch", "arms and hands"),
    ("belt", "waist"),
    ("leg warmer", "legs and feet"),
    ("tights, stockings", "legs and feet"),
    ("sock", "legs and feet"),
    ("shoe", "legs and feet"),
    ("bag, wallet", "others"),
    ("scarf", "others"),
    ("umbrella", "others"),
    ("hood", "garment parts"),
    ("collar", "garment parts"),
    ("lapel", "garment parts"),
    ("epaulette", "garment parts"),
    ("sleeve", "garment parts"),
    ("pocket", "garment parts"),
    ("neckline", "garment parts"),
    ("buckle", "closures"),
    ("zipper", "closures"),
    ("applique", "decorations"),
    ("bead", "decorations"),
    ("bow", "decorations"),
    ("flower", "decorations"),
    ("fringe", "decorations"),
    ("ribbon", "decorations"),
    ("rivet", "decorations"),
    ("ruffle", "decorations"),
    ("sequin", "decorations"),
    ("tassel", "decorations"),
]
CAT = {name: i for i, (name, _) in enumerate(CATEGORIES)}
H, W = 12, 10


def naive_rle(mask: np.ndarray) -> str:
    """Column-major, 1-indexed start/length pairs, one pixel at a time."""
    flat = [bool(mask[r, c]) for c in range(mask.shape[1]) for r in range(mask.shape[0])]
    pairs: list[int] = []
    for i, on in enumerate(flat):
        if on and (i == 0 or not flat[i - 1]):
            pairs += [i + 1, 1]
        elif on:
            pairs[-1] += 1
    return " ".join(map(str, pairs))


def naive_coco_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: alternating run lengths (zeros first), column-major."""
    flat = [int(mask[r, c]) for c in range(mask.shape[1]) for r in range(mask.shape[0])]
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return counts


def _box(top: int, left: int, bottom: int, right: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[top:bottom, left:right] = True
    return m


def _write_jpg(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (120, 90, 60)).save(path, "JPEG")


# --- RLE ----------------------------------------------------------------------------------


def test_rle_decode_known_string_is_column_major() -> None:
    # 3 rows x 4 columns; pixels counted down the columns from 1.
    m = rle_decode("2 2 7 3", 3, 4)
    expected = np.array(
        [[0, 0, 1, 0],
         [1, 0, 1, 0],
         [1, 0, 1, 0]], bool,
    )  # fmt: skip
    np.testing.assert_array_equal(m, expected)
    assert rle_encode(expected) == "2 2 7 3"
    assert not rle_decode("", 3, 4).any()
    assert rle_encode(np.zeros((3, 4), bool)) == ""
    assert rle_encode(np.ones((3, 4), bool)) == "1 12"


def test_rle_round_trip_random_masks() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (31, 17), (64, 48)]:
        for density in (0.05, 0.5, 0.95):
            mask = rng.random(shape) < density
            text = rle_encode(mask)
            assert text == naive_rle(mask)
            np.testing.assert_array_equal(rle_decode(text, *shape), mask)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "non-integer"),
        ("0 3", "start below 1"),
        ("10 5", "past the end"),
    ],
)
def test_rle_decode_rejects_bad_strings(text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        rle_decode(text, 3, 4)


# --- iMaterialist ---------------------------------------------------------------------------

DRESS = _box(1, 1, 11, 9)
BAG = _box(5, 6, 9, 10)  # overlaps the dress on columns 6-8
SLEEVE = _box(2, 1, 6, 3)  # a part inside the dress: must not change anything
BELT = _box(6, 1, 7, 9)  # smaller than the dress, on top of it
SHOE = _box(9, 2, 12, 5)


@pytest.fixture
def imat_dir(tmp_path: Path) -> Path:
    root = tmp_path / "imat"
    root.mkdir()
    labels = {
        "info": {"year": 2020, "version": "1.0"},
        "categories": [
            {"id": i, "name": n, "supercategory": s, "level": 2}
            for i, (n, s) in enumerate(CATEGORIES)
        ],
        "attributes": [{"id": 0, "name": "classic (t-shirt)", "supercategory": "nickname"}],
    }
    (root / "label_descriptions.json").write_text(json.dumps(labels))
    rows = [
        # The bag row comes first: paint order must not depend on row order.
        ("img_a", BAG, CAT["bag, wallet"], ""),
        ("img_a", SLEEVE, CAT["sleeve"], "115,136"),
        ("img_a", DRESS, CAT["dress"], "115,136,143,154"),
        ("img_a", BELT, CAT["belt"], "0"),
        ("img_b", SHOE, CAT["shoe"], ""),
        ("img_c_no_photo", SHOE, CAT["shoe"], ""),
        ("img_d_only_parts", SLEEVE, CAT["sleeve"], ""),
    ]
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width", "ClassId", "AttributesIds"])
        for image_id, mask, class_id, attrs in rows:
            writer.writerow([image_id, naive_rle(mask), H, W, class_id, attrs])
    for image_id in ("img_a", "img_b", "img_d_only_parts"):
        _write_jpg(root / "train" / f"{image_id}.jpg", H, W)
    return root


def test_imaterialist_masks_pixel_exact(imat_dir: Path) -> None:
    ds = IMaterialistDataset(imat_dir)
    assert ds.ids == ["img_a", "img_b"]
    assert len(ds) == 2
    image, mask = ds.load("img_a")
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    expected = np.full((H, W), 255, np.uint8)  # nothing covers it: ignore, not background
    expected[DRESS] = CLASS_ID["dress"]
    expected[BAG] = CLASS_ID["bag"]  # smaller than the dress: painted on top
    expected[BELT] = CLASS_ID["accessory"]
    np.testing.assert_array_equal(mask, expected)
    _, shoe = ds.load("img_b")
    expected_b = np.full((H, W), 255, np.uint8)
    expected_b[SHOE] = CLASS_ID["footwear"]
    np.testing.assert_array_equal(shoe, expected_b)


def test_imaterialist_unlabelled_as_background_and_open_dataset(imat_dir: Path) -> None:
    ds = IMaterialistDataset(imat_dir, unlabelled=0)
    _, mask = ds.load("img_b")
    assert set(np.unique(mask).tolist()) == {0, CLASS_ID["footwear"]}
    via_spec = open_dataset(f"imaterialist:{imat_dir}", ids=["img_b"])
    assert via_spec.ids == ["img_b"]
    np.testing.assert_array_equal(via_spec.load("img_b")[1][SHOE], CLASS_ID["footwear"])


def test_imaterialist_quoted_header_order_still_parses(imat_dir: Path) -> None:
    # Columns in another order force the general csv path.
    with open(imat_dir / "train.csv", newline="") as fh:
        src = list(csv.DictReader(fh))
    cols = ["ClassId", "AttributesIds", "Height", "Width", "EncodedPixels", "ImageId"]
    with open(imat_dir / "train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(src)
    _, mask = IMaterialistDataset(imat_dir).load("img_a")
    assert mask[7, 7] == CLASS_ID["bag"] and mask[6, 2] == CLASS_ID["accessory"]


def test_imaterialist_errors(imat_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train\.csv is missing"):
        IMaterialistDataset(tmp_path)
    with pytest.raises(DatasetError, match="ids not in"):
        IMaterialistDataset(imat_dir, ids=["img_a", "nope"])
    # A photo whose size disagrees with the CSV.
    _write_jpg(imat_dir / "train" / "img_b.jpg", H + 1, W)
    with pytest.raises(DatasetError, match="annotation is 10x12 but the photo is 10x13"):
        IMaterialistDataset(imat_dir).load("img_b")
    # A class id the label file does not know.
    with open(imat_dir / "train.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["img_b", "1 3", H, W, 99, ""])
    with pytest.raises(DatasetError, match="ClassId 99"):
        IMaterialistDataset(imat_dir)


def test_download_imaterialist_without_kaggle_cli(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="pip install kaggle"):
        download_imaterialist(tmp_path / "dl", kaggle="kaggle-cli-not-installed-here")
    assert not (tmp_path / "dl").exists()


def test_download_imaterialist_reports_cli_failure(tmp_path: Path) -> None:
    # The real CLI cannot reach Kaggle from a test; this executable fails the way it does
    # without credentials, to check the error is passed on with a hint.
    tool = tmp_path / "kaggle"
    tool.write_text("#!/bin/sh\necho '401 - Unauthorized' >&2\nexit 1\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(DownloadError, match=r"exit 1\): 401 - Unauthorized.*accepted"):
        download_imaterialist(tmp_path / "dl", kaggle=str(tool))


def test_extract_archive_refuses_escaping_members(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("train/a.jpg", b"x")
        zf.writestr("train.csv", "ImageId\n")
    extract_archive(good, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "a.jpg").read_bytes() == b"x"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    with pytest.raises(DownloadError, match="escapes"):
        extract_archive(bad, tmp_path / "out2")
    assert not (tmp_path / "evil.txt").exists()
    (tmp_path / "notzip.zip").write_bytes(b"hello")
    with pytest.raises(DownloadError, match="not a valid zip"):
        extract_archive(tmp_path / "notzip.zip", tmp_path / "out3")


# --- COCO / Fashionpedia ----------------------------------------------------------------------

POLY_DRESS = _box(1, 2, 11, 8)  # polygon x 2..8, y 1..11 covers columns 2-7, rows 1-10
RLE_BAG = _box(4, 5, 8, 10)  # compressed RLE
UNC_SHOE = _box(10, 0, 12, 4)  # uncompressed RLE


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    from pycocotools import mask as mask_utils

    root = tmp_path / "fp"
    images = root / "images"
    _write_jpg(images / "a.jpg", H, W)
    _write_jpg(images / "b.jpg", H, W)
    bag_rle = mask_utils.encode(np.asfortranarray(RLE_BAG.astype(np.uint8)))
    bag_rle["counts"] = bag_rle["counts"].decode("ascii")
    data = {
        "info": {"description": "test"},
        "images": [
            {"id": 7, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 8, "file_name": "b.jpg", "height": H, "width": W},
        ],
        "categories": [
            {"id": i, "name": n, "supercategory": s} for i, (n, s) in enumerate(CATEGORIES)
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": CAT["bag, wallet"], "segmentation": bag_rle,
             "iscrowd": 0, "area": 20, "bbox": [5, 4, 5, 4], "attribute_ids": []},
            {"id": 2, "image_id": 7, "category_id": CAT["dress"],
             "segmentation": [[2, 1, 8, 1, 8, 11, 2, 11]], "iscrowd": 0, "area": 60,
             "bbox": [2, 1, 6, 10], "attribute_ids": [115]},
            {"id": 3, "image_id": 7, "category_id": CAT["shoe"],
             "segmentation": {"size": [H, W], "counts": naive_coco_counts(UNC_SHOE)},
             "iscrowd": 1, "area": 8, "bbox": [0, 10, 4, 2], "attribute_ids": []},
            {"id": 4, "image_id": 7, "category_id": CAT["sleeve"],
             "segmentation": [[0, 0, 10, 0, 10, 12, 0, 12]], "iscrowd": 0, "area": 120,
             "bbox": [0, 0, 10, 12], "attribute_ids": []},
            {"id": 5, "image_id": 8, "category_id": CAT["pocket"],
             "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "iscrowd": 0, "area": 16,
             "bbox": [0, 0, 4, 4], "attribute_ids": []},
        ],
    }  # fmt: skip
    (root / "instances.json").write_text(json.dumps(data))
    return root


def test_coco_polygon_and_both_rle_kinds_pixel_exact(coco_dir: Path) -> None:
    ds = CocoDataset(coco_dir / "instances.json", coco_dir / "images")
    assert ds.ids == ["7"]  # image 8 has only a garment part
    image, mask = ds.load("7")
    assert image.shape == (H, W, 3)
    expected = np.full((H, W), 255, np.uint8)
    expected[POLY_DRESS] = CLASS_ID["dress"]
    expected[RLE_BAG] = CLASS_ID["bag"]
    expected[UNC_SHOE] = CLASS_ID["footwear"]
    np.testing.assert_array_equal(mask, expected)
    via_spec = open_dataset(f"coco:{coco_dir / 'instances.json'}:{coco_dir / 'images'}")
    np.testing.assert_array_equal(via_spec.load("7")[1], expected)


def test_coco_default_images_dir_is_the_json_folder(coco_dir: Path) -> None:
    (coco_dir / "images" / "a.jpg").rename(coco_dir / "a.jpg")
    ds = open_dataset(f"coco:{coco_dir / 'instances.json'}")
    assert ds.load("7")[0].shape == (H, W, 3)


def test_segmentation_to_mask_errors() -> None:
    with pytest.raises(DatasetError, match="does not match"):
        segmentation_to_mask({"size": [3, 3], "counts": [9]}, 4, 4)
    with pytest.raises(DatasetError, match="add up"):
        segmentation_to_mask({"size": [4, 4], "counts": [3, 2]}, 4, 4)
    with pytest.raises(DatasetError, match="x, y pairs"):
        segmentation_to_mask([[1, 2, 3]], 4, 4)
    with pytest.raises(DatasetError, match="polygon list or an RLE"):
        segmentation_to_mask("nonsense", 4, 4)
    assert not segmentation_to_mask([[1, 1, 2, 2]], 4, 4).any()  # two points: no area


def test_coco_reader_errors(coco_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        CocoDataset(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="not COCO instance annotations"):
        CocoDataset(tmp_path / "bad.json")
    data = json.loads((coco_dir / "instances.json").read_text())
    data["categories"].append({"id": 99, "name": "spacesuit", "supercategory": "x"})
    (tmp_path / "newcat.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="spacesuit"):
        CocoDataset(tmp_path / "newcat.json", coco_dir / "images")


# --- Fashionpedia download against a local server ---------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Liar(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 10, and hangs up."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler] | partial) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """A local copy of the Fashionpedia bucket layout with tiny files."""
    site = tmp_path / "site"
    (site / "annotations").mkdir(parents=True)
    (site / "images").mkdir()
    (site / "annotations" / "instances_attributes_val2020.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "JPEG")
    with zipfile.ZipFile(site / "images" / "val_test2020.zip", "w") as zf:
        zf.writestr("test/abc.jpg", buf.getvalue())
    yield from _serve(partial(_Quiet, directory=str(site)))


def test_download_fashionpedia_from_local_mirror(mirror: str, tmp_path: Path) -> None:
    dest = tmp_path / "fashionpedia"
    out = download_fashionpedia(dest, ["val_annotations", "val_test_images"], base_url=mirror)
    ann = dest / "instances_attributes_val2020.json"
    assert out == {"val_annotations": ann, "val_test_images": dest}
    assert json.loads(ann.read_text())["images"] == []
    assert (dest / "test" / "abc.jpg").stat().st_size > 0
    assert not (dest / "val_test2020.zip").exists()
    assert not list(dest.glob("*.part"))
    # A second run keeps the file that is already complete.
    before = ann.stat().st_mtime_ns
    download_fashionpedia(dest, ["val_annotations"], base_url=mirror)
    assert ann.stat().st_mtime_ns == before


def test_download_limits_and_errors(mirror: str, tmp_path: Path) -> None:
    url = mirror + FASHIONPEDIA_FILES["val_annotations"]
    with pytest.raises(DownloadError, match="over the 10 limit"):
        download_file(url, tmp_path / "x.json", max_bytes=10)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.json.part").exists()
    with pytest.raises(DownloadError, match="404"):
        download_file(mirror + "missing.json", tmp_path / "y.json", max_bytes=1000)
    with pytest.raises(DownloadError, match="only http"):
        download_file("file:///etc/passwd", tmp_path / "z", max_bytes=1000)
    with pytest.raises(DownloadError, match="unknown Fashionpedia parts"):
        download_fashionpedia(tmp_path, ["everything"], base_url=mirror)


def test_download_detects_a_cut_connection(tmp_path: Path) -> None:
    for base in _serve(_Liar):
        with pytest.raises(DownloadError):
            download_file(base + "file.json", tmp_path / "f.json", max_bytes=10_000, timeout=5)
    assert not (tmp_path / "f.json").exists()
    assert not (tmp_path / "f.json.part").exists()


def test_real_urls_are_the_cvdf_bucket() -> None:
    assert FASHIONPEDIA_BASE_URL == "https://s3.amazonaws.com/ifashionist-dataset/"
    assert FASHIONPEDIA_FILES["train_annotations"].endswith("instances_attributes_train2020.json")
