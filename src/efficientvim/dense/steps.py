"""Task-agnostic training and evaluation pieces for detectors and segmenters.

Both kinds of model follow torchvision's detection protocol: in training mode
``model(images, targets)`` returns a dict of losses; in eval mode ``model(images)`` returns
predictions. ``train_step`` and ``evaluate`` are what a training loop calls
(``efficientvim.train.dense`` runs them through the shared ``loop.fit``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import (
    coco_map,
    confusion_matrix,
    detections_to_coco,
    segmentation_metrics,
    targets_to_coco,
)
from .segmentation import IGNORE_INDEX, SemanticFPN

if TYPE_CHECKING:  # the type only: dense does not import the training package
    from ..train.distributed import Distributed


def is_segmenter(model: nn.Module) -> bool:
    return isinstance(model, SemanticFPN)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: torchvision detectors take images of different sizes."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def collate_segmentation(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad images (with 0) and class maps (with the ignore label 255) to the batch's largest H x W."""
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    images = torch.stack([F.pad(im, (0, width - im.shape[2], 0, height - im.shape[1])) for im, _ in batch])
    masks = torch.stack(
        [F.pad(m, (0, width - m.shape[1], 0, height - m.shape[0]), value=IGNORE_INDEX) for _, m in batch]
    )
    return images, masks


def _to_device(images, targets, device: torch.device):
    if isinstance(images, torch.Tensor):
        return images.to(device), targets.to(device)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


def train_step(model: nn.Module, images, targets) -> dict[str, torch.Tensor]:
    """Forward one batch in training mode; return the model's losses plus their sum under ``loss``.

    The caller backpropagates ``loss`` and steps its optimizer (so AMP, accumulation and
    clipping stay in the loop). Inputs are moved to the model's device.
    """
    device = next(model.parameters()).device
    images, targets = _to_device(images, targets, device)
    losses = dict(model(images, targets))
    losses["loss"] = sum(losses.values())
    return losses


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, d: Distributed | None = None, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Score ``model`` on every batch of ``loader``; the signature of classification's ``evaluate``.

    Detectors: COCO box mAP, mAP@50, mAP@75 (and ``mask_*`` for Mask R-CNN) through pycocotools.
    If the loader's dataset has a ``coco`` ground truth (``CocoDetection``), it is scored against
    that file; otherwise against the targets. Segmenters: mIoU over the model's classes, pixel
    accuracy. Dense models train and evaluate in one process, so ``d`` (if given) must not be
    distributed; ``amp_dtype`` runs the model under autocast.
    """
    if d is not None and d.enabled:
        raise ValueError("dense evaluation runs in one process")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.autocast(device.type, amp_dtype or torch.float32, amp_dtype is not None):
            if is_segmenter(model):
                return _evaluate_segmentation(model, loader, model.num_classes)
            return _evaluate_detection(model, loader)
    finally:
        model.train(was_training)


def _evaluate_segmentation(model: nn.Module, loader: Iterable, num_classes: int) -> dict[str, float]:
    device = next(model.parameters()).device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, masks in loader:
        logits = model(images.to(device))
        confusion += confusion_matrix(logits.argmax(1).cpu(), masks, num_classes)
    metrics = segmentation_metrics(confusion)
    metrics.pop("IoU")
    return metrics


def _evaluate_detection(model: nn.Module, loader: Iterable) -> dict[str, float]:
    device = next(model.parameters()).device
    dataset = getattr(loader, "dataset", None)
    coco_gt = getattr(dataset, "coco", None)
    label_to_cat = getattr(dataset, "label_to_cat", None)
    box_results, mask_results, targets_seen, sizes = [], [], [], []
    has_masks = False
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        for image, target, output in zip(images, targets, outputs):
            image_id = int(target["image_id"])
            results = detections_to_coco(output, image_id, label_to_cat)
            has_masks = has_masks or "masks" in output
            box_results += [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
            mask_results += [r for r in results if "segmentation" in r]
            if coco_gt is None:
                targets_seen.append({k: v for k, v in target.items() if k in ("boxes", "labels", "masks", "image_id")})
                sizes.append(tuple(image.shape[-2:]))
    if coco_gt is None:
        # mask AP needs ground-truth masks: without them only boxes are scored
        has_masks = has_masks and all("masks" in t for t in targets_seen)
        coco_gt = targets_to_coco(targets_seen, sizes, _num_object_classes(model))
    metrics = coco_map(coco_gt, box_results, "bbox")
    if has_masks:
        metrics.update({f"mask_{k}": v for k, v in coco_map(coco_gt, mask_results, "segm").items()})
    return metrics


def _num_object_classes(model: nn.Module) -> int:
    # every architecture carries background as class 0 (see create_detector)
    if hasattr(model, "roi_heads"):
        return model.roi_heads.box_predictor.cls_score.out_features - 1
    return model.head.classification_head.num_classes - 1
