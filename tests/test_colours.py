from __future__ import annotations

import numpy as np
import pytest

from candidfashion.colours import (
    COLOUR_NAMES,
    PALETTE_LAB,
    ColourError,
    colour_lab,
    delta_e,
    delta_e_array,
    dominant_colours,
    lab_to_rgb,
    nearest_name,
    rgb_to_lab,
)

# Published CIEDE2000 test pairs (Sharma, Wu & Dalal 2005), including the hue wrap-around.
SHARMA_PAIRS = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0009), 7.1792),
    ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0011), 7.2195),
    ((50.0, -0.001, 2.49), (50.0, 0.0009, -2.49), 4.8045),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
]


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA_PAIRS)
def test_delta_e_matches_published_values(lab1, lab2, expected) -> None:
    assert delta_e(lab1, lab2) == pytest.approx(expected, abs=1e-4)
    assert delta_e(lab2, lab1) == pytest.approx(expected, abs=1e-4)


def test_delta_e_agrees_with_scikit_image() -> None:
    skcolor = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(1)
    a = rng.uniform([0, -80, -80], [100, 80, 80], size=(500, 3))
    b = rng.uniform([0, -80, -80], [100, 80, 80], size=(500, 3))
    np.testing.assert_allclose(delta_e_array(a, b), skcolor.deltaE_ciede2000(a, b), atol=1e-6)
    assert delta_e((40.0, 10.0, 5.0), (40.0, 10.0, 5.0)) == 0.0


def test_rgb_lab_round_trip_and_reference() -> None:
    skcolor = pytest.importorskip("skimage.color")
    rgb = np.random.default_rng(2).integers(0, 256, size=(300, 3), dtype=np.uint8)
    lab = rgb_to_lab(rgb)
    np.testing.assert_allclose(lab, skcolor.rgb2lab(rgb[None] / 255.0)[0], atol=0.05)
    np.testing.assert_array_equal(lab_to_rgb(lab), rgb)


def test_palette_is_self_consistent() -> None:
    assert len(COLOUR_NAMES) >= 20
    for name in COLOUR_NAMES:
        assert nearest_name(PALETTE_LAB[name]) == name
    # Distinct enough to tell apart.
    for i, a in enumerate(COLOUR_NAMES):
        for b in COLOUR_NAMES[i + 1 :]:
            assert delta_e(PALETTE_LAB[a], PALETTE_LAB[b]) > 5, (a, b)


def test_colour_lab_forgives_spelling_and_rejects_unknown() -> None:
    assert colour_lab("Denim-Blue") == PALETTE_LAB["denim blue"]
    assert colour_lab("GRAY") == PALETTE_LAB["grey"]
    with pytest.raises(ColourError, match="unknown colour"):
        colour_lab("octarine")


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((200, 25, 35), "red"),
        ((20, 30, 60), "navy"),
        ((25, 25, 27), "black"),
        ((245, 245, 245), "white"),
        ((100, 130, 170), "denim blue"),
        ((110, 110, 55), "olive"),
        ((120, 35, 45), "burgundy"),
        ((190, 170, 120), "khaki"),
    ],
)
def test_garment_colours_get_the_shopper_name(rgb, name) -> None:
    assert nearest_name(rgb_to_lab(np.array(rgb))) == name


def test_dominant_colours_of_a_two_colour_item() -> None:
    rng = np.random.default_rng(3)
    red = np.clip(rng.normal((200, 25, 35), 6, size=(7000, 3)), 0, 255).astype(np.uint8)
    navy = np.clip(rng.normal((20, 30, 60), 4, size=(3000, 3)), 0, 255).astype(np.uint8)
    colours = dominant_colours(np.concatenate([red, navy]), k=3)
    assert [c.name for c in colours] == ["red", "navy"]
    assert colours[0].fraction == pytest.approx(0.7, abs=0.02)
    assert sum(c.fraction for c in colours) == pytest.approx(1.0)
    assert colours[0].hex.startswith("#") and len(colours[0].hex) == 7
    # Deterministic.
    again = dominant_colours(np.concatenate([red, navy]), k=3)
    assert [(c.name, c.hex) for c in again] == [(c.name, c.hex) for c in colours]


def test_dominant_colours_edge_cases() -> None:
    assert dominant_colours(np.zeros((0, 3), np.uint8)) == []
    single = dominant_colours(np.full((10, 3), (245, 245, 245), np.uint8), k=3)
    assert [c.name for c in single] == ["white"] and single[0].fraction == 1.0
    with pytest.raises(ColourError):
        dominant_colours(np.zeros((10, 4), np.uint8))
    with pytest.raises(ColourError):
        dominant_colours(np.zeros((10, 3), np.float32))
