"""Image classification datasets for training and evaluation.

* ``ImageFiles``: an ImageFolder (one sub-folder per class) or a tar of one, read through timm's
  folder/tar reader. An unreadable image is named and skipped with a warning, or is fatal in
  strict mode.
* ``DigitsDataset``: the 1,797 handwritten 8x8 digit scans that ship with scikit-learn, with a
  fixed stratified train/val split (1,437 / 360), so training runs with no download at all.
* ``build_datasets`` picks one of those, or any other format timm's ``create_dataset`` reads
  (``torch/cifar10``, ``hfds/...``, ``wds/...``), and checks that train and val agree on classes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError

TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("val", "validation")
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# consecutive unreadable images tolerated before a folder is judged broken rather than dirty
MAX_CONSECUTIVE_SKIPS = 10


class ImageFiles(Dataset):
    """Images and class indices from a class-folder tree (or a tar of one); PIL RGB images in, ``transform`` out."""

    def __init__(
        self,
        root: str | os.PathLike,
        class_to_idx: dict[str, int] | None = None,
        transform: Callable | None = None,
        strict: bool = False,
    ) -> None:
        from timm.data.readers import create_reader

        self.root = Path(root)
        self.reader = create_reader("", root=str(root), class_map=class_to_idx or "")
        if len(self.reader) == 0:
            raise DataError(f"no images found under {root}: expected one sub-folder of images per class")
        # the folder reader calls its class map class_to_idx, the tar reader class_name_to_idx
        self.class_to_idx = dict(getattr(self.reader, "class_to_idx", None) or self.reader.class_name_to_idx)
        self.class_names = sorted(self.class_to_idx, key=self.class_to_idx.get)
        self.transform = transform
        self.strict = strict

    def __len__(self) -> int:
        return len(self.reader)

    def filename(self, index: int) -> str:
        return str(self.root / self.reader.filename(index))

    def _load(self, index: int) -> tuple[Image.Image, int]:
        fileobj, target = self.reader[index]
        with fileobj, Image.open(fileobj) as img:
            return img.convert("RGB"), target  # convert() decodes, so truncated files fail here

    def __getitem__(self, index: int):
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            i = (index + attempt) % len(self)
            try:
                img, target = self._load(i)
                break
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if self.strict:
                    raise DataError(f"unreadable image {self.filename(i)} ({reason}); remove or replace it") from None
                warnings.warn(f"skipped unreadable image {self.filename(i)} ({reason})", stacklevel=2)
        else:
            raise DataError(
                f"{MAX_CONSECUTIVE_SKIPS} consecutive unreadable images from {self.filename(index)} on: "
                "is the folder intact?"
            )
        return (self.transform(img) if self.transform else img), target


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (8x8, 17 grey levels) as RGB PIL images, one fixed split."""

    def __init__(self, split: str, transform: Callable | None = None) -> None:
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        digits = load_digits()
        train_idx, val_idx = train_test_split(
            np.arange(len(digits.target)),
            test_size=DIGITS_VAL_FRACTION,
            stratify=digits.target,
            random_state=DIGITS_SPLIT_SEED,
        )
        idx = np.sort(train_idx if split == "train" else val_idx)
        # grey levels 0..16 -> 0..255
        pixels = (digits.images[idx] * (255.0 / 16.0)).round().astype(np.uint8)
        self.images = [Image.fromarray(p, mode="L").convert("RGB") for p in pixels]
        self.targets = digits.target[idx].tolist()
        self.class_names = [str(d) for d in range(10)]
        self.class_to_idx = {c: i for i, c in enumerate(self.class_names)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        return (self.transform(img) if self.transform else img), self.targets[index]


def find_split(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first existing ``root/<name>`` folder or ``root/<name>.tar`` among ``names``."""
    for name in names:
        for candidate in (root / name, root / f"{name}.tar"):
            if candidate.exists():
                return candidate
    return None


def class_folders(root: Path) -> list[str]:
    """Class names of a folder split: its visible sub-folders (tar splits: read by timm later)."""
    if root.is_file():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def check_same_classes(train: list[str], val: list[str]) -> None:
    """Raise DataError naming the classes only one split has (before any training time is spent)."""
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if only_train or only_val:
        parts = []
        if only_train:
            parts.append(f"only in train/: {', '.join(only_train[:5])}{' ...' if len(only_train) > 5 else ''}")
        if only_val:
            parts.append(f"only in val/: {', '.join(only_val[:5])}{' ...' if len(only_val) > 5 else ''}")
        raise DataError(f"class folders differ between train/ and val/ ({'; '.join(parts)}): make them match")


def build_datasets(
    data: str | os.PathLike | None,
    dataset: str = "",
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
    strict: bool = False,
    need_train: bool = True,
    val_classes: list[str] | None = None,
) -> tuple[Dataset | None, Dataset, list[str]]:
    """Train and val datasets and the class names, from ``data`` (None: the embedded digits).

    ``dataset`` names a timm ``create_dataset`` format (``torch/cifar10``, ``hfds/NAME``...); empty
    means a folder with ``train/`` and ``val/`` class-folder trees (``val/`` alone, or the folder
    itself holding class folders, is enough for evaluation). ``val_classes`` (a model's class names)
    orders the val classes when the folders carry exactly those names.
    """
    if data is None:
        train = DigitsDataset("train", train_transform) if need_train else None
        val = DigitsDataset("val", val_transform)
        return train, val, val.class_names
    if dataset:
        return _timm_datasets(data, dataset, train_transform, val_transform, need_train)
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} not found")
    train_dir, val_dir = find_split(root, TRAIN_SPLITS), find_split(root, VAL_SPLITS)
    if val_dir is None and not need_train:
        val_dir = root  # evaluating a bare class-folder tree
    if val_dir is None or (need_train and train_dir is None):
        missing = " and ".join(n for n, d in (("train/", train_dir), ("val/", val_dir)) if d is None)
        raise DataError(f"{root} has no {missing} folder: expected {root}/train/<class>/... and {root}/val/<class>/...")
    train, order = None, None
    if need_train:
        check_same_classes(class_folders(train_dir), class_folders(val_dir))
        train = ImageFiles(train_dir, transform=train_transform, strict=strict)
        order = train.class_to_idx
    elif val_classes and set(val_classes) == set(class_folders(val_dir)):
        order = {c: i for i, c in enumerate(val_classes)}
    val = ImageFiles(val_dir, order, val_transform, strict)
    if train is not None:
        check_same_classes(train.class_names, val.class_names)
    return train, val, (train or val).class_names


def _timm_datasets(data, dataset, train_transform, val_transform, need_train):
    from timm.data import create_dataset

    def make(split: str, transform: Callable | None):
        try:
            ds = create_dataset(dataset, root=str(data), split=split, is_training=split == "train")
        except (RuntimeError, ValueError, KeyError) as e:
            raise DataError(f"timm could not open dataset {dataset!r} ({split}) under {data}: {e}") from None
        ds.transform = transform
        return ds

    train = make("train", train_transform) if need_train else None
    val = make("validation", val_transform)
    names = _timm_class_names(train if train is not None else val)
    if train is not None:
        val_names = _timm_class_names(val)
        if names and val_names:
            check_same_classes(names, val_names)
    return train, val, names


def _timm_class_names(ds) -> list[str]:
    reader = getattr(ds, "reader", None)
    mapping = (getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", None)
               or getattr(ds, "class_to_idx", None))
    if mapping:
        return sorted(mapping, key=mapping.get)
    classes = getattr(ds, "classes", None)
    if classes:
        return [str(c) for c in classes]
    raise DataError(f"cannot tell the classes of dataset {type(ds).__name__}: use a class-folder tree")
