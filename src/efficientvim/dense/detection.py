"""torchvision detectors (RetinaNet, FCOS, Faster R-CNN, Mask R-CNN) on an EfficientViM + FPN backbone.

Label convention for every architecture: 0 is background, objects are 1..num_classes (the
torchvision R-CNN convention; RetinaNet and FCOS simply never see label 0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import EfficientViMError
from ..model import EfficientViMFeatures
from .backbone import EfficientViMFPN, build_backbone

ARCHS = ("retinanet", "fcos", "fasterrcnn", "maskrcnn")
# Single-stage heads read strides 8-64 plus a max-pooled stride-128 level (the P3-P7 span of
# RetinaNet/FCOS); two-stage models read strides 4-64 (the P2-P6 span), RoIs pooled from 4-32.
DEFAULT_STRIDES = {"retinanet": (8, 16, 32, 64), "fcos": (8, 16, 32, 64), "fasterrcnn": (4, 8, 16, 32, 64)}
DEFAULT_STRIDES["maskrcnn"] = DEFAULT_STRIDES["fasterrcnn"]


def create_detector(
    arch: str,
    backbone: str | EfficientViMFeatures,
    num_classes: int,
    checkpoint: str | os.PathLike | None = None,
    frozen_stages: int = 0,
    strides: Sequence[int] | None = None,
    fpn_channels: int = 256,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    **kwargs,
) -> nn.Module:
    """A torchvision detection model whose ``backbone`` is EfficientViM plus an FPN.

    Args:
        arch: ``retinanet``, ``fcos``, ``fasterrcnn`` or ``maskrcnn``.
        backbone: a model name (``efficientvim_m1`` ...) or an ``EfficientViMFeatures``.
        num_classes: object classes, background excluded; targets label them 1..num_classes.
        checkpoint: ImageNet-style classification weights (authors' .pth, timm, ``save_weights``);
            the classifier heads are dropped.
        frozen_stages: 0 trains everything; k freezes the stem and the first k - 1 stages.
        strides: the trunk's maps the pyramid reads, by stride (4 and 8: the stem's; 16, 32, 64: the
            stages'); default per ``arch`` in ``DEFAULT_STRIDES``.
        fpn_channels: width of the FPN and of the heads.
        min_size, max_size: torchvision's resize of the shorter / longer image side.
        **kwargs: further arguments of the torchvision model (``score_thresh``, ``detections_per_img`` ...).

    Images go in as float tensors in [0, 1] of any H x W; the model normalises with the
    backbone's mean/std, resizes, and pads batches to a multiple of the coarsest stride.
    """
    if arch not in ARCHS:
        raise EfficientViMError(f"unknown detector {arch!r}: choose one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise EfficientViMError(f"num_classes counts object classes and must be at least 1, got {num_classes}")
    if strides is None and not isinstance(backbone, EfficientViMFeatures):
        strides = DEFAULT_STRIDES[arch]
    two_stage = arch in ("fasterrcnn", "maskrcnn")
    extra = None if two_stage else LastLevelMaxPool()
    fpn = build_backbone(backbone, strides, fpn_channels, extra, checkpoint, frozen_stages)
    strides = fpn.strides + ([] if two_stage else [2 * fpn.strides[-1]])
    cfg = getattr(fpn.body, "pretrained_cfg", None) or {}
    common = dict(
        min_size=min_size,
        max_size=max_size,
        image_mean=list(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        image_std=list(cfg.get("std", IMAGENET_DEFAULT_STD)),
        # anchors read each level's stride as image size // map size: pad to the coarsest stride
        size_divisible=strides[-1],
    )
    common.update(kwargs)
    classes = num_classes + 1
    if arch == "fcos":
        # FCOS's "anchor" is one point per location whose size is the level's stride
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        return FCOS(fpn, classes, anchor_generator=anchors, **common)
    if arch == "retinanet":
        # three scales per octave from 4 x stride, as RetinaNet's 32..512 on strides 8..128
        sizes = tuple(tuple(round(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        return RetinaNet(fpn, classes, anchor_generator=anchors, **common)
    return _two_stage(arch, fpn, classes, strides, common)


def _two_stage(arch: str, fpn: EfficientViMFPN, classes: int, strides: list[int], common: dict) -> nn.Module:
    # one RPN anchor size per level, 8 x stride (32 at stride 4, as Faster R-CNN's P2)
    anchors = AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    # RoIs are pooled from the (up to four) finest levels of stride <= 32, as FPN's P2-P5
    roi_levels = [name for name, s in zip(fpn.level_names, strides) if s <= 32][:4] or fpn.level_names[:1]
    parts = dict(
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn.out_channels, 3),
        box_roi_pool=MultiScaleRoIAlign(roi_levels, output_size=7, sampling_ratio=2),
    )
    if arch == "maskrcnn":
        parts["mask_roi_pool"] = MultiScaleRoIAlign(roi_levels, output_size=14, sampling_ratio=2)
        return MaskRCNN(fpn, classes, **parts, **common)
    return FasterRCNN(fpn, classes, **parts, **common)
