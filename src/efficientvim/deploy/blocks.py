"""The fused stem, HSM-SSD state mixer and block: each trained module's function with every affine map folded
(the identities are in :mod:`efficientvim.deploy`'s docstring and :mod:`.folding`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..hsm_ssd import HSMSSD
from ..kernels import (
    PACKED_GEMM_TOKENS,
    PackedWeights,
    accumulate,
    eager,
    packed_linear,
    stem_reads_nchw,
)
from ..layers import Stem
from ..model import EfficientViMBlock
from .folding import (
    CHANNEL_BLOCK,
    MAX_MOVED_BIAS_GAIN,
    TokenConv,
    as_1x1,
    conv_bn,
    frozen,
    identity_kernel,
)


class FusedStem(nn.Module):
    """The four stride-2 Conv-BN layers of the stem; the input image is made channels-last once."""

    def __init__(self, stem: Stem, dtype: torch.dtype, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        layers = []
        for m in stem.conv:
            weight, bias = conv_bn(m)
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


class FusedStateMixer(nn.Module):
    """:class:`efficientvim.hsm_ssd.RecursiveStateMixer` on token-major hidden states (B, N, C), its output
    scaled per channel by ``out_scale`` (folded into the innermost output projection: every level after it
    is linear in it, per channel)."""

    def __init__(self, mixer: nn.Module, out_scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.states = mixer.states
        self.dim, self.eps = mixer.norm.normalized_shape[0], mixer.norm.eps
        self.norm_weight = frozen(mixer.norm.weight.double(), dtype)
        self.norm_bias = frozen(mixer.norm.bias.double(), dtype)
        self.bcdt_weight = frozen(mixer.BCdt_proj.conv.weight.double().squeeze(-1), dtype)  # (3 N', C)
        self.inner = FusedStateMixer(mixer.inner, out_scale, dtype) if hasattr(mixer, "inner") else None
        if self.inner is None:
            self.d_inner = mixer.d_inner
            self.hz_weight = frozen(mixer.hz_proj.conv.weight.double().squeeze(-1), dtype)
            self.skip = frozen(mixer.D.double(), dtype)
            self.out_weight = frozen(mixer.out_proj.conv.weight.double().squeeze(-1) * out_scale.view(-1, 1), dtype)

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
    """One EfficientViM block on a rescaled stream: reads x_true / in_scale, returns x_true / stream_scale.

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
        weight, bias = conv_bn(block.dwconv1)
        kernel = s[0].view(-1, 1, 1, 1) * weight + keep[0].view(-1, 1, 1, 1) * identity_kernel(dim, 3)
        self.dwconv1 = TokenConv(kernel * in_scale.view(-1, 1, 1, 1), s[0] * bias, 1, dim, False, dtype, channels_first)

        # 2. HSM-SSD on LN(x): the LayerNorm keeps its affine, which costs nothing inside the norm
        #    and spares the rank-one correction h = (gamma * n + beta) P^T would need after the
        #    hidden-state projection. The DW conv's bias adds A to the dt channels only (dt + A).
        self.norm_weight = frozen(block.norm.weight.double(), dtype)
        self.norm_bias = frozen(block.norm.bias.double(), dtype)
        #    B, C and dt are padded with zero channels to a multiple of CHANNEL_BLOCK, which oneDNN and
        #    ONNX Runtime then run in whole blocks; the padding is split off and dropped.
        #    With H selection heads dt has H N channels (one softmax over tokens per head and state).
        channels = (2 + heads) * state_dim
        pad = -channels % CHANNEL_BLOCK
        self.bcdt_split = (state_dim, state_dim, heads * state_dim) + ((pad,) if pad else ())
        proj = F.pad(mixer.BCdt_proj.conv.weight.double().flatten(1), (0, 0, 0, pad))
        self.bcdt_proj = TokenConv(as_1x1(proj), None, 1, 1, False, dtype, channels_first)
        dw_bias = torch.cat([torch.zeros(2 * state_dim, dtype=torch.float64), mixer.A.double()])
        dw_weight, dw_bias = F.pad(mixer.dw.conv.weight.double(), (0, 0, 0, 0, 0, 0, 0, pad)), F.pad(dw_bias, (0, pad))
        self.bcdt_dw = TokenConv(dw_weight, dw_bias, 1, channels + pad, False, dtype, channels_first)
        # y enters the stream as r1 * y = (r1 * W_out g) C: r1 goes into the (innermost) output projection
        self.state_mixer = None
        if hasattr(mixer, "state_mixer"):  # recursive hidden-state mixing
            self.state_mixer = FusedStateMixer(mixer.state_mixer, r[1], dtype)
        else:
            self.hz_weight = frozen(mixer.hz_proj.conv.weight.double().squeeze(-1), dtype)
            self.skip = frozen(mixer.D.double(), dtype)  # d
            self.out_weight = frozen(mixer.out_proj.conv.weight.double().squeeze(-1) * r[1].view(-1, 1), dtype)
        self.state_scale = frozen(1.0 / r[1], dtype)

        # 3. x = (1 - s2) x + s2 DW(x) on the stream scaled by (1 - s1)
        weight, bias = conv_bn(block.dwconv2)
        kernel = s[2].view(-1, 1, 1, 1) * weight + keep[2].view(-1, 1, 1, 1) * identity_kernel(dim, 3)
        kernel, bias = kernel * keep[1].view(-1, 1, 1, 1), s[2] * bias

        # 4. x = (1 - s3) (x + r3 FFN(x)); the sum is accumulated in place by the fc2 GEMM. The FFN's
        #    output bias r3 b2 moves into the DW bias above (fc1's bias subtracts W1 r3 b2 to compensate)
        #    unless r3 is large, where that subtraction would cancel away fc1's input precision.
        w1, b1 = conv_bn(block.ffn.fc1)
        w2, b2 = conv_bn(block.ffn.fc2)
        w2, b2 = w2.flatten(1) * r[3].view(-1, 1), b2 * r[3]
        self.ffn_bias = None
        if r[3].max() <= MAX_MOVED_BIAS_GAIN:
            bias, b1 = bias + b2, b1 - w1.flatten(1) @ b2
        else:
            self.ffn_bias = frozen(b2, dtype)
        self.dwconv2 = TokenConv(kernel, bias, 1, dim, False, dtype, channels_first)
        self.fc1 = TokenConv(w1, b1, 1, 1, True, dtype, channels_first)
        self.fc2_weight = frozen(as_1x1(w2) if channels_first else w2, dtype)  # (C, hidden[, 1, 1])
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
