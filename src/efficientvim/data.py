"""Image classification datasets for training and evaluation.

* ``ImageFiles``: an ImageFolder (one sub-folder per class) or a tar of one; the formats
  :mod:`efficientvim.images` reads, through the package's one image reader. Files that are not images, empty
  files and cut-off JPEGs and PNGs are found by the scan and listed with the reason; an image that still fails
  to decode is named and skipped with a one-line note, or is fatal in strict mode.
* ``DigitsDataset``: the 1,797 handwritten 8x8 digit scans that ship with scikit-learn, with a
  fixed stratified train/val split (1,437 / 360), so training runs with no download at all.
* ``build_datasets`` picks one of those, or any other format timm's ``create_dataset`` reads
  (``torch/cifar10``, ``hfds/...``, ``wds/...``), and checks that train and val agree on classes.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError, ImageFileError
from .images import file_problem, is_image_name, read_image

TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("val", "validation")
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# consecutive unreadable images tolerated before a folder is judged broken rather than dirty
MAX_CONSECUTIVE_SKIPS = 10


def _skip_reason(name: str) -> str | None:
    """Why a file of a class folder is not used as an image, or None when it is."""
    base = Path(name).name
    if base.startswith("."):
        return "hidden file"
    if not is_image_name(base):
        suffix = Path(base).suffix
        return f"{suffix} is not an image format Pillow reads" if suffix else "no file suffix"
    return None


class ImageFiles(Dataset):
    """Images and class indices from a class-folder tree (or a tar of one): ``root/<class>/**/<image>``.

    Every file whose suffix is a format Pillow opens is used and read by :func:`images.read_image`;
    other files are listed in ``skipped`` with the reason. ``counts`` holds the images per class. A
    file that fails to decode is named and skipped with a warning, or is fatal in strict mode.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        class_to_idx: dict[str, int] | None = None,
        transform: Callable | None = None,
        strict: bool = False,
        scored: bool = False,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.strict = strict
        # a split that is scored (val) leaves an unreadable image out, as a sample marked by target -1 - index;
        # a training split reads the next image instead (a score would count one image twice)
        self.scored = scored
        self.skipped: list[tuple[str, str]] = []  # (file relative to root, why it is not used)
        files = self._scan_tar() if self.root.is_file() else self._scan_folder()
        classes = sorted({c for _, c in files} | set(self._folders))
        if class_to_idx is None:
            class_to_idx = {c: i for i, c in enumerate(classes)}
        self.class_to_idx = dict(class_to_idx)
        self.class_names = sorted(self.class_to_idx, key=self.class_to_idx.get)
        self.samples = [(name, self.class_to_idx[c]) for name, c in files if c in self.class_to_idx]
        self.counts = {c: 0 for c in self.class_names}
        for _, c in files:
            if c in self.counts:
                self.counts[c] += 1
        if not self.samples:
            why = f" ({len(self.skipped)} other files skipped, e.g. {self.skipped[0][0]}: {self.skipped[0][1]})" \
                if self.skipped else ""
            raise DataError(f"no images found under {root}{why}: expected one sub-folder of images per class")
        self._tar = None

    def _scan_folder(self) -> list[tuple[str, str]]:
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder or a tar file")
        self._folders = class_folders(self.root)
        files = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_file() and not entry.name.startswith("."):
                self.skipped.append((entry.name, "not inside a class folder"))
        for c in self._folders:
            for path in sorted((self.root / c).rglob("*")):
                if not path.is_file():
                    continue
                name = path.relative_to(self.root).as_posix()
                # empty and cut-off files found now, from sizes and end markers (not by decoding every image)
                reason = _skip_reason(name) or file_problem(path)
                if reason is None:
                    files.append((name, c))
                else:
                    self.skipped.append((name, reason))
        return files

    def _scan_tar(self) -> list[tuple[str, str]]:
        # as timm's tar reader: an image's class is the name of the folder that holds it
        import tarfile

        try:
            with tarfile.open(self.root) as tf:
                latest = {m.name: m for m in tf.getmembers()}  # a name stored twice: the last one is the file
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{self.root} is not a readable tar file ({e}): pass a folder or a tar of one") from None
        members = []
        for name, m in latest.items():
            if m.islnk() or m.issym():  # read through the link, when the tar holds what it names
                target = latest.get(m.linkname if m.islnk() else str(Path(name).parent / m.linkname))
                if target is None or not target.isfile():
                    if _skip_reason(name) is None:
                        self.skipped.append((name, f"a link to {m.linkname}, which the tar does not hold as a file"))
                    continue
                m = target
            if m.isfile():
                members.append((name, m.size))
        files = []
        for name, size in sorted(members):
            parent = Path(name).parent.name
            reason = _skip_reason(name) or (None if parent else "not inside a class folder") or (
                "empty (0 bytes)" if size == 0 else None)
            if reason is None:
                files.append((name, parent))
            else:
                self.skipped.append((name, reason))
        self._folders = []
        return files

    def __len__(self) -> int:
        return len(self.samples)

    def filename(self, index: int) -> str:
        return str(self.root / self.samples[index][0])

    def _read(self, index: int):
        name, target = self.samples[index]
        if not self.root.is_file():
            return read_image(self.root / name), target
        import tarfile

        if self._tar is None or self._tar[0] != os.getpid():  # one open tar per loader process
            self._tar = (os.getpid(), tarfile.open(self.root))  # noqa: SIM115 (kept open for the next reads)
        return read_image(self._tar[1].extractfile(name).read(), self.filename(index)), target

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tar": None}

    def __getitem__(self, index: int):
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            i = (index + attempt) % len(self)
            try:
                img, target = self._read(i)
                break
            except ImageFileError as e:
                if self.strict:
                    raise DataError(f"unreadable image: {e} (--strict-data: remove or replace it)") from None
                # one line that keeps clear of a progress bar (a Python warning printed its source line into it)
                tqdm.write(f"note: {'left out' if self.scored else 'skipped'} unreadable image: {e}", file=sys.stderr)
                if self.scored:
                    blank = Image.new("RGB", (64, 64))
                    return (self.transform(blank) if self.transform else blank), -1 - index
        else:
            raise DataError(
                f"{MAX_CONSECUTIVE_SKIPS} consecutive unreadable images from {self.filename(index)} on: "
                "is the folder intact?"
            )
        return (self.transform(img) if self.transform else img), target

    def describe(self, split: str, limit: int = 12) -> list[str]:
        """Lines saying what was found (images per class) and which files were skipped and why."""
        counts = self.counts
        per_class = ", ".join(f"{c} {n}" for c, n in list(counts.items())[:limit])
        if len(counts) > limit:
            per_class += f", ... ({min(counts.values())}-{max(counts.values())} per class)"
        lines = [f"{split}: {len(self)} images in {len(counts)} classes ({per_class})"]
        if self.skipped:
            shown = "; ".join(f"{n} ({why})" for n, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            lines.append(f"{split}: skipped {len(self.skipped)} files: {shown}{more}")
        return lines


def digits_split(seed: int = DIGITS_SPLIT_SEED) -> dict[str, Sequence[int]]:
    """Indices into scikit-learn's 1,797 digit scans: disjoint, stratified ``train`` (1,437) and ``val``
    (360) sets, the one split the embedded classification and dense runs share."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    targets = load_digits().target
    train, val = train_test_split(np.arange(len(targets)), test_size=DIGITS_VAL_FRACTION, stratify=targets,
                                  random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val)}


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (8x8, 17 grey levels) as RGB PIL images, one fixed split."""

    def __init__(self, split: str, transform: Callable | None = None) -> None:
        import numpy as np
        from sklearn.datasets import load_digits

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        digits = load_digits()
        idx = digits_split()[split]
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
        raise FileNotFoundError(f"dataset folder {root} not found: pass --data a folder with train/<class>/... and "
                                f"val/<class>/... (or leave --data out to train on the bundled digits)")
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
    val = ImageFiles(val_dir, order, val_transform, strict, scored=True)
    if train is not None:
        check_same_classes(train.class_names, val.class_names)
        check_trainable(train, train_dir)
        empty = [c for c, n in val.counts.items() if n == 0]
        if empty:
            warnings.warn(f"{len(empty)} class folders of {val_dir} hold no images ({', '.join(empty[:5])}): "
                          "their accuracy is not measured", stacklevel=2)
    return train, val, (train or val).class_names


def check_trainable(train: ImageFiles, train_dir: Path) -> None:
    """Refuse a training split with an empty class folder or a single class (a run that would mean nothing)."""
    empty = [c for c, n in train.counts.items() if n == 0]
    if empty:
        raise DataError(
            f"class folder {train_dir / empty[0]} holds no images"
            + (f" (and {len(empty) - 1} more empty classes)" if len(empty) > 1 else "")
            + ": add images or remove the folder"
        )
    if len(train.class_names) < 2:
        raise DataError(
            f"{train_dir} holds a single class ({train.class_names[0]}): a classifier needs two or more class folders"
        )


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
