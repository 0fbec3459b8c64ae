"""Image classification with EfficientViM: the paper's recipe on top of ``loop.fit``.

The pieces are timm's: ``create_transform`` (RandAugment, colour jitter, random erasing),
``Mixup`` (Mixup/CutMix and label smoothing), the soft-target and label-smoothing losses,
``create_optimizer_v2`` (AdamW, no decay on norms, biases and the HSM-SSD skip ``D``),
``create_scheduler_v2`` (cosine, warm-up, cool-down), ``ModelEmaV3`` and ``DistillationTeacher``.
What is ours: the MESA and DeiT distillation losses and the wiring; evaluation is :mod:`.evaluation`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import DataLoader

from ..data import build_datasets
from ..errors import CheckpointError, DataError
from ..registry import create_model
from ..weights import Checkpoint, model_layout, save_weights
from .checkpoints import RUN_ONLY_SETTINGS, check_resume, run_lock
from .distributed import (
    ResumableSampler,
    all_reduce_sum,
    close_distributed,
    init_distributed,
    match_grad_strides,
)
from .evaluation import amp_dtype_for, eval_loader, eval_transform, evaluate
from .loop import FitResult, Loop, fit, seed_all, unwrap
from .metrics import summary_line
from .recipes import TrainConfig

BEST = "best.safetensors"


FINAL = "last.safetensors"


def mesa_loss(logits: torch.Tensor, ema_logits: torch.Tensor) -> torch.Tensor:
    """MESA self-distillation term: soft-target cross-entropy towards the EMA model's softmax."""
    target = ema_logits.detach().float().softmax(dim=-1)
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def distillation_loss(
    base_loss: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    alpha: float,
    tau: float,
) -> torch.Tensor:
    """DeiT distillation: (1 - alpha) * base + alpha * (CE to the teacher's argmax | tau^2-scaled KL)."""
    teacher_logits = teacher_logits.detach().float()
    student_logits = student_logits.float()
    if kind == "hard":
        distill = F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
    elif kind == "soft":
        distill = F.kl_div(
            F.log_softmax(student_logits / tau, dim=-1),
            F.log_softmax(teacher_logits / tau, dim=-1),
            reduction="batchmean",
            log_target=True,
        ) * (tau * tau)
    else:
        raise ValueError(f"distillation kind must be hard or soft, not {kind!r}")
    return (1 - alpha) * base_loss + alpha * distill


def posterize_at_least_one_bit(img, bits_to_keep: int, **kwargs):
    """timm's posterize with at least one bit kept: its increasing variant asks for 0 bits at magnitude 10,
    which Pillow 13 refuses (``bits must be between or equal to 1 and 8``); 1 bit is the strongest it means."""
    from timm.data.auto_augment import posterize

    return posterize(img, max(1, int(bits_to_keep)), **kwargs)


def train_transform(cfg: TrainConfig, mean: tuple[float, ...], std: tuple[float, ...]):
    """The recipe's training augmentation (timm's ``create_transform``), posterize kept to 1 bit or more."""
    from timm.data import create_transform

    transform = create_transform(
        cfg.img_size, is_training=True, scale=cfg.scale, hflip=cfg.hflip, color_jitter=cfg.color_jitter or None,
        auto_augment=cfg.auto_augment, interpolation=cfg.interpolation, mean=mean, std=std,
        re_prob=cfg.reprob, re_mode=cfg.remode, re_count=1,
    )
    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()):
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = posterize_at_least_one_bit
    return transform


@dataclass
class TrainResult:
    fit: FitResult
    best_top1: float
    best_epoch: int
    output: Path
    summary: str


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int, batches_per_epoch: int):
    """AdamW without decay on norms, biases and ``model.no_weight_decay()``, and its per-update cosine
    schedule with warm-up and cool-down, learning rates scaled to the total batch.

    Returns (optimizer, scheduler, epochs including cool-down).
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    lr, warmup_lr, min_lr = cfg.scaled_lrs(world_size)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                    betas=tuple(cfg.betas), eps=cfg.eps)
    scheduler, total_epochs = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=cfg.epochs, cooldown_epochs=cfg.cooldown_epochs,
        warmup_epochs=cfg.warmup_epochs, warmup_lr=warmup_lr, min_lr=min_lr,
        step_on_epochs=False, updates_per_epoch=math.ceil(batches_per_epoch / cfg.accum_steps),
    )
    return optimizer, scheduler, total_epochs


def train(cfg: TrainConfig, log=print, resume_changed: bool = False) -> TrainResult:
    """Train (or resume) an EfficientViM classifier as ``cfg`` says; return the best top-1 and a summary.

    A run saved in ``cfg.output`` is resumed when its settings match ``cfg``; with other settings it is
    refused (naming the changes) unless ``resume_changed``.
    """
    init_distributed()  # joined (or refused, or given up) before the output folder is touched
    with run_lock(Path(cfg.output), log):  # one run per output folder
        return _train(cfg, log, resume_changed)


def _train(cfg: TrainConfig, log=print, resume_changed: bool = False) -> TrainResult:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    start = time.time()
    d = init_distributed()
    seed_all(cfg.seed)  # the initial weights; fit() reseeds every epoch
    say = log if d.is_main else (lambda *a, **k: None)
    output = Path(cfg.output)
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_SETTINGS}

    name = cfg.model
    if cfg.distillation != "none" and not name.endswith("_dist"):
        name += "_dist"  # DeiT distillation trains the second (distillation) MSF head
        say(f"distillation trains the distilled heads: using {name}")
    model_args = dict(cfg.model_args)  # a save_weights checkpoint supplies its own stage layout

    # data, normalised with the ImageNet statistics the published weights expect
    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    train_tf = train_transform(cfg, mean, std)
    preprocess = dict(interpolation=cfg.interpolation, mean=mean, std=std, crop_pct=cfg.crop_pct)
    train_ds, val_ds, classes = build_datasets(
        cfg.data, cfg.dataset, train_tf, eval_transform(cfg.img_size, preprocess), strict=cfg.strict_data
    )
    per_process = len(train_ds) // d.world_size
    if per_process < cfg.batch_size:
        raise DataError(
            f"the training split has {len(train_ds)} images ({per_process} per process), fewer than one batch of "
            f"{cfg.batch_size}: lower --batch-size"
        )
    # after the data is found: a missing --data folder is said as such, not as a change from an earlier run
    resuming = check_resume(output, settings, resume_changed, say)
    source = cfg.data or "the embedded scikit-learn digits"
    say(f"data: {source}: {len(train_ds)} train / {len(val_ds)} val images, {len(classes)} classes")
    for split, ds in (("train", train_ds), ("val", val_ds)):
        for line in ds.describe(split) if hasattr(ds, "describe") else ():
            say("  " + line)

    # model
    init = None if resuming else cfg.checkpoint
    model = create_model(name, checkpoint=init, num_classes=len(classes), drop_path_rate=cfg.drop_path,
                         img_size=cfg.img_size, **model_args)
    if init:
        reset = Checkpoint(init).num_classes not in (None, len(classes))
        say(f"initialised from {init}" + (f" (MSF heads reset for {len(classes)} classes)" if reset else ""))
    model.pretrained_cfg.update(input_size=(3, cfg.img_size, cfg.img_size), label_names=list(classes), **preprocess)
    if cfg.distillation != "none":
        model.set_distilled_training(True)  # (z, z_dist) in training mode: the distillation head learns the teacher
    model.to(d.device)
    params = sum(p.numel() for p in model.parameters())
    say(f"model: {name}, {params / 1e6:.2f}M parameters, {cfg.img_size}x{cfg.img_size} input")

    sampler = ResumableSampler(train_ds, d, seed=cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              drop_last=True, pin_memory=d.device.type == "cuda",
                              persistent_workers=cfg.workers > 0)
    val_loader = eval_loader(val_ds, cfg.batch_size, cfg.workers, d)

    optimizer, scheduler, total_epochs = build_optimizer(model, cfg, d.world_size, len(train_loader))
    lr = cfg.scaled_lrs(d.world_size)[0]
    say(f"recipe: {total_epochs} epochs ({cfg.epochs} cosine + {cfg.cooldown_epochs} cool-down), total batch "
        f"{cfg.total_batch(d.world_size)} ({d.world_size} x {cfg.batch_size} x {cfg.accum_steps}), peak lr {lr:.3g}")
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema else None
    if d.enabled:
        device_ids = [d.local_rank] if d.device.type == "cuda" else None
        probe = torch.zeros(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=d.device)
        match_grad_strides(model, lambda: model(probe).float().sum())  # eval mode: one tensor of logits
        # gradients written straight into DDP's buckets: no copy of them per step
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)

    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                      num_classes=len(classes))
        criterion = SoftTargetCrossEntropy()  # Mixup folds label smoothing into its soft targets
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    teacher = load_teacher(cfg, len(classes), d.device) if cfg.distillation != "none" else None
    mesa_from = int(cfg.mesa_start * cfg.epochs)

    def loss_fn(m: nn.Module, batch, epoch: int) -> tuple[torch.Tensor, int]:
        x, y = batch
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        target = y
        if mixup is not None:
            x, target = mixup(x, y)
        out = m(x)
        logits, logits_dist = out if isinstance(out, tuple) else (out, None)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)  # same ImageNet normalisation as the student
            loss = distillation_loss(criterion(logits, target), logits_dist if logits_dist is not None else logits,
                                     teacher_logits, cfg.distillation, cfg.distill_alpha, cfg.distill_tau)
        else:
            if logits_dist is not None:
                logits = (logits + logits_dist) / 2
            loss = criterion(logits, target)
            if cfg.mesa > 0 and epoch >= mesa_from:
                with torch.no_grad():
                    ema_logits = ema.module(x)
                loss = loss + cfg.mesa * mesa_loss(logits, ema_logits)
        # training accuracy (against the mixed label's larger part under Mixup), summed on the device
        labels = target.argmax(dim=-1) if target.dim() == 2 else target
        train_hits.add_(torch.stack([logits.detach().argmax(dim=-1).eq(labels).sum(), labels.new_tensor(len(y))]))
        return loss, len(y)

    train_hits = torch.zeros(2, dtype=torch.long, device=d.device)  # correct, seen since the last evaluation
    chance = 100.0 / len(classes)

    amp_dtype = amp_dtype_for(d.device, cfg.amp)

    def run_eval() -> dict[str, float]:
        hits = all_reduce_sum(train_hits.clone(), d)
        train_hits.zero_()
        metrics = evaluate(unwrap(model), val_loader, d, amp_dtype)
        out = {"train_top1": 100.0 * hits[0].item() / max(hits[1].item(), 1), "top1": metrics["top1"],
               "top5": metrics["top5"], "val_loss": metrics["loss"]}
        if ema is not None:
            metrics = evaluate(ema.module, val_loader, d, amp_dtype)
            out.update(ema_top1=metrics["top1"], ema_top5=metrics["top5"], ema_val_loss=metrics["loss"])
        val_top1 = max(out["top1"], out.get("ema_top1", -1.0))
        if hits[1] > 0 and val_top1 <= 1.5 * chance and out["train_top1"] >= min(2 * chance + 10, 90):
            say(f"warning: val top-1 {val_top1:.1f}% is near chance ({chance:.1f}%) while train top-1 is "
                f"{out['train_top1']:.1f}%: the model does not generalise to val/ (are train/ and val/ alike?)")
        return out

    def better_weights(metrics: dict[str, float]) -> tuple[nn.Module, str]:
        if ema is not None and metrics.get("ema_top1", -1) >= metrics["top1"]:
            return ema.module, "ema"
        return unwrap(model), "model"

    def metadata() -> dict:
        cfg_dict = unwrap(model).pretrained_cfg
        return dict(architecture=name, num_classes=len(classes), in_chans=3, class_names=list(classes),
                    input_size=[3, cfg.img_size, cfg.img_size], crop_pct=cfg_dict["crop_pct"],
                    interpolation=cfg_dict["interpolation"], mean=list(mean), std=list(std),
                    **model_layout(unwrap(model)), config=cfg.to_dict())

    def export(path: Path, metrics: dict[str, float], epoch: int) -> None:
        weights, which = better_weights(metrics)
        top1 = metrics["ema_top1"] if which == "ema" else metrics["top1"]
        save_weights(weights, path, class_names=list(classes), weights=which, epoch=epoch, top1=round(top1, 4))

    loop = Loop(
        model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader, loss_fn=loss_fn,
        evaluate=run_eval, score=lambda m: max(m["top1"], m.get("ema_top1", -1.0)),
        save_best=lambda m, epoch: export(output / BEST, m, epoch), metadata=metadata,
        settings=settings, epochs=total_epochs, output=output, seed=cfg.seed, ema=ema, accum_steps=cfg.accum_steps,
        clip_grad=cfg.clip_grad, amp_dtype=amp_dtype, log=say,
        hidden_metrics=("top5", "ema_top5") if len(classes) <= 5 else (),  # top-5 of 5 classes is always 100%
    )
    result = fit(loop, d)
    metrics = result.last_metrics
    finished = result.stopped_by is None and result.state.epoch >= total_epochs
    if finished and not metrics and not (output / FINAL).is_file():
        # a rerun of a finished run whose final save failed (a full disk): the weights are in last.pt, write it now
        metrics = {"top1": evaluate(unwrap(model), val_loader, d, amp_dtype)["top1"]}
        if ema is not None:
            metrics["ema_top1"] = evaluate(ema.module, val_loader, d, amp_dtype)["top1"]
        say(f"note: {output / FINAL} was missing (its save failed?): written now from {output / 'last.pt'}")
    if result.stopped_by is None and metrics and d.is_main:
        export(output / FINAL, metrics, result.state.epoch)
    summary = _summary(result, output, time.time() - start)
    say(summary)
    close_distributed(d)
    return TrainResult(result, result.state.best_score, result.state.best_epoch, output, summary)


def _summary(result: FitResult, output: Path, seconds: float) -> str:
    m, last = result.last_metrics, ""
    if m:
        top1 = max(m["top1"], m.get("ema_top1", -1.0))
        top5 = m["ema_top5"] if m.get("ema_top1", -1.0) >= m["top1"] else m["top5"]
        last = f"last epoch top-1 {top1:.2f}% top-5 {top5:.2f}%"
    return summary_line(result, seconds, f"top-1 {result.state.best_score:.2f}%", output / BEST, last)


def load_teacher(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The DeiT teacher: a timm model (``cfg.teacher``) with weights read safely from a local file."""
    import timm
    from timm.task.distillation import DistillationTeacher

    if not cfg.teacher_checkpoint:
        raise CheckpointError(
            f"distillation needs the teacher's weights: pass --teacher-checkpoint FILE (a local {cfg.teacher} "
            "state dict trained on these classes; nothing is downloaded)"
        )
    teacher = timm.create_model(cfg.teacher, num_classes=num_classes)
    state = Checkpoint(cfg.teacher_checkpoint).state_dict
    try:
        teacher.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"teacher checkpoint {cfg.teacher_checkpoint} does not fit {cfg.teacher}: {first}"
        ) from None
    return DistillationTeacher(teacher.to(device)).to(device).eval().requires_grad_(False)
