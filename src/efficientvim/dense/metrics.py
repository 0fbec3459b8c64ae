"""COCO mAP (pycocotools) for detections and masks; confusion-matrix mIoU for semantic segmentation."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import import_extra
from .segmentation import IGNORE_INDEX


def _rle(mask: np.ndarray) -> dict:
    mask_utils = import_extra("pycocotools.mask", "coco", "COCO detection data and mAP")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def detections_to_coco(
    output: dict, image_id: int, label_to_cat: dict[int, int] | None = None, mask_threshold: float = 0.5
) -> list[dict]:
    """One image's torchvision detections as COCO result dicts (boxes xywh, masks as RLE)."""
    boxes = output["boxes"].detach().cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    masks = output.get("masks")
    results = []
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), output["scores"].tolist(), output["labels"].tolist())):
        r = {
            "image_id": image_id,
            "category_id": label_to_cat[label] if label_to_cat else label,
            "bbox": box,
            "score": score,
        }
        if masks is not None:
            r["segmentation"] = _rle((masks[i, 0] > mask_threshold).cpu().numpy())
        results.append(r)
    return results


def targets_to_coco(targets: Sequence[dict], image_sizes: Sequence[tuple[int, int]], num_classes: int):
    """Ground truth targets (boxes xyxy, labels, optional masks, image_id) as a pycocotools COCO object."""
    COCO = import_extra("pycocotools.coco", "coco", "COCO detection data and mAP").COCO  # noqa: N806 (the class)
    images, annotations = [], []
    for target, (height, width) in zip(targets, image_sizes):
        image_id = int(target["image_id"])
        images.append({"id": image_id, "height": height, "width": width})
        masks = target.get("masks")
        for j, (box, label) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist())):
            x0, y0, x1, y1 = box
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            if masks is not None:
                ann["segmentation"] = _rle(masks[j].cpu().numpy())
                ann["area"] = float(masks[j].sum())
            annotations.append(ann)
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(1, num_classes + 1)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_map(coco_gt, results: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """COCO AP over IoU 0.5:0.95, at 0.5 and at 0.75 (``iou_type`` "bbox" or "segm")."""
    COCOeval = import_extra("pycocotools.cocoeval", "coco", "COCO detection data and mAP").COCOeval  # noqa: N806 (the class)
    if not results:  # loadRes refuses an empty list; no detections score zero
        return {"mAP": 0.0, "mAP@50": 0.0, "mAP@75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 where no ground truth exists
    return {k: max(float(ev.stats[i]), 0.0) for i, k in enumerate(("mAP", "mAP@50", "mAP@75"))}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows the true class, columns the predicted; 255 ignored."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Mean IoU over all classes that occur in ground truth or prediction, background included,
    plus pixel accuracy and the per-class IoU (NaN for classes that never occur)."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp / union  # NaN where a class is absent from both
    return {
        "mIoU": float(iou.nanmean()),
        "pixel_acc": float(tp.sum() / confusion.sum().clamp(min=1)),
        "IoU": iou.tolist(),
    }
