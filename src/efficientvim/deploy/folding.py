"""The folding maths of the fused path: BatchNorm into weights, kernels as 1x1 matrices, identity
kernels, the rescaled residual stream, and the padding block of the HSM-SSD channels."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import (
    SMALL_GEMM_TOKENS,
    PackedWeights,
    packed_conv2d,
    packed_linear,
)
from ..layers import ConvNorm
from ..model import EfficientViMBlock

# Channel count oneDNN and ONNX Runtime's NCHWc kernels block by (AVX-512: 16 floats); B/C/dt are padded to it.
CHANNEL_BLOCK = 16


# Largest gate ratio r3 = s3 / (1 - s3) for which the FFN output bias is moved in front of the FFN;
# the move costs fc1 about r3 * eps of relative precision.
MAX_MOVED_BIAS_GAIN = 16.0


def frozen(t: torch.Tensor, dtype: torch.dtype, memory_format: torch.memory_format = torch.contiguous_format):
    return nn.Parameter(t.detach().to(dtype).contiguous(memory_format=memory_format), requires_grad=False)


def conv_bn(m: ConvNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with the BatchNorm that follows folded in (float64)."""
    bn = m.norm
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    weight = m.conv.weight.double() * scale.view(-1, 1, 1, 1)
    return weight, bn.bias.double() - bn.running_mean.double() * scale


def as_1x1(weight: torch.Tensor) -> torch.Tensor:
    return weight.view(*weight.shape[:2], 1, 1)


def identity_kernel(channels: int, size: int) -> torch.Tensor:
    delta = torch.zeros(channels, 1, size, size, dtype=torch.float64)
    delta[:, :, size // 2, size // 2] = 1.0
    return delta


class TokenConv(nn.Module):
    """A conv (dense, depthwise or 1x1) with bias and optional ReLU on a (B, H, W, C) map.

    The permutes are views: the conv sees a channels-last NCHW tensor and returns one, so the
    output is again a contiguous (B, H', W', C') tensor. 1x1 projections with a bias run here
    too rather than as ``F.linear``: oneDNN adds the bias inside the GEMM, where ``addmm`` first
    copies the broadcast bias into the output; below ``SMALL_GEMM_TOKENS`` tokens (batch 1, late
    stages) PyTorch sends such convs to a slow im2col path instead, so there they run as ``F.linear``.
    With ``channels_first`` it takes and returns NCHW.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, groups: int, relu: bool, dtype: torch.dtype,
        channels_first: bool,
    ) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.pointwise = weight.shape[-1] == 1 and groups == 1
        # a 1x1 projection keeps its weight as a (C_out, C_in) matrix, the operand of F.linear; a dense
        # (stem) convolution on channels-last maps keeps its weight channels-last too, so it is not
        # reordered on every call
        dense_on_tokens = groups == 1 and not self.pointwise and not channels_first
        # channels_first keeps the 4-D conv weight itself: a view per call would make exported graphs
        # (torch.export for ExecuTorch) see a computed weight, which XNNPACK does not take
        flat = self.pointwise and not channels_first
        self.weight = frozen(weight.flatten(1) if flat else weight, dtype,
                              torch.channels_last if dense_on_tokens else torch.contiguous_format)
        self.bias = frozen(bias, dtype) if bias is not None else None
        self.stride = stride
        self.padding = weight.shape[-1] // 2
        self.groups = groups
        self.relu = relu
        self.packed = PackedWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pointwise and not self.channels_first and x.numel() < SMALL_GEMM_TOKENS * x.shape[-1]:
            x = packed_linear(x, self.weight, self.bias, self.packed)
            return x.relu_() if self.relu else x
        if not self.channels_first:
            x = x.permute(0, 3, 1, 2)
        weight = as_1x1(self.weight) if self.pointwise and not self.channels_first else self.weight
        x = packed_conv2d(x, weight, self.bias, self.stride, self.padding, self.groups, self.relu, self.packed)
        return x if self.channels_first else x.permute(0, 2, 3, 1)


def stream_scale(block: EfficientViMBlock) -> torch.Tensor:
    """The factor (1 - s3) between a fused block's output stream and the true block output."""
    return 1.0 - block.alpha[3].double().sigmoid()
