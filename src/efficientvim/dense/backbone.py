"""EfficientViM plus a feature pyramid network: the ``backbone`` torchvision's detectors expect.

The trunk's stages start at stride 16, coarse for small objects and thin structures, so the
pyramid can also read the stem's stride-4 and stride-8 maps (levels 0 and 1 of
:class:`~efficientvim.EfficientViMFeatures`) next to the stage maps (levels 2-4, strides 16-64).
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

    Returns an ordered dict of ``out_channels``-wide maps keyed by pyramid level ("0".."4",
    matching ``body.out_indices``), then the extra levels of ``extra_blocks`` ("pool", "p6", "p7").
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
        self.level_names = [str(i) for i in body.out_indices]
        self.strides = list(body.feature_info.reduction())
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


def build_backbone(
    backbone: str | EfficientViMFeatures,
    out_indices: Sequence[int] | None = None,
    out_channels: int = 256,
    extra_blocks: ExtraFPNBlock | None = None,
    checkpoint: str | os.PathLike | None = None,
    frozen_stages: int = 0,
) -> EfficientViMFPN:
    """An :class:`EfficientViMFPN` over the pyramid levels ``out_indices`` (default: the three stages).

    ``backbone`` is a model name (``efficientvim_m1`` ...) or a ready ``EfficientViMFeatures``
    (e.g. ``create_model(name, features_only=True, out_indices=..., embed_dim=...)`` for a custom
    width; its own ``out_indices`` then apply and must equal ``out_indices`` when that is given).
    ``checkpoint`` holds classification weights in any format ``create_model`` reads; the
    classifier heads and the stages past the deepest level are dropped.
    """
    if isinstance(backbone, str):
        levels = {} if out_indices is None else {"out_indices": tuple(out_indices)}
        body = create_model(backbone, checkpoint=checkpoint, features_only=True, **levels)
    elif isinstance(backbone, EfficientViMFeatures):
        body = backbone
        if out_indices is not None and tuple(sorted(out_indices)) != body.out_indices:
            raise EfficientViMError(
                f"the given backbone returns levels {body.out_indices}, not {tuple(out_indices)}: "
                "build it with create_model(..., features_only=True, out_indices=...)"
            )
        if checkpoint is not None:
            load_into(body, Checkpoint(checkpoint), drop_heads=True)
    else:
        raise EfficientViMError(
            f"backbone must be a model name or an EfficientViMFeatures, not {type(backbone).__name__}"
        )
    return EfficientViMFPN(body, out_channels, extra_blocks, frozen_stages)
