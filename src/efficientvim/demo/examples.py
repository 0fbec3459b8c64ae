"""The pictures the demo page offers to click: ones the model can be judged on, from what is installed.

A model trained on the digits (ten classes named 0-9, ``efficientvim train`` without ``--data``) gets
validation digits from scikit-learn's set, images its training never saw. Any other model gets photos that
ship with the packages installed: scikit-learn's two sample photos, matplotlib's portrait, and
scikit-image's cat, coffee and astronaut where it is installed. Nothing is downloaded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..writing import write_bytes

DIGITS_SHOWN = 6


def is_digits_model(class_names: list[str]) -> bool:
    return class_names == [str(d) for d in range(10)]


def digit_examples(folder: str | os.PathLike, count: int = DIGITS_SHOWN) -> list[Path]:
    """The first validation image of ``count`` different digits, as the 8x8 PNGs training read, in ``folder``."""
    from ..data import DigitsDataset

    val = DigitsDataset("val")
    paths, seen = [], set()
    for image, target in zip(val.images, val.targets):
        if target in seen:
            continue
        seen.add(target)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        paths.append(write_bytes(Path(folder) / f"digit-{target}-val.png", buffer.getvalue()))
        if len(paths) == count:
            break
    return paths


def photo_examples() -> list[Path]:
    """Photos installed with the dependencies, by file (none is copied)."""
    import matplotlib
    import sklearn

    candidates = [
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
    ]
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        candidates += [data / "chelsea.png", data / "coffee.png", data / "astronaut.png"]
    except ImportError:
        pass
    return [p for p in candidates if p.is_file()]


def examples_for(class_names: list[str], folder: str | os.PathLike) -> list[Path]:
    """Digits for a digits model (written in ``folder``), photos otherwise."""
    return digit_examples(folder) if is_digits_model(class_names) else photo_examples()
