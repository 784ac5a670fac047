"""Safe image loading: every refusal code, every colour mode, EXIF orientation.

All files are generated here, in their real on-disk formats.
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from candidfashion.imageio import (
    ImageError,
    composite_on_white,
    load_image,
    load_image_rgba,
    sha256_bytes,
)


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG written byte by byte, so tests control the header independently of the data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _png16_rgb(pixels: np.ndarray) -> bytes:
    """A real 16-bit-per-channel RGB PNG (Pillow cannot write these)."""
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    return _png(w, h, 16, 2, zlib.compress(rows))


def _rgb(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- refusals -----------------------------------------------------------------------------


def test_empty_bytes_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        load_image(b"")
    assert err.value.code == "empty"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_image(empty)
    assert err.value.code == "empty"
    assert "empty" in str(err.value)


def test_not_an_image() -> None:
    for data in (b"hello, this is a text file\n" * 10, b"%PDF-1.7\n" + b"0" * 100):
        with pytest.raises(ImageError) as err:
            load_image(data)
        assert err.value.code == "not_an_image"
        assert isinstance(err.value, ValueError)


def test_eps_is_refused_without_running_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n%%EOF\n"
    with pytest.raises(ImageError) as err:
        load_image(eps)
    assert err.value.code == "not_an_image"


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "nope.jpg")
    assert err.value.code == "not_found"
    assert "nope.jpg" in str(err.value)
    with pytest.raises(ImageError) as err:
        load_image(tmp_path)
    assert err.value.code == "not_an_image"


def test_too_many_bytes_for_bytes_path_and_stream(tmp_path: Path) -> None:
    data = _encode(Image.fromarray(_rgb(64, 64)), "PNG")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    limit = len(data) - 1
    for source in (data, path, str(path), io.BytesIO(data)):
        with pytest.raises(ImageError) as err:
            load_image(source, max_bytes=limit)
        assert err.value.code == "too_large"
    # Exactly at the limit is fine.
    assert load_image(io.BytesIO(data), max_bytes=len(data)).shape == (64, 64, 3)


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A valid 20000x20000 1-bit PNG, all zeros: ~50 kB on disk, 400 M pixels decoded."""
    width = height = 20_000
    row = b"\x00" + b"\x00" * (width // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    data = _png(width, height, 1, 0, idat)
    assert len(data) < 200_000
    return data


def test_pixel_bomb_is_refused_from_the_header(bomb_png: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        load_image(bomb_png, max_pixels=40_000_000)
    assert err.value.code == "too_many_pixels"
    assert "400,000,000 pixels" in str(err.value)
    # Even when the caller allows it, Pillow's own bomb guard stops it before decoding.
    with pytest.raises(ImageError) as err:
        load_image(bomb_png, max_pixels=10**10)
    assert err.value.code == "too_many_pixels"
    assert "400,000,000 pixels" in str(err.value)
    # Decoding 400 M pixels would take seconds and 400 MB; the header check takes ms.
    assert time.perf_counter() - start < 1.0


def test_pixel_check_happens_before_decoding() -> None:
    # The header says 3000x3000 but the pixel data is garbage: decoding it fails. So the
    # result code tells which check ran first.
    fake = _png(3000, 3000, 8, 0, b"this is not zlib data at all")
    with pytest.raises(ImageError) as err:
        load_image(fake, max_pixels=5_000_000)
    assert err.value.code == "too_many_pixels"
    with pytest.raises(ImageError) as err:
        load_image(fake, max_pixels=10_000_000)
    assert err.value.code == "truncated"


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_too_small(size: tuple[int, int]) -> None:
    data = _encode(Image.new("RGB", size, (10, 20, 30)), "PNG")
    with pytest.raises(ImageError) as err:
        load_image(data)
    assert err.value.code == "too_small"
    assert load_image(_encode(Image.new("RGB", (8, 8)), "PNG")).shape == (8, 8, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_rejected(fmt: str) -> None:
    data = _encode(Image.fromarray(_rgb(64, 64, seed=1)), fmt)
    assert load_image(data).shape == (64, 64, 3)
    for cut in (len(data) // 2, 40):
        with pytest.raises(ImageError) as err:
            load_image(data[:cut])
        assert err.value.code == "truncated", cut


def test_truncated_rejected_even_if_pillow_was_relaxed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _encode(Image.fromarray(_rgb(64, 64, seed=2)), "JPEG")
    with pytest.raises(ImageError) as err:
        load_image(data[: len(data) // 2])
    assert err.value.code == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


# --- sources and orientation --------------------------------------------------------------


def test_sources_bytes_path_stream(tmp_path: Path) -> None:
    pixels = _rgb()
    data = _encode(Image.fromarray(pixels), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for source in (data, bytearray(data), memoryview(data), path, str(path), io.BytesIO(data)):
        out = load_image(source)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, pixels)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(load_image(fh), pixels)


def test_exif_orientation_6_is_applied() -> None:
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6 means "rotate
    # 90 degrees clockwise to display", which puts the stored left edge at the top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.shape == (40, 20, 3)
    top, bottom = out[:18].reshape(-1, 3).mean(0), out[22:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50, top
    assert bottom[2] > 200 and bottom[0] < 50, bottom
    # Without the tag the same pixels stay landscape.
    assert load_image(_encode(im, "JPEG")).shape == (20, 40, 3)


# --- colour modes -------------------------------------------------------------------------


def test_grayscale_l_and_1() -> None:
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    out = load_image(_encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    bilevel = Image.fromarray(gray > 100).convert("1")
    out1 = load_image(_encode(bilevel, "PNG"))
    np.testing.assert_array_equal(out1[..., 0], np.where(gray > 100, 255, 0))


def test_la_is_composited_on_white() -> None:
    la = np.zeros((10, 10, 2), np.uint8)
    la[..., 0] = 0  # black
    la[:, :5, 1] = 255  # opaque left
    la[:, 5:, 1] = 0  # transparent right
    data = _encode(Image.fromarray(la, "LA"), "PNG")
    out = load_image(data)
    np.testing.assert_array_equal(out[:, :5], 0)
    np.testing.assert_array_equal(out[:, 5:], 255)
    rgba = load_image_rgba(data)
    assert rgba.shape == (10, 10, 4)
    np.testing.assert_array_equal(rgba[:, 5:, 3], 0)


def test_16_bit_gray_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 128, 65535, 1000, 65535 // 2, 300, 12345, 40000]], np.uint16)
    values = np.repeat(values, 8, axis=0)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out[0, 3, 0] == 4  # 1000/65535 of full scale, not clipped to 255


def test_32_bit_int_tiff_with_16_bit_values() -> None:
    values = np.tile(np.array([0, 65535, 32896, 257], np.int32), (8, 2))
    data = _encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = load_image(data)
    np.testing.assert_array_equal(out[0, :4, 0], [0, 255, 128, 1])


def test_16_bit_rgb_png() -> None:
    pixels = np.zeros((8, 8, 3), np.uint16)
    pixels[..., 0] = 65535
    pixels[..., 1] = 257 * 128
    pixels[..., 2] = 257 * 3
    out = load_image(_png16_rgb(pixels))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 128, 3])


def test_cmyk_jpeg() -> None:
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_encode(im, "JPEG", quality=95))
    assert out.shape == (16, 16, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15


def test_palette_with_and_without_transparency() -> None:
    idx = np.zeros((12, 12), np.uint8)
    idx[:, 6:] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 128, 0, 200, 0, 0] + [0] * 762)
    opaque = load_image(_encode(im, "PNG"))
    np.testing.assert_array_equal(opaque[0, 0], [0, 128, 0])
    np.testing.assert_array_equal(opaque[0, 11], [200, 0, 0])
    transparent = _encode(im, "PNG", transparency=0)
    out = load_image(transparent)
    np.testing.assert_array_equal(out[:, :6], 255)  # index 0 transparent -> white
    np.testing.assert_array_equal(out[0, 11], [200, 0, 0])
    rgba = load_image_rgba(transparent)
    np.testing.assert_array_equal(rgba[:, :6, 3], 0)
    np.testing.assert_array_equal(rgba[:, 6:, 3], 255)
    gif = load_image(_encode(im, "GIF", transparency=0))
    np.testing.assert_array_equal(gif[:, :6], 255)


def test_rgba_composited_on_white_and_kept_by_rgba_loader() -> None:
    px = np.zeros((10, 10, 4), np.uint8)
    px[...] = (255, 0, 0, 128)
    data = _encode(Image.fromarray(px, "RGBA"), "PNG")
    out = load_image(data)
    assert out.shape == (10, 10, 3)
    # 255*128/255 + 255*127/255: red stays 255, green and blue become 127.
    np.testing.assert_array_equal(out[0, 0], [255, 127, 127])
    rgba = load_image_rgba(data)
    np.testing.assert_array_equal(rgba, px)
    # An opaque image gains alpha 255 in the RGBA loader.
    opaque = load_image_rgba(_encode(Image.fromarray(_rgb()), "JPEG"))
    assert opaque.shape == (16, 24, 4) and (opaque[..., 3] == 255).all()


def test_composite_on_white_extremes() -> None:
    px = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
    np.testing.assert_array_equal(composite_on_white(px), [[[10, 20, 30], [255, 255, 255]]])


def test_webp_and_bmp() -> None:
    pixels = _rgb(16, 16, seed=5)
    np.testing.assert_array_equal(load_image(_encode(Image.fromarray(pixels), "BMP")), pixels)
    lossless = _encode(Image.fromarray(pixels), "WEBP", lossless=True)
    np.testing.assert_array_equal(load_image(lossless), pixels)


def test_sha256_bytes() -> None:
    assert sha256_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_bytes(b"abc").startswith("ba7816bf")
