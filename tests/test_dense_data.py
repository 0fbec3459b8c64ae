"""Dense datasets and metrics: COCO and mask-folder readers, digit canvases, mAP and mIoU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from efficientvim import EfficientViMError
from efficientvim.data import digits_split
from efficientvim.dense import CocoDetection, DigitCanvases, SegmentationFolder, collate_segmentation
from efficientvim.dense.metrics import coco_map, confusion_matrix, segmentation_metrics, targets_to_coco


@pytest.fixture
def coco_files(tmp_path):
    """Two images; category ids 5 and 9; a polygon, a box-only-sized polygon and a crowd region."""
    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.png", (20, 50))):
        Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(images / name)
    polygon = [[4, 4, 14, 4, 14, 12, 4, 12]]  # a 10 x 8 rectangle
    annotations = {
        "images": [
            {"id": 11, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 12, "file_name": "b.png", "width": 20, "height": 50},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 11,
                "category_id": 9,
                "bbox": [4, 4, 10, 8],
                "area": 80,
                "iscrowd": 0,
                "segmentation": polygon,
            },
            {
                "id": 2,
                "image_id": 11,
                "category_id": 5,
                "bbox": [20, 10, 15, 15],
                "area": 225,
                "iscrowd": 1,
                "segmentation": polygon,
            },
            {
                "id": 3,
                "image_id": 12,
                "category_id": 5,
                "bbox": [2, 30, 10, 15],
                "area": 150,
                "iscrowd": 0,
                "segmentation": [[2, 30, 12, 30, 12, 45, 2, 45]],
            },
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    return images, path


def test_coco_reader_returns_torchvision_targets(coco_files):
    images, path = coco_files
    ds = CocoDetection(images, path)
    assert len(ds) == 2 and ds.class_names == ["five", "nine"]
    assert ds.label_to_cat == {1: 5, 2: 9}
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and torch.allclose(image, torch.full_like(image, 100 / 255))
    assert target["image_id"] == 11
    # the crowd region is left out of training targets
    assert target["boxes"].tolist() == [[4.0, 4.0, 14.0, 12.0]]
    assert target["labels"].tolist() == [2]
    assert target["masks"].shape == (1, 30, 40)
    ys, xs = torch.nonzero(target["masks"][0], as_tuple=True)
    assert (xs.min(), ys.min()) == (4, 4) and 9 <= xs.max() - xs.min() <= 10
    _, target = ds[1]
    assert target["labels"].tolist() == [1] and target["boxes"].tolist() == [[2.0, 30.0, 12.0, 45.0]]


def test_coco_reader_reports_missing_files(tmp_path, coco_files):
    images, path = coco_files
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(images, tmp_path / "nope.json")
    (images / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        CocoDetection(images, path)[1]


def test_coco_map_is_one_for_perfect_and_lower_for_shifted_boxes():
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 50.0, 90.0, 80.0]]),
            "labels": torch.tensor([1, 2]),
            "image_id": 0,
        }
    ]
    gt = targets_to_coco(targets, [(100, 100)], num_classes=2)
    perfect = [
        {"image_id": 0, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": 0, "category_id": 2, "bbox": [50, 50, 40, 30], "score": 0.8},
    ]
    assert coco_map(gt, perfect)["mAP"] == pytest.approx(1.0)
    # class 2's box shifted to IoU 0.6: still a hit at 0.5, a miss at 0.75
    shifted = [perfect[0], {**perfect[1], "bbox": [60, 50, 40, 30]}]
    metrics = coco_map(gt, shifted)
    assert metrics["mAP@50"] == pytest.approx(1.0)
    assert metrics["mAP@75"] == pytest.approx(0.5)
    assert coco_map(gt, []) == {"mAP": 0.0, "mAP@50": 0.0, "mAP@75": 0.0}


def test_miou_counts_background_and_skips_absent_classes():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 3, 2]])
    confusion = confusion_matrix(pred, target, num_classes=4)
    assert confusion.sum() == 7  # the 255 pixel is ignored
    metrics = segmentation_metrics(confusion)
    # IoU: class 0 3/4, class 1 2/4, class 3 0/1, class 2 absent everywhere except the ignored pixel
    assert metrics["IoU"][0] == pytest.approx(0.75) and metrics["IoU"][1] == pytest.approx(0.5)
    assert np.isnan(metrics["IoU"][2]) and metrics["IoU"][3] == 0.0
    assert metrics["mIoU"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert metrics["pixel_acc"] == pytest.approx(5 / 7)


@pytest.fixture
def mask_folder(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "ann"
    images.mkdir()
    masks.mkdir()
    for i, (h, w) in enumerate(((12, 20), (16, 10))):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(images / f"{i}.jpg")
        label = np.zeros((h, w), np.uint8)
        label[: h // 2] = 2 + i
        label[-1] = 255
        Image.fromarray(label).save(masks / f"{i}.png")
    return images, masks


def test_mask_folder_pairs_images_with_class_maps(mask_folder):
    ds = SegmentationFolder(*mask_folder)
    assert len(ds) == 2 and ds.num_classes == 4  # labels 0, 2, 3; 255 ignored
    image, mask = ds[1]
    assert image.shape == (3, 16, 10) and mask.shape == (16, 10)
    assert mask[0, 0] == 3 and mask[10, 0] == 0 and mask[-1, 0] == 255
    images, masks = collate_segmentation([ds[0], ds[1]])
    assert images.shape == (2, 3, 16, 20) and masks.shape == (2, 16, 20)
    assert (masks[0, 12:] == 255).all() and (masks[1, :, 10:] == 255).all() and (images[1, :, :, 10:] == 0).all()


def test_mask_folder_random_crop_pads_with_ignore_label(mask_folder):
    ds = SegmentationFolder(*mask_folder, num_classes=4, crop_size=(14, 14))
    image, mask = ds[0]  # 12 x 20: padded to 14 rows, cropped to 14 columns
    assert image.shape == (3, 14, 14) and (mask[12:] == 255).all()


def test_mask_folder_refuses_images_without_masks(mask_folder):
    images, masks = mask_folder
    (masks / "1.png").unlink()
    with pytest.raises(EfficientViMError, match="1.jpg"):
        SegmentationFolder(images, masks)


def test_digit_canvas_boxes_enclose_their_masks_tightly():
    ds = DigitCanvases("train", length=20, size=(64, 96), digits=(2, 3), digit_size=(16, 24))
    counts = []
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 64, 96) and image.min() >= 0 and image.max() <= 1
        counts.append(len(target["labels"]))
        assert ((target["labels"] >= 1) & (target["labels"] <= 10)).all()
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert target["masks"].sum(0).max() <= 1  # digits never overlap
    assert sum(counts) >= 2 * len(ds) - 2  # placement rarely fails


def test_digit_canvases_are_reproducible_and_val_digits_are_unseen():
    split = digits_split()
    assert not set(split["train"]) & set(split["val"])
    assert (len(split["train"]), len(split["val"])) == (1437, 360)
    a, b = DigitCanvases("val", length=5), DigitCanvases("val", length=5)
    assert torch.equal(a[3][0], b[3][0])
    assert not torch.equal(a[3][0], DigitCanvases("train", length=5)[3][0])
    train, val = DigitCanvases("train"), DigitCanvases("val")
    assert not set(train.digit_ids) & set(val.digit_ids)


def test_digit_segmentation_maps_label_each_digit_pixel():
    det = DigitCanvases("val", task="detection", length=4)
    seg = DigitCanvases("val", task="segmentation", length=4)
    for i in range(4):
        _, target = det[i]
        _, class_map = seg[i]
        expected = torch.zeros_like(class_map)
        for label, mask in zip(target["labels"], target["masks"]):
            expected[mask.bool()] = label
        assert torch.equal(class_map, expected)


class _Oracle(torch.nn.Module):
    """Returns prepared detections batch by batch: a stand-in detector for scoring tests."""

    def __init__(self, outputs):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.outputs = list(outputs)

    def forward(self, images):
        batch, self.outputs = self.outputs[: len(images)], self.outputs[len(images) :]
        return batch


def test_evaluate_scores_coco_datasets_against_their_json(coco_files):
    from torch.utils.data import DataLoader

    from efficientvim.dense import collate_detection, evaluate

    ds = CocoDetection(*coco_files)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_detection)
    # labels are 1..K; evaluate maps them back to the JSON's category ids (nine -> 9, five -> 5)
    found = [
        {"boxes": torch.tensor([[4.0, 4.0, 14.0, 12.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[2.0, 30.0, 12.0, 45.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
    ]
    assert evaluate(_Oracle(found), loader)["mAP"] == pytest.approx(1.0)
    swapped = [{**out, "labels": 3 - out["labels"]} for out in found]
    assert evaluate(_Oracle(swapped), loader)["mAP"] == 0.0
