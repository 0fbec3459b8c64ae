"""Write the small real-data folders behind the short-run figures in docs/training.md.

    python benchmarks/small_folders.py OUT

OUT/photos5: crops of five scikit-image photos, 12 train / 4 val per class, PNG.
OUT/photos6: the same five classes, 16 train / 6 val, as JPEG, PNG and WebP by class.
OUT/digits:  scikit-learn's digits as PNG class folders, 1,347 train / 450 val.
Then, e.g.: efficientvim train --data OUT/photos5 --epochs 20 --batch-size 16 --img-size 96
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_helpers import make_digits_folder, make_photo_folder  # noqa: E402


def main(out: Path) -> None:
    make_photo_folder(out / "photos5", train=12, val=4)
    make_photo_folder(out / "photos6", train=16, val=6, seed=1, formats=("jpg", "png", "webp"))
    make_digits_folder(out / "digits")
    for name in ("photos5", "photos6", "digits"):
        count = sum(1 for p in (out / name).rglob("*") if p.is_file())
        print(f"wrote {out / name} ({count} images)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
