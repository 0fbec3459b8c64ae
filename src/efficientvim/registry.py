"""The EfficientViM family (M1-M4, plain and distilled): one config table, ``create_model``, ``list_models``."""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import os
from dataclasses import dataclass

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from . import hub
from .errors import CheckpointError, UnknownModelError
from .metadata import check_fields
from .model import EfficientViM, EfficientViMFeatures, per_stage
from .weights import SSD_OPTIONS, Checkpoint, check_fits, load_fitted


@dataclass(frozen=True)
class Variant:
    embed_dim: tuple[int, int, int]
    depths: tuple[int, int, int]
    state_dim: tuple[int, int, int]
    img_size: int
    top1: float  # ImageNet-1k top-1 of the published weights (450 epochs, or distilled)


VARIANTS: dict[str, Variant] = {
    "efficientvim_m1": Variant((128, 192, 320), (2, 2, 2), (49, 25, 9), 224, 73.5),
    "efficientvim_m2": Variant((128, 256, 512), (2, 2, 2), (49, 25, 9), 224, 75.8),
    "efficientvim_m3": Variant((224, 320, 512), (2, 2, 2), (49, 25, 9), 224, 77.9),
    "efficientvim_m4": Variant((224, 320, 512), (3, 4, 2), (64, 32, 16), 256, 79.6),
}
DISTILLED_TOP1 = {"efficientvim_m1": 74.6, "efficientvim_m2": 76.7, "efficientvim_m3": 79.1, "efficientvim_m4": 80.7}
# timm publishes these tags on the Hugging Face hub as timm/<name>.<tag>
PRETRAINED_TAGS = {"": ("e450_in1k", "e300_in1k"), "_dist": ("in1k",)}


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a glob ``pattern``; with ``pretrained`` the downloadable tags."""
    names = []
    for base in VARIANTS:
        for suffix, tags in PRETRAINED_TAGS.items():
            name = base + suffix
            names.extend(f"{name}.{t}" for t in tags) if pretrained else names.append(name)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def _resolve_name(name: str) -> tuple[str, str | None]:
    base, _, tag = name.partition(".")
    if base not in list_models():
        close = difflib.get_close_matches(name, list_models() + list_models(pretrained=True), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(list_models())}"
        raise UnknownModelError(f"unknown model {name!r}: {hint}")
    if tag and f"{base}.{tag}" not in list_models(pretrained=True):
        raise UnknownModelError(
            f"unknown weights tag {tag!r} for {base}: available {', '.join(list_models(base + '.*', True))}"
        )
    return base, tag or None


def model_config(name: str) -> dict:
    """Constructor arguments and preprocessing of a registered name (a weights tag is allowed)."""
    base, _ = _resolve_name(name)
    v = VARIANTS[base.removesuffix("_dist")]
    return dict(
        embed_dim=v.embed_dim,
        depths=v.depths,
        state_dim=v.state_dim,
        distilled=base.endswith("_dist"),
        img_size=v.img_size,
        top1=DISTILLED_TOP1[base.removesuffix("_dist")] if base.endswith("_dist") else v.top1,
    )


def _default_cfg(name: str, img_size: int, in_chans: int, num_classes: int) -> dict:
    # timm's pretrained-config keys, so timm.data.resolve_model_data_config and timm's tools work on our models
    heads = [f"heads.{i}" for i in range(4)] + ([f"heads_dist.{i}" for i in range(4)] if name.endswith("_dist") else [])
    return dict(
        architecture=name,
        input_size=(in_chans, img_size, img_size),
        pool_size=None,
        fixed_input_size=False,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.conv.0.conv",
        classifier=tuple(heads),  # every MSF head: a class-count change resets all of them
        num_classes=num_classes,
        label_names=None,
    )


def download_pretrained(name: str, tag: str | None) -> str:
    """Fetch timm's published weights for ``name`` (cached by huggingface_hub) and return the file path."""
    tag = tag or PRETRAINED_TAGS["_dist" if name.endswith("_dist") else ""][0]
    return str(hub.fetch(f"timm/{name}.{tag}", hub.WEIGHTS_NAME))


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | Checkpoint | None = None,
    checkpoint_key: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    **overrides,
) -> nn.Module:
    """Build an EfficientViM model, optionally with weights.

    Args:
        name: ``efficientvim_m1`` .. ``efficientvim_m4``, ``*_dist`` for the distilled heads, a
            weights tag such as ``efficientvim_m2.e450_in1k`` (implies ``pretrained``), or a model
            folder or hub repo (``hf-hub:USER/REPO`` or ``USER/REPO``) as ``save_pretrained`` and timm
            write them: its config picks the architecture and its weights load.
        pretrained: download timm's published ImageNet weights (cached; needs internet once).
        checkpoint: a local file (the authors' .pth, a timm state dict or ``save_weights`` output),
            or a :class:`Checkpoint` already read.
        checkpoint_key: the envelope entry to read (``model`` or ``model_ema``); EMA by default.
        num_classes: classifier size; default: the checkpoint's, else 1000. When it differs from
            the checkpoint's, the MSF heads are freshly initialised (fine-tuning).
        in_chans: input channels; the first conv of loaded weights is adapted.
        drop_path_rate: stochastic depth, ramped linearly over all blocks.
        features_only: return an :class:`EfficientViMFeatures` returning stage maps
            (``out_indices`` selects stages as timm numbers them, 0-2 at strides 16-64;
            ``stem_strides=(4, 8)`` adds the stem's finer maps).
        **overrides: other constructor arguments (``mlp_ratio``, ``drop_rate``, ``out_indices``...), among
            them the HSM-SSD variants, one value or one per stage: ``num_heads`` (selection heads),
            ``mixer_depth`` (recursive hidden-state mixing), ``state_passing`` (see :class:`HSMSSD`).
    """
    source_meta: dict = {}
    if hub.is_source(name):
        if checkpoint is not None:
            raise CheckpointError(f"{name} brings its own weights: drop checkpoint= (or name a registered model)")
        config, checkpoint = hub.resolve(name, overrides.pop("revision", None))
        name, saved_args, source_meta = hub.source_settings(config)
        # the saved arguments are defaults: the caller's own (a new class count, more channels) win
        num_classes = saved_args.pop("num_classes", None) if num_classes is None else num_classes
        in_chans = saved_args.pop("in_chans", 3) if in_chans == 3 else in_chans
        drop_path_rate = saved_args.pop("drop_path_rate", 0.0) if drop_path_rate == 0.0 else drop_path_rate
        for key, value in saved_args.items():
            if key not in ("num_classes", "in_chans", "drop_path_rate"):
                overrides.setdefault(key, value)
    base, tag = _resolve_name(name)
    cfg = model_config(base)
    img_size = overrides.pop("img_size", cfg["img_size"])
    device, dtype = overrides.pop("device", None), overrides.pop("dtype", None)
    cfg_overlay = overrides.pop("pretrained_cfg_overlay", None) or {}
    _check_timm_arguments(overrides, features_only)
    arch = dict(embed_dim=cfg["embed_dim"], depths=cfg["depths"], state_dim=cfg["state_dim"])
    overridden = {k: tuple(overrides.pop(k)) for k in list(overrides) if k in arch}
    arch.update(overridden)
    stages = len(arch["depths"])
    for key, default in SSD_OPTIONS.items():  # the HSM-SSD variants: one value or one per stage
        if key in overrides:
            overridden[key] = per_stage(overrides.pop(key), stages, key, type(default))
            arch[key] = overridden[key]

    ckpt = None
    if isinstance(checkpoint, Checkpoint):
        ckpt = checkpoint
    elif checkpoint is not None:
        ckpt = Checkpoint(checkpoint, checkpoint_key)
    elif pretrained or tag:
        ckpt = Checkpoint(download_pretrained(base, tag), checkpoint_key)
    if ckpt is not None:
        saved_arch = ckpt.metadata.get("architecture")
        if saved_arch and saved_arch != base and not features_only:
            raise CheckpointError(f"checkpoint {ckpt.path} holds {saved_arch}, not {base}: use that model name")
        if saved_arch in (None, base):
            _layout_from_checkpoint(arch, ckpt, given=overridden)

    def build() -> nn.Module:
        if features_only:
            return EfficientViMFeatures(in_chans=in_chans, drop_path_rate=drop_path_rate, **arch, **overrides)
        ckpt_classes = ckpt.num_classes if ckpt is not None else None
        classes = num_classes if num_classes is not None else (ckpt_classes or 1000)
        return EfficientViM(in_chans=in_chans, num_classes=classes, drop_path_rate=drop_path_rate,
                            distilled=cfg["distilled"], **arch, **overrides)

    check_fields({**arch, "in_chans": in_chans, "num_classes": num_classes}, f"create_model({name!r})", "asks for")
    reset_heads = False
    if ckpt is not None:  # the layout the file asks for must fit its tensors before memory is given to it
        with torch.device("meta"):
            probe = build()
        reset_heads = features_only or (ckpt.num_classes is not None and ckpt.num_classes != probe.num_classes)
        state = check_fits(probe, ckpt, reset_heads)
    # built directly on ``device`` (the meta device too: then to_empty() and init_weights())
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build()
    model.model_name = base
    model.pretrained_cfg = {**_default_cfg(base, img_size, in_chans, getattr(model, "num_classes", 0)), **cfg_overlay}
    model.default_cfg = model.pretrained_cfg  # timm's older name for the same dict
    if ckpt is not None:
        load_fitted(model, state, reset_heads)
        _apply_metadata(model, {**source_meta, **ckpt.metadata}, keep_labels=not reset_heads)
    if dtype is not None:
        model.to(dtype=dtype)
    return model


def _check_timm_arguments(overrides: dict, features_only: bool) -> None:
    """Accept the keyword arguments timm's factory passes, where they mean what the model does, and
    refuse the others clearly (a TypeError deep in a constructor otherwise)."""
    from .model import _check_global_pool

    global_pool = overrides.pop("global_pool", None)
    _check_global_pool(global_pool)
    if global_pool is not None and not features_only:
        overrides["global_pool"] = global_pool
    output_stride = overrides.pop("output_stride", None)
    if output_stride not in (None, 64):
        raise ValueError(f"EfficientViM has a fixed output stride of 64 (no dilation): output_stride={output_stride} "
                         "is not supported")
    feature_cls = overrides.pop("feature_cls", None)
    if feature_cls not in (None, "getter", "list") or (feature_cls and not features_only):
        raise ValueError(f"feature_cls={feature_cls!r}: EfficientViM feature extractors return a list of maps "
                         "(features_only=True)")


def _layout_from_checkpoint(arch: dict, ckpt: Checkpoint, given: dict) -> None:
    """Take the stage layout a ``save_weights`` file records (a narrowed or deepened variant), unless the
    caller set it; a caller's layout that contradicts the file is refused, naming both."""
    for key, saved in ckpt.stage_layout.items():
        if key in given and given[key] != saved:
            raise CheckpointError(
                f"checkpoint {ckpt.path} holds {ckpt.metadata.get('architecture')} with {key} {saved}, "
                f"not {given[key]}: drop the {key} override"
            )
        arch[key] = saved


def _apply_metadata(model: nn.Module, meta: dict, keep_labels: bool) -> None:
    cfg = model.pretrained_cfg
    for key in ("crop_pct", "interpolation"):
        if meta.get(key) is not None:
            cfg[key] = meta[key]
    for key in ("mean", "std"):
        if meta.get(key) is not None:
            cfg[key] = tuple(meta[key])
    if meta.get("input_size"):
        cfg["input_size"] = (cfg["input_size"][0], *meta["input_size"][1:])
    if keep_labels and meta.get("class_names"):
        cfg["label_names"] = list(meta["class_names"])


def from_pretrained(source: str | os.PathLike, **kwargs) -> nn.Module:
    """A model from a folder or hub repo written by :func:`efficientvim.save_pretrained` (or one of timm's
    EfficientViM repos, e.g. ``timm/efficientvim_m2.e450_in1k``): ``create_model(source, **kwargs)``."""
    return create_model(str(source), **kwargs)


def load_model(path: str | os.PathLike | Checkpoint, **kwargs) -> nn.Module:
    """Rebuild a model from a file written by ``save_weights`` alone (its metadata names the architecture)."""
    ckpt = path if isinstance(path, Checkpoint) else Checkpoint(path)
    arch = ckpt.metadata.get("architecture")
    if not arch:
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not name its architecture: use create_model(NAME, checkpoint=...)"
        )
    kwargs.setdefault("in_chans", ckpt.metadata.get("in_chans", 3))
    return create_model(arch, checkpoint=ckpt, **kwargs)
