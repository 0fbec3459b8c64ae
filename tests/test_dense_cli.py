"""`efficientvim train/eval --task detection|segmentation`: COCO and mask-folder data, the embedded
canvases, checkpoints, resume and one-line errors. Tiny trunks, tiny images, a few steps."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from efficientvim.cli import main
from efficientvim.weights import Checkpoint

TINY = ["--model-arg", "embed_dim=32,48,64", "--model-arg", "depths=1,1,1", "--model-arg", "state_dim=8,6,4"]


def _write_coco(root, split: str, n: int, seed: int) -> None:
    """``n`` non-square images (72 x 56) with one or two bright rectangles of categories 3 and 7."""
    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        pixels = np.full((56, 72, 3), 40, np.uint8)
        for k in range(1 + i % 2):
            x, y = int(rng.integers(0, 40)), int(rng.integers(0, 28))
            w, h = int(rng.integers(12, 30)), int(rng.integers(12, 26))
            w, h = min(w, 72 - x), min(h, 56 - y)
            pixels[y : y + h, x : x + w] = 220
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": (3, 7)[k % 2],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        Image.fromarray(pixels).save(folder / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "width": 72, "height": 56})
    cats = [{"id": 3, "name": "box"}, {"id": 7, "name": "other"}]
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": cats}, f)


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    _write_coco(root, "train", 4, 0)
    _write_coco(root, "val", 2, 1)
    return root


@pytest.fixture
def mask_root(tmp_path):
    """Images 80 x 72 with class-index PNG masks: 0 background, 1 and 2 rectangles."""
    root = tmp_path / "seg"
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((72, 80), np.uint8)
            mask[4:30, 4:30] = 1
            mask[36:66, 40:76] = 2
            pixels = (rng.uniform(0, 30, (72, 80, 3)) + mask[..., None] * 90).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / "images" / f"{i}.jpg")
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i}.png")
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _metric(text: str, name: str) -> float:
    return float(re.findall(rf"(?:^|\s){re.escape(name)} ([0-9.]+)", text)[-1])


def test_detection_train_resume_eval(coco_root, tmp_path, capsys):
    out_dir = tmp_path / "det"
    args = ["train", "--task", "detection", "--data", str(coco_root), "--img-size", "64", "--batch-size", "2",
            "--epochs", "1", "--lr", "1e-3", "--output", str(out_dir), *TINY]
    code, out, _ = _run(capsys, *args)
    assert code == 0
    assert "data: " in out and "4 train / 2 val images, 2 classes" in out
    map50 = _metric(out, "mAP@50")
    assert 0.0 <= map50 <= 1.0
    assert (out_dir / "last.pt").is_file() and (out_dir / "best.safetensors").is_file()
    record = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and record["mAP@50"] == pytest.approx(map50, abs=1e-4)

    saved = torch.load(out_dir / "last.pt", weights_only=True)
    assert saved["fit_state"]["epoch"] == 1 and saved["metadata"]["class_names"] == ["box", "other"]

    # a second epoch resumes from last.pt rather than starting afresh (told so: the epochs changed)
    code, out, _ = _run(capsys, *[a if a != "1" else "2" for a in args], "--resume")
    assert code == 0
    assert f"resumed from {out_dir / 'last.pt'} at epoch 2/2" in out
    assert torch.load(out_dir / "last.pt", weights_only=True)["fit_state"]["epoch"] == 2
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 2
    best = Checkpoint(out_dir / "best.safetensors").metadata

    # a finished run started again trains nothing and reports its best epoch
    code, out, _ = _run(capsys, *[a if a != "1" else "2" for a in args])
    assert code == 0 and "at the end (2 epochs done)" in out
    assert _metric(out, "mAP@50") == pytest.approx(best["metrics"]["mAP@50"], abs=1e-4)

    # eval rebuilds the model from best.safetensors and scores the same val set as training did for that epoch
    code, out, _ = _run(capsys, "eval", "--task", "detection", "--checkpoint", str(out_dir / "best.safetensors"),
                        "--data", str(coco_root), "--workers", "0")
    assert code == 0 and out.startswith("detection on 2 images: mAP@50 ")
    assert _metric(out, "mAP@50") == pytest.approx(best["metrics"]["mAP@50"], abs=1e-4)
    assert _metric(out, "mAP") == pytest.approx(best["metrics"]["mAP"], abs=1e-4)


def test_segmentation_train_eval(mask_root, tmp_path, capsys):
    out_dir = tmp_path / "seg"
    code, out, _ = _run(capsys, "train", "--task", "segmentation", "--data", str(mask_root), "--img-size", "64",
                        "--batch-size", "2", "--epochs", "1", "--output", str(out_dir), *TINY)
    assert code == 0
    assert "3 classes" in out
    miou = _metric(out, "mIoU")
    assert 0.0 <= miou <= 1.0
    best = Checkpoint(out_dir / "best.safetensors").metadata
    assert best["num_classes"] == 3 and best["metrics"]["mIoU"] == pytest.approx(miou, abs=1e-4)

    code, out, _ = _run(capsys, "eval", "--task", "segmentation", "--checkpoint", str(out_dir / "last.pt"),
                        "--data", str(mask_root), "--workers", "0")
    assert code == 0
    assert _metric(out, "mIoU") == pytest.approx(miou, abs=1e-4)  # last.pt after one epoch = best.safetensors

    code, _, err = _run(capsys, "eval", "--task", "detection", "--checkpoint", str(out_dir / "best.safetensors"))
    assert code == 2 and "holds a segmentation model: pass --task segmentation" in err


def test_backbone_from_classification_weights(mask_root, tmp_path, capsys):
    """--checkpoint starts the trunk from a classifier's weights, at the widths the file records."""
    from efficientvim import create_model, save_weights

    torch.manual_seed(0)
    classifier = create_model("efficientvim_m1", embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4),
                              num_classes=4)
    save_weights(classifier, tmp_path / "cls.safetensors")
    out_dir = tmp_path / "seg"
    code, out, _ = _run(capsys, "train", "--task", "segmentation", "--data", str(mask_root), "--img-size", "64",
                        "--batch-size", "2", "--epochs", "1", "--lr", "0", "--output", str(out_dir),
                        "--checkpoint", str(tmp_path / "cls.safetensors"))
    assert code == 0 and "backbone initialised from" in out
    saved = torch.load(out_dir / "last.pt", weights_only=True)
    assert saved["metadata"]["recipe"]["overrides"]["embed_dim"] == [32, 48, 64]
    # with lr 0 the trunk's weights are the classifier's
    trunk = classifier.state_dict()
    for key in ("stages.0.blocks.0.mixer.A", "patch_embed.conv.0.conv.weight"):
        assert torch.equal(saved["model"]["backbone.body." + key], trunk[key])


def test_embedded_canvases_default_run(tmp_path, capsys, monkeypatch):
    """No --data: the task's recipe on digit canvases (shrunk here), ending with the metric line."""
    from efficientvim.dense import recipe

    small = replace(recipe.DEFAULT_RECIPES["segmentation"], train_canvases=4, val_canvases=2, warmup_steps=1)
    monkeypatch.setitem(recipe.DEFAULT_RECIPES, "segmentation", small)
    out_dir = tmp_path / "digits"
    code, out, _ = _run(capsys, "train", "--task", "segmentation", "--img-size", "64", "--batch-size", "2",
                        "--epochs", "1", "--output", str(out_dir), *TINY)
    assert code == 0
    assert "the embedded digit canvases: 4 train / 2 val images, 11 classes" in out
    assert "2 batches of 2" in out
    assert 0.0 <= _metric(out.splitlines()[-1], "mIoU") <= 1.0
    meta = Checkpoint(out_dir / "best.safetensors").metadata
    assert meta["recipe"]["canvas_size"] == [64, 64] and meta["recipe"]["overrides"]["embed_dim"] == [32, 48, 64]


def test_bad_input_is_one_line(coco_root, mask_root, tmp_path, capsys):
    (coco_root / "annotations" / "instances_val.json").unlink()
    code, out, err = _run(capsys, "train", "--task", "detection", "--data", str(coco_root), "--output",
                          str(tmp_path / "x"))
    assert code == 2 and "instances_val.json not found" in err and len(err.strip().splitlines()) == 1

    (mask_root / "train" / "masks" / "1.png").unlink()
    code, _, err = _run(capsys, "train", "--task", "segmentation", "--data", str(mask_root), "--output",
                        str(tmp_path / "y"))
    assert code == 2 and "have no PNG mask of the same name" in err and len(err.strip().splitlines()) == 1

    code, _, err = _run(capsys, "train", "--task", "segmentation", "--img-size", "32")
    assert code == 2 and "--img-size: must be at least 64" in err
    code, _, err = _run(capsys, "train", "--task", "segmentation", "--arch", "fcos")
    assert code == 2 and "--arch fcos does not do segmentation" in err
    code, _, err = _run(capsys, "train", "--arch", "fcos")
    assert code == 2 and "applies to --task detection|segmentation only" in err
    code, _, err = _run(capsys, "train", "--task", "detection", "--recipe", "small")
    assert code == 2 and "unknown detection recipe 'small': choose one of digits-fcos, digits-retinanet" in err
    code, _, err = _run(capsys, "train", "--task", "detection", "--recipe", "digits-semantic-fpn")
    assert code == 2 and "(digits-semantic-fpn is a segmentation recipe)" in err
    code, _, err = _run(capsys, "eval", "--task", "detection", "--checkpoint", str(tmp_path / "missing.pt"))
    assert code == 2 and "not found" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_dense_recipe_layers_like_classification(tmp_path, capsys):
    """The task's recipe, then a YAML --config, then options; --print-config shows the result."""
    import yaml

    config = tmp_path / "det.yaml"
    config.write_text("epochs: 3\nlr: 0.001\nfpn_channels: 32\n")
    code, out, _ = _run(capsys, "train", "--task", "detection", "--config", str(config), "--epochs", "5",
                        "--print-config")
    assert code == 0
    recipe = yaml.safe_load(out)
    assert (recipe["epochs"], recipe["lr"], recipe["fpn_channels"], recipe["arch"]) == (5, 0.001, 32, "fcos")
    config.write_text("recipe: digits-retinanet\nepochs: 2\n")
    code, out, _ = _run(capsys, "train", "--task", "detection", "--config", str(config), "--print-config")
    assert code == 0 and (yaml.safe_load(out)["arch"], yaml.safe_load(out)["epochs"]) == ("retinanet", 2)
    config.write_text("epoch: 3\n")
    code, _, err = _run(capsys, "train", "--task", "detection", "--config", str(config))
    assert code == 2 and "unknown detection recipe key 'epoch' (did you mean epochs?)" in err
