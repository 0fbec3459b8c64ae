"""Semantic FPN (Kirillov et al., 2019) on an EfficientViM + FPN backbone."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..errors import EfficientViMError
from ..model import EfficientViMFeatures
from .backbone import LEVEL_STRIDES, EfficientViMFPN, build_backbone

ARCHS = ("semantic_fpn",)
IGNORE_INDEX = 255


class ScaleHead(nn.Sequential):
    """Bring one FPN level to stride 4: max(1, log2(stride / 4)) 3x3 Conv-BN-ReLU, each followed
    by a 2x bilinear upsampling while the map is coarser than stride 4."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        steps = max(1, int(math.log2(stride // 4)))
        layers: list[nn.Module] = []
        for i in range(steps):
            layers += [
                nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            if stride > 4:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        super().__init__(*layers)


class SemanticFPN(nn.Module):
    """Per-pixel classifier: FPN levels brought to stride 4 by :class:`ScaleHead`, summed,
    a 1x1 classifier, and logits resized bilinearly to the input's H x W.

    Takes float images in [0, 1] (normalised inside with the backbone's mean/std). In training
    mode with ``targets`` (B, H, W) class maps it returns ``{"loss_seg": cross-entropy}``,
    ignoring pixels labelled 255 and weighting classes by ``class_weight``; otherwise logits
    (B, num_classes, H, W).
    """

    def __init__(
        self,
        backbone: EfficientViMFPN,
        num_classes: int,
        channels: int = 128,
        class_weight: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.scale_heads = nn.ModuleList(ScaleHead(backbone.out_channels, channels, s) for s in backbone.strides)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        cfg = getattr(backbone.body, "pretrained_cfg", None) or {}
        for name, default in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)):
            self.register_buffer(name, torch.tensor(cfg.get(name, default)).view(1, -1, 1, 1), persistent=False)
        weight = torch.tensor(class_weight, dtype=torch.float32) if class_weight is not None else None
        if weight is not None and weight.numel() != num_classes:
            raise EfficientViMError(f"class_weight needs {num_classes} entries, got {weight.numel()}")
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        height, width = images.shape[-2:]
        levels = list(self.backbone((images - self.mean) / self.std).values())
        out = self.scale_heads[0](levels[0])
        for head, level in zip(self.scale_heads[1:], levels[1:]):
            y = head(level)
            # odd input sizes give ceil-rounded coarse maps: align to the finest map
            out = out + (y if y.shape[-2:] == out.shape[-2:] else F.interpolate(y, out.shape[-2:], mode="bilinear"))
        logits = self.classifier(self.dropout(out))
        logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
        if self.training and targets is not None:
            loss = F.cross_entropy(logits, targets, weight=self.class_weight, ignore_index=IGNORE_INDEX)
            return {"loss_seg": loss}
        return logits


def create_segmenter(
    arch: str,
    backbone: str | EfficientViMFeatures,
    num_classes: int,
    checkpoint: str | os.PathLike | None = None,
    frozen_stages: int = 0,
    strides: Sequence[int] | None = None,
    fpn_channels: int = 256,
    channels: int = 128,
    class_weight: Sequence[float] | None = None,
) -> SemanticFPN:
    """A Semantic FPN segmenter whose logits have the input's height and width.

    Args:
        arch: ``semantic_fpn``.
        backbone: a model name (``efficientvim_m1`` ...) or an ``EfficientViMFeatures``.
        num_classes: classes of the label maps, background included when it is a class.
        checkpoint: classification weights for the trunk (heads dropped), any format the core reads.
        frozen_stages: 0 trains everything; k freezes the stem and the first k - 1 stages.
        strides: the trunk's maps read, by stride (default all five: 4, 8, 16, 32, 64).
        fpn_channels, channels: widths of the FPN and of the per-level heads.
        class_weight: per-class cross-entropy weights (e.g. to lift rare classes above the background).
    """
    if arch not in ARCHS:
        raise EfficientViMError(f"unknown segmenter {arch!r}: choose one of {', '.join(ARCHS)}")
    if num_classes < 2:
        raise EfficientViMError(f"a segmenter needs at least 2 classes, got {num_classes}")
    if strides is None and not isinstance(backbone, EfficientViMFeatures):
        strides = LEVEL_STRIDES
    fpn = build_backbone(backbone, strides, fpn_channels, None, checkpoint, frozen_stages)
    return SemanticFPN(fpn, num_classes, channels, class_weight)
