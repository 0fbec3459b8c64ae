"""EfficientViM plus a feature pyramid network: the ``backbone`` torchvision's detectors expect.

The trunk's stages start at stride 16, coarse for small objects and thin structures, so the
pyramid can also read the stem's stride-4 and stride-8 maps next to the three stage maps (strides
16, 32, 64). Dense models name the levels they read by stride: ``strides=(8, 16, 32, 64)``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork

from ..errors import EfficientViMError
from ..model import EfficientViMFeatures
from ..registry import create_model
from ..weights import Checkpoint, load_into


class EfficientViMFPN(nn.Module):
    """``body`` (an EfficientViMFeatures) followed by a torchvision FeaturePyramidNetwork.

    Returns an ordered dict of ``out_channels``-wide maps keyed by stride ("4", "8", ... "64"), then
    the extra levels of ``extra_blocks`` ("pool", "p6", "p7").
    ``frozen_stages`` = k > 0 freezes the stem (k >= 1) and the first k - 1 stages: their
    parameters stop training and their BatchNorms keep their running statistics.
    """

    def __init__(
        self,
        body: EfficientViMFeatures,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= frozen_stages <= 1 + len(body.stages):
            raise EfficientViMError(
                f"frozen_stages must lie in 0..{1 + len(body.stages)} (stem + {len(body.stages)} stages), "
                f"got {frozen_stages}"
            )
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks)
        self.out_channels = out_channels
        self.strides = list(body.feature_info.reduction())
        self.level_names = [str(s) for s in self.strides]
        self.frozen_stages = frozen_stages
        for p in self._frozen_modules().parameters():
            p.requires_grad_(False)

    def _frozen_modules(self) -> nn.ModuleList:
        if self.frozen_stages == 0:
            return nn.ModuleList()
        return nn.ModuleList([self.body.patch_embed, *self.body.stages[: self.frozen_stages - 1]])

    def train(self, mode: bool = True) -> EfficientViMFPN:
        super().train(mode)
        self._frozen_modules().eval()
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict(zip(self.level_names, maps)))


LEVEL_STRIDES = (4, 8, 16, 32, 64)  # the stem's two maps, then the three stages'


def split_strides(strides: Sequence[int]) -> dict:
    """The feature-extractor arguments (``stem_strides``, ``out_indices``) that return the maps at ``strides``."""
    strides = tuple(strides)
    if not strides or any(s not in LEVEL_STRIDES for s in strides) or len(set(strides)) != len(strides):
        raise EfficientViMError(
            f"strides name the pyramid levels read, distinct values among {LEVEL_STRIDES}; got {strides}"
        )
    return dict(
        stem_strides=tuple(sorted(s for s in strides if s < 16)),
        out_indices=tuple(sorted(LEVEL_STRIDES.index(s) - 2 for s in strides if s >= 16)),
    )


def build_backbone(
    backbone: str | EfficientViMFeatures,
    strides: Sequence[int] | None = None,
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    checkpoint: str | os.PathLike | None = None,
    frozen_stages: int = 0,
) -> EfficientViMFPN:
    """An :class:`EfficientViMFPN` over the trunk's maps at ``strides`` (default: the three stages, 16-64).

    ``backbone`` is a model name (``efficientvim_m1`` ...) or a ready ``EfficientViMFeatures``
    (e.g. ``create_model(name, features_only=True, stem_strides=(8,), embed_dim=...)`` for a custom
    width; its own levels then apply and must equal ``strides`` when that is given).
    ``checkpoint`` holds classification weights in any format ``create_model`` reads; the
    classifier heads and the stages past the deepest level are dropped.
    """
    if isinstance(backbone, str):
        levels = {} if strides is None else split_strides(strides)
        body = create_model(backbone, checkpoint=checkpoint, features_only=True, **levels)
    elif isinstance(backbone, EfficientViMFeatures):
        body = backbone
        has = tuple(body.feature_info.reduction())
        if strides is not None and tuple(sorted(strides)) != has:
            raise EfficientViMError(
                f"the given backbone returns strides {has}, not {tuple(strides)}: build it with "
                f"create_model(..., features_only=True, **efficientvim.dense.split_strides({tuple(strides)}))"
            )
        if checkpoint is not None:
            load_into(body, Checkpoint(checkpoint), drop_heads=True)
    else:
        raise EfficientViMError(
            f"backbone must be a model name or an EfficientViMFeatures, not {type(backbone).__name__}"
        )
    return EfficientViMFPN(body, out_channels, extra_blocks, frozen_stages)
