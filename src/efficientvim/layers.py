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
        self.bn_weight_init = bn_weight_init
        nn.init.constant_(self.norm.weight, bn_weight_init)
        nn.init.zeros_(self.norm.bias)
        if act:
            self.act = nn.ReLU()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The constructor's special value (after the layers' own reset_parameters): the BN scale."""
        if isinstance(self.norm, nn.BatchNorm2d):
            nn.init.constant_(self.norm.weight, self.bn_weight_init)

    @torch.no_grad()
    def fuse(self, gate: torch.Tensor | None = None, identity: bool = False) -> ConvNorm:
        """Fold the BatchNorm into the conv (in place; returns self), for inference.

        ``identity`` adds the input to the output (a residual x + f(x)); ``gate`` s (C,) makes the
        module compute (1 - s) x + s f(x). Both need a depthwise, same-size conv; both are linear in x,
        so they fold into the kernel as multiples of the identity kernel delta.
        """
        conv, bn = self.conv, self.norm
        # in float64, cast back once: the folded model matches the original to float32 rounding
        weight = conv.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64,
                                                                            device=weight.device)
        if isinstance(bn, nn.BatchNorm2d):
            scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
            weight, bias = weight * scale.view(-1, 1, 1, 1), bn.bias.double() - bn.running_mean.double() * scale
            self.norm = nn.Identity()
        if gate is not None or identity:
            if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels or conv.stride != (1, 1):
                raise ValueError("only a depthwise, stride-1 conv folds a residual or gate")
            s = gate.double() if gate is not None else torch.ones_like(bias)
            weight, bias = weight * s.view(-1, 1, 1, 1), bias * s
            k = conv.kernel_size[0] // 2
            weight[:, 0, k, k] += 1.0 - s if gate is not None else 1.0  # the x term through the centre tap
        conv.weight.copy_(weight)
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
        return self


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
        # swapping axes 1 and -1 is its own inverse; explicit non-negative dims, since the ONNX exporter writes
        # a negative axis as a Transpose perm entry ONNX Runtime rejects; scriptable and fx-traceable
        last = x.dim() - 1
        x = F.layer_norm(x.transpose(1, last), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.transpose(1, last)


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
        self.residuals_folded = False  # set by fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residuals_folded:
            return self.dwconv2(self.conv(self.dwconv1(x)))
        x = x + self.dwconv1(x)
        x = self.conv(x)
        return x + self.dwconv2(x)

    @torch.no_grad()
    def fuse(self) -> PatchMerging:
        """Fold every BatchNorm and both residual branches x + DW(x) into plain convs (in place), for inference;
        a second call changes nothing (the residuals are folded once)."""
        if self.residuals_folded:
            return self
        self.dwconv1.fuse(identity=True)
        self.dwconv2.fuse(identity=True)
        for m in self.conv:
            if isinstance(m, ConvNorm):
                m.fuse()
        self.residuals_folded = True
        return self
