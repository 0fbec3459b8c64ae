"""Tiny image folders and a tiny-model config for the training tests (seconds on two CPU cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

TINY = {
    "model_args": {"embed_dim": [32, 48, 64], "depths": [1, 1, 1], "state_dim": [8, 6, 4]},
    "img_size": 64,
    "batch_size": 4,
    "epochs": 2,
    "warmup_epochs": 0,
    "lr": 2e-3,
    "workers": 0,
    "auto_augment": None,
}
# one colour per class, so even two epochs of a tiny model separate them
COLOURS = {"circle": (220, 40, 40), "square": (40, 200, 60), "star": (40, 60, 220), "tri": (230, 220, 50)}
# sizes and PIL modes vary: the pipeline must take any
SHAPES = [((40, 52), "RGB"), ((90, 70), "L"), ((64, 64), "RGBA"), ((100, 80), "RGB")]


def make_folder(root: Path, classes=tuple(COLOURS), per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/*.png`` noisy solid-colour images, 6 train and 3 val per class by default."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 6, "val": 3}
    for split, n in per_class.items():
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (w, h), mode = SHAPES[i % len(SHAPES)]
                base = np.array(COLOURS.get(c, (128, 128, 128)), dtype=np.float32)
                pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")
    return root


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


# scikit-image's sample photos (shipped inside the package): five classes a person tells apart at a glance
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "horse")


def make_photo_folder(root: Path, train: int = 12, val: int = 4, seed: int = 0,
                      formats: tuple[str, ...] = ("png",)) -> Path:
    """``root/{train,val}/<photo>/*``: random crops (40-80% of each side, odd sizes) of real photos; class
    ``i`` is written as ``formats[i % len(formats)]``."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for ci, name in enumerate(PHOTOS):
        pixels = getattr(data, name)()
        if pixels.dtype == bool:  # the horse is a binary silhouette
            pixels = pixels.astype(np.uint8) * 255
        image = Image.fromarray(pixels).convert("RGB")
        width, height = image.size
        for split, n in (("train", train), ("val", val)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(side * rng.uniform(0.4, 0.8)) for side in (width, height))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                image.crop((x, y, x + w, y + h)).save(folder / f"{i}.{formats[ci % len(formats)]}")
    return root


def make_digits_folder(root: Path, val_fraction: float = 0.25, seed: int = 0) -> Path:
    """scikit-learn's 1,797 digit scans written out as ``root/{train,val}/<digit>/<index>.png`` (8x8 grey PNGs,
    a stratified split), so the embedded run can be compared with the same images read from a folder."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    splits = train_test_split(np.arange(len(digits.target)), test_size=val_fraction, stratify=digits.target,
                              random_state=seed)
    for split, indices in zip(("train", "val"), splits):
        for i in indices:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8), "L").save(folder / f"{i}.png")
    return root
