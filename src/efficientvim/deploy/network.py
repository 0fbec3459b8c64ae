"""The fused network: downsampling, stages, the merged MSF head, the classifier and the feature extractor,
and :func:`fuse`, which builds them from a trained model."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import (
    PackedWeights,
    native_precision,
    packed_linear,
)
from ..layers import ChannelLayerNorm, ConvNorm, PatchMerging
from ..model import EfficientViM, EfficientViMFeatures, EfficientViMStage, _check_input
from .blocks import FusedBlock, FusedStem
from .folding import (
    TokenConv,
    conv_bn,
    frozen,
    identity_kernel,
    stream_scale,
)


class FusedPatchMerging(nn.Module):
    """PatchMerging on (B, H, W, C): residual DW, 1x1 expand, DW stride 2, SE, 1x1 project, residual DW."""

    def __init__(self, m: PatchMerging, in_scale: torch.Tensor, dtype: torch.dtype, channels_first: bool) -> None:
        super().__init__()
        self.channels_first = channels_first
        in_dim = m.dwconv1.conv.in_channels
        weight, bias = conv_bn(m.dwconv1)
        self.dwconv1 = TokenConv((weight + identity_kernel(in_dim, 3)) * in_scale.view(-1, 1, 1, 1), bias, 1, in_dim,
                                 False, dtype, channels_first)
        w, b = conv_bn(m.conv[0])
        self.expand = TokenConv(w, b, 1, 1, True, dtype, channels_first)
        w, b = conv_bn(m.conv[1])
        self.dw = TokenConv(w, b, 2, w.shape[0], True, dtype, channels_first)
        se = m.conv[2]
        self.se_fc1_weight = frozen(se.fc1.weight.double().flatten(1), dtype)
        self.se_fc1_bias = frozen(se.fc1.bias.double(), dtype)
        self.se_fc2_weight = frozen(se.fc2.weight.double().flatten(1), dtype)
        self.se_fc2_bias = frozen(se.fc2.bias.double(), dtype)
        self.packed = (PackedWeights(), PackedWeights())
        w, b = conv_bn(m.conv[3])
        self.project = TokenConv(w, b, 1, 1, False, dtype, channels_first)
        out_dim = w.shape[0]
        weight, bias = conv_bn(m.dwconv2)
        self.dwconv2 = TokenConv(weight + identity_kernel(out_dim, 3), bias, 1, out_dim, False, dtype, channels_first)

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
                fused.prev_scale = frozen(blocks[-1].state_scale.double(), dtype)
            blocks.append(fused)
            scale = stream_scale(block)
        self.blocks = nn.ModuleList(blocks)
        self.downsample = None
        if stage.downsample is not None:
            self.downsample = FusedPatchMerging(stage.downsample, scale, dtype, channels_first)
        self.out_scale = frozen(scale, dtype)

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
            self.weight, self.bias = frozen(gamma, dtype), frozen(beta, dtype)
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
        self.weight = frozen(weight * gamma, dtype)
        self.bias = frozen(bias + weight @ beta, dtype)

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
