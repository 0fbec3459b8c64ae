"""The EfficientViM classifier: the trunk and the multi-stage hidden-state fusion (MSF) head."""


from collections.abc import Sequence

import torch
from timm.models._features import feature_take_indices
from torch import nn

from ..layers import ChannelLayerNorm
from .trunk import STEM_STRIDE, Trunk, _check_input

# symbolic tracing records the input check as one call instead of its branches (wrapped where it is called)
torch.fx.wrap("_check_input")


# logits, or (z, z_dist) from a distilled model in training mode
# (or forward_features' list when the model was built with global_pool="")
Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]


class EfficientViM(Trunk):
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
        super().__init__(embed_dim, depths, state_dim, in_chans, mlp_ratio, ssd_expand, drop_path_rate, num_heads,
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

    # z = sum_i softmax(w)_i head_i(pooled_i), once per head set (TorchScript iterates a ModuleList only as a
    # module attribute, not as an argument: each set's products are listed here, summed by msf_sum)
    def _logits(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i, head in enumerate(self.heads):
            z.append(head(pooled[i]))
        return msf_sum(z, self.weights)

    def _logits_dist(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        z = []
        for i, head in enumerate(self.heads_dist):
            z.append(head(pooled[i]))
        return msf_sum(z, self.weights_dist)

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


def msf_sum(logits: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """The MSF fusion: sum_i softmax(w)_i z_i."""
    weights = w.softmax(-1)
    z = weights[0] * logits[0]
    for i in range(1, len(logits)):
        z = z + weights[i] * logits[i]
    return z
