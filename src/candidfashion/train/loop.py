"""Training the garment parser: resumable, checkpointed every epoch, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from candidfashion.datasets import open_dataset, read_ids
from candidfashion.parse import letterbox
from candidfashion.taxonomy import CLASSES, GARMENT_IDS, NUM_CLASSES
from candidfashion.train.data import (
    IGNORE,
    AugmentedDataset,
    class_weights,
    preload,
    repeat_factors,
    train_augmentation,
)
from candidfashion.train.model import ParserNet, load_parser_state

log = logging.getLogger(__name__)
console = Console(stderr=True)
SPLITS_DIR = Path(__file__).resolve().parents[3] / "splits"


@dataclass
class TrainConfig:
    data: list[str]
    out_dir: Path
    epochs: int = 40
    encoder: str = "lite0"
    batch_size: int = 8
    lr: float = 2e-3
    crop: tuple[int, int] = (192, 288)  # (W, H) of training crops
    input_size: tuple[int, int] = (256, 384)  # (W, H) the exported parser sees
    preload_height: int = 480
    resume: bool = False
    seed: int = 0
    mlflow_uri: str = ""
    val_ids: Path | None = None
    #: Start from this checkpoint's weights (fresh optimizer and schedule), e.g. to fine-tune.
    init_from: Path | None = None
    dice_weight: float = 0.5
    #: Weight of the Lovasz-softmax loss (0 = off), a surrogate of the IoU the parser is judged by.
    lovasz_weight: float = 0.0
    #: Decay of an exponential moving average of the weights (0 = off). Validation, the best
    #: checkpoint and the export use the average, which swings far less from epoch to epoch.
    ema: float = 0.0
    #: bfloat16 autocast for the forward pass (weights and optimizer stay float32); about
    #: 1.7x faster per step on CPUs with AVX512-BF16.
    bf16: bool = False
    #: Repeat-factor sampling threshold (0 = off; e.g. 0.3): photos holding classes found in
    #: fewer than this fraction of photos are drawn more often (with replacement).
    repeat_threshold: float = 0.0
    threads: int = field(
        default_factory=lambda: int(os.environ.get("CANDIDFASHION_TRAIN_THREADS", "0"))
    )
    register_as: str = "candidfashion-parser"

    def to_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the classes present in the batch (ignored pixels excluded)."""
    valid = (target != IGNORE).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2)
    onehot = onehot * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + 1) / (total + 1)
    return 1 - dice[present].mean()


def lovasz_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, max_pixels: int = 100_000
) -> torch.Tensor:
    """Lovasz-softmax (Berman et al., CVPR 2018) over the classes present in the target.

    It is the convex (Lovasz) extension of 1 - IoU: on hard predictions it equals the mean
    Jaccard loss of the classes present. Over every pixel it took 0.76 s a batch on the CPU
    (8 at 320x480), so at most ``max_pixels`` random valid pixels are used (0.19 s); the IoU of
    a random sample estimates the IoU of the whole.
    """
    labels = target.reshape(-1)
    chosen = (labels != IGNORE).nonzero().squeeze(1)
    if chosen.numel() > max_pixels:
        chosen = chosen[torch.randperm(chosen.numel(), device=labels.device)[:max_pixels]]
    # Gather the chosen pixels' scores first, so the softmax runs on them alone.
    per_image = target.shape[1] * target.shape[2]
    flat = logits.flatten(2)
    probs = flat[chosen // per_image, :, chosen % per_image].softmax(dim=1)
    labels = labels[chosen]
    losses = []
    for c in labels.unique():
        fg = (labels == c).to(probs.dtype)
        errors, order = (fg - probs[:, c]).abs().sort(descending=True)
        fg_sorted = fg[order]
        positives = fg_sorted.sum()
        # Jaccard loss of predicting the first k sorted pixels wrong, for every k.
        intersection = positives - fg_sorted.cumsum(0)
        union = positives + (1 - fg_sorted).cumsum(0)
        jaccard = 1 - intersection / union
        steps = torch.diff(jaccard, prepend=jaccard.new_zeros(1))
        losses.append(torch.dot(errors, steps))
    if not losses:
        return logits.sum() * 0
    return torch.stack(losses).mean()


def confusion(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    keep = target != IGNORE
    idx = target[keep].astype(np.int64) * NUM_CLASSES + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float | dict[str, float]]:
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    present = cm.sum(1) > 0
    garment = [i for i in GARMENT_IDS if present[i]]
    return {
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "garment_miou": float(np.nanmean(iou[garment])) if garment else 0.0,
        "mean_iou": float(np.nanmean(iou[present])) if present.any() else 0.0,
        "per_class_iou": {CLASSES[i]: float(iou[i]) for i in range(NUM_CLASSES) if present[i]},
    }


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    size: tuple[int, int],
) -> np.ndarray:
    """Confusion matrix on whole photos, letterboxed exactly as the serving parser does."""
    model.eval()
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for image, mask in zip(images, masks, strict=True):
        canvas, box = letterbox(image, size)
        x = torch.from_numpy(canvas).permute(2, 0, 1).float()[None]
        logits = model(x)[0, :, : box.height, : box.width]
        logits = F.interpolate(logits[None], size=mask.shape, mode="bilinear", align_corners=False)
        cm += confusion(logits[0].argmax(0).numpy(), mask)
    return cm


def save_confusion_png(cm: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(NUM_CLASSES), CLASSES, rotation=60, ha="right")
    ax.set_yticks(range(NUM_CLASSES), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            if norm[i, j] >= 0.05:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _numpy_rng_to_save() -> tuple:
    """NumPy's RNG state with its key array as a tensor, so that ``last.pt`` stays loadable
    with ``torch.load(weights_only=True)`` (which ``candidfashion export`` uses)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached)


def _numpy_rng_from_saved(saved: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = saved
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy().astype(np.uint32)
    return (name, keys, pos, has_gauss, cached)


def _split_ids(spec: str, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    ds = open_dataset(spec)
    if spec.startswith("ccp:"):
        val_file = cfg.val_ids or SPLITS_DIR / "ccp_val.txt"
        val = set(read_ids(val_file)) & set(ds.ids)
    else:
        # Other sources: a fixed 5% of ids by hash, stable across runs.
        import hashlib

        val = {i for i in ds.ids if int(hashlib.sha256(i.encode()).hexdigest(), 16) % 20 == 0}
    return [i for i in ds.ids if i not in val], sorted(val)


def run_training(cfg: TrainConfig) -> Path:
    """Train; returns the path of the best checkpoint. Safe to kill and ``--resume``."""
    import mlflow

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = cfg.out_dir / "last.pt", cfg.out_dir / "best.pt"
    seed_everything(cfg.seed)

    train_sets, val_sets = [], []
    for spec in cfg.data:
        ds = open_dataset(spec)
        train_ids, val_ids = _split_ids(spec, cfg)
        train_sets.append((ds, train_ids))
        val_sets.append((ds, val_ids))
    console.print(
        f"train photos: {sum(len(i) for _, i in train_sets)}, "
        f"val photos: {sum(len(i) for _, i in val_sets)}"
    )
    train_images, train_masks = preload(train_sets, cfg.preload_height)
    val_images, val_masks = [], []
    for ds, ids in val_sets:
        for i in ids:
            img, msk = ds.load(i)
            val_images.append(img)
            val_masks.append(msk)

    weights = torch.from_numpy(class_weights(train_masks))
    dataset = AugmentedDataset(
        train_images,
        train_masks,
        train_augmentation(cfg.crop, cfg.preload_height, cfg.input_size[1]),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler: torch.utils.data.Sampler[int] | None = None
    if cfg.repeat_threshold > 0:
        repeats = repeat_factors(train_masks, cfg.repeat_threshold)
        console.print(
            f"repeat-factor sampling: {int((repeats > 1).sum())} of {len(repeats)} photos"
            f" drawn more often (up to {repeats.max():.2f}x)"
        )
        # Same epoch length as without it, so epochs and schedules stay comparable.
        sampler = torch.utils.data.WeightedRandomSampler(
            repeats.tolist(), num_samples=len(dataset), replacement=True, generator=generator
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=generator,
    )

    model = ParserNet(cfg.encoder, pretrained=cfg.init_from is None)
    if cfg.init_from is not None:
        init = torch.load(cfg.init_from, map_location="cpu", weights_only=False)
        if init.get("encoder") != cfg.encoder:
            raise ValueError(
                f"{cfg.init_from} has encoder {init.get('encoder')}, not {cfg.encoder}"
            )
        load_parser_state(model, init["model"])
        console.print(f"initialised from {cfg.init_from} (epoch {init.get('epoch', -1) + 1})")
    # The TF ports' BN momentum (0.01) adapts too slowly to new data when fine-tuning.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    encoder_params = list(model.encoder.parameters())
    encoder_ids = {id(p) for p in encoder_params}
    decoder_params = [p for p in model.parameters() if id(p) not in encoder_ids]
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": cfg.lr * 0.5}, {"params": decoder_params, "lr": cfg.lr}],
        weight_decay=1e-4,
    )
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[cfg.lr * 0.5, cfg.lr],
        total_steps=cfg.epochs * steps_per_epoch,
        # OneCycleLR divides by (warm-up steps - 1): keep at least 2 warm-up steps so short
        # runs on small sets don't fail with a ZeroDivisionError.
        pct_start=max(min(0.1, 2 / cfg.epochs), 2 / max(cfg.epochs * steps_per_epoch, 3)),
    )

    averaged = (
        torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema),
            use_buffers=True,
        )
        if cfg.ema > 0
        else None
    )
    start_epoch, best_miou, run_id = 0, -1.0, None
    if cfg.resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        planned = int(state.get("config", {}).get("epochs", cfg.epochs))
        if planned != cfg.epochs:
            # The one-cycle schedule was laid out for the old length and cannot be stretched.
            raise ValueError(
                f"{last_path} belongs to a {planned}-epoch run; resume it with --epochs {planned}"
                " (or start a new run with --init-from to train longer)"
            )
        load_parser_state(model, state.get("raw_model", state["model"]))
        if averaged is not None:
            if "ema" not in state:
                raise ValueError(f"{last_path} was trained without --ema; resume without it")
            averaged.load_state_dict(state["ema"])
        elif "ema" in state:
            # Dropping the average would silently ship the raw weights of an EMA run.
            ema_decay = state.get("config", {}).get("ema", "DECAY")
            raise ValueError(f"{last_path} was trained with --ema; resume with --ema {ema_decay}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
        best_miou = state.get("best_miou", -1.0)
        run_id = state.get("mlflow_run_id")
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["loader_rng"])
        np.random.set_state(_numpy_rng_from_saved(state["numpy_rng"]))
        random.setstate(state["python_rng"])
        console.print(f"resumed from epoch {start_epoch} (best garment mIoU {best_miou:.3f})")
    elif cfg.resume:
        console.print("no checkpoint to resume from; starting fresh")

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    mlflow.set_experiment("candidfashion-parser")
    with mlflow.start_run(run_id=run_id) as run:
        if run_id is None:
            mlflow.log_params(cfg.to_params())
            mlflow.log_param("train_photos", len(train_images))
            mlflow.log_param("val_photos", len(val_images))
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            # albumentations 2 keeps its own generators and ignores the global seeds; seeding
            # it per epoch makes a run repeatable, and a resumed epoch sees what an
            # uninterrupted run would have seen.
            dataset.transform.set_random_seed(cfg.seed * 10_000 + epoch)
            t0, running = time.time(), 0.0
            with Progress(
                TextColumn(f"epoch {epoch + 1}/{cfg.epochs}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]:.3f}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            ) as progress:
                task = progress.add_task("train", total=steps_per_epoch, loss=0.0)
                for step, (x, y) in enumerate(loader, 1):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                        logits = model(x)
                    logits = logits.float()
                    loss = F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE)
                    loss = loss + cfg.dice_weight * dice_loss(logits, y)
                    if cfg.lovasz_weight > 0:
                        loss = loss + cfg.lovasz_weight * lovasz_softmax_loss(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    if averaged is not None:
                        averaged.update_parameters(model)
                    running += loss.item()
                    progress.update(task, advance=1, loss=running / step)
                    if not console.is_terminal and step % 20 == 0:
                        # Progress bars don't render into log files; leave a trace there.
                        log.info(
                            "epoch %d step %d/%d loss %.4f",
                            epoch + 1,
                            step,
                            steps_per_epoch,
                            running / step,
                        )
            train_loss = running / steps_per_epoch
            scored = model if averaged is None else averaged.module
            cm = validate(scored, val_images, val_masks, cfg.input_size)
            metrics = metrics_from_confusion(cm)
            miou = float(metrics["garment_miou"])  # type: ignore[arg-type]
            seconds = time.time() - t0
            console.print(
                f"epoch {epoch + 1}: loss {train_loss:.4f}, val garment mIoU {miou:.4f}, "
                f"pixel acc {metrics['pixel_accuracy']:.4f}, {seconds:.0f}s"
            )
            mlflow.log_metrics(
                {
                    "train_loss": train_loss,
                    "val_garment_miou": miou,
                    "val_mean_iou": float(metrics["mean_iou"]),  # type: ignore[arg-type]
                    "val_pixel_accuracy": float(metrics["pixel_accuracy"]),  # type: ignore[arg-type]
                    "epoch_seconds": seconds,
                },
                step=epoch + 1,
            )
            checkpoint = {
                "model": scored.state_dict(),
                "encoder": cfg.encoder,
                "num_classes": NUM_CLASSES,
                "input_size": list(cfg.input_size),
                "epoch": epoch,
                "metrics": metrics,
                "config": cfg.to_params(),
            }
            if miou > best_miou:
                best_miou = miou
                _atomic_save(checkpoint, best_path)
                (cfg.out_dir / "best_metrics.json").write_text(
                    json.dumps({"epoch": epoch + 1, **metrics}, indent=2)
                )
            _atomic_save(
                {
                    **checkpoint,
                    **(
                        {"raw_model": model.state_dict(), "ema": averaged.state_dict()}
                        if averaged is not None
                        else {}
                    ),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_miou": best_miou,
                    "mlflow_run_id": run.info.run_id,
                    "torch_rng": torch.get_rng_state(),
                    "loader_rng": generator.get_state(),
                    "numpy_rng": _numpy_rng_to_save(),
                    "python_rng": random.getstate(),
                },
                last_path,
            )
        best = torch.load(best_path, map_location="cpu", weights_only=False)
        load_parser_state(model, best["model"])
        cm = validate(model, val_images, val_masks, cfg.input_size)
        png = cfg.out_dir / "confusion.png"
        save_confusion_png(cm, png)
        mlflow.log_artifact(str(png))
        mlflow.log_dict(metrics_from_confusion(cm), "best_metrics.json")
    # Export after the training run is closed: registering starts a run of its own.
    from candidfashion.train.export import export_parser

    onnx_path = export_parser(best_path, cfg.out_dir / "parser.onnx", register_as=cfg.register_as)
    console.print(f"exported {onnx_path}")
    return best_path
