"""Training configuration: one flat dataclass holding every hyper-parameter, and the named recipes.

A run's configuration is layered, later layers winning: the dataclass defaults, the recipe, the
embedded-digits defaults (when no ``--data`` is given), a YAML file, then command-line options.

The ImageNet recipes are the reference EfficientViM recipe (AdamW, lr 2e-3 at total batch 2048,
cosine with 20 warm-up and 10 cool-down epochs, RandAugment, Mixup/CutMix, EMA, MESA). The
learning rates scale with the total batch (per-process batch x processes x accumulation), linearly
for the ImageNet recipes, ``lr = lr_base * total_batch / lr_base_batch``, and by its square root for
``small`` (``lr_scaling``); the warm-up and final learning rates follow the same factor.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..metadata import MAX_SIDE

MIN_IMG_SIZE = 64  # the total stride of every EfficientViM


@dataclass
class TrainConfig:
    """Every setting of a training run; the field names are the YAML keys."""

    # data
    data: str | None = None  # dataset root; None trains on the embedded scikit-learn digits
    dataset: str = ""  # timm create_dataset name ("" = class folders, torch/cifar10, hfds/...)
    strict_data: bool = False  # an unreadable image stops the run instead of being skipped
    workers: int = 4
    # model
    model: str = "efficientvim_m1"
    model_args: dict = field(default_factory=dict)  # constructor overrides, e.g. embed_dim: [32, 48, 64]
    checkpoint: str | None = None  # initial weights (fine-tuning); MSF heads reset if classes differ
    img_size: int = 224
    drop_path: float = 0.0
    # schedule
    epochs: int = 300  # cosine length; cooldown_epochs more are run at min_lr
    cooldown_epochs: int = 10
    warmup_epochs: int = 20
    batch_size: int = 256  # per process
    accum_steps: int = 1
    lr: float | None = None  # absolute peak lr; None: scaled from lr_base by the total batch
    lr_base: float = 2e-3
    lr_base_batch: int = 2048
    lr_scaling: str = "linear"  # how lrs follow the total batch: "linear" (the reference) or "sqrt"
    warmup_lr_base: float = 2e-6
    min_lr_base: float = 2e-5
    # optimiser
    opt: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05
    clip_grad: float | None = 0.02  # max global gradient norm
    # augmentation and loss
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    # EMA and self-distillation
    ema: bool = True
    ema_decay: float = 0.9995
    ema_warmup: bool = False  # ramp the decay up over the first updates (short runs)
    mesa: float = 1.0  # weight of the MESA loss; 0 disables it
    mesa_start: float = 0.25  # fraction of the epochs after which MESA is on
    # knowledge distillation (DeiT)
    distillation: str = "none"  # none, hard or soft
    teacher: str = "regnety_160"
    teacher_checkpoint: str | None = None
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    # run
    amp: bool = False  # bfloat16 autocast on CPU, float16 with loss scaling on CUDA
    seed: int = 0
    output: str = "runs/train"

    def total_batch(self, world_size: int = 1) -> int:
        return self.batch_size * world_size * self.accum_steps

    def scaled_lrs(self, world_size: int = 1) -> tuple[float, float, float]:
        """(peak, warm-up start, final) learning rates for this total batch size."""
        factor = self.total_batch(world_size) / self.lr_base_batch
        if self.lr_scaling == "sqrt":
            factor = factor**0.5
        peak = self.lr if self.lr is not None else self.lr_base * factor
        ratio = peak / self.lr_base
        return peak, self.warmup_lr_base * ratio, self.min_lr_base * ratio

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.cooldown_epochs

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain_data(getattr(self, f.name)) for f in dataclasses.fields(self)}


def plain_data(value: Any) -> Any:
    # tuples become lists so the dict is YAML- and torch.load(weights_only=True)-friendly
    if isinstance(value, tuple | list):
        return [plain_data(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    return value


_IMAGENET_300: dict[str, Any] = {}  # the dataclass defaults are the reference recipe
RECIPES: dict[str, dict[str, Any]] = {
    "imagenet-300": _IMAGENET_300,
    "imagenet-450": {**_IMAGENET_300, "epochs": 450},
    # DeiT hard distillation from RegNetY-16GF; the reference turns MESA off when a teacher is used
    "imagenet-distill": {**_IMAGENET_300, "distillation": "hard", "mesa": 0.0},
    # small custom datasets (tens to thousands of images) trained for tens of epochs, often from scratch:
    # no RandAugment or Mixup (a few hundred steps never repay them: the digits written out as a folder
    # reached 71% val top-1 with RandAugment and 95-98% without), AdamW's lr scaled by the square root of
    # the batch (a folder of 80 photos at batch 16: 85% val at the linear 2.5e-4, 90-95% at 5e-4),
    # EMA warm-up
    "small": {
        "epochs": 30,
        "cooldown_epochs": 0,
        "warmup_epochs": 2,
        "batch_size": 64,
        "lr_base": 1e-3,
        "lr_base_batch": 64,
        "warmup_lr_base": 1e-5,
        "min_lr_base": 1e-5,
        "clip_grad": None,
        "scale": (0.35, 1.0),
        "auto_augment": None,
        "lr_scaling": "sqrt",
        "color_jitter": 0.0,
        "reprob": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "ema_decay": 0.998,
        "ema_warmup": True,
        "mesa": 0.0,
        "workers": 2,
    },
}
DEFAULT_RECIPE = "small"

# The embedded digits are 8x8 scans: upscaled to the network's minimum input (total stride 64),
# centred (no crop at eval), and never mirrored (a mirrored 2 is not a 2).
# The model is M1 at half width (1.48M parameters), small enough for the 1,437 training digits.
DIGITS_DEFAULTS: dict[str, Any] = {
    "model_args": {"embed_dim": (64, 96, 160)},
    "img_size": 64,
    "epochs": 15,
    "scale": (0.6, 1.0),
    "hflip": 0.0,
    "auto_augment": None,
    "crop_pct": 1.0,
    "workers": 0,
    "output": "runs/digits",
}


def recipe_names() -> list[str]:
    return list(RECIPES)


def build_config(
    recipe: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Layer recipe, digits defaults, YAML file and ``overrides`` (None values ignored) into a TrainConfig."""
    name = recipe or DEFAULT_RECIPE
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f"did you mean {close[0]}?" if close else f"choose one of {', '.join(RECIPES)}"
        raise ConfigError(f"unknown recipe {name!r}: {hint}")
    file_values = read_yaml(config_file) if config_file else {}
    if "recipe" in file_values:
        file_name = file_values.pop("recipe")
        if recipe is None:
            return build_config(file_name, config_file, overrides)
    cli_values = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = dict(RECIPES[name])
    if (cli_values.get("data") or file_values.get("data")) is None:
        values.update(DIGITS_DEFAULTS)
    for layer in (file_values, cli_values):
        # model arguments add up key by key: `--model-arg num_heads=2` keeps the digits model's widths
        if isinstance(layer.get("model_args"), dict) and isinstance(values.get("model_args"), dict):
            layer = {**layer, "model_args": {**values["model_args"], **layer["model_args"]}}
        values.update(layer)
    return make_config(values)


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a plain dict, rejecting unknown keys with a suggestion."""
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in values if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {unknown[0]!r}{hint}")
    values = {k: tuple(v) if k in ("betas", "scale") and v is not None else v for k, v in values.items()}
    cfg = TrainConfig(**values)
    if cfg.lr_scaling not in ("linear", "sqrt"):
        raise ConfigError(f"lr_scaling must be linear or sqrt, not {cfg.lr_scaling!r}")
    if cfg.distillation not in ("none", "hard", "soft"):
        raise ConfigError(f"distillation must be none, hard or soft, not {cfg.distillation!r}")
    if cfg.mesa > 0 and not cfg.ema:
        raise ConfigError("MESA distils from the EMA model: keep ema on or set mesa to 0")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accum_steps < 1:
        raise ConfigError("epochs, batch_size and accum_steps must be at least 1")
    if not MIN_IMG_SIZE <= cfg.img_size <= MAX_SIDE:
        raise ConfigError(f"img_size must be from {MIN_IMG_SIZE} (the network's total stride) to {MAX_SIDE}, not "
                          f"{cfg.img_size}")
    if (cfg.lr is not None and not cfg.lr >= 0) or not cfg.lr_base > 0:
        given = cfg.lr if cfg.lr is not None else cfg.lr_base
        raise ConfigError(f"lr must be 0 or more and lr_base positive, not {given}")
    if cfg.workers < 0 or cfg.warmup_epochs < 0 or cfg.cooldown_epochs < 0:
        raise ConfigError("workers, warmup_epochs and cooldown_epochs must be 0 or more")
    if not 0 <= cfg.drop_path < 1:
        raise ConfigError(f"drop_path must be in [0, 1), not {cfg.drop_path}")
    return cfg


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file's mapping, or a one-line ConfigError. Aliases (``*name``) are refused: a config
    needs none, and a few hundred bytes of nested aliases expand to gigabytes (a "billion laughs")."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                line = event.start_mark.line + 1
                raise ConfigError(f"config file {path} uses the alias *{event.anchor} (line {line}): aliases are "
                                  "not read in configs; write the value out")
            return super().compose_node(parent, index)

    try:
        with open(path) as f:
            values = yaml.load(f, Loader=NoAliases) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return values
