"""Evaluation of a classifier: top-1, top-5 and loss over a val split, each image once over all processes,
with the model's own eval preprocessing; a checkpoint scored in the runtime and precision asked for."""


from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import build_datasets
from ..errors import CheckpointError, DataError
from ..registry import create_model, load_model
from ..runtimes import inference_model
from ..weights import Checkpoint
from .distributed import (
    Distributed,
    all_reduce_sum,
    close_distributed,
    init_distributed,
)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, d: Distributed, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy over ``loader``, summed over all processes, on the
    images that were read: a sample marked unreadable (target ``-1 - index``, see ``data.ImageFiles``) is left
    out, counted in ``unreadable`` and named (this process's) in ``unreadable_files``."""
    was_training = model.training
    model.eval()
    # correct@1, correct@5, loss sum, images, unreadable; on the device so no batch waits on a host sync
    sums = torch.zeros(5, dtype=torch.float64, device=d.device)
    left_out: list[int] = []
    for x, y in loader:
        read = y >= 0
        if not read.all():
            left_out += [-1 - int(t) for t in y[~read]]
            x, y = x[read], y[read]
            sums[4] += int((~read).sum())
            if not len(y):
                continue
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(d.device.type, amp_dtype or torch.float32, amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        sums[:3] += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), F.cross_entropy(logits, y, reduction="sum")])
        sums[3] += len(y)
    model.train(was_training)
    sums = all_reduce_sum(sums, d)
    n = max(sums[3].item(), 1)
    name = getattr(getattr(loader, "dataset", None), "filename", str)
    return {"top1": 100 * sums[0].item() / n, "top5": 100 * sums[1].item() / n, "loss": sums[2].item() / n,
            "images": int(sums[3].item()), "unreadable": int(sums[4].item()),
            "unreadable_files": [name(i) for i in left_out]}


class _Shard(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``: each image evaluated exactly once over all processes."""

    def __init__(self, n: int, d: Distributed) -> None:
        self.indices = list(range(d.rank, n, d.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, d: Distributed) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=_Shard(len(dataset), d), num_workers=workers,
                      pin_memory=d.device.type == "cuda")


def eval_transform(img_size: int, cfg: dict):
    """Resize, centre crop by ``crop_pct`` and normalise, as the model's preprocessing says."""
    from timm.data import create_transform

    return create_transform(img_size, is_training=False, interpolation=cfg["interpolation"],
                            mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"])


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def evaluate_checkpoint(
    checkpoint: str,
    model_name: str | None = None,
    data: str | None = None,
    dataset: str = "",
    img_size: int | None = None,
    batch_size: int = 64,
    workers: int = 2,
    amp: bool = False,
    strict_data: bool = False,
    precision: str = "fp32",
    runtime: str = "eager",
) -> dict[str, float]:
    """Top-1/top-5/loss of a checkpoint (the authors', timm's or ours) on a val split (default: digits val),
    run by the fused model (``efficientvim.fuse``, equal to the model within 1e-4) in ``precision``, in
    ``runtime`` (:func:`efficientvim.runtimes.inference_model`)."""
    d = init_distributed()
    ckpt = Checkpoint(checkpoint)
    if ckpt.metadata.get("architecture"):
        model = load_model(checkpoint)
    elif model_name:
        model = create_model(model_name, checkpoint=checkpoint)
    else:
        raise CheckpointError(f"{checkpoint} does not name its architecture: pass --model NAME")
    cfg = model.pretrained_cfg
    size = img_size or cfg["input_size"][-1]
    _, val_ds, classes = build_datasets(data, dataset, val_transform=eval_transform(size, cfg), strict=strict_data,
                                        need_train=False, val_classes=cfg.get("label_names"))
    for line in getattr(val_ds, "describe", lambda split: [])("val")[1:]:  # files the scan did not take, and why
        print(f"note: {line}", file=sys.stderr)
    if len(classes) != model.num_classes:
        raise DataError(f"{checkpoint} predicts {model.num_classes} classes but the data has {len(classes)}")
    if runtime == "eager":
        model = model.to(d.device)
    model = inference_model(model, runtime, precision)
    metrics = evaluate(model, eval_loader(val_ds, batch_size, workers, d), d, amp_dtype_for(d.device, amp))
    close_distributed(d)
    if not metrics["images"]:
        raise DataError(f"none of the {metrics['unreadable']} images of {data} could be read: nothing to score")
    metrics.update(model=model.model_name, img_size=size)
    return metrics
