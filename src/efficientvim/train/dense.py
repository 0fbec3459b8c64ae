"""Detection and semantic segmentation training on top of ``loop.fit``: the same loop, checkpoints,
resume and progress output as classification.

What is task-specific lives in ``efficientvim.dense``: the models and the embedded recipes
(``default_recipe``, ``build_model``), the datasets, ``train_step`` and ``evaluate``. Here they are
wired into a :class:`~efficientvim.train.loop.Loop`; the schedule is timm's cosine with a linear
warm-up, stepped per update.

Data layouts read with ``data``:

* detection: ``DIR/train`` and ``DIR/val`` image folders with ``DIR/annotations/instances_train.json``
  and ``DIR/annotations/instances_val.json`` (COCO instances format; ``train_ann``/``val_ann`` name
  other files);
* segmentation: ``DIR/{train,val}/images`` with single-channel class-index PNGs of the same file
  stems in ``DIR/{train,val}/masks`` (255 ignored).
"""

from __future__ import annotations

import difflib
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import CheckpointError, DataError, EfficientViMError
from ..weights import Checkpoint, save_state
from .checkpoints import RUN_ONLY_SETTINGS, check_resume, run_lock
from .distributed import ResumableSampler, init_distributed
from .loop import FitResult, Loop, fit, seed_all, unwrap
from .metrics import summary_line
from .recipes import ConfigError, plain_data

BEST = "best.safetensors"  # the best epoch's weights, in the package's one weights format (as classification's)
# the metric that decides the best epoch and leads the summary line
SCORE = {"detection": "mAP", "segmentation": "mIoU"}


@dataclass
class DenseTrainConfig:
    """A detection or segmentation run: the task's embedded recipe with these changes (None keeps the recipe's)."""

    task: str
    data: str | None = None  # None: the embedded digit canvases
    train_ann: str | None = None
    val_ann: str | None = None
    arch: str | None = None
    model: str | None = None  # backbone name
    model_args: dict = field(default_factory=dict)  # create_model overrides of the backbone
    checkpoint: str | None = None  # classification weights for the backbone
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    img_size: int | None = None  # detection: shorter side after resizing; segmentation: training crop
    workers: int = 0
    output: str | None = None
    seed: int = 0
    recipe_changes: dict = field(default_factory=dict)  # DenseRecipe fields from a YAML --config file
    recipe: str | None = None  # a named recipe of the task (``efficientvim.dense.RECIPES``); None: the default

    def default_output(self) -> str:
        return self.output or f"runs/{'digits-' if self.data is None else ''}{self.task}"


def dense_recipe(cfg: DenseTrainConfig):
    """The task's default recipe with the run's changes applied."""
    from ..dense import default_recipe, named_recipe
    from ..dense.detection import DEFAULT_STRIDES

    recipe = default_recipe(cfg.task, seed=cfg.seed)
    if cfg.recipe is not None:
        recipe = replace(named_recipe(cfg.recipe, cfg.task), seed=cfg.seed)
    if cfg.recipe_changes:
        known = {f.name for f in fields(recipe)}
        unknown = [k for k in cfg.recipe_changes if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            raise ConfigError(f"unknown {cfg.task} recipe key {unknown[0]!r}"
                              + (f" (did you mean {close[0]}?)" if close else f": keys are {', '.join(sorted(known))}"))
        recipe = type(recipe).from_dict({**recipe.to_dict(), **cfg.recipe_changes})
    if cfg.img_size is not None and cfg.img_size < 64:
        raise EfficientViMError(f"--img-size must be at least 64 (the network's total stride), got {cfg.img_size}")
    changes: dict = {}
    if cfg.arch and cfg.arch != recipe.arch:
        valid = tuple(DEFAULT_STRIDES) if cfg.task == "detection" else ("semantic_fpn",)
        if cfg.arch not in valid:
            raise EfficientViMError(f"--arch {cfg.arch} does not do {cfg.task}: choose one of {', '.join(valid)}")
        changes.update(arch=cfg.arch, strides=DEFAULT_STRIDES[cfg.arch])
    overrides = dict(recipe.overrides)
    if cfg.model:
        changes["backbone"] = cfg.model
        overrides = {}  # the recipe's narrowed widths belong to its own backbone
    if cfg.checkpoint and not cfg.model_args:
        # classification weights of a narrowed variant record its stage layout (save_weights metadata)
        layout = {k: list(v) for k, v in Checkpoint(cfg.checkpoint).stage_layout.items()}
        overrides = layout or overrides
    overrides.update(cfg.model_args)
    changes["overrides"] = overrides
    if cfg.data is not None and cfg.task == "segmentation":
        # the class weights are the digits' (background + 10 classes)
        changes["model_kwargs"] = {k: v for k, v in recipe.model_kwargs.items() if k != "class_weight"}
    for name in ("epochs", "batch_size", "lr"):
        if getattr(cfg, name) is not None:
            changes[name] = getattr(cfg, name)
    if cfg.data is None and cfg.img_size is not None:
        changes["canvas_size"] = (cfg.img_size, cfg.img_size)
    return replace(recipe, **changes)


# ---------------------------------------------------------------- data


def dense_datasets(
    task: str, data: str | None, recipe, img_size: int | None = None, train_ann: str | None = None,
    val_ann: str | None = None, need_train: bool = True, num_classes: int | None = None,
) -> tuple[Dataset | None, Dataset, list[str]]:
    """(train, val, class names) for ``task``: the recipe's digit canvases, or ``data`` in the module's layouts.

    Detection class names are the object classes; segmentation's start with class 0, and without
    a training split ``num_classes`` (default: read from the val masks) sets their number.
    """
    from ..dense import CocoDetection, DigitCanvases, SegmentationFolder, build_canvases

    if data is None:
        if train_ann or val_ann:
            raise DataError("--train-ann/--val-ann name annotation files of a --data folder: pass --data DIR too")
        train, val = build_canvases(recipe, need_train)
        names = list(DigitCanvases.class_names)
        return train, val, names if task == "detection" else ["background", *names]
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a folder")
    if task == "detection":
        annotations = root / "annotations"
        val = CocoDetection(root / "val", val_ann or annotations / "instances_val.json")
        train = None
        if need_train:
            train = CocoDetection(root / "train", train_ann or annotations / "instances_train.json", hflip=True)
            if train.class_names != val.class_names:
                raise DataError(
                    f"the train and val annotation files list different categories ({len(train.class_names)} vs "
                    f"{len(val.class_names)}; first train ones: {', '.join(train.class_names[:5])})"
                )
        return train, val, list(val.class_names)
    if train_ann or val_ann:
        raise DataError("--train-ann/--val-ann are COCO files for detection; segmentation reads mask folders")
    size = img_size or 512
    train = None
    if need_train:
        train = SegmentationFolder(root / "train" / "images", root / "train" / "masks", crop_size=(size, size),
                                   hflip=True)
    val = SegmentationFolder(root / "val" / "images", root / "val" / "masks",
                             num_classes=train.num_classes if train is not None else num_classes)
    num_classes = train.num_classes if train is not None else val.num_classes
    return train, val, [str(i) for i in range(num_classes)]


def _collate(task: str):
    from ..dense import collate_detection, collate_segmentation

    return collate_detection if task == "detection" else collate_segmentation


def _image_size(task: str, data: str | None, img_size: int | None) -> tuple[int, int] | None:
    """The detector's resize target (shorter, longer side): the canvases' with no data, else torchvision's ratio."""
    if task != "detection" or data is None:
        return None
    shorter = img_size or 512
    return shorter, round(shorter * 1333 / 800)


def metric_line(task: str, metrics: dict[str, float]) -> str:
    """``mAP@50 ... mAP ... mAP@75 ...`` (plus mask AP) for detection, ``mIoU ... pixel acc ...`` for segmentation."""
    if task == "segmentation":
        return f"mIoU {metrics['mIoU']:.4f}  pixel acc {metrics['pixel_acc']:.4f}"
    keys = ("mAP@50", "mAP", "mAP@75", "mask_mAP@50", "mask_mAP", "mask_mAP@75")
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


# ---------------------------------------------------------------- training


@dataclass
class DenseTrainResult:
    fit: FitResult
    metrics: dict[str, float]
    output: Path
    summary: str


def train_dense(cfg: DenseTrainConfig, log=print, resume_changed: bool = False) -> DenseTrainResult:
    """Train (or resume) a detector or segmenter as ``cfg`` says; ends with the metric line of the last epoch.

    A run saved in the output folder is resumed when its settings match ``cfg`` (else refused, unless
    ``resume_changed``), as for classification."""
    init_distributed()  # joined (or refused, or given up) before the output folder is touched
    with run_lock(Path(cfg.default_output()), log):  # one run per output folder
        return _train_dense(cfg, log, resume_changed)


def _train_dense(cfg: DenseTrainConfig, log=print, resume_changed: bool = False) -> DenseTrainResult:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from ..dense import build_model, evaluate, train_step

    start = time.time()
    d = init_distributed()
    if d.enabled:
        raise EfficientViMError("detection and segmentation train in one process: run without torchrun")
    recipe = dense_recipe(cfg)
    seed_all(recipe.seed)
    output = Path(cfg.default_output())
    settings = {k: v for k, v in plain_data(asdict(cfg)).items() if k not in RUN_ONLY_SETTINGS}
    train_ds, val_ds, classes = dense_datasets(cfg.task, cfg.data, recipe, cfg.img_size, cfg.train_ann, cfg.val_ann)
    resuming = check_resume(output, settings, resume_changed, log)  # after the data is found, as for classification
    if len(train_ds) < recipe.batch_size:
        raise DataError(f"the training split has {len(train_ds)} images, fewer than one batch of "
                        f"{recipe.batch_size}: lower --batch-size")
    source = cfg.data or "the embedded digit canvases"
    log(f"data: {source}: {len(train_ds)} train / {len(val_ds)} val images, {len(classes)} classes")

    init = None if resuming else cfg.checkpoint
    image_size = _image_size(cfg.task, cfg.data, cfg.img_size)
    model = build_model(recipe, checkpoint=init, num_classes=len(classes), image_size=image_size).to(d.device)
    if init:
        log(f"backbone initialised from {init}")
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {recipe.arch} on {recipe.backbone}, {params / 1e6:.2f}M parameters")

    collate = _collate(cfg.task)
    sampler = ResumableSampler(train_ds, d, seed=recipe.seed)
    train_loader = DataLoader(train_ds, recipe.batch_size, sampler=sampler, collate_fn=collate,
                              num_workers=cfg.workers, drop_last=True, persistent_workers=cfg.workers > 0)
    val_loader = DataLoader(val_ds, recipe.batch_size, shuffle=False, collate_fn=collate, num_workers=cfg.workers)

    # AdamW without decay on norms, biases and D; linear warm-up, then cosine to 0, per update
    optimizer = create_optimizer_v2(model, "adamw", lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = recipe.epochs * len(train_loader)
    warmup = min(recipe.warmup_steps, total)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=0.0, warmup_t=warmup,
                                  warmup_lr_init=recipe.lr / max(warmup, 1), warmup_prefix=True, t_in_epochs=False)
    log(f"recipe: {recipe.epochs} epochs of {len(train_loader)} batches of {recipe.batch_size}, "
        f"peak lr {recipe.lr:.3g}, {warmup} warm-up steps")

    def loss_fn(m: nn.Module, batch, epoch: int) -> tuple[torch.Tensor, int]:
        images, targets = batch
        return train_step(m, images, targets)["loss"], len(images)

    metadata = dict(task=cfg.task, recipe=recipe.to_dict(), num_classes=len(classes), class_names=classes,
                    image_size=list(image_size) if image_size else None, data=cfg.data)

    def save_best(metrics: dict[str, float], epoch: int) -> None:
        save_state(unwrap(model).state_dict(), output / BEST, {**metadata, "metrics": metrics, "epoch": epoch})

    loop = Loop(
        model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader, loss_fn=loss_fn,
        evaluate=lambda: evaluate(unwrap(model), val_loader, d),
        score=lambda m: m[SCORE[cfg.task]], save_best=save_best, metadata=lambda: metadata,
        settings=settings, epochs=recipe.epochs, output=output, seed=recipe.seed, clip_grad=1.0,
        metric_format="{:.4f}", metrics_title="metrics", log=log,
    )
    result = fit(loop, d)
    best = f"{SCORE[cfg.task]} {result.state.best_score:.4f}"
    summary = summary_line(result, time.time() - start, best, output / BEST)
    log(summary)
    metrics = result.last_metrics
    if not metrics and result.stopped_by is None and (output / BEST).is_file():
        # a finished run started again: nothing trained, report its best epoch
        metrics = Checkpoint(output / BEST).metadata["metrics"]
    if metrics:
        log(metric_line(cfg.task, metrics))
    return DenseTrainResult(result, metrics, output, summary)


# ---------------------------------------------------------------- evaluation


def load_dense_checkpoint(path: str, task: str) -> tuple[nn.Module, dict]:
    """Rebuild the detector or segmenter a dense training run saved (``best.safetensors`` or ``last.pt``)."""
    from ..dense import DenseRecipe, build_model

    ckpt = Checkpoint(path)
    meta = ckpt.metadata
    if meta.get("task") not in ("detection", "segmentation"):
        raise CheckpointError(f"{path} is not a checkpoint of `efficientvim train --task detection|segmentation`")
    if meta["task"] != task:
        raise CheckpointError(f"{path} holds a {meta['task']} model: pass --task {meta['task']}")
    recipe = DenseRecipe.from_dict(meta["recipe"])
    image_size = tuple(meta["image_size"]) if meta.get("image_size") else None
    model = build_model(recipe, num_classes=meta["num_classes"], image_size=image_size)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the model it describes: {str(e).splitlines()[0][:160]}") from None
    return model.eval(), meta


def evaluate_dense_checkpoint(
    checkpoint: str, task: str, data: str | None = None, val_ann: str | None = None, batch_size: int = 16,
    workers: int = 0,
) -> dict[str, float]:
    """Metrics of a dense training checkpoint on a val split (default: the digit canvases its recipe names)."""
    from ..dense import DenseRecipe, evaluate

    model, meta = load_dense_checkpoint(checkpoint, task)
    recipe = DenseRecipe.from_dict(meta["recipe"])
    _, val_ds, classes = dense_datasets(task, data, recipe, val_ann=val_ann, need_train=False,
                                        num_classes=meta["num_classes"])
    if task == "detection" and len(classes) != meta["num_classes"]:
        raise DataError(f"{checkpoint} detects {meta['num_classes']} classes but the data has {len(classes)}")
    loader = DataLoader(val_ds, batch_size, shuffle=False, collate_fn=_collate(task), num_workers=workers)
    metrics = evaluate(model, loader)
    metrics["images"] = len(val_ds)
    return metrics
