"""The EfficientViM feature extractor: the trunk's stage maps (and the stem's finer ones) for dense prediction."""


from collections.abc import Sequence

import torch
from timm.models import FeatureInfo

from .trunk import Trunk, _check_input

# symbolic tracing records the input check as one call instead of its branches (wrapped where it is called)
torch.fx.wrap("_check_input")


STEM_STRIDES = (4, 8)  # the stem's intermediate maps a feature extractor can add to the stage maps


class EfficientViMFeatures(Trunk):
    """The EfficientViM trunk as a feature extractor returning a list of NCHW maps.

    ``out_indices`` numbers the stage outputs as timm does: 0, 1, 2 at strides 16, 32, 64 (negative
    from the end), so the same ``out_indices`` give the same maps here and in timm. ``stem_strides``
    adds the stem's finer maps, stride 4 (dim/4 channels) and/or 8 (dim/2), in front of them, for
    dense heads; ``feature_info`` describes the returned maps in order. Stages past the deepest
    index asked for are not built.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2), stem_strides: Sequence[int] = (), **trunk_args) -> None:
        """``trunk_args``: the trunk's, as :class:`EfficientViM` takes them: ``embed_dim``, ``depths`` and ``state_dim``
        (``efficientvim.create_model(name, features_only=True)`` passes a variant's), and optionally ``in_chans``,
        ``mlp_ratio``, ``ssd_expand``, ``drop_path_rate`` and the HSM-SSD variants."""
        super().__init__(**trunk_args)
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
            dict(num_chs=self.embed_dim[0] // 4, reduction=4, module="patch_embed.conv.1"),
            dict(num_chs=self.embed_dim[0] // 2, reduction=8, module="patch_embed.conv.2"),
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
