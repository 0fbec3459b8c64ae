"""HSM-SSD for other networks: a drop-in residual block, a helper that inserts it into an existing model,
and CSP-style blocks shaped like YOLO's C2f and C3k2 (same constructor arguments), with no YOLO dependency.

    block = HSMSSDBlock(256)                        # (B, 256, H, W) -> same shape, any H and W
    insert_hsmssd(torchvision.models.resnet18(), ["layer3", "layer4"])   # channels found by a dry run
    C2fHSMSSD(256, 256, n=2)                        # where a detector config names C2f(c1, c2, n, shortcut, g, e)

The block's residual branches are scaled per channel by gates that start at zero, so inserting it into a
trained network leaves that network's output unchanged until the gates learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .hsm_ssd import HSMSSD


def default_state_dim(channels: int) -> int:
    """Hidden states for a block of ``channels`` when none is given: as the paper's stages (49 states at 128
    channels, 25 at 256, 9 at 512: about 6272 / channels), at least 4."""
    return max(4, round(6272 / channels))


class HSMSSDBlock(nn.Module):
    """x + g1 * HSM-SSD(LN(x)), then (``mlp_ratio`` > 0) x + g2 * FFN(LN(x)); one tensor in, one out.

    Takes a map (B, C, H, W), or tokens (B, L, C) with ``size=(H, W)``, and returns the same layout. g1 and
    g2 are per-channel gates initialised to 0 (the block starts as the identity). The HSM-SSD variants
    (``num_heads``, ``mixer_depth``) pass through.

    Args:
        dim: channels C.
        state_dim: hidden states N (default :func:`default_state_dim`).
        mlp_ratio: FFN width / C; 0 for no FFN.
        ssd_expand, num_heads, mixer_depth: as :class:`efficientvim.HSMSSD`.
    """

    def __init__(self, dim: int, state_dim: int | None = None, mlp_ratio: float = 2.0, ssd_expand: float = 1.0,
                 num_heads: int = 1, mixer_depth: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mixer = HSMSSD(dim, state_dim or default_state_dim(dim), ssd_expand, num_heads=num_heads,
                            mixer_depth=mixer_depth)
        self.gate_mixer = nn.Parameter(torch.zeros(dim))
        self.ffn = None
        if mlp_ratio > 0:
            hidden = max(1, int(dim * mlp_ratio))
            self.ffn_norm = nn.LayerNorm(dim)
            self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            self.gate_ffn = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            if x.dim() != 4 or x.shape[1] != self.dim:
                raise ValueError(f"HSMSSDBlock({self.dim}) takes (B, {self.dim}, H, W) maps, or (B, L, {self.dim}) "
                                 f"tokens with size=(H, W); got {tuple(x.shape)}")
            height, width = x.shape[-2:]
            tokens = self.forward(x.flatten(2).transpose(1, 2), (height, width))
            return tokens.transpose(1, 2).reshape(x.shape)
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"HSMSSDBlock({self.dim}) takes (B, L, {self.dim}) tokens with size; got {tuple(x.shape)}")
        y, _ = self.mixer(self.norm(x), size)
        x = x + self.gate_mixer * y
        if self.ffn is not None:
            x = x + self.gate_ffn * self.ffn(self.ffn_norm(x))
        return x


class _After(nn.Sequential):
    """A module followed by an HSM-SSD block (what :func:`insert_hsmssd` puts in its place)."""


def insert_hsmssd(model: nn.Module, after: Sequence[str], input_size: tuple[int, int] = (224, 224),
                  in_chans: int = 3, **block_args) -> nn.Module:
    """Put an :class:`HSMSSDBlock` after each named module of ``model`` (in place; returned for chaining).

    Each named module must return one (B, C, H, W) map; C is read by one forward pass of a zero image of
    ``input_size`` (the model's mode is kept). ``block_args`` go to every block (``state_dim``,
    ``mlp_ratio``, ``num_heads``, ``mixer_depth``...). Works on torchvision and timm CNNs alike::

        insert_hsmssd(torchvision.models.resnet18(weights=...), ["layer3", "layer4"])
    """
    modules = dict(model.named_modules())
    missing = [name for name in after if name not in modules or not name]
    if missing:
        near = [n for n in modules if n and "." not in n][:8]
        raise ValueError(f"no module named {missing[0]!r} in {type(model).__name__}: top-level modules are "
                         f"{', '.join(near)}")
    shapes: dict[str, torch.Size] = {}
    hooks = [modules[name].register_forward_hook(
        lambda m, i, out, name=name: shapes.__setitem__(name, out.shape if torch.is_tensor(out) else None))
        for name in after]
    param = next(model.parameters(), torch.empty(0))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, *input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for name in after:
        shape = shapes.get(name)
        if shape is None or len(shape) != 4:
            raise ValueError(f"{name} returns {'no tensor' if shape is None else tuple(shape)}, not one (B, C, H, W) "
                             "map: insert after a module that does")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        block = HSMSSDBlock(shape[1], **block_args).to(device=param.device, dtype=param.dtype)
        setattr(parent, child, _After(modules[name], block))
    return model


class ConvBNAct(nn.Module):
    """Conv2d (no bias), BatchNorm, SiLU: the convolution unit of YOLO-style CSP blocks."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.conv(x)))


class C2fHSMSSD(nn.Module):
    """A C2f-shaped CSP block with HSM-SSD blocks where C2f has bottlenecks, constructed as C2f is:
    ``C2fHSMSSD(c1, c2, n=1, shortcut=False, g=1, e=0.5)``.

    1x1 conv to 2c channels (c = c2 * e), split in two; ``n`` :class:`HSMSSDBlock` s run one after another on
    the second half, every intermediate output is kept; a 1x1 conv fuses the (2 + n) c channels to c2.
    The blocks are residual by construction, so ``shortcut`` (a bottleneck's skip) is accepted and has no
    further effect; ``g`` (a bottleneck's conv groups) likewise, as there is no grouped conv inside.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5,
                 state_dim: int | None = None, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = ConvBNAct(c1, 2 * self.c, 1)
        self.cv2 = ConvBNAct((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(HSMSSDBlock(self.c, state_dim, mlp_ratio) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class C3k2HSMSSD(C2fHSMSSD):
    """The C3k2 form of :class:`C2fHSMSSD`: ``C3k2HSMSSD(c1, c2, n=1, c3k=False, e=0.5, g=1, shortcut=True)``,
    C3k2's constructor. ``c3k=True`` (C3k2's nested C3k blocks) gives each of the ``n`` stages two HSM-SSD
    blocks in sequence instead of one."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, g: int = 1,
                 shortcut: bool = True, state_dim: int | None = None, mlp_ratio: float = 2.0) -> None:
        super().__init__(c1, c2, n, shortcut, g, e, state_dim, mlp_ratio)
        if c3k:
            self.m = nn.ModuleList(
                nn.Sequential(HSMSSDBlock(self.c, state_dim, mlp_ratio), HSMSSDBlock(self.c, state_dim, mlp_ratio))
                for _ in range(n)
            )

