"""Reading and writing EfficientViM weights without ever executing code from a file.

Accepted inputs:
  * the authors' releases (``EfficientViM_M2_e450.pth``): a dict holding ``model`` and usually
    ``model_ema``; EMA weights are preferred since they give the reported accuracy;
  * timm state dicts (.pth, .bin or .safetensors), LayerNorm weights flattened to (C,);
  * this package's format written by :func:`save_weights`: safetensors with metadata
    (architecture, classes, preprocessing).
Pickles go through ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .errors import CheckpointError
from .metadata import check_fields
from .writing import write_bytes

FORMAT_NAME = "efficientvim"
# envelope keys of training checkpoints, in order of preference when none is named
ENVELOPE_KEYS = ("model_ema", "state_dict_ema", "model", "state_dict", "module")
HEAD_PREFIXES = ("heads.", "heads_dist.")
HEAD_KEYS = ("weights", "weights_dist")
STAGE_LAYOUT = ("embed_dim", "depths", "state_dim")  # constructor arguments save_weights records
# the HSM-SSD variants (per stage), recorded only when not the paper's: default files stay as they were
SSD_OPTIONS = {"num_heads": 1, "mixer_depth": 0, "state_passing": False}


def model_layout(model: nn.Module) -> dict[str, list]:
    """The constructor arguments that rebuild ``model``'s shape: its stage layout, and the HSM-SSD variants
    it uses (``num_heads``, ``mixer_depth``, ``state_passing``) where they differ from the paper's."""
    layout = {k: list(getattr(model, k)) for k in STAGE_LAYOUT if hasattr(model, k)}
    for key, default in SSD_OPTIONS.items():
        values = list(getattr(model, key, ()))
        if any(v != default for v in values):
            layout[key] = values
    return layout


class Checkpoint:
    """A checkpoint file read into a flat state dict, plus its metadata when it has any."""

    def __init__(self, path: str | os.PathLike, key: str | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict = {}
        self.state_dict = self._read(key)

    def _read(self, key: str | None) -> dict[str, torch.Tensor]:
        path = self.path
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a folder: pass the weights file inside it")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found: check the path")
        with open(path, "rb") as f:
            head = f.read(16)
        if path.suffix == ".safetensors" or _looks_like_safetensors(head):
            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                state = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(
                    f"checkpoint {path} is not a readable safetensors file ({_short(e)}): it may be truncated; "
                    "download or export it again"
                ) from None
            if meta.get("format") == FORMAT_NAME:
                self.metadata = check_fields(_parsed(meta, path), f"checkpoint {path}")
            return state
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols; refusals are explained below
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for truncated or hostile pickles
            raise CheckpointError(f"checkpoint {path} {_why_unreadable(path, head, e)}") from None
        return self._unwrap(obj, key)

    def _unwrap(self, obj: object, key: str | None) -> dict[str, torch.Tensor]:
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"checkpoint {self.path} holds a {type(obj).__name__}, not a state dict")
        envelope = obj
        if key is not None:
            if not isinstance(obj.get(key), Mapping):
                found = [k for k, v in obj.items() if isinstance(v, Mapping)]
                raise CheckpointError(
                    f"checkpoint {self.path} has no state dict under {key!r}; dict entries are {found}"
                )
            obj = obj[key]
        elif not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in ENVELOPE_KEYS:
                if isinstance(obj.get(k), Mapping) and obj[k]:
                    obj = obj[k]
                    break
        state = {}
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                state[k[len("module.") :] if k.startswith("module.") else k] = v
        if not state:
            raise CheckpointError(f"checkpoint {self.path} holds no tensors")
        # metadata sits beside the weights, or beside the state dicts of a training envelope
        meta = obj.get("metadata", envelope.get("metadata"))
        if isinstance(meta, Mapping):
            self.metadata = check_fields(meta, f"checkpoint {self.path}")
        return state

    @property
    def stage_layout(self) -> dict[str, tuple[int, ...]]:
        """The stage layout a ``save_weights`` file records (``embed_dim``, ``depths``, ``state_dim``, and the
        HSM-SSD variants where they are not the paper's)."""
        return {k: tuple(self.metadata[k]) for k in (*STAGE_LAYOUT, *SSD_OPTIONS) if self.metadata.get(k)}

    @property
    def num_classes(self) -> int | None:
        w = self.state_dict.get("heads.0.weight")
        return int(w.shape[0]) if w is not None else self.metadata.get("num_classes")


def _parsed(header: Mapping[str, str], path: Path) -> dict:
    """The JSON values of a ``save_weights`` header, or a CheckpointError naming the one that is not JSON."""
    values = {}
    for key, text in header.items():
        if key == "format":
            continue
        try:
            values[key] = json.loads(text)
        except ValueError:
            raise CheckpointError(f"checkpoint {path} records {key} = {text[:40]!r}, which is not JSON: the file's "
                                  "metadata is damaged (save it again with save_weights)") from None
    return values


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object
    return len(head) > 9 and head[8:9] == b"{"


def _why_unreadable(path: Path, head: bytes, error: BaseException) -> str:
    """Say in words why ``torch.load(weights_only=True)`` refused a file starting with ``head``."""
    is_zip, is_pickle = head.startswith(b"PK\x03\x04"), head.startswith(b"\x80")
    if not (is_zip or is_pickle):
        return "is not a PyTorch or safetensors file: pass a .pth/.pt/.bin state dict or a .safetensors file"
    foreign = _foreign_globals(path, is_zip)
    if foreign:
        return (
            f"was refused: it contains code that would run when loaded ({', '.join(foreign[:3])}); "
            "only tensors and plain containers are read. Re-save its state dict "
            "(torch.save(model.state_dict(), path)) or use safetensors"
        )
    if foreign is None:
        return "is truncated or damaged and cannot be read: download or save it again"
    return (
        f"holds data torch.load(weights_only=True) cannot read ({_short(error).split('. ')[0]}): re-save it "
        "with torch.save(model.state_dict(), path) or as safetensors"
    )


# what a state-dict pickle legitimately names to rebuild tensors and containers
_SAFE_PICKLE_MODULES = ("torch", "collections", "_codecs", "numpy")
_SAFE_BUILTINS = ("builtins.set", "builtins.frozenset", "builtins.slice", "builtins.complex", "builtins.bytearray")


def _foreign_globals(path: Path, is_zip: bool) -> list[str] | None:
    """Callables outside torch/collections that the pickle in ``path`` would import, read from its opcodes
    without executing any; None when the pickle cannot be parsed (truncated or damaged)."""
    import pickletools
    import zipfile

    try:
        if is_zip:
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(name)
        else:
            data = path.read_bytes()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (StopIteration, zipfile.BadZipFile, ValueError, OSError, KeyError):
        return None
    return [g for g in dict.fromkeys(found) if g.split(".")[0] not in _SAFE_PICKLE_MODULES and g not in _SAFE_BUILTINS]


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def to_model_format(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Normalise reference/timm layouts to this model: LayerNorm affine (1, C, 1[, 1]) -> (C,),
    distilled heads dropped for a plain model, the first conv adapted to ``in_chans``."""
    from timm.models import adapt_input_conv

    target = model.state_dict()
    layer_norms = {
        f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")
    }
    out = {}
    for k, v in state.items():
        if (k.startswith("heads_dist.") or k == "weights_dist") and k not in target:
            continue
        t = target.get(k)
        if k in layer_norms and v.dim() != t.dim() and v.numel() == t.numel():
            v = v.reshape(t.shape)
        out[k] = v
    first = "patch_embed.conv.0.conv.weight"
    if first in out and first in target and out[first].shape[1] != target[first].shape[1]:
        out[first] = adapt_input_conv(target[first].shape[1], out[first].float()).to(out[first].dtype)
    return out


def load_into(
    model: nn.Module,
    ckpt: Checkpoint,
    drop_heads: bool = False,
) -> None:
    """Load ``ckpt`` into ``model`` strictly, or raise one CheckpointError naming the first mismatches.

    ``drop_heads`` leaves the MSF heads (and their fusion weights) as initialised, for
    fine-tuning on another number of classes or for feature extractors.
    """
    load_fitted(model, check_fits(model, ckpt, drop_heads), drop_heads)


def load_fitted(model: nn.Module, state: dict[str, torch.Tensor], drop_heads: bool = False) -> None:
    """Load a state dict :func:`check_fits` returned for ``model``'s layout (strictly, unless heads are dropped
    or ``model`` is a feature extractor, which owns no heads)."""
    model.load_state_dict(state, strict=not drop_heads and hasattr(model, "heads"))


def check_fits(model: nn.Module, ckpt: Checkpoint, drop_heads: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of ``ckpt`` as ``model`` takes it, or one CheckpointError naming the first mismatches
    (``model`` may live on the meta device: only its shapes and dtypes are read)."""
    state = ckpt.state_dict
    if not any(k.startswith("patch_embed.") for k in state):
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"checkpoint {ckpt.path} is not an EfficientViM checkpoint (first keys: {sample}); "
            "pass the authors' .pth, a timm efficientvim state dict or a file written by save_weights"
        )
    state = to_model_format(state, model)
    target = model.state_dict()
    if drop_heads:
        state = {k: v for k, v in state.items() if not _is_head(k)}
        target = {k: v for k, v in target.items() if not _is_head(k)}
    # a feature extractor owns no head and may own fewer stages: extra checkpoint keys are fine
    if not hasattr(model, "heads"):
        state = {k: v for k, v in state.items() if k in target}
    # weights stored as bool or integers outside a quantized file would load as 0/1 or whole numbers: no model
    not_float = [k for k, v in state.items() if k in target and target[k].is_floating_point()
                 and not v.is_floating_point()]
    if not_float:
        k = not_float[0]
        raise CheckpointError(f"checkpoint {ckpt.path} stores {len(not_float)} weights as integers or booleans "
                              f"({k} is {str(state[k].dtype).removeprefix('torch.')}): EfficientViM weights are "
                              "floating point; this is no float checkpoint of the model")
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in wrong[:3])
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        arch = ckpt.metadata.get("architecture")
        hint = "; is it for another EfficientViM variant?"
        if arch:
            layout = [f"{k} {v}" for k, v in ckpt.stage_layout.items() if v != tuple(getattr(model, k, ()))]
            hint = f"; the file holds {arch}" + (f" with {', '.join(layout)}" if layout else "")
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit this model: {'; '.join(parts)}{hint}")
    return state


def _is_head(key: str) -> bool:
    return key.startswith(HEAD_PREFIXES) or key in HEAD_KEYS


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: list[str] | None = None,
    **extra: object,
) -> Path:
    """Write ``model``'s weights as safetensors with the metadata needed to rebuild and use it:
    architecture, num_classes, in_chans, input size, crop, interpolation, mean/std and class names.

    Written through :mod:`efficientvim.writing`: an earlier file of that name survives any failure.
    """
    path = Path(path)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    names = class_names if class_names is not None else cfg.get("label_names")
    classes = getattr(model, "num_classes", None)
    if names is not None and (len(names) != classes or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"class_names must be {classes} strings, one per output of the model; got {len(names)} "
                         f"entries ({', '.join(map(repr, list(names)[:3]))}{', ...' if len(names) > 3 else ''})")
    meta = {
        "architecture": getattr(model, "model_name", None),
        "num_classes": getattr(model, "num_classes", None),
        "in_chans": getattr(model, "in_chans", 3),
        "input_size": list(cfg.get("input_size", (3, 224, 224))),
        "crop_pct": cfg.get("crop_pct", 0.875),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": list(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": list(cfg.get("std", IMAGENET_DEFAULT_STD)),
        "class_names": list(names) if names is not None else None,
        # the stage layout, so load_model also rebuilds models made with overrides of a registered variant
        **model_layout(model),
        **extra,
    }
    if meta["architecture"] is None:
        raise ValueError("save_weights needs a model made by efficientvim.create_model (it names the architecture)")
    return save_state(model.state_dict(), path, meta)


def save_state(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict) -> Path:
    """The package's one weights format: ``state`` as safetensors, ``metadata`` (plain data) as JSON in its
    header, read back by :class:`Checkpoint`. Written through :mod:`efficientvim.writing`: an earlier file of
    that name survives any failure."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    header = {"format": FORMAT_NAME, **{k: json.dumps(v) for k, v in metadata.items()}}
    return write_bytes(path, safetensors_bytes(tensors, metadata=header))
