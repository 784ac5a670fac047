"""Builders for test data in the real formats: CCP folders and small ONNX parsers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from candidfashion.taxonomy import CLASSES

# The 59 CCP labels, index order as in the data set's label_list.mat.
_CCP_LABEL_TEXT = (
    "null accessories bag belt blazer blouse bodysuit boots bra bracelet cape cardigan clogs "
    "coat dress earrings flats glasses gloves hair hat heels hoodie intimate jacket jeans jumper "
    "leggings loafers necklace panties pants pumps purse ring romper sandals scarf shirt shoes "
    "shorts skin skirt sneakers socks stockings suit sunglasses sweater sweatshirt swimwear "
    "t-shirt tie tights top vest wallet watch wedges"
)
CCP_LABELS = _CCP_LABEL_TEXT.split()


def write_ccp(root: Path, photos: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A CCP-format folder: photos/ID.jpg, annotations/pixel-level/ID.mat, label_list.mat."""
    from scipy.io import savemat

    (root / "photos").mkdir(parents=True)
    (root / "annotations" / "pixel-level").mkdir(parents=True)
    cell = np.empty((1, len(CCP_LABELS)), dtype=object)
    for i, name in enumerate(CCP_LABELS):
        cell[0, i] = name
    savemat(root / "label_list.mat", {"label_list": cell})
    for image_id, (rgb, fine) in photos.items():
        # 4:4:4 and uniform 8x8 blocks: JPEG keeps the block colours within a level or two.
        Image.fromarray(rgb).save(root / "photos" / f"{image_id}.jpg", quality=95, subsampling=0)
        savemat(root / "annotations" / "pixel-level" / f"{image_id}.mat", {"groundtruth": fine})
    return root


def export_onnx_parser(
    model,
    path: Path,
    size: tuple[int, int],
    *,
    kind: str = "parser",
    classes: Sequence[str] = CLASSES,
) -> Path:
    """Export a torch module as an ONNX parser with the contract's names and metadata.

    ``size`` is the model input (W, H).
    """
    import onnx
    import torch

    width, height = size
    torch.onnx.export(
        model.eval(),
        (torch.zeros(1, 3, height, width),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    for key, value in {
        "candidfashion.kind": kind,
        "candidfashion.classes": json.dumps(list(classes)),
        "candidfashion.input_size": f"{width}x{height}",
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path
