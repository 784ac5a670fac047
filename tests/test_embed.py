"""The shipped embedder (models/embedder.onnx) through the serving code, no torch."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from candidfashion.embed import Embedder, EmbedError, prepare, trim_uniform_border
from candidfashion.parse import ModelSourceError, file_sha256

MODEL = Path(__file__).resolve().parents[1] / "models" / "embedder.onnx"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    if not MODEL.is_file():
        pytest.fail(f"the shipped embedder is missing: {MODEL}")
    return Embedder(str(MODEL), threads=1)


def _product(colour: tuple[int, int, int], shape: str = "shirt") -> np.ndarray:
    """A flat garment silhouette on a light grey studio background, 300x300."""
    img = np.full((300, 300, 3), 238, dtype=np.uint8)
    if shape == "shirt":
        pts = np.array([[90, 60], [210, 60], [260, 120], [225, 140], [210, 120], [210, 250],
                        [90, 250], [90, 120], [75, 140], [40, 120]])  # fmt: skip
    else:  # trousers
        pts = np.array([[110, 40], [190, 40], [200, 270], [160, 270], [150, 110], [140, 270],
                        [100, 270]])  # fmt: skip
    cv2.fillPoly(img, [pts.astype(np.int32)], colour)
    rng = np.random.default_rng(sum(colour))
    noise = rng.normal(0, 2, img.shape)  # sensor/JPEG noise, so trimming must tolerate it
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_model_metadata(embedder: Embedder) -> None:
    assert embedder.dim > 0
    assert embedder.sha256 == file_sha256(MODEL)
    assert embedder.metadata["candidfashion.kind"] == "embedder"
    assert embedder.input_size == int(embedder.metadata["candidfashion.input_size"].split("x")[0])


def test_unit_vectors_in_one_batch(embedder: Embedder) -> None:
    images = [
        _product((200, 30, 40)),
        _product((30, 40, 90), "trousers"),
        _product((240, 240, 240)),
    ]
    vecs = embedder.embed(images)
    assert vecs.shape == (3, embedder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Batching does not change the answer.
    alone = np.concatenate([embedder.embed([img]) for img in images])
    np.testing.assert_allclose(vecs, alone, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_similar_things_are_closer(embedder: Embedder) -> None:
    red_shirt, red_shirt_2 = _product((200, 30, 40)), _product((190, 35, 45))
    navy_trousers = _product((30, 40, 90), "trousers")
    a, b, c = embedder.embed([red_shirt, red_shirt_2, navy_trousers])
    assert _cos(a, b) > 0.9
    assert _cos(a, b) > _cos(a, c) + 0.1


def test_real_photos_cat_vs_coffee(embedder: Embedder) -> None:
    skdata = pytest.importorskip("skimage.data")
    cat, coffee = skdata.chelsea(), skdata.coffee()
    a, b, c = embedder.embed([cat, cat[:, ::-1].copy(), coffee])
    assert _cos(a, b) > _cos(a, c) + 0.2


def test_cutout_matches_the_product_shot(embedder: Embedder) -> None:
    """An RGBA cut-out of a garment embeds like the same garment's studio shot."""
    shot = _product((40, 110, 60))
    mask = (np.abs(shot.astype(int) - 238).max(axis=2) > 20).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    crop = shot[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    alpha = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] * 255
    cutout = np.dstack([crop, alpha]).astype(np.uint8)
    cutout[alpha == 0, :3] = 0  # hidden pixels must not matter: composited on white
    other = _product((200, 30, 40), "trousers")
    a, b, c = embedder.embed([shot, cutout, other])
    assert _cos(a, b) > 0.9
    assert _cos(a, b) > _cos(b, c)


def test_trim_uniform_border() -> None:
    shot = _product((30, 40, 90), "trousers")
    trimmed = trim_uniform_border(shot)
    # Trousers span x 100..200, y 40..270: trimmed to that plus a small margin.
    assert 230 <= trimmed.shape[0] <= 250 and 100 <= trimmed.shape[1] <= 115
    # The studio grey around the garment turns white; the garment keeps its colour.
    assert (trimmed[:3, :3] == 255).all()
    assert abs(int(trimmed[trimmed.shape[0] // 2 - 60, trimmed.shape[1] // 2, 2]) - 90) < 10
    kept = trim_uniform_border(shot, whiten=False)
    assert kept.shape == trimmed.shape and kept[:3, :3].max() < 250
    # A busy photo (street, texture) is left alone.
    busy = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    assert trim_uniform_border(busy).shape == busy.shape
    # Blank: nothing to crop to.
    blank = np.full((50, 50, 3), 255, np.uint8)
    assert trim_uniform_border(blank).shape == blank.shape


def test_prepare_letterboxes_on_white() -> None:
    tall = np.zeros((200, 50, 3), dtype=np.uint8)  # black bar, no border to trim
    tall[:, :, 0] = np.arange(50, dtype=np.uint8)[None, :] * 5
    square = prepare(tall, 64)
    assert square.shape == (64, 64, 3)
    assert (square[:, :20] == 255).all() and (square[:, -20:] == 255).all()
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[10:30, 10:20] = (0, 0, 0, 255)
    out = prepare(rgba, 64)
    assert out[32, 32].max() < 10  # the opaque part fills the height
    assert (out[:, :10] == 255).all()  # transparent surroundings are white


def test_bad_inputs(embedder: Embedder) -> None:
    good = _product((200, 30, 40))
    with pytest.raises(EmbedError, match="image 1: expected uint8"):
        embedder.embed([good, good.astype(np.float32)])
    with pytest.raises(EmbedError, match="HxWx3"):
        embedder.embed([np.zeros((10, 10, 5), np.uint8)])
    with pytest.raises(EmbedError, match="sequence"):
        embedder.embed(good)  # type: ignore[arg-type]
    with pytest.raises(EmbedError, match="numpy array"):
        embedder.embed(["photo.jpg"])  # type: ignore[list-item]
    grey = embedder.embed([np.full((20, 30), 90, np.uint8)])  # greyscale is accepted
    assert grey.shape == (1, embedder.dim)


def test_sources(tmp_path: Path, settings) -> None:
    assert Embedder(f"file://{MODEL}", threads=1).sha256 == file_sha256(MODEL)
    with pytest.raises(ModelSourceError, match="not found"):
        Embedder(str(tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelSourceError):
        Embedder(str(junk))
    settings.embedder_model = str(MODEL)
    assert Embedder.from_settings(settings).dim > 0
