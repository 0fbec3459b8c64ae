"""Convolutional building blocks of EfficientViM: Conv-BN, channel LayerNorm, stem, FFN, PatchMerging.

Attribute names (``conv``, ``norm``, ``fc1`` ...) follow the released checkpoint format, so the
authors' and timm's state dicts load without a renaming table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import SqueezeExcite
from torch import nn


class ConvNorm(nn.Sequential):
    """Bias-free Conv2d, BatchNorm2d and an optional ReLU."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_dim, out_dim, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.norm = nn.BatchNorm2d(out_dim)
        nn.init.constant_(self.norm.weight, bn_weight_init)
        nn.init.zeros_(self.norm.bias)
        if act:
            self.act = nn.ReLU()


class DepthwiseConvNorm(ConvNorm):
    """3x3 depthwise Conv-BN without activation: the local-mixing branch of blocks and downsamples."""

    def __init__(self, dim: int, bn_weight_init: float = 1.0) -> None:
        super().__init__(dim, dim, 3, groups=dim, act=False, bn_weight_init=bn_weight_init)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over dimension 1 of a channels-first tensor of any rank: (B, C, ...) -> (B, C, ...).

    Used on feature maps (B, C, H, W) and on hidden states (B, C, N) alike.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps)
        # explicit non-negative dims: the ONNX exporter writes movedim(-1, 1) as a Transpose with a
        # negative perm entry, which ONNX Runtime rejects
        return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))


class Stem(nn.Module):
    """Four 3x3 stride-2 Conv-BN layers (ReLU after the first three): C_in -> dim/8 -> dim/4 -> dim/2 -> dim.

    ``forward_levels`` also returns the stride-4 and stride-8 maps, the fine levels dense heads need.
    """

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        widths = (in_chans, dim // 8, dim // 4, dim // 2, dim)
        self.conv = nn.Sequential(
            *[ConvNorm(widths[i], widths[i + 1], 3, stride=2, act=i < 3) for i in range(4)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the (stride 4, stride 8, stride 16) maps."""
        s4 = self.conv[1](self.conv[0](x))
        s8 = self.conv[2](s4)
        return s4, s8, self.conv[3](s8)


class FFN(nn.Module):
    """Pointwise MLP on a feature map: 1x1 Conv-BN-ReLU (expand) then 1x1 Conv-BN (project back)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden_dim)
        # Zero-initialised BN scale: the branch starts as the zero function.
        self.fc2 = ConvNorm(hidden_dim, dim, act=False, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class PatchMerging(nn.Module):
    """Stride-2 downsample between stages: an inverted-residual MBConv with squeeze-excitation,
    wrapped by depthwise residual branches on its input and output.

    x + DW(x) -> 1x1 (x4, ReLU) -> DW3x3/2 (ReLU) -> SE(0.25) -> 1x1 -> y + DW(y)
    """

    def __init__(self, in_dim: int, out_dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(out_dim * ratio)
        self.dwconv1 = DepthwiseConvNorm(in_dim)
        self.conv = nn.Sequential(
            ConvNorm(in_dim, hidden),
            ConvNorm(hidden, hidden, 3, stride=2, groups=hidden),
            SqueezeExcite(hidden, 0.25),
            ConvNorm(hidden, out_dim, act=False),
        )
        self.dwconv2 = DepthwiseConvNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv1(x)
        x = self.conv(x)
        return x + self.dwconv2(x)
