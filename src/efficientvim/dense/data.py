"""Datasets for detection and segmentation: COCO-format files, image/mask folders, and digit canvases.

Every dataset returns ``(image, target)`` with ``image`` a float (3, H, W) tensor in [0, 1].
Detection targets are torchvision-style dicts (``boxes`` xyxy float, ``labels`` 1..K int64,
``masks`` (N, H, W) uint8, ``image_id``); segmentation targets are (H, W) int64 class maps with
255 marking pixels to ignore.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data import digits_split
from ..errors import EfficientViMError, import_extra
from ..images import FORMATS, is_image_name, limit_decode, read_image
from .segmentation import IGNORE_INDEX

TASKS = ("detection", "segmentation")


def _read_image(path: Path) -> torch.Tensor:
    # the package's one reader, without EXIF rotation: boxes and masks address the pixels as stored
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found: check the image folder")
    array = np.asarray(read_image(path, upright=False), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


class CocoDetection(Dataset):
    """COCO-format detection/instance segmentation: an instances JSON and its image folder.

    Category ids are mapped to labels 1..K in ascending id order (``label_to_cat`` maps back);
    crowd annotations and empty boxes are left out of the training targets (as torchvision's
    references do); the evaluator scores against the JSON itself, crowds included.
    ``hflip`` flips images with their boxes and masks at random (training).
    """

    def __init__(self, image_dir: str | os.PathLike, annotation_file: str | os.PathLike, hflip: bool = False) -> None:
        COCO = import_extra("pycocotools.coco", "coco", "COCO detection data and mAP").COCO  # noqa: N806 (the class)
        self.image_dir = Path(image_dir)
        annotation_file = Path(annotation_file)
        if not annotation_file.is_file():
            raise FileNotFoundError(f"annotation file {annotation_file} not found: pass a COCO instances JSON")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} not found")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(annotation_file))
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise EfficientViMError(f"{annotation_file} is not a COCO instances file ({e})") from None
        self.ids = sorted(self.coco.imgs)
        cat_ids = sorted(self.coco.cats)
        self.label_to_cat = {i + 1: c for i, c in enumerate(cat_ids)}
        self.cat_to_label = {c: i for i, c in self.label_to_cat.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = _read_image(self.image_dir / info["file_name"])
        height, width = image.shape[-2:]
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anns = [a for a, k in zip(anns, keep.tolist()) if k]
        target = {
            "boxes": boxes[keep],
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        if all("segmentation" in a for a in anns):
            masks = [self._mask(a, height, width) for a in anns]
            target["masks"] = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        if self.hflip and torch.rand(()) < 0.5:
            image, target = _hflip(image, target)
        return image, target

    def _mask(self, ann: dict, height: int, width: int) -> torch.Tensor:
        mask_utils = import_extra("pycocotools.mask", "coco", "COCO detection data and mAP")
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        return torch.from_numpy(mask_utils.decode(rle).astype(np.uint8))


def _hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class SegmentationFolder(Dataset):
    """Images in ``image_dir`` paired by file stem with single-channel PNG class maps in ``mask_dir``.

    Mask values are class indices 0..num_classes-1 (palette PNGs are read as indices); 255 is
    ignored. ``crop_size`` (H, W) takes random crops for training, padding small images with
    the ignore label; ``hflip`` flips at random. ``num_classes`` defaults to the largest label + 1,
    found by reading every mask once.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        num_classes: int | None = None,
        crop_size: Sequence[int] | None = None,
        hflip: bool = False,
    ) -> None:
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"folder {folder} not found")
        images = sorted(p for p in self.image_dir.iterdir() if is_image_name(p))
        masks = {p.stem: p for p in self.mask_dir.iterdir() if p.suffix.lower() == ".png"}
        unmatched = [p.name for p in images if p.stem not in masks]
        if unmatched:
            raise EfficientViMError(
                f"{len(unmatched)} images in {self.image_dir} have no PNG mask of the same name in "
                f"{self.mask_dir} (first: {unmatched[0]})"
            )
        if not images:
            raise EfficientViMError(f"no images (files of a format Pillow reads) in {self.image_dir}")
        self.pairs = [(p, masks[p.stem]) for p in images]
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.hflip = hflip
        if num_classes is None:
            labels = (self._read_mask(m) for _, m in self.pairs)
            num_classes = max(int(m[m != IGNORE_INDEX].max()) if (m != IGNORE_INDEX).any() else 0 for m in labels) + 1
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    @staticmethod
    def _read_mask(path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            im = Image.open(path, formats=FORMATS)
        except UnidentifiedImageError:
            raise EfficientViMError(f"mask {path} is not a PNG image: masks are single-channel class-index PNGs"
                                    ) from None
        with im:
            limit_decode(im, f"mask {path}")
            if im.mode not in ("L", "P", "I", "I;16"):
                raise EfficientViMError(f"mask {path} is {im.mode}: masks must be single-channel class-index PNGs")
            array = np.asarray(im, dtype=np.int64)
        return torch.from_numpy(array.copy())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = _read_image(image_path), self._read_mask(mask_path)
        if image.shape[-2:] != mask.shape:
            raise EfficientViMError(
                f"image {image_path.name} is {tuple(image.shape[-2:])} but its mask is {tuple(mask.shape)}"
            )
        if self.crop_size is not None:
            image, mask = _random_crop(image, mask, self.crop_size)
        if self.hflip and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask


def _random_crop(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = size
    pad_h, pad_w = max(height - image.shape[1], 0), max(width - image.shape[2], 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    top = int(torch.randint(image.shape[1] - height + 1, ()))
    left = int(torch.randint(image.shape[2] - width + 1, ()))
    return image[:, top : top + height, left : left + width], mask[top : top + height, left : left + width]


class DigitCanvases(Dataset):
    """Scikit-learn's 8x8 digit scans pasted onto noisy coloured canvases, with boxes and masks.

    Canvas ``i`` of a split is drawn from a generator seeded by (seed, split, i), so the data
    is the same on every run and machine. ``train`` and ``val`` canvases use disjoint digit
    scans (``data.digits_split``, the classification run's split). Each canvas holds ``digits``
    (min, max) non-overlapping digits, upsampled bilinearly to ``digit_size`` (min, max) pixels
    tall; a digit's mask is its pixels
    above half of full ink, and its box encloses the mask tightly. Labels: digit d is class d + 1,
    0 is background. ``task`` chooses detection targets or (H, W) class maps.
    """

    num_classes = 10
    class_names = [str(d) for d in range(10)]

    def __init__(
        self,
        split: str,
        task: str = "detection",
        length: int = 1000,
        size: Sequence[int] = (128, 128),
        digits: Sequence[int] = (1, 4),
        digit_size: Sequence[int] = (20, 44),
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "val"):
            raise EfficientViMError(f"split must be 'train' or 'val', got {split!r}")
        if task not in TASKS:
            raise EfficientViMError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        scans = load_digits()
        self.digit_ids = digits_split(seed)[split]
        self.scans = torch.from_numpy(scans.images[self.digit_ids] / 16.0).float()
        self.digit_labels = scans.target[self.digit_ids]
        self.split, self.task, self.length = split, task, length
        self.size, self.digits, self.digit_size, self.seed = tuple(size), tuple(digits), tuple(digit_size), seed

    def __len__(self) -> int:
        return self.length

    def canvas(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canvas ``index``: image (3, H, W), boxes (N, 4), labels (N,), masks (N, H, W)."""
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])
        height, width = self.size
        # numpy for the whole-canvas arithmetic: small torch ops pay a thread-pool cost each
        pixels = rng.uniform(0.0, 0.5, (3, 1, 1)) + rng.normal(0, 0.05, (3, height, width))
        image = torch.from_numpy(np.clip(pixels, 0, 1).astype(np.float32))
        taken = np.zeros((height, width), dtype=bool)
        boxes, labels, masks = [], [], []
        for _ in range(rng.integers(self.digits[0], self.digits[1] + 1)):
            k = int(rng.integers(len(self.digit_ids)))
            h = int(rng.integers(self.digit_size[0], self.digit_size[1] + 1))
            w = max(8, int(round(h * rng.uniform(0.7, 1.0))))
            for _attempt in range(20):
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                if not taken[max(top - 2, 0) : top + h + 2, max(left - 2, 0) : left + w + 2].any():
                    break
            else:
                continue
            ink = F.interpolate(self.scans[k][None, None], (h, w), mode="bilinear", align_corners=False)[0, 0]
            ink = ink.clamp(0, 1)
            colour = torch.tensor(rng.uniform(0.6, 1.0, 3), dtype=torch.float32).view(3, 1, 1)
            patch = image[:, top : top + h, left : left + w]
            image[:, top : top + h, left : left + w] = patch * (1 - ink) + colour * ink
            mask = torch.zeros(height, width, dtype=torch.uint8)
            mask[top : top + h, left : left + w] = (ink > 0.5).to(torch.uint8)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(ys) == 0:
                continue
            taken[top : top + h, left : left + w] = True
            boxes.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
            labels.append(int(self.digit_labels[k]) + 1)
            masks.append(mask)
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        masks_t = torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        return image, boxes_t, torch.tensor(labels, dtype=torch.int64), masks_t

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, boxes, labels, masks = self.canvas(index)
        if self.task == "segmentation":
            class_map = (
                (masks.long() * labels.view(-1, 1, 1)).sum(0)
                if len(labels)
                else masks.new_zeros(self.size, dtype=torch.int64)
            )
            return image, class_map
        return image, {"boxes": boxes, "labels": labels, "masks": masks, "image_id": index}
