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


def gated_state_mix(h: torch.Tensor, hz_weight: torch.Tensor, out_weight: torch.Tensor, d: torch.Tensor,
                    d_inner: int) -> torch.Tensor:
    """The paper's hidden-state mixer on h (B, D, N): [h'; z] = W_hz h, W_out(h' * SiLU(z) + d * h'), given the
    1x1 Conv1d weights of W_hz and W_out."""
    h, z = F.conv1d(h, hz_weight).split(d_inner, dim=1)
    # two products, as the reference computes them: h * (silu(z) + d) would save one but round
    # differently, and logits are to match the released model's (tests: 1e-5 relative)
    return F.conv1d(h * F.silu(z) + h * d, out_weight)


class RecursiveStateMixer(nn.Module):
    """Recursive hidden-state mixing: the mixer f(h) of the N hidden states (B, D, N) is itself an HSM-SSD
    over them, taking the N states as a 1-D token sequence and compressing them to ``states`` (N') states:

        [B'; C'; dt'] = W_{D->3N'} LN(h),   A' = softmax_N(dt'),   h' = h (A' * B')^T    (D x N')
        h' = f'(h'),   f(h) = h' C'                                                                   (D x N)

    where f' is another such mixer on N' // 2 states (``depth`` > 1) or, at the bottom, the paper's gated
    mixer (W_hz, SiLU gate, W_out). Cost per image, against O(N D^2) for the gated mixer on all N states:
    O(N N' D) for the projections, the compression and the expansion, plus O(N' D^2) for the gated mixer
    on the N' states (recursively, N'' instead of N' one level down). There is no depthwise convolution
    over the states (HSM-SSD has one over the image): hidden states have no spatial order to convolve along.
    The selection (B', C', dt') is computed from the states layer-normalised over their channels, as the
    outer layer's is from LN(x): from the raw states the output would grow as a high power of |h| (a
    two-level mixer on random weights overflowed float32 within one stage). The values compressed are the
    raw states, so the branch keeps the scale of the paper's mixer (quadratic in |h|, through its gate):
    compressing LN(h) instead amplified states of tiny spread up to 10^4-fold at initialisation, and on the
    digits such a model stayed at chance accuracy for five epochs. There is no state
    bias a': a softmax over the N states does not change when a constant is added to its row (nor does the
    paper's softmax over tokens, whose a this package keeps for the released checkpoints: its gradient is 0).

    Args:
        dim: channels D.
        states: N', the states this level compresses to.
        depth: levels of recursion (>= 1).
        d_inner: the gated mixer's inner width (``ssd_expand * dim``).
    """

    def __init__(self, dim: int, states: int, depth: int, d_inner: int) -> None:
        super().__init__()
        if depth < 1 or states < 1:
            raise ValueError(f"a recursive mixer needs depth >= 1 and states >= 1, got depth {depth}, states {states}")
        self.states, self.depth, self.d_inner = states, depth, d_inner
        self.norm = nn.LayerNorm(dim)
        self.BCdt_proj = PointwiseProjection(dim, 3 * states)
        if depth > 1:
            self.inner = RecursiveStateMixer(dim, max(1, states // 2), depth - 1, d_inner)
        else:
            self.hz_proj = PointwiseProjection(dim, 2 * d_inner)
            self.out_proj = PointwiseProjection(d_inner, dim)
            self.D = nn.Parameter(torch.ones(1))

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.depth == 1:
            self.D.fill_(1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = self.norm(h.transpose(1, 2)).transpose(1, 2)  # (B, D, N), each state normalised over D
        b, c, dt = self.BCdt_proj(n).split(self.states, dim=1)  # each (B, N', N)
        a = dt.softmax(dim=-1)  # a distribution over the N states per new state
        inner = torch.matmul(h, (a * b).transpose(1, 2))  # (B, D, N'): the raw states, compressed
        if hasattr(self, "inner"):  # resolved when TorchScript compiles (depth is fixed at construction)
            inner = self.inner(inner)
        else:
            inner = gated_state_mix(inner, self.hz_proj.conv.weight, self.out_proj.conv.weight, self.D, self.d_inner)
        return torch.matmul(inner, c)  # (B, D, N)


class HSMSSD(nn.Module):
    """HSM-SSD on x in R^{D x L} (L = H*W tokens, N hidden states):

        [B; C; dt] = DWConv3x3(W_{D->3N} x)
        A  = softmax_L(dt + a)                      a in R^N, one per state
        h  = x (A * B)^T                            R^{D x N}, cost O(LND)
        [h'; z] = W_{D->2E} h,  h = W_{E->D}(h' * SiLU(z) + d * h')   (E = ssd_expand * D)
        y  = h C                                    R^{D x L}

    All channel mixing (the gate and the output projection) runs on the N hidden states rather
    than on the L tokens: O(N D^2) instead of O(L D^2).

    Variants, each one argument away and each exactly the layer above at its default:

    - ``num_heads=H``: the D channels split into H heads of D / H, each with its own selection: its own dt
      (so dt has H N channels and a is H N long) and hence its own A = softmax_L(dt_h + a_h); B and C are
      shared by the heads, as in Mamba-2's multi-head SSD. h_head = x_head (A_h * B)^T; the heads' hidden
      states stack back into D x N, so the mixer and the MSF head see the usual shape. Extra cost: (H - 1) N
      more projected channels and the H softmaxes.
    - ``mixer_depth=R``: the gated mixer becomes a :class:`RecursiveStateMixer` of depth R that compresses
      the N states to ``mixer_states`` (default N // 2), then half again per level.
    - ``forward(..., prev_state=h)``: hidden-state passing, h = x (A * B)^T + h_prev before the mixer
      (the model's ``state_passing`` feeds each block the previous block's h within a stage).

    Args:
        dim: channels D of the input and output.
        state_dim: number of hidden states N.
        ssd_expand: expansion E / D of the gated hidden-state mixer.
        a_init_range: the learned state bias a is drawn uniformly from this range.
        num_heads: selection heads H (D divisible by H).
        mixer_depth: recursion depth of the hidden-state mixer (0: the paper's gated mixer).
        mixer_states: states N' of the first recursion level (default N // 2).
    """

    def __init__(
        self,
        dim: int,
        state_dim: int,
        ssd_expand: float = 1.0,
        a_init_range: tuple[float, float] = (1.0, 16.0),
        num_heads: int = 1,
        mixer_depth: int = 0,
        mixer_states: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must be at least 1 and divide the {dim} channels")
        if mixer_depth < 0:
            raise ValueError(f"mixer_depth={mixer_depth} must be 0 (the gated mixer) or more")
        self.dim = dim
        self.state_dim = state_dim
        self.num_heads = num_heads
        self.mixer_depth = mixer_depth
        self.d_inner = int(ssd_expand * dim)
        channels = (2 + num_heads) * state_dim  # B, C and one dt per head
        self.BCdt_proj = PointwiseProjection(dim, channels)
        # depthwise 3x3 over the B, C and dt maps; the module name ``dw`` wraps ``conv`` for
        # compatibility with the released checkpoints
        self.dw = nn.Sequential()
        self.dw.conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        if mixer_depth == 0:
            self.hz_proj = PointwiseProjection(dim, 2 * self.d_inner)
            self.out_proj = PointwiseProjection(self.d_inner, dim)
        else:
            states = mixer_states or max(1, state_dim // 2)
            self.state_mixer = RecursiveStateMixer(dim, states, mixer_depth, self.d_inner)
        self.a_init_range = a_init_range
        self.A = nn.Parameter(torch.empty(num_heads * state_dim).uniform_(*a_init_range))  # a in the paper
        if mixer_depth == 0:
            self.D = nn.Parameter(torch.ones(1))  # d, the skip weight of the hidden-state gate

    @torch.no_grad()
    def init_weights(self) -> None:
        """The constructor's initialisation of a and d (the projections reset themselves)."""
        self.A.uniform_(*self.a_init_range)
        if self.mixer_depth == 0:
            self.D.fill_(1.0)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int] | None = None, prev_state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix tokens.

        Args:
            x: a map (B, C, H, W), or tokens (B, L, C) in row-major order when ``size=(H, W)``.
            size: the spatial size of a token input; must be None for a map.
            prev_state: a hidden state (B, C, N) added to this layer's before its mixer (hidden-state passing).

        Returns:
            (y, h): y in the layout of x, and the hidden state h of shape (B, C, N).
        """
        _check_layout(x, size)
        if size is None:
            batch, height, width = x.shape[0], x.shape[2], x.shape[3]
            y, h = self._mix(x.flatten(2), height, width, prev_state)
            return y.reshape(batch, -1, height, width), h
        height, width = size
        y, h = self._mix(x.transpose(1, 2), height, width, prev_state)
        return y.transpose(1, 2), h

    def _mix(self, x: torch.Tensor, height: int, width: int, prev_state: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The HSM-SSD equations on channel-first tokens x of shape (B, D, L)."""
        a, b, c = self._state_inputs(x, height, width)
        if self.num_heads == 1:
            h = torch.matmul(x, (a * b).transpose(1, 2))  # (B, D, N)
        else:  # per head: x_head (B, D/H, L) times its own (A_h * B)^T
            batch, heads = x.shape[0], self.num_heads
            p = a.reshape(batch, heads, self.state_dim, -1) * b.unsqueeze(1)  # (B, H, N, L)
            h = torch.matmul(x.reshape(batch, heads, self.dim // heads, -1), p.transpose(-1, -2))
            h = h.reshape(batch, self.dim, self.state_dim)
        if prev_state is not None:
            h = h + prev_state
        if hasattr(self, "state_mixer"):  # resolved when TorchScript compiles (fixed at construction)
            h = self.state_mixer(h)
        else:
            h = gated_state_mix(h, self.hz_proj.conv.weight, self.out_proj.conv.weight, self.D, self.d_inner)
        y = torch.matmul(h, c)  # (B, D, L)
        return y, h

    def _state_inputs(
        self, x: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (B, H N, L), B and C (B, N, L) of channel-first tokens x (B, D, L)."""
        bcdt = self.BCdt_proj(x).reshape(x.shape[0], -1, height, width)
        n = self.state_dim
        b, c, dt = self.dw(bcdt).flatten(2).split([n, n, self.num_heads * n], dim=1)
        a = (dt + self.A.view(1, -1, 1)).softmax(dim=-1)  # A: a distribution over tokens per state (and head)
        return a, b, c

    @torch.no_grad()
    def state_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax weights A (B, H N, H, W) of a map x: where each hidden state (of each head) gathers from."""
        batch, _, height, width = x.shape
        a, _, _ = self._state_inputs(x.flatten(2), height, width)
        return a.reshape(batch, -1, height, width)
