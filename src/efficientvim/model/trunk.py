"""The trunk the classifier and the feature extractor share: stem, stages, the input check, initialisation."""


from collections.abc import Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..errors import InputSizeError
from ..layers import Stem
from .blocks import EfficientViMStage, per_stage

STEM_STRIDE = 16


def _check_input(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    """One clear error for a wrong input, before any layer runs; checked in eager Python only (a scripted,
    traced or compiled graph has no use for the message). torch.fx records the call without tracing in."""
    if not torch.jit.is_scripting():
        _check_input_eagerly(x, in_chans, min_size)


@torch.jit.ignore
def _check_input_eagerly(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise InputSizeError(f"expected images of shape (B, {in_chans}, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height < min_size or width < min_size:
        raise InputSizeError(
            f"input {height}x{width} is smaller than the network's total stride {min_size}: "
            f"resize or pad images to at least {min_size}x{min_size}"
        )


class Trunk(nn.Module):
    """Stem and stages shared by the classifier and the feature extractor."""

    def __init__(
        self,
        embed_dim: Sequence[int],
        depths: Sequence[int],
        state_dim: Sequence[int],
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        ssd_expand: float = 1.0,
        drop_path_rate: float = 0.0,
        num_heads: int | Sequence[int] = 1,
        mixer_depth: int | Sequence[int] = 0,
        state_passing: bool | Sequence[bool] = False,
    ) -> None:
        super().__init__()
        if not len(embed_dim) == len(depths) == len(state_dim):
            raise ValueError("embed_dim, depths and state_dim need one entry per stage")
        self.in_chans = in_chans
        self.embed_dim = tuple(embed_dim)
        self.depths = tuple(depths)
        self.state_dim = tuple(state_dim)
        self.num_stages = len(depths)
        # the HSM-SSD variants (hsm_ssd.HSMSSD), one value for every stage or one per stage
        self.num_heads = per_stage(num_heads, self.num_stages, "num_heads", int)
        self.mixer_depth = per_stage(mixer_depth, self.num_stages, "mixer_depth", int)
        self.state_passing = per_stage(state_passing, self.num_stages, "state_passing", bool)
        self.patch_embed = Stem(in_chans, embed_dim[0])
        total = sum(depths)
        # stochastic depth ramps linearly over the blocks (plain floats: also builds on the meta device)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, start = [], 0
        for i, depth in enumerate(depths):
            out_dim = embed_dim[i + 1] if i + 1 < len(depths) else None
            stages.append(
                EfficientViMStage(
                    embed_dim[i], out_dim, depth, state_dim[i], mlp_ratio, ssd_expand, rates[start : start + depth],
                    self.num_heads[i], self.mixer_depth[i], self.state_passing[i],
                )
            )
            start += depth
        self.stages = nn.ModuleList(stages)
        self.total_stride = STEM_STRIDE * 2 ** (self.num_stages - 1)

    def stage_info(self) -> list[dict]:
        """timm-style feature_info of the stage output maps."""
        return [
            dict(num_chs=dim, reduction=STEM_STRIDE * 2**i, module=f"stages.{i}")
            for i, dim in enumerate(self.embed_dim)
        ]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter and buffer as the constructor does (in distribution): for a model built
        on the meta device, then given memory with ``to_empty``."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # convs, BatchNorms (running statistics too), LayerNorms, linears
        for m in self.modules():
            if m is not self and hasattr(m, "init_weights"):
                m.init_weights()
        for name in ("weights", "weights_dist"):
            if hasattr(self, name):
                getattr(self, name).fill_(1.0)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
