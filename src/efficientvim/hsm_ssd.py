"""Hidden State Mixer based State Space Duality (HSM-SSD), the token mixer of EfficientViM.

A plug-and-play layer: it takes a feature map (B, C, H, W) of any size, or a token sequence
(B, L, C) together with its (H, W), and returns the mixed tokens in the same layout plus the
hidden state h (B, C, N) that the multi-stage fusion head reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseProjection(nn.Module):
    """Bias-free linear map over the channel dimension of a (B, C, L) tensor (a 1x1 Conv1d)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _check_layout(x: torch.Tensor, size: tuple[int, int] | None) -> None:
    """A clear error for a map or token tensor of the wrong shape; eager Python only (see model._check_input)."""
    if not torch.jit.is_scripting():
        _check_layout_eagerly(x, size)


@torch.jit.ignore
def _check_layout_eagerly(x: torch.Tensor, size: tuple[int, int] | None) -> None:
    if size is None and x.dim() != 4:
        raise ValueError(
            f"HSMSSD expects a (B, C, H, W) map, or (B, L, C) tokens with size=(H, W); got {tuple(x.shape)}"
        )
    if size is not None and (x.dim() != 3 or x.shape[1] != size[0] * size[1]):
        raise ValueError(f"tokens of shape {tuple(x.shape)} do not match size {size[0]}x{size[1]}")


torch.fx.wrap("_check_layout")  # symbolic tracing records the check as one call instead of its branches


class HSMSSD(nn.Module):
    """HSM-SSD on x in R^{D x L} (L = H*W tokens, N hidden states):

        [B; C; dt] = DWConv3x3(W_{D->3N} x)
        A  = softmax_L(dt + a)                      a in R^N, one per state
        h  = x (A * B)^T                            R^{D x N}, cost O(LND)
        [h'; z] = W_{D->2E} h,  h = W_{E->D}(h' * SiLU(z) + d * h')   (E = ssd_expand * D)
        y  = h C                                    R^{D x L}

    All channel mixing (the gate and the output projection) runs on the N hidden states rather
    than on the L tokens: O(N D^2) instead of O(L D^2).

    Args:
        dim: channels D of the input and output.
        state_dim: number of hidden states N.
        ssd_expand: expansion E / D of the gated hidden-state mixer.
        a_init_range: the learned state bias a is drawn uniformly from this range.
    """

    def __init__(
        self,
        dim: int,
        state_dim: int,
        ssd_expand: float = 1.0,
        a_init_range: tuple[float, float] = (1.0, 16.0),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.state_dim = state_dim
        self.d_inner = int(ssd_expand * dim)
        self.BCdt_proj = PointwiseProjection(dim, 3 * state_dim)
        # depthwise 3x3 over the B, C and dt maps; the module name ``dw`` wraps ``conv`` for
        # compatibility with the released checkpoints
        self.dw = nn.Sequential()
        self.dw.conv = nn.Conv2d(3 * state_dim, 3 * state_dim, 3, 1, 1, groups=3 * state_dim, bias=False)
        self.hz_proj = PointwiseProjection(dim, 2 * self.d_inner)
        self.out_proj = PointwiseProjection(self.d_inner, dim)
        self.a_init_range = a_init_range
        self.A = nn.Parameter(torch.empty(state_dim).uniform_(*a_init_range))  # a in the paper
        self.D = nn.Parameter(torch.ones(1))  # d, the skip weight of the hidden-state gate

    @torch.no_grad()
    def init_weights(self) -> None:
        """The constructor's initialisation of a and d (the projections reset themselves)."""
        self.A.uniform_(*self.a_init_range)
        self.D.fill_(1.0)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix tokens.

        Args:
            x: a map (B, C, H, W), or tokens (B, L, C) in row-major order when ``size=(H, W)``.
            size: the spatial size of a token input; must be None for a map.

        Returns:
            (y, h): y in the layout of x, and the hidden state h of shape (B, C, N).
        """
        _check_layout(x, size)
        if size is None:
            batch, height, width = x.shape[0], x.shape[2], x.shape[3]
            y, h = self._mix(x.flatten(2), height, width)
            return y.reshape(batch, -1, height, width), h
        height, width = size
        y, h = self._mix(x.transpose(1, 2), height, width)
        return y.transpose(1, 2), h

    def _mix(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The HSM-SSD equations on channel-first tokens x of shape (B, D, L)."""
        a, b, c = self._state_inputs(x, height, width)
        h = torch.matmul(x, (a * b).transpose(1, 2))  # (B, D, N)
        h, z = self.hz_proj(h).split(self.d_inner, dim=1)
        # two products, as the reference computes them: h * (silu(z) + d) would save one but round
        # differently, and logits are to match the released model's (tests: 1e-5 relative)
        h = self.out_proj(h * F.silu(z) + h * self.D)
        y = torch.matmul(h, c)  # (B, D, L)
        return y, h

    def _state_inputs(
        self, x: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A, B and C, each (B, N, L), of channel-first tokens x (B, D, L)."""
        bcdt = self.BCdt_proj(x).reshape(x.shape[0], -1, height, width)
        b, c, dt = self.dw(bcdt).flatten(2).split(self.state_dim, dim=1)
        a = (dt + self.A.view(1, -1, 1)).softmax(dim=-1)  # A: a distribution over tokens per state
        return a, b, c

    @torch.no_grad()
    def state_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax weights A (B, N, H, W) of a map x: where each hidden state gathers from."""
        batch, _, height, width = x.shape
        a, _, _ = self._state_inputs(x.flatten(2), height, width)
        return a.reshape(batch, self.state_dim, height, width)
