"""The embedded default runs: digit canvases, a model and a schedule per task, fixed seeds.

What a detection or segmentation run trains when no data set is given. The
figures they reach, and how long they take on 2 CPU cores, are in docs/dense.md.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import nn

from ..errors import EfficientViMError
from .backbone import split_strides
from .data import TASKS, DigitCanvases
from .detection import create_detector
from .segmentation import create_segmenter


@dataclass(frozen=True)
class DenseRecipe:
    """Everything a default run uses: the model, the canvases and the optimisation schedule."""

    task: str
    arch: str
    backbone: str = "efficientvim_m1"
    strides: tuple[int, ...] = (8, 16, 32, 64)  # the trunk's maps the pyramid reads
    fpn_channels: int = 64
    overrides: dict = field(default_factory=dict)  # create_model arguments (widths, depths, states)
    canvas_size: tuple[int, int] = (128, 128)
    digits: tuple[int, int] = (2, 5)
    digit_size: tuple[int, int] = (20, 44)
    # 4 epochs of 150 steps: a run evaluates, and keeps its best weights, every minute or two on 2 CPU
    # cores, so a run stopped early (or slowed by a shared machine) still leaves a usable best.safetensors
    train_canvases: int = 2400  # per epoch: len / batch_size steps an epoch
    val_canvases: int = 300
    epochs: int = 4
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)  # further create_detector / create_segmenter arguments

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DenseRecipe:
        """The inverse of ``to_dict`` after a round trip through JSON (lists back to tuples)."""
        tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
        values = dict(values)
        if "out_indices" in values:  # written before levels were named by stride: index i read stride 4 * 2**i
            values["strides"] = [4 * 2**i for i in values.pop("out_indices")]
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in values.items()})


DEFAULT_RECIPES = {
    "detection": DenseRecipe(task="detection", arch="fcos"),
    # A narrower M1 trunk (M1 depths and states, widths 64/128/192) leaves time for 800 steps at
    # stride 4; the background (about 90% of pixels) weighs a quarter of a digit in the loss.
    "segmentation": DenseRecipe(
        task="segmentation",
        arch="semantic_fpn",
        strides=(4, 8, 16, 32, 64),
        overrides={"embed_dim": (64, 128, 192)},
        train_canvases=3200,
        model_kwargs={"channels": 64, "class_weight": (0.25,) + (1.0,) * 10},
    ),
}


# named recipes, as for classification (``--recipe``); the first of a task is its default
RECIPES = {
    "digits-fcos": DEFAULT_RECIPES["detection"],
    # the RetinaNet comparison row of docs/dense.md: same levels, FPN and schedule as the FCOS default
    "digits-retinanet": replace(DEFAULT_RECIPES["detection"], arch="retinanet"),
    "digits-semantic-fpn": DEFAULT_RECIPES["segmentation"],
}


def named_recipe(name: str, task: str) -> DenseRecipe:
    """The recipe called ``name``, which must be one of ``task``'s, or a one-line error naming them."""
    import difflib

    own = [n for n, r in RECIPES.items() if r.task == task]
    if name not in own:
        close = difflib.get_close_matches(name, own, n=1)
        other = f" ({name} is a {RECIPES[name].task} recipe)" if name in RECIPES else ""
        raise EfficientViMError(f"unknown {task} recipe {name!r}{other}: "
                                + (f"did you mean {close[0]}?" if close else f"choose one of {', '.join(own)}"))
    return RECIPES[name]


def default_recipe(task: str, **changes) -> DenseRecipe:
    """The embedded recipe of ``task`` with ``changes`` applied (fields of :class:`DenseRecipe`)."""
    if task not in TASKS:
        raise EfficientViMError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return replace(DEFAULT_RECIPES[task], **changes)


def build_model(
    recipe: DenseRecipe,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> nn.Module:
    """The recipe's detector or segmenter (initialised from ``recipe.seed``), the trunk optionally
    started from classification weights of the same width.

    ``num_classes`` counts object classes for detectors and all classes (background included) for
    segmenters; default: the digit canvases'. ``image_size`` (shorter, longer side) is what the
    detector's transform resizes to; default: the canvas size.
    """
    from ..registry import create_model

    torch.manual_seed(recipe.seed)

    body = create_model(
        recipe.backbone, checkpoint=checkpoint, features_only=True, **split_strides(recipe.strides), **recipe.overrides
    )
    if recipe.task == "detection":
        height, width = image_size or recipe.canvas_size
        return create_detector(
            recipe.arch,
            body,
            num_classes or DigitCanvases.num_classes,
            fpn_channels=recipe.fpn_channels,
            min_size=min(height, width),
            max_size=max(height, width),
            **recipe.model_kwargs,
        )
    classes = num_classes or DigitCanvases.num_classes + 1
    return create_segmenter(recipe.arch, body, classes, fpn_channels=recipe.fpn_channels, **recipe.model_kwargs)


def build_canvases(recipe: DenseRecipe, need_train: bool = True) -> tuple[DigitCanvases | None, DigitCanvases]:
    """The recipe's train and val digit canvases (val from unseen digit scans; train None unless ``need_train``)."""
    common = dict(
        task=recipe.task, size=recipe.canvas_size, digits=recipe.digits, digit_size=recipe.digit_size, seed=recipe.seed
    )
    train = DigitCanvases("train", length=recipe.train_canvases, **common) if need_train else None
    return train, DigitCanvases("val", length=recipe.val_canvases, **common)
