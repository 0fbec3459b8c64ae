"""The gated EfficientViM block and the stage of blocks (with the PatchMerging that follows it)."""


from collections.abc import Sequence

import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..hsm_ssd import HSMSSD
from ..layers import FFN, ChannelLayerNorm, DepthwiseConvNorm, PatchMerging


class EfficientViMBlock(nn.Module):
    """Four residual branches, each mixed in by a learned per-channel gate s = sigmoid(alpha):

        x = (1 - s_i) x + s_i f_i(x),   f = DW3x3-BN, HSM-SSD(LN(x)), DW3x3-BN, FFN

    Returns the new map and the hidden state h (B, C, N) of the HSM-SSD branch.
    """

    def __init__(
        self, dim: int, state_dim: int, mlp_ratio: float = 4.0, ssd_expand: float = 1.0, drop_path: float = 0.0,
        num_heads: int = 1, mixer_depth: int = 0,
    ) -> None:
        super().__init__()
        self.dwconv1 = DepthwiseConvNorm(dim, bn_weight_init=0.0)
        self.norm = ChannelLayerNorm(dim)
        self.mixer = HSMSSD(dim, state_dim, ssd_expand, num_heads=num_heads, mixer_depth=mixer_depth)
        self.dwconv2 = DepthwiseConvNorm(dim, bn_weight_init=0.0)
        self.ffn = FFN(dim, int(dim * mlp_ratio))
        self.alpha = nn.Parameter(torch.full((4, dim), 1e-4))  # gate logits, one row per branch
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gates_folded = False  # set by fuse()

    @torch.no_grad()
    def init_weights(self) -> None:
        self.alpha.fill_(1e-4)

    def _gate(self, x: torch.Tensor, fx: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # (1 - s) x + s f(x) written as x + s (f(x) - x) so stochastic depth drops the whole branch
        return x + self.drop_path(s * (fx - x))

    def forward(self, x: torch.Tensor, prev_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(new map, hidden state); ``prev_state``: the previous block's hidden state, for hidden-state passing."""
        s = self.alpha.sigmoid().view(4, 1, -1, 1, 1)
        x = self.dwconv1(x) if self.gates_folded else self._gate(x, self.dwconv1(x), s[0])
        y, h = self.mixer(self.norm(x), None, prev_state)
        x = self._gate(x, y, s[1])
        x = self.dwconv2(x) if self.gates_folded else self._gate(x, self.dwconv2(x), s[2])
        x = self._gate(x, self.ffn(x), s[3])
        return x, h

    @torch.no_grad()
    def fuse(self) -> "EfficientViMBlock":
        """Fold every BatchNorm, and the gates of the two depthwise branches (s K + (1 - s) delta), into plain
        convs, in place: what ``timm.utils.reparameterize_model`` calls. Inference only (no stochastic depth).
        ``efficientvim.fuse`` folds the whole model further (all four gates, token-major layout).
        A second call changes nothing (timm's contract: reparameterizing a reparameterized model is a no-op)."""
        if self.gates_folded:  # the gates are in the kernels already: folding them again would apply them twice
            return self
        s = self.alpha.sigmoid()
        self.dwconv1.fuse(gate=s[0])
        self.dwconv2.fuse(gate=s[2])
        self.ffn.fc1.fuse()
        self.ffn.fc2.fuse()
        self.gates_folded = True
        return self


class EfficientViMStage(nn.Module):
    """``depth`` blocks at one resolution, then an optional PatchMerging to the next stage's width."""

    def __init__(
        self,
        dim: int,
        out_dim: int | None,
        depth: int,
        state_dim: int,
        mlp_ratio: float = 4.0,
        ssd_expand: float = 1.0,
        drop_path: Sequence[float] = (),
        num_heads: int = 1,
        mixer_depth: int = 0,
        state_passing: bool = False,
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            EfficientViMBlock(dim, state_dim, mlp_ratio, ssd_expand, rates[i], num_heads, mixer_depth)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim) if out_dim else None
        self.grad_checkpointing = False
        self.state_passing = state_passing  # each block after the first adds the previous block's hidden state

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (stage output map, input of the next stage, hidden state of the last block)."""
        h = x.new_empty(0)
        for i, block in enumerate(self.blocks):
            prev: torch.Tensor | None = h if self.state_passing and i > 0 else None
            if self.grad_checkpointing and x.requires_grad and not torch.jit.is_scripting():
                x, h = _checkpointed(block, x, prev)
            else:
                x, h = block(x, prev)
        nxt = self.downsample(x) if self.downsample is not None else x
        return x, nxt, h


@torch.jit.ignore
def _checkpointed(block: nn.Module, x: torch.Tensor, prev: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``block(x, prev)`` under activation checkpointing (training only; TorchScript does not compile it)."""
    return checkpoint(block, x, prev, use_reentrant=False)


def per_stage(value, stages: int, name: str, kind: type) -> tuple:
    """``value`` for every stage: one value repeated, or a sequence of one per stage."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * stages
    if len(values) != stages:
        raise ValueError(f"{name} needs one value, or one per stage ({stages}), got {tuple(values)}")
    return tuple(kind(v) for v in values)
