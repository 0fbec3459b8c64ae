"""Classify image files: read any image, apply the model's own preprocessing, return the top-k classes.

Files are read by :mod:`efficientvim.images`, the reader training and evaluation use too.
Preprocessing is the model's own (``timm.data.resolve_model_data_config`` on its
``pretrained_cfg``: resize, centre crop, mean/std), so a checkpoint saved with other
preprocessing is used as it was trained.

"Too small" has two meanings here. The network input must be at least the total stride (64):
``set_input_size`` refuses smaller sizes. An image itself is always resized to that input, so
any size could be fed, but an image whose shorter side has fewer pixels than the first stage
has tokens per side (input size / 16, i.e. 14 at 224) gives every token nothing but
interpolated blur; ``load_image`` refuses such images rather than return a confident guess.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .errors import InputSizeError
from .images import is_image_name, load_image
from .model import STEM_STRIDE


def expand_inputs(inputs: Iterable[str | os.PathLike], skipped: list[Path] | None = None) -> list[Path]:
    """Files as given, folders as their image files (recursively, sorted), globs as their matches.

    Files in folders that are not images of the formats read (:data:`images.FORMATS`) are left out and, when
    ``skipped`` is given, appended to it (hidden files aside), so a caller can say what it did not read.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            found = [p for p in files if is_image_name(p)]
            if not found:
                raise FileNotFoundError(f"folder {path} holds no image files Pillow reads")
            if skipped is not None:
                skipped.extend(p for p in files if not is_image_name(p) and not p.name.startswith("."))
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"no files match {item}")
            paths.extend(found)
        else:
            raise FileNotFoundError(f"{item} not found: check the path")
    return list(dict.fromkeys(paths))


def min_image_side(model: nn.Module) -> int:
    """The shortest image side accepted: one pixel per first-stage token of the model's input."""
    return math.ceil(min(model.pretrained_cfg["input_size"][1:]) / STEM_STRIDE)


def set_input_size(model: nn.Module, size: int) -> None:
    """Make the model's preprocessing produce ``size`` x ``size`` inputs (its weights fit any size)."""
    if size < model.total_stride:
        trained = model.pretrained_cfg["input_size"][1]
        raise InputSizeError(
            f"input size {size} is smaller than the network's total stride {model.total_stride}: "
            f"use {model.total_stride} or more (the model was made for {trained})"
        )
    cfg = model.pretrained_cfg
    cfg["input_size"] = (cfg["input_size"][0], size, size)


FULL_RESOLUTION = "full"  # make_transform's size for images kept at their own size


def make_transform(model: nn.Module, size: tuple[int, int] | str | None = None
                   ) -> Callable[[Image.Image], torch.Tensor]:
    """The model's evaluation preprocessing as a timm transform: PIL image -> normalised (C, H, W) tensor, at
    the model's input size or ``size`` (height, width); ``size="full"`` keeps each image at its own size
    (no resize or crop: large images, where the linear cost of HSM-SSD pays), only normalised."""
    from timm.data import create_transform, resolve_model_data_config

    config = resolve_model_data_config(model)
    if size == FULL_RESOLUTION:
        from torchvision import transforms

        return transforms.Compose([transforms.ToTensor(), transforms.Normalize(config["mean"], config["std"])])
    if size is not None:
        config["input_size"] = (config["input_size"][0], *size)
    return create_transform(**config)


def class_names(model: nn.Module) -> list[str]:
    """The model's class names: its checkpoint's own, else ImageNet-1k's for 1000 classes, else ``class i``."""
    names = model.pretrained_cfg.get("label_names")
    if names and len(names) == model.num_classes:
        return list(names)
    if model.num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(model.num_classes)]


def top_k(logits: torch.Tensor, k: int, names: Sequence[str]) -> list[list[dict]]:
    """Per row of ``logits``, the ``k`` most likely classes with their softmax probabilities, most likely first."""
    probs = logits.detach().float().softmax(dim=-1)
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [
        [
            dict(rank=r + 1, index=int(i), label=names[int(i)], probability=float(p))
            for r, (p, i) in enumerate(zip(row_p, row_i))
        ]
        for row_p, row_i in zip(values, indices)
    ]


def decode_threads() -> int:
    """Threads that decode and preprocess images next to the model: Pillow's decoders and resampling
    release the GIL, so each thread runs on its own core (at most 4: beyond, the model is the bound)."""
    return max(1, min(4, os.cpu_count() or 1))


def check_images(model: nn.Module, paths: Sequence[Path], threads: int | None = None,
                 full_resolution: bool = False) -> None:
    """Read every file once, so that a bad one stops a run before any work is done or output printed; at full
    resolution each image is the input itself, so it must be at least the network's total stride."""
    min_side = model.total_stride if full_resolution else min_image_side(model)
    with ThreadPoolExecutor(threads or decode_threads()) as pool:
        for _ in pool.map(lambda p: load_image(p, min_side).size, paths):  # the first bad file raises here
            pass


@torch.no_grad()
def classify_files(model: nn.Module, paths: Sequence[Path], k: int = 5, batch_size: int = 16,
                   threads: int | None = None, full_resolution: bool = False) -> Iterable[dict]:
    """Yield ``{"image": path, "predictions": [...]}`` per file, in order (``check_images`` first to fail early).

    ``model`` may be fused (:func:`efficientvim.fuse`, any dtype) or run by a file runtime
    (:func:`efficientvim.runtimes.inference_model`). Images are decoded and preprocessed by
    ``threads`` threads (default :func:`decode_threads`), one batch each, ahead of the model.
    ``full_resolution``: each image at its own size, one per batch (see :func:`make_transform`)."""
    min_side = model.total_stride if full_resolution else min_image_side(model)
    model.eval()
    transform = make_transform(model, FULL_RESOLUTION if full_resolution else None)
    batch_size = 1 if full_resolution else batch_size
    names = class_names(model)
    device = next(model.parameters(), torch.empty(0)).device  # a file runtime (efficientvim.runtimes) has none
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]

    def prepare(chunk: Sequence[Path]) -> torch.Tensor:
        return torch.stack([transform(load_image(p, min_side)) for p in chunk])

    threads = threads or decode_threads()
    with ThreadPoolExecutor(threads) as pool:
        # one batch per thread in flight: the next batches are read while the model runs
        pending = [pool.submit(prepare, c) for c in chunks[:threads]]
        for i, chunk in enumerate(chunks):
            batch = pending[i].result().to(device)
            if i + threads < len(chunks):
                pending.append(pool.submit(prepare, chunks[i + threads]))
            for path, preds in zip(chunk, top_k(model(batch), k, names)):
                yield dict(image=str(path), predictions=preds)
