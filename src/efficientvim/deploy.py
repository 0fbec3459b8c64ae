"""The inference graph of EfficientViM: every affine map folded, tokens kept channels-last.

``fuse(model)`` turns a trained :class:`EfficientViM` or :class:`EfficientViMFeatures` into an
inference-only copy that computes the same function with fewer, larger operations:

* BatchNorm is folded into the convolution or projection before it.
* A gated depthwise branch (1 - s) x + s DW(x) is one depthwise conv whose kernel is
  s K + (1 - s) delta (delta: the identity kernel), and a residual x + DW(x) is K + delta.
* The MSF heads' LayerNorm affine (gamma, beta) is folded into the merged head, so only the
  normalisation itself remains there. Inside a block the LayerNorm keeps its affine: it is free
  within the norm, and folding it into the hidden-state projection would leave a rank-one
  correction (two more operations per block). HSM-SSD's A is the bias of the B/C/dt depthwise
  conv (on the dt channels only).
* The gates of the HSM-SSD and FFN branches become free by carrying the residual stream in
  a rescaled form: the block output (1 - s) (x + s / (1 - s) f(x)) is kept as x + r f(x) with
  r = s / (1 - s) folded into the branch's last projection, and the per-channel factor
  (1 - s) folded into the next depthwise kernel, which is linear in its input. The branch
  sum then happens inside the GEMM that produces it (``baddbmm`` / ``addmm``, in place). The
  FFN's output bias moves in front of the FFN into the preceding depthwise bias while
  r <= ``MAX_MOVED_BIAS_GAIN`` (beyond that the move would cost fc1 precision).
* The four (or, distilled, eight) MSF heads become one linear layer on the concatenated
  pooled features.
* Maps are held as (B, H, W, C) tensors: every 1x1 projection is one GEMM over the tokens,
  depthwise convolutions run on the same memory as channels-last NCHW views (no copies), and
  HSM-SSD is two batched matrix products over the token axis. ``layout="channels_first"``
  keeps NCHW maps instead, for ONNX Runtime (see :func:`fuse`).
* HSM-SSD's B, C and dt channels are padded with zeros to whole 16-channel blocks, which the
  CPU kernels of oneDNN and ONNX Runtime run faster than a ragged remainder.
* Which library call runs each operation (weights pre-packed for batch-1 sizes, sums inside the
  GEMM) is decided in :mod:`efficientvim.kernels`.

All folding is done in float64 and cast back, so the fused model matches the original to
float32 rounding (tests check 1e-4 relative on random weights).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .hsm_ssd import HSMSSD
from .kernels import (
    PACKED_GEMM_TOKENS,
    SMALL_GEMM_TOKENS,
    PackedWeights,
    accumulate,
    eager,
    native_precision,
    packed_conv2d,
    packed_linear,
    stem_reads_nchw,
)
from .layers import ChannelLayerNorm, ConvNorm, PatchMerging, Stem
from .model import EfficientViM, EfficientViMBlock, EfficientViMFeatures, EfficientViMStage, _check_input

# Channel count oneDNN and ONNX Runtime's NCHWc kernels block by (AVX-512: 16 floats); B/C/dt are padded to it.
CHANNEL_BLOCK = 16
# Largest gate ratio r3 = s3 / (1 - s3) for which the FFN output bias is moved in front of the FFN;
# the move costs fc1 about r3 * eps of relative precision.
MAX_MOVED_BIAS_GAIN = 16.0


def _frozen(t: torch.Tensor, dtype: torch.dtype, memory_format: torch.memory_format = torch.contiguous_format):
    return nn.Parameter(t.detach().to(dtype).contiguous(memory_format=memory_format), requires_grad=False)


def _conv_bn(m: ConvNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with the BatchNorm that follows folded in (float64)."""
    bn = m.norm
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    weight = m.conv.weight.double() * scale.view(-1, 1, 1, 1)
    return weight, bn.bias.double() - bn.running_mean.double() * scale


def _as_1x1(weight: torch.Tensor) -> torch.Tensor:
    return weight.view(*weight.shape[:2], 1, 1)


def _identity_kernel(channels: int, size: int) -> torch.Tensor:
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
        self.weight = _frozen(weight.flatten(1) if flat else weight, dtype,
                              torch.channels_last if dense_on_tokens else torch.contiguous_format)
        self.bias = _frozen(bias, dtype) if bias is not None else None
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
        weight = _as_1x1(self.weight) if self.pointwise and not self.channels_first else self.weight
        x = packed_conv2d(x, weight, self.bias, self.stride, self.padding, self.groups, self.relu, self.packed)
        return x if self.channels_first else x.permute(0, 2, 3, 1)


class FusedStem(nn.Module):
    """The four stride-2 Conv-BN layers of the stem; the input image is made channels-last once."""

    def __init__(self, stem: Stem, dtype: torch.dtype, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        layers = []
        for m in stem.conv:
            weight, bias = _conv_bn(m)
            layers.append(TokenConv(weight, bias, m.conv.stride[0], 1, hasattr(m, "act"), dtype, channels_first))
        self.conv = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the stride 4, 8 and 16 maps as (B, H, W, C), or NCHW with ``channels_first``."""
        if not self.channels_first:
            # one reordering copy of the small 3-channel image: the first conv then reads a channels-last
            # map like the others (and runs on its pre-reordered weight); where oneDNN reads a batch of
            # NCHW images faster than the copy costs, they go in as they are (kernels.stem_reads_nchw)
            if not stem_reads_nchw(x):
                x = x.contiguous(memory_format=torch.channels_last)
            x = x.permute(0, 2, 3, 1)
        levels = []
        for conv in self.conv:
            x = conv(x)
            levels.append(x)
        return levels[1:]


def _stream_scale(block: EfficientViMBlock) -> torch.Tensor:
    """The factor (1 - s3) between a fused block's output stream and the true block output."""
    return 1.0 - block.alpha[3].double().sigmoid()


class FusedStateMixer(nn.Module):
    """:class:`efficientvim.hsm_ssd.RecursiveStateMixer` on token-major hidden states (B, N, C), its output
    scaled per channel by ``out_scale`` (folded into the innermost output projection: every level after it
    is linear in it, per channel)."""

    def __init__(self, mixer: nn.Module, out_scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.states = mixer.states
        self.dim, self.eps = mixer.norm.normalized_shape[0], mixer.norm.eps
        self.norm_weight = _frozen(mixer.norm.weight.double(), dtype)
        self.norm_bias = _frozen(mixer.norm.bias.double(), dtype)
        self.bcdt_weight = _frozen(mixer.BCdt_proj.conv.weight.double().squeeze(-1), dtype)  # (3 N', C)
        self.inner = FusedStateMixer(mixer.inner, out_scale, dtype) if hasattr(mixer, "inner") else None
        if self.inner is None:
            self.d_inner = mixer.d_inner
            self.hz_weight = _frozen(mixer.hz_proj.conv.weight.double().squeeze(-1), dtype)
            self.skip = _frozen(mixer.D.double(), dtype)
            self.out_weight = _frozen(mixer.out_proj.conv.weight.double().squeeze(-1) * out_scale.view(-1, 1), dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = F.layer_norm(h, (self.dim,), self.norm_weight, self.norm_bias, self.eps)
        b, c, dt = F.linear(n, self.bcdt_weight).split(self.states, dim=-1)  # each (B, N, N')
        p = dt.transpose(1, 2).softmax(dim=-1) * b.transpose(1, 2)  # (B, N', N)
        inner = torch.matmul(p, h)  # (B, N', C): the raw states
        if self.inner is not None:
            inner = self.inner(inner)
        else:
            inner, z = F.linear(inner, self.hz_weight).split(self.d_inner, dim=-1)
            inner = F.linear(inner * (F.silu(z) + self.skip), self.out_weight)
        return torch.matmul(c, inner)  # (B, N, C)


class FusedBlock(nn.Module):
    """One EfficientViM block on a rescaled stream: reads x_true / in_scale, returns x_true / _stream_scale.

    Shapes: x (B, H, W, C); the returned hidden state is h * r1 (B, N, C) with r1 = s1 / (1 - s1);
    ``state_scale`` = 1 / r1 recovers the true h for the MSF head.

    The folded weights serve both layouts; the block's few lines of arithmetic are written twice,
    once per layout, because no one formulation is fastest in both runtimes: in ONNX Runtime the
    NCHW one (B, C, dt kept (B, N, L), no transposes around the state products) beats the
    token-major graph by 4-17%, while in eager PyTorch neither wins everywhere (token-major with
    its in-place GEMM sums 7-9% faster for M1 and M4 at batch 32, NCHW 4-10% faster for M2 and at
    batch 1; ``benchmarks/layouts.py``, AMD EPYC Zen 4, 2 threads).
    """

    def __init__(
        self, block: EfficientViMBlock, in_scale: torch.Tensor, dtype: torch.dtype, channels_first: bool
    ) -> None:
        super().__init__()
        self.channels_first = channels_first
        mixer: HSMSSD = block.mixer
        dim, state_dim, heads = mixer.dim, mixer.state_dim, mixer.num_heads
        self.dim, self.state_dim, self.d_inner, self.eps = dim, state_dim, mixer.d_inner, block.norm.eps
        self.num_heads = heads
        self.prev_scale: nn.Parameter | None = None  # hidden-state passing: set by FusedStage
        s = block.alpha.double().sigmoid()  # the four gates s0..s3, each (C,)
        keep = 1.0 - s  # (1 - s_i) in float64: exact enough even for strongly open gates
        r = s / keep

        # 1. x = (1 - s0) x + s0 DW(x), on the stream x_true = in_scale * x
        weight, bias = _conv_bn(block.dwconv1)
        kernel = s[0].view(-1, 1, 1, 1) * weight + keep[0].view(-1, 1, 1, 1) * _identity_kernel(dim, 3)
        self.dwconv1 = TokenConv(kernel * in_scale.view(-1, 1, 1, 1), s[0] * bias, 1, dim, False, dtype, channels_first)

        # 2. HSM-SSD on LN(x): the LayerNorm keeps its affine, which costs nothing inside the norm
        #    and spares the rank-one correction h = (gamma * n + beta) P^T would need after the
        #    hidden-state projection. The DW conv's bias adds A to the dt channels only (dt + A).
        self.norm_weight = _frozen(block.norm.weight.double(), dtype)
        self.norm_bias = _frozen(block.norm.bias.double(), dtype)
        #    B, C and dt are padded with zero channels to a multiple of CHANNEL_BLOCK, which oneDNN and
        #    ONNX Runtime then run in whole blocks; the padding is split off and dropped.
        #    With H selection heads dt has H N channels (one softmax over tokens per head and state).
        channels = (2 + heads) * state_dim
        pad = -channels % CHANNEL_BLOCK
        self.bcdt_split = (state_dim, state_dim, heads * state_dim) + ((pad,) if pad else ())
        proj = F.pad(mixer.BCdt_proj.conv.weight.double().flatten(1), (0, 0, 0, pad))
        self.bcdt_proj = TokenConv(_as_1x1(proj), None, 1, 1, False, dtype, channels_first)
        dw_bias = torch.cat([torch.zeros(2 * state_dim, dtype=torch.float64), mixer.A.double()])
        dw_weight, dw_bias = F.pad(mixer.dw.conv.weight.double(), (0, 0, 0, 0, 0, 0, 0, pad)), F.pad(dw_bias, (0, pad))
        self.bcdt_dw = TokenConv(dw_weight, dw_bias, 1, channels + pad, False, dtype, channels_first)
        # y enters the stream as r1 * y = (r1 * W_out g) C: r1 goes into the (innermost) output projection
        self.state_mixer = None
        if hasattr(mixer, "state_mixer"):  # recursive hidden-state mixing
            self.state_mixer = FusedStateMixer(mixer.state_mixer, r[1], dtype)
        else:
            self.hz_weight = _frozen(mixer.hz_proj.conv.weight.double().squeeze(-1), dtype)
            self.skip = _frozen(mixer.D.double(), dtype)  # d
            self.out_weight = _frozen(mixer.out_proj.conv.weight.double().squeeze(-1) * r[1].view(-1, 1), dtype)
        self.state_scale = _frozen(1.0 / r[1], dtype)

        # 3. x = (1 - s2) x + s2 DW(x) on the stream scaled by (1 - s1)
        weight, bias = _conv_bn(block.dwconv2)
        kernel = s[2].view(-1, 1, 1, 1) * weight + keep[2].view(-1, 1, 1, 1) * _identity_kernel(dim, 3)
        kernel, bias = kernel * keep[1].view(-1, 1, 1, 1), s[2] * bias

        # 4. x = (1 - s3) (x + r3 FFN(x)); the sum is accumulated in place by the fc2 GEMM. The FFN's
        #    output bias r3 b2 moves into the DW bias above (fc1's bias subtracts W1 r3 b2 to compensate)
        #    unless r3 is large, where that subtraction would cancel away fc1's input precision.
        w1, b1 = _conv_bn(block.ffn.fc1)
        w2, b2 = _conv_bn(block.ffn.fc2)
        w2, b2 = w2.flatten(1) * r[3].view(-1, 1), b2 * r[3]
        self.ffn_bias = None
        if r[3].max() <= MAX_MOVED_BIAS_GAIN:
            bias, b1 = bias + b2, b1 - w1.flatten(1) @ b2
        else:
            self.ffn_bias = _frozen(b2, dtype)
        self.dwconv2 = TokenConv(kernel, bias, 1, dim, False, dtype, channels_first)
        self.fc1 = TokenConv(w1, b1, 1, 1, True, dtype, channels_first)
        self.fc2_weight = _frozen(_as_1x1(w2) if channels_first else w2, dtype)  # (C, hidden[, 1, 1])
        self.packed = (PackedWeights(), PackedWeights(), PackedWeights())  # hz_proj, out_proj, fc2

    def _heads(self, dt: torch.Tensor, b: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """LN(x) P_h^T per head: dt (B, H N, L) with A, b (B, N, L), n (B, L, C) -> h (B, N, C)."""
        batch, heads, states = n.shape[0], self.num_heads, self.state_dim
        p = dt.reshape(batch, heads, states, -1).softmax(dim=-1) * b.unsqueeze(1)  # (B, H, N, L)
        n = n.reshape(batch, n.shape[1], heads, self.dim // heads).transpose(1, 2)  # (B, H, L, C / H)
        return torch.matmul(p, n).transpose(1, 2).reshape(batch, states, self.dim)

    def _mix_states(self, h: torch.Tensor, prev: torch.Tensor | None, packed: bool = True) -> torch.Tensor:
        """r1 * f(h + h_prev) on token-major hidden states (B, N, C); ``packed``: the projections on the
        library kernels of :func:`packed_linear` (the token-major layout), else plain ``F.linear`` (NCHW,
        the export layout). Slices rather than split: XNNPACK (ExecuTorch) takes slices, not split."""
        if prev is not None and self.prev_scale is not None:
            h = h + prev * self.prev_scale  # the previous block returned r1' * h': back to h'
        if self.state_mixer is not None:
            return self.state_mixer(h)
        hz = packed_linear(h, self.hz_weight, None, self.packed[0]) if packed else F.linear(h, self.hz_weight)
        h = hz[..., : self.d_inner] * (F.silu(hz[..., self.d_inner :]) + self.skip)
        if packed:
            return packed_linear(h, self.out_weight, None, self.packed[1])  # r1 * h
        return F.linear(h, self.out_weight)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_first:
            return self._forward_channels_first(x, prev)
        batch, height, width, _ = x.shape
        dim = self.dim  # a constant, so exported graphs keep a static normalized_shape
        x = self.dwconv1(x)
        n = F.layer_norm(x, (dim,), self.norm_weight, self.norm_bias, self.eps)
        bcdt = self.bcdt_dw(self.bcdt_proj(n)).reshape(batch, height * width, -1)
        b, c, dt = bcdt.split(self.bcdt_split, dim=-1)[:3]  # b, c (B, L, N); dt (B, L, H N), already + A
        tokens = x.reshape(batch, height * width, dim)
        if self.num_heads == 1:
            # P^T = A * B (B, N, L), A a distribution over the L tokens; softmax over the last axis of the
            # transposed view is several times faster than over the strided token axis
            p = dt.transpose(1, 2).softmax(dim=-1).mul_(b.transpose(1, 2))
            h = torch.bmm(p, n.reshape(batch, height * width, dim))  # LN(x) P^T, (B, N, C)
        else:
            h = self._heads(dt.transpose(1, 2), b.transpose(1, 2), n.reshape(batch, height * width, dim))
        h = self._mix_states(h, prev)  # r1 * h, (B, N, C)
        x = accumulate(torch.baddbmm, tokens, c, h).view(batch, height, width, dim)  # x + r1 * (h C)
        x = self.dwconv2(x)
        hidden = self.fc1(x)
        if self.ffn_bias is not None:
            x = x + self.ffn_bias
        if eager() and x.numel() <= PACKED_GEMM_TOKENS * dim:  # eager() first: no size guard when exported
            return x.add_(packed_linear(hidden, self.fc2_weight, None, self.packed[2])), h
        x = accumulate(torch.addmm, x.view(-1, dim), hidden.view(-1, hidden.shape[-1]), self.fc2_weight.t(),
                       self.packed[2])
        return x.view(batch, height, width, dim), h

    def _forward_channels_first(self, x: torch.Tensor, prev: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same block on NCHW maps, for runtimes whose convolutions want NCHW (ONNX Runtime):
        the 1x1 projections over tokens are convolutions and B, C, dt are (B, N, L)."""
        batch, _, height, width = x.shape
        dim = self.dim
        # LayerNorm runs token-major anyway (ONNX normalises trailing axes), so the token-major copy
        # of x serves both the norm and the residual sum: ONNX Runtime then reorders the stream once
        # on the way out of its blocked-channel convolutions and once on the way back in
        x = self.dwconv1(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        n_tokens = F.layer_norm(x, (dim,), self.norm_weight, self.norm_bias, self.eps)
        bcdt = self.bcdt_dw(self.bcdt_proj(n_tokens.permute(0, 3, 1, 2))).flatten(2)
        # slices and bmm rather than split and matmul: what XNNPACK delegates (ExecuTorch: split_with_sizes and
        # the expand in front of a 3-D matmul otherwise run on portable kernels); ONNX gets Slice and MatMul
        states = self.state_dim
        b, c = bcdt[:, :states], bcdt[:, states : 2 * states]
        dt = bcdt[:, 2 * states : (2 + self.num_heads) * states]  # b, c (B, N, L); dt (B, H N, L), already + A
        if self.num_heads == 1:
            p = dt.softmax(dim=-1) * b
            h = torch.bmm(p, n_tokens.reshape(batch, -1, dim))  # (LN(x) P^T)^T, (B, N, C)
        else:
            h = self._heads(dt, b, n_tokens.reshape(batch, -1, dim))
        h = self._mix_states(h, prev, packed=False)  # r1 * h^T, (B, N, C)
        x = x.reshape(batch, -1, dim) + torch.bmm(c.transpose(1, 2), h)  # (B, L, C)
        x = self.dwconv2(x.view(batch, height, width, dim).permute(0, 3, 1, 2))
        hidden = self.fc1(x)
        if self.ffn_bias is not None:
            x = x + self.ffn_bias.view(-1, 1, 1)
        return x + F.conv2d(hidden, self.fc2_weight), h


class FusedPatchMerging(nn.Module):
    """PatchMerging on (B, H, W, C): residual DW, 1x1 expand, DW stride 2, SE, 1x1 project, residual DW."""

    def __init__(self, m: PatchMerging, in_scale: torch.Tensor, dtype: torch.dtype, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        in_dim = m.dwconv1.conv.in_channels
        weight, bias = _conv_bn(m.dwconv1)
        self.dwconv1 = TokenConv((weight + _identity_kernel(in_dim, 3)) * in_scale.view(-1, 1, 1, 1), bias, 1, in_dim,
                                 False, dtype, channels_first)
        w, b = _conv_bn(m.conv[0])
        self.expand = TokenConv(w, b, 1, 1, True, dtype, channels_first)
        w, b = _conv_bn(m.conv[1])
        self.dw = TokenConv(w, b, 2, w.shape[0], True, dtype, channels_first)
        se = m.conv[2]
        self.se_fc1_weight = _frozen(se.fc1.weight.double().flatten(1), dtype)
        self.se_fc1_bias = _frozen(se.fc1.bias.double(), dtype)
        self.se_fc2_weight = _frozen(se.fc2.weight.double().flatten(1), dtype)
        self.se_fc2_bias = _frozen(se.fc2.bias.double(), dtype)
        self.packed = (PackedWeights(), PackedWeights())
        w, b = _conv_bn(m.conv[3])
        self.project = TokenConv(w, b, 1, 1, False, dtype, channels_first)
        out_dim = w.shape[0]
        weight, bias = _conv_bn(m.dwconv2)
        self.dwconv2 = TokenConv(weight + _identity_kernel(out_dim, 3), bias, 1, out_dim, False, dtype, channels_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv1(x)
        x = self.dw(self.expand(x))
        # channels_first: a 4-D mean over H, W kept (XNNPACK's global average pooling takes only that form)
        pooled = x.mean((2, 3), keepdim=True).flatten(1) if self.channels_first else x.mean((1, 2))
        se = packed_linear(pooled, self.se_fc1_weight, self.se_fc1_bias, self.packed[0]).relu_()
        se = packed_linear(se, self.se_fc2_weight, self.se_fc2_bias, self.packed[1]).sigmoid_()
        se = se[:, :, None, None] if self.channels_first else se[:, None, None, :]
        return self.dwconv2(self.project(x * se))


class FusedStage(nn.Module):
    """Blocks of one stage; ``out_scale`` (C,) maps the returned stream back to the true stage output."""

    def __init__(self, stage: EfficientViMStage, dtype: torch.dtype, channels_first: bool) -> None:
        super().__init__()
        scale = torch.ones(stage.blocks[0].alpha.shape[1], dtype=torch.float64)
        blocks = []
        for block in stage.blocks:
            fused = FusedBlock(block, scale, dtype, channels_first)
            if stage.state_passing and blocks:  # the previous block's returned state times its 1 / r1
                fused.prev_scale = _frozen(blocks[-1].state_scale.double(), dtype)
            blocks.append(fused)
            scale = _stream_scale(block)
        self.blocks = nn.ModuleList(blocks)
        self.downsample = None
        if stage.downsample is not None:
            self.downsample = FusedPatchMerging(stage.downsample, scale, dtype, channels_first)
        self.out_scale = _frozen(scale, dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the rescaled stage output (B, H, W, C) and the last block's rescaled hidden state."""
        h: torch.Tensor | None = None
        for block in self.blocks:
            x, h = block(x, h)
        return x, h


class FusedMSFHead(nn.Module):
    """The MSF head as one linear map: logits = W [mean_N n(h_0); mean_N n(h_1); mean_N n(h_2); mean_L n(x)] + b.

    n is the affine-free LayerNorm; each head's LayerNorm affine and softmax(w)_i weight are in W and b,
    and a distilled model's two head sets are averaged (its eval output). With no classes the
    head returns the pooled features with the LayerNorm affine applied, like ``pre_logits``.
    """

    def __init__(self, model: EfficientViM, dtype: torch.dtype) -> None:
        super().__init__()
        self.dims = tuple(n.normalized_shape[0] for n in model.norm)
        self.eps = tuple(n.eps for n in model.norm)
        gamma = torch.cat([n.weight.double().flatten() for n in model.norm])
        beta = torch.cat([n.bias.double().flatten() for n in model.norm])
        self.num_classes = model.num_classes
        self.packed = PackedWeights()
        if model.num_classes == 0:
            self.weight, self.bias = _frozen(gamma, dtype), _frozen(beta, dtype)
            return
        head_sets = [(model.heads, model.weights)]
        if model.distilled:
            head_sets.append((model.heads_dist, model.weights_dist))
        weight = 0.0
        for heads, w in head_sets:
            w = w.double().softmax(-1)
            weight = weight + torch.cat([w[i] * head.weight.double() for i, head in enumerate(heads)], dim=1)
        bias = 0.0
        for heads, w in head_sets:
            w = w.double().softmax(-1)
            bias = bias + sum(w[i] * head.bias.double() for i, head in enumerate(heads))
        weight, bias = weight / len(head_sets), bias / len(head_sets)
        self.weight = _frozen(weight * gamma, dtype)
        self.bias = _frozen(bias + weight @ beta, dtype)

    def forward(self, states: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """states: true hidden states (B, N_i, C_i); x: the true final map (B, H, W, C)."""
        pooled = [F.layer_norm(h, (d,), eps=eps).mean(1) for h, d, eps in zip(states, self.dims, self.eps)]
        pooled.append(F.layer_norm(x, (self.dims[-1],), eps=self.eps[-1]).mean((1, 2)))
        pooled = torch.cat(pooled, dim=1)
        if self.num_classes == 0:
            return torch.addcmul(self.bias, pooled, self.weight)
        return packed_linear(pooled, self.weight, self.bias, self.packed)


class _FusedTrunk(nn.Module):
    def __init__(self, model: EfficientViM | EfficientViMFeatures, dtype: torch.dtype, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.in_chans, self.total_stride = model.in_chans, model.total_stride
        self.patch_embed = FusedStem(model.patch_embed, dtype, channels_first)
        self.stages = nn.ModuleList(FusedStage(stage, dtype, channels_first) for stage in model.stages)
        for name in ("model_name", "pretrained_cfg", "feature_info", "num_classes", "num_features", "embed_dim"):
            if hasattr(model, name):
                setattr(self, name, copy.deepcopy(getattr(model, name)))
        if hasattr(self, "pretrained_cfg"):
            self.default_cfg = self.pretrained_cfg

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the weights' dtype (a bfloat16 model takes float32 images); under autocast as given."""
        dtype = self.patch_embed.conv[0].weight.dtype
        if x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(dtype)

    def train(self, mode: bool = True) -> _FusedTrunk:
        if mode:
            raise RuntimeError("a fused EfficientViM is inference-only: train the original model and fuse again")
        return super().train(False)


class FusedEfficientViM(_FusedTrunk):
    """Inference-only EfficientViM classifier built by :func:`fuse`; takes NCHW images, returns logits."""

    def __init__(self, model: EfficientViM, dtype: torch.dtype, channels_first: bool = False) -> None:
        super().__init__(model, dtype, channels_first)
        self.head = FusedMSFHead(model, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_chans, self.total_stride)
        x = self.patch_embed(self._cast(x))[-1]
        states = []
        for stage in self.stages:
            x, h = stage(x)
            states.append(h * stage.blocks[-1].state_scale)
            if stage.downsample is not None:
                x = stage.downsample(x)
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        return self.head(states, x * self.stages[-1].out_scale)


class FusedEfficientViMFeatures(_FusedTrunk):
    """Inference-only feature extractor built by :func:`fuse`: the same NCHW maps as EfficientViMFeatures.

    The maps are channels-last NCHW views of the token-major tensors (no copy).
    """

    def __init__(self, model: EfficientViMFeatures, dtype: torch.dtype, channels_first: bool = False) -> None:
        super().__init__(model, dtype, channels_first)
        self.out_indices, self.stem_strides, self.level_index = model.out_indices, model.stem_strides, model.level_index

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input(x, self.in_chans, self.total_stride)
        s4, s8, x = self.patch_embed(self._cast(x))
        maps = [s4, s8]
        for stage in self.stages:
            x, _ = stage(x)
            maps.append(x * (stage.out_scale.view(-1, 1, 1) if self.channels_first else stage.out_scale))
            if stage.downsample is not None:
                x = stage.downsample(x)
        if self.channels_first:
            return [maps[i] for i in self.level_index]
        return [maps[i].permute(0, 3, 1, 2) for i in self.level_index]


LAYOUTS = ("channels_last", "channels_first")
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@torch.no_grad()
def fuse(
    model: EfficientViM | EfficientViMFeatures, layout: str = "channels_last", dtype: torch.dtype | None = None
) -> FusedEfficientViM | FusedEfficientViMFeatures:
    """An inference-only copy of ``model`` with all folding applied; ``model`` itself is not changed.

    The copy has the same device (folded on CPU, so its weights are the same on every device), is in eval mode
    and cannot be put back into training. ``dtype``: the
    weights' and the computation's dtype, by default the model's. ``torch.bfloat16`` / ``torch.float16``
    fold in float64 as always, then round once; the copy takes images of any float dtype and returns its
    own. Where the device has no native support for that dtype (:func:`efficientvim.kernels.native_precision`:
    a CPU without AVX512-BF16/AMX, say) it would run slower than float32, so the copy is float32 and a
    warning says why. LayerNorm statistics, softmax over tokens and GEMM sums are accumulated in float32 by
    PyTorch's kernels in either case. Under ``torch.autocast`` a float32 copy runs as autocast decides.
    A distilled classifier's copy returns the eval-mode output (the mean of both heads).
    ``layout`` is how maps are held inside: ``channels_last`` (B, H, W, C) suits PyTorch eager and
    torch.compile; ``channels_first`` (NCHW, 1x1 projections as convolutions) suits ONNX Runtime,
    whose CPU convolutions reorder NCHW themselves and would otherwise pay a transpose per conv.
    Inputs and outputs are NCHW either way.

    On CPU in float32, the first eager call with a new batch-1-sized input shape packs the weights
    it needs (:class:`efficientvim.kernels.PackedWeights`; ``benchmarks/kernels.py`` measures the
    memory they take); later calls of that shape reuse them.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if any(isinstance(m, ConvNorm) and not isinstance(m.norm, nn.BatchNorm2d) for m in model.modules()):
        raise ValueError("this model's BatchNorms are already folded (timm's reparameterize_model): fuse the original")
    if isinstance(model, EfficientViM) and (
        not model.global_pool or not all(isinstance(n, ChannelLayerNorm) for n in model.norm)
    ):
        raise ValueError("fuse() folds the MSF head, which this model has pruned or turned off (global_pool=''): "
                         "fuse a model with its head, or create_model(..., features_only=True) for maps")
    param = next(model.parameters())
    dtype = dtype or param.dtype
    why = native_precision(dtype, param.device)
    if why is not None:
        warnings.warn(f"{why}: fusing in float32, which runs faster here", stacklevel=3)  # the caller of fuse
        dtype = torch.float32
    if isinstance(model, EfficientViM):
        build = FusedEfficientViM
    elif isinstance(model, EfficientViMFeatures):
        build = FusedEfficientViMFeatures
    else:
        raise TypeError(f"fuse() takes an EfficientViM or EfficientViMFeatures model, not {type(model).__name__}")
    # folded on CPU, in float64, wherever the model is: the same folded weights on every device
    source = model if param.device.type == "cpu" else copy.deepcopy(model).cpu()
    return build(source, dtype, layout == "channels_first").to(param.device).eval()
