"""The garment taxonomy, and how every source data set's labels map onto it.

All code that needs a class id or name imports it from here; nothing else hard-codes them.
"""

from __future__ import annotations

from collections.abc import Mapping

CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "hair",
    "top",
    "outerwear",
    "dress",
    "skirt",
    "pants",
    "shorts",
    "footwear",
    "bag",
    "hat",
    "accessory",
    "legwear",
)
NUM_CLASSES = len(CLASSES)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

BACKGROUND = CLASS_ID["background"]
#: Classes that are products a shopper can buy and search for.
GARMENT_CLASSES: tuple[str, ...] = (
    "top",
    "outerwear",
    "dress",
    "skirt",
    "pants",
    "shorts",
    "footwear",
    "bag",
    "hat",
)
GARMENT_IDS: tuple[int, ...] = tuple(CLASS_ID[c] for c in GARMENT_CLASSES)
#: Items cut out of a photo: garments plus accessories and legwear.
ITEM_CLASSES: tuple[str, ...] = (*GARMENT_CLASSES, "accessory", "legwear")

#: Classes whose connected parts form one item (a pair of shoes is one product).
PAIRED_CLASSES: frozenset[str] = frozenset({"footwear", "legwear"})

#: Distinct colours for drawing overlays, one per class (RGB).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (255, 205, 178),
    (90, 60, 40),
    (230, 57, 70),
    (29, 53, 87),
    (214, 40, 160),
    (255, 159, 28),
    (69, 123, 157),
    (46, 196, 182),
    (120, 80, 200),
    (255, 214, 10),
    (140, 200, 60),
    (180, 180, 180),
    (240, 128, 128),
)

_CCP_GROUPS: dict[str, tuple[str, ...]] = {
    "background": ("null",),
    "skin": ("skin",),
    "hair": ("hair",),
    "top": (
        "blouse", "bodysuit", "bra", "hoodie", "intimate", "jumper", "panties", "shirt",
        "sweater", "sweatshirt", "swimwear", "t-shirt", "top", "vest",
    ),
    "outerwear": ("blazer", "cape", "cardigan", "coat", "jacket", "suit"),
    "dress": ("dress", "romper"),
    "skirt": ("skirt",),
    "pants": ("jeans", "leggings", "pants"),
    "shorts": ("shorts",),
    "footwear": (
        "boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes",
        "sneakers", "wedges",
    ),
    "bag": ("bag", "purse", "wallet"),
    "hat": ("hat",),
    "accessory": (
        "accessories", "belt", "bracelet", "earrings", "glasses", "gloves", "necklace",
        "ring", "scarf", "sunglasses", "tie", "watch",
    ),
    "legwear": ("socks", "stockings", "tights"),
}  # fmt: skip

#: CCP fine label name -> taxonomy class name.
CCP_TO_CLASS: dict[str, str] = {fine: cls for cls, fines in _CCP_GROUPS.items() for fine in fines}

# iMaterialist Fashion 2020 (FGVC7) / Fashionpedia share 46 categories. Parts
# (sleeve, collar, pocket, ...) and decorations are not items: they map to None so the
# whole-garment mask underneath them keeps its class.
FASHIONPEDIA_TO_CLASS: dict[str, str | None] = {
    "shirt, blouse": "top",
    "top, t-shirt, sweatshirt": "top",
    "sweater": "top",
    "cardigan": "outerwear",
    "jacket": "outerwear",
    "vest": "top",
    "pants": "pants",
    "shorts": "shorts",
    "skirt": "skirt",
    "coat": "outerwear",
    "dress": "dress",
    "jumpsuit": "dress",
    "cape": "outerwear",
    "glasses": "accessory",
    "hat": "hat",
    "headband, head covering, hair accessory": "accessory",
    "tie": "accessory",
    "glove": "accessory",
    "watch": "accessory",
    "belt": "accessory",
    "leg warmer": "legwear",
    "tights, stockings": "legwear",
    "sock": "legwear",
    "shoe": "footwear",
    "bag, wallet": "bag",
    "scarf": "accessory",
    "umbrella": None,
    "hood": None,
    "collar": None,
    "lapel": None,
    "epaulette": None,
    "sleeve": None,
    "pocket": None,
    "neckline": None,
    "buckle": None,
    "zipper": None,
    "applique": None,
    "bead": None,
    "bow": None,
    "flower": None,
    "fringe": None,
    "ribbon": None,
    "rivet": None,
    "ruffle": None,
    "sequin": None,
    "tassel": None,
}


def class_id(name: str) -> int:
    """The id of a taxonomy class name; raises KeyError with the valid names."""
    try:
        return CLASS_ID[name]
    except KeyError:
        raise KeyError(f"unknown class {name!r}; expected one of {', '.join(CLASSES)}") from None


def lookup_table(source_names: Mapping[int, str], mapping: Mapping[str, str | None]) -> list[int]:
    """A table from source label index to taxonomy id (-1 where the source label is ignored).

    Raises ValueError for a source label the mapping does not know, so a new data set
    version with renamed labels fails loudly instead of training on background.
    """
    size = max(source_names) + 1 if source_names else 0
    table = [-1] * size
    for idx, name in source_names.items():
        key = name.strip().lower()
        if key not in mapping:
            raise ValueError(f"source label {name!r} (index {idx}) has no taxonomy mapping")
        target = mapping[key]
        table[idx] = -1 if target is None else CLASS_ID[target]
    return table
