"""What a file may say about the model it holds, checked before anything is built from it.

The metadata of a weights file (``save_weights``) and the ``config.json`` of a model folder or hub repo name the
architecture, its stage layout, the classes and the preprocessing. They come from a file, so each field is
checked for its type and a sane range here, in one place, before a model is built (a small file asking for
100,000 channels would otherwise allocate gigabytes); whether the layout fits the tensors the file holds is
checked by building the model on the meta device first (``registry.create_model``). A field that fails is one
:class:`CheckpointError` naming the file, the field and what it should be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .errors import CheckpointError

MAX_STAGES = 8
MAX_WIDTH = 4096  # channels of a stage (the paper's widest is 512)
MAX_DEPTH = 64  # blocks of a stage (the paper's deepest is 2)
MAX_STATES = 1024  # hidden states of a stage (the paper's most is 64)
MAX_CLASSES = 100_000  # ImageNet-22k has 21,843
MAX_CHANNELS = 64  # input channels
MAX_SIDE = 4096  # pixels of a model input side (the largest docs/research.md measures)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _int(low: int, high: int) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            return f"an integer from {low} to {high}"
        return None
    return check


def _number(low: float, high: float, low_open: bool = False) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high
        if not ok or (low_open and v == low):
            return f"a number in {'(' if low_open else '['}{low}, {high}]"
        return None
    return check


def _per_stage(item: Callable[[object], str | None], what: str) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        if not isinstance(v, list | tuple) or not 1 <= len(v) <= MAX_STAGES or any(item(x) for x in v):
            return f"a list of 1 to {MAX_STAGES} {what}"
        return None
    return check


def _list_of(item: Callable[[object], str | None], what: str, sizes: tuple[int, ...]) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        if not isinstance(v, list | tuple) or len(v) not in sizes or any(item(x) for x in v):
            return what
        return None
    return check


def _one_of(*values: object) -> Callable[[object], str | None]:
    return lambda v: None if v in values else "one of " + ", ".join(map(str, values))


def _string(v: object) -> str | None:
    return None if isinstance(v, str) and 0 < len(v) <= 200 else "a name (a string of 1 to 200 characters)"


def _class_names(v: object) -> str | None:
    if v is None or (isinstance(v, list) and len(v) <= MAX_CLASSES and all(isinstance(n, str) for n in v)):
        return None
    return "a list of class names (strings)"


_WIDTH, _CHANNELS = _int(8, MAX_WIDTH), _int(1, MAX_CHANNELS)
_SIDE = _int(1, MAX_SIDE)
# what each field may hold; a field not named here is kept as it is (it builds nothing)
FIELDS: dict[str, Callable[[object], str | None]] = {
    "architecture": _string,
    "num_classes": _int(0, MAX_CLASSES),  # 0: a model without a classifier (timm's convention)
    "in_chans": _CHANNELS,
    "input_size": _list_of(_SIDE, f"[channels, height, width], sides of 1 to {MAX_SIDE} pixels", (3,)),
    "crop_pct": _number(0.0, 1.0, low_open=True),
    "interpolation": _one_of(*INTERPOLATIONS),
    "mean": _list_of(_number(-1e3, 1e3), f"one number per input channel (1 to {MAX_CHANNELS})",
                     tuple(range(1, MAX_CHANNELS + 1))),
    "std": _list_of(_number(0.0, 1e3, low_open=True), "one positive number per input channel",
                    tuple(range(1, MAX_CHANNELS + 1))),
    "class_names": _class_names,
    "label_names": _class_names,
    "embed_dim": _per_stage(_WIDTH, f"stage widths from 8 to {MAX_WIDTH}"),
    "depths": _per_stage(_int(1, MAX_DEPTH), f"stage depths from 1 to {MAX_DEPTH}"),
    "state_dim": _per_stage(_int(1, MAX_STATES), f"state counts from 1 to {MAX_STATES}"),
    "num_heads": _per_stage(_int(1, 64), "head counts from 1 to 64"),
    "mixer_depth": _per_stage(_int(0, 8), "mixing depths from 0 to 8"),
    "state_passing": _per_stage(_one_of(True, False), "true or false values"),
    "drop_path_rate": _number(0.0, 1.0),
    "drop_rate": _number(0.0, 1.0),
    "mlp_ratio": _number(0.0, 16.0, low_open=True),
    "ssd_expand": _number(0.0, 16.0, low_open=True),
    "global_pool": _one_of("avg", "", None),
    "epoch": _int(0, 10**6),
    "top1": _number(0.0, 100.0),
}
# the constructor arguments a config.json's ``model_args`` may carry
MODEL_ARGS = ("embed_dim", "depths", "state_dim", "num_heads", "mixer_depth", "state_passing", "in_chans",
              "num_classes", "drop_path_rate", "drop_rate", "mlp_ratio", "ssd_expand", "global_pool")


def check_fields(values: Mapping, where: str, says: str = "records") -> dict:
    """``values`` (metadata or a config) with every known field checked: one CheckpointError naming the first
    field that is not what it should be ("``where`` ``says`` key = value, which should be ..."), else the values
    as a dict. Layout lists must also agree in length."""
    for key, check in FIELDS.items():
        if values.get(key) is None:
            continue
        problem = check(values[key])
        if problem:
            raise CheckpointError(f"{where} {says} {key} = {_shown(values[key])}, which should be {problem}"
                                  + (": the file is damaged or was not written for EfficientViM"
                                     if says == "records" else ""))
    lengths = {k: len(values[k]) for k in ("embed_dim", "depths", "state_dim", "num_heads", "mixer_depth",
                                            "state_passing") if values.get(k) is not None}
    if len(set(lengths.values())) > 1:
        raise CheckpointError(f"{where} {says} stage lists of different lengths "
                              f"({', '.join(f'{k} {n}' for k, n in lengths.items())}): one value per stage")
    names, classes = values.get("class_names") or values.get("label_names"), values.get("num_classes")
    if names and classes is not None and len(names) != classes:
        raise CheckpointError(f"{where} records {len(names)} class names for {classes} classes: the file is damaged")
    return dict(values)


def check_model_args(args: object, where: str) -> dict:
    """A config.json's ``model_args``: a mapping of known constructor arguments, each checked."""
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise CheckpointError(f"{where} records model_args = {_shown(args)}, which should be a mapping of "
                              "constructor arguments")
    unknown = [k for k in args if k not in MODEL_ARGS]
    if unknown:
        raise CheckpointError(f"{where} records model_args {', '.join(map(repr, unknown[:3]))} that EfficientViM "
                              f"does not take (it takes {', '.join(MODEL_ARGS)})")
    return check_fields(args, f"{where} model_args")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
