"""The EfficientViM network: gated blocks, stages, the multi-stage hidden-state fusion (MSF) head.

``EfficientViM`` is the classifier (optionally distilled); ``EfficientViMFeatures`` is the same
trunk returning feature maps for dense prediction. Both keep the released checkpoint's parameter
names, so state dicts move between this package, the authors' code and timm unchanged.
"""

from collections.abc import Sequence

import torch
from timm.layers import DropPath, trunc_normal_
from timm.models import FeatureInfo
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import InputSizeError
from .hsm_ssd import HSMSSD
from .layers import FFN, ChannelLayerNorm, DepthwiseConvNorm, PatchMerging, Stem

STEM_STRIDE = 16
torch.fx.wrap("_check_input")  # symbolic tracing records the input check as one call instead of its branches
# logits, or (z, z_dist) from a distilled model in training mode
# (or forward_features' list when the model was built with global_pool="")
Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]


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


class _Trunk(nn.Module):
    """Stem and stages shared by the classifier and the feature extractor."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: Sequence[int],
        depths: Sequence[int],
        state_dim: Sequence[int],
        mlp_ratio: float,
        ssd_expand: float,
        drop_path_rate: float,
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


class EfficientViM(_Trunk):
    """EfficientViM classifier with the multi-stage hidden-state fusion (MSF) head.

    The MSF head reads the hidden state h_i of the last block of each stage and the final map:
    z_i = Linear(mean_N(LN(h_i))), z_3 = Linear(GAP(LN(x))), logits = sum_i softmax(w)_i z_i.
    With ``distilled=True`` a second set of heads and weights produces z_dist; the model returns
    (z + z_dist) / 2, or the pair (z, z_dist) in training mode after ``set_distilled_training(True)``
    (what DeiT distillation trains on), as timm's distilled models do.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (128, 256, 512),
        depths: Sequence[int] = (2, 2, 2),
        state_dim: Sequence[int] = (49, 25, 9),
        mlp_ratio: float = 4.0,
        ssd_expand: float = 1.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        distilled: bool = False,
        global_pool: str = "avg",
        num_heads: int | Sequence[int] = 1,
        mixer_depth: int | Sequence[int] = 0,
        state_passing: bool | Sequence[bool] = False,
    ) -> None:
        super().__init__(in_chans, embed_dim, depths, state_dim, mlp_ratio, ssd_expand, drop_path_rate, num_heads,
                         mixer_depth, state_passing)
        _check_global_pool(global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.distilled = distilled
        self.distilled_training = False
        self.feature_info = self.stage_info()
        head_dims = (*self.embed_dim, self.embed_dim[-1])
        self.num_features = self.head_hidden_size = sum(head_dims)
        self.norm = nn.ModuleList(ChannelLayerNorm(d) for d in head_dims)
        self.head_drop = nn.Dropout(drop_rate)
        # w, the MSF fusion logits (nothing to fuse without heads)
        self.weights = nn.Parameter(torch.ones(len(head_dims)), requires_grad=num_classes > 0)
        self.heads = self._make_heads(num_classes)
        if distilled:
            self.weights_dist = nn.Parameter(torch.ones(len(head_dims)), requires_grad=num_classes > 0)
            self.heads_dist = self._make_heads(num_classes)
        self.apply(self._init_weights)

    def _make_heads(self, num_classes: int) -> nn.ModuleList:
        dims = (*self.embed_dim, self.embed_dim[-1])
        return nn.ModuleList(nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity() for d in dims)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters the reference recipe does not decay besides norms and biases: the skip weight d."""
        return {name for name, _ in self.named_parameters() if name.endswith("mixer.D")}

    @torch.jit.ignore
    def get_classifier(self) -> nn.ModuleList:
        return self.heads

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Return (z, z_dist) in training mode (DeiT distillation) instead of their mean."""
        self.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace all four MSF heads (and the distilled ones) with fresh heads for ``num_classes``, on the
        model's device and dtype. ``global_pool``: ``"avg"`` (the MSF head's mean over tokens) or ``""``
        (no pooling, no heads: ``forward`` returns ``forward_features``); None keeps the current one."""
        _check_global_pool(global_pool)
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        heads = [("heads", "weights")] + ([("heads_dist", "weights_dist")] if self.distilled else [])
        for head_name, weight_name in heads:
            new = self._make_heads(num_classes).to(self.weights.device, self.weights.dtype)
            new.apply(self._init_weights)
            new.train(self.training)
            setattr(self, head_name, new)
            weights = getattr(self, weight_name)
            nn.init.ones_(weights)
            weights.requires_grad_(num_classes > 0)  # no heads, nothing to fuse: not a trainable parameter

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the trunk; return the MSF head's normalised inputs as (B, C_i, N_i) tensors: LN(h_0)..LN(h_2)
        and the final map LN(x) flattened (N = H * W)."""
        _check_input(x, self.in_chans, self.total_stride)
        x = self.patch_embed(x)
        features = []
        for stage, norm in zip(self.stages, self.norm):
            _, x, h = stage(x)
            features.append(norm(h))
        features.append(self.norm[-1](x).flatten(2))
        return features

    def forward_head(self, features: list[torch.Tensor], pre_logits: bool = False) -> Logits:
        """MSF head on ``forward_features`` output: logits, or the pooled features (B, num_features);
        with ``global_pool=""`` the features unchanged."""
        if not self.global_pool:
            return features
        pooled: list[torch.Tensor] = []
        for f in features:
            pooled.append(self.head_drop(f.mean(-1)))
        if pre_logits or self.num_classes == 0:
            return torch.cat(pooled, dim=1)
        z = self._logits(pooled)
        if not hasattr(self, "heads_dist"):  # resolved when scripting: a plain model has no distilled heads
            return z
        z_dist = self._logits_dist(pooled)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return z, z_dist
        return (z + z_dist) / 2

    # z = sum_i softmax(w)_i head_i(pooled_i), once per head set (TorchScript iterates a ModuleList
    # only as a module attribute, not as an argument)
    def _logits(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights.softmax(-1)
        z = w[0] * self.heads[0](pooled[0])
        for i, head in enumerate(self.heads):
            if i > 0:
                z = z + w[i] * head(pooled[i])
        return z

    def _logits_dist(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        w = self.weights_dist.softmax(-1)
        z = w[0] * self.heads_dist[0](pooled[0])
        for i, head in enumerate(self.heads_dist):
            if i > 0:
                z = z + w[i] * head(pooled[i])
        return z

    def forward(self, x: torch.Tensor) -> Logits:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """timm's contract: the stage output maps (before downsampling, strides 16, 32, 64) at ``indices``
        (an int n: the last n stages; a list: those stages, negative from the end; None: all), and unless
        ``intermediates_only`` also what ``forward_features`` returns.

        ``norm=True`` passes stage i's map through the head's LayerNorm i (the one of h_i), as timm's
        port does. ``stop_early`` runs no stage past the last one asked for; the final feature is then
        that stage's map, not normalised.
        """
        if output_fmt != "NCHW":
            raise ValueError("EfficientViM intermediates are NCHW only, not '" + output_fmt + "'")
        take, last = feature_take_indices(len(self.stages), indices)
        _check_input(x, self.in_chans, self.total_stride)
        x = self.patch_embed(x)
        # a count rather than a slice of the stages: TorchScript iterates a module's own ModuleList only
        stop = len(self.stages) if torch.jit.is_scripting() or not stop_early else last + 1
        intermediates, features = [], []
        out = x
        for i, (stage, stage_norm) in enumerate(zip(self.stages, self.norm)):
            if i < stop:  # (no break: TorchScript unrolls a loop over modules)
                out, x, h = stage(x)
                if i in take:
                    intermediates.append(stage_norm(out) if norm else out)
                if not intermediates_only:
                    features.append(stage_norm(h))
        if intermediates_only:
            return intermediates
        ran_all = torch.jit.is_scripting() or not stop_early or last == len(self.stages) - 1
        features.append(self.norm[-1](x).flatten(2) if ran_all else out.flatten(2))
        return features, intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what ``forward_intermediates(indices=...)`` does not need, in place (timm's contract): the
        stages past the last index (the MSF head then fuses the kept stages' states and the last kept
        map), with ``prune_head`` the classifier (and the norms no kept map uses), with ``prune_norm``
        every norm. Returns the stage indices to pass to ``forward_intermediates``."""
        take, last = feature_take_indices(len(self.stages), indices)
        keep = last + 1
        if keep < len(self.stages):
            if not prune_head:
                raise ValueError("the MSF head reads every stage: pruning stages needs prune_head=True")
            self.stages = self.stages[:keep]
            self.stages[-1].downsample = None
            self.embed_dim, self.depths = self.embed_dim[:keep], self.depths[:keep]
            self.state_dim = self.state_dim[:keep]
            self.num_stages = keep
            self.feature_info = self.feature_info[:keep]
            self.total_stride = STEM_STRIDE * 2 ** (keep - 1)
            self.norm = nn.ModuleList([*self.norm[:keep], nn.Identity()])
            for name in ("weights", "weights_dist"):
                if hasattr(self, name):
                    w = getattr(self, name)
                    setattr(self, name, nn.Parameter(torch.cat([w[:keep], w[-1:]]).detach()))
            self.num_features = self.head_hidden_size = sum(self.embed_dim) + self.embed_dim[-1]
        if prune_norm:
            self.norm = nn.ModuleList(nn.Identity() for _ in self.norm)
        elif prune_head:
            self.norm = nn.ModuleList(n if i in take else nn.Identity() for i, n in enumerate(self.norm))
        if prune_head:
            self.reset_classifier(0)
        return take


def _check_global_pool(global_pool: str | None) -> None:
    if global_pool not in (None, "", "avg"):
        raise ValueError(
            f"EfficientViM's MSF head pools by averaging: global_pool must be 'avg' (or '' for none), "
            f"not {global_pool!r}"
        )


STEM_STRIDES = (4, 8)  # the stem's intermediate maps a feature extractor can add to the stage maps


class EfficientViMFeatures(_Trunk):
    """The EfficientViM trunk as a feature extractor returning a list of NCHW maps.

    ``out_indices`` numbers the stage outputs as timm does: 0, 1, 2 at strides 16, 32, 64 (negative
    from the end), so the same ``out_indices`` give the same maps here and in timm. ``stem_strides``
    adds the stem's finer maps, stride 4 (dim/4 channels) and/or 8 (dim/2), in front of them, for
    dense heads; ``feature_info`` describes the returned maps in order. Stages past the deepest
    index asked for are not built.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: Sequence[int] = (128, 256, 512),
        depths: Sequence[int] = (2, 2, 2),
        state_dim: Sequence[int] = (49, 25, 9),
        mlp_ratio: float = 4.0,
        ssd_expand: float = 1.0,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (0, 1, 2),
        stem_strides: Sequence[int] = (),
        num_heads: int | Sequence[int] = 1,
        mixer_depth: int | Sequence[int] = 0,
        state_passing: bool | Sequence[bool] = False,
    ) -> None:
        super().__init__(in_chans, embed_dim, depths, state_dim, mlp_ratio, ssd_expand, drop_path_rate, num_heads,
                         mixer_depth, state_passing)
        n = self.num_stages
        if any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices number the {n} stages: each must lie in [-{n}, {n}), "
                             f"got {tuple(out_indices)}")
        if any(s not in STEM_STRIDES for s in stem_strides):
            raise ValueError(f"stem_strides may hold {STEM_STRIDES} (the stem's maps), got {tuple(stem_strides)}")
        self.out_indices = tuple(sorted({i % n for i in out_indices}))
        self.stem_strides = tuple(sorted(set(stem_strides)))
        if not self.out_indices and not self.stem_strides:
            raise ValueError("nothing to return: give out_indices (stages) and/or stem_strides")
        levels = [
            dict(num_chs=embed_dim[0] // 4, reduction=4, module="patch_embed.conv.1"),
            dict(num_chs=embed_dim[0] // 2, reduction=8, module="patch_embed.conv.2"),
            *self.stage_info(),
        ]
        # positions in the list of all five maps (stride 4, stride 8, stages 0-2) that forward returns
        self.level_index = tuple(STEM_STRIDES.index(s) for s in self.stem_strides) + tuple(
            len(STEM_STRIDES) + i for i in self.out_indices
        )
        self.feature_info = FeatureInfo(levels, self.level_index)
        # stages past the deepest requested level are never run: drop them (and their weights)
        self.stages = self.stages[: max(self.out_indices) + 1 if self.out_indices else 0]
        if len(self.stages):
            self.stages[-1].downsample = None
        self.total_stride = levels[max(self.level_index)]["reduction"]
        self.apply(self._init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input(x, self.in_chans, self.total_stride)
        s4, s8, x = self.patch_embed.forward_levels(x)
        maps = [s4, s8]
        for stage in self.stages:
            out, x, _ = stage(x)
            maps.append(out)
        return [maps[i] for i in self.level_index]
