"""Detectors and the Semantic FPN segmenter on EfficientViM: training/eval steps, shapes, weights."""

from __future__ import annotations

import pytest
import torch

from efficientvim import CheckpointError, EfficientViMError, create_model, save_weights
from efficientvim.dense import create_detector, create_segmenter, evaluate, split_strides, train_step
from efficientvim.dense.steps import collate_segmentation

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4))
TWO_STAGE_SMALL = dict(  # fewer proposals keep the R-CNN tests fast
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=64,
)


def tiny_body(strides, seed=0):
    torch.manual_seed(seed)
    return create_model("efficientvim_m1", features_only=True, **split_strides(strides), **TINY)


def tiny_detector(arch, **kwargs):
    strides = (4, 8, 16, 32, 64) if arch in ("fasterrcnn", "maskrcnn") else (8, 16, 32, 64)
    extra = TWO_STAGE_SMALL if arch in ("fasterrcnn", "maskrcnn") else {}
    return create_detector(
        arch, tiny_body(strides), 3, fpn_channels=32, min_size=64, max_size=112, **extra, **kwargs
    )


def non_square_batch():
    """Two images of different, non-square sizes with boxes and instance masks."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 72, 104, generator=g), torch.rand(3, 90, 64, generator=g)]
    targets = []
    for (height, width), boxes, labels in (
        ((72, 104), [[8.0, 10.0, 40.0, 50.0], [50.0, 20.0, 100.0, 70.0]], [1, 3]),
        ((90, 64), [[4.0, 30.0, 36.0, 88.0]], [2]),
    ):
        masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes):
            m[int(y0) : int(y1), int(x0) : int(x1)] = 1
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "masks": masks, "image_id": 0})
    return images, targets


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "fasterrcnn", "maskrcnn"])
def test_detector_trains_and_predicts_on_non_square_images(arch):
    model = tiny_detector(arch)
    images, targets = non_square_batch()
    model.train()
    losses = train_step(model, images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.allclose(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
    if arch == "maskrcnn":
        assert "loss_mask" in losses
    losses["loss"].backward()
    stem_grad = model.backbone.body.patch_embed.conv[0].conv.weight.grad
    stage_grad = model.backbone.body.stages[-1].blocks[0].mixer.BCdt_proj.conv.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    assert stage_grad is not None and stage_grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for image, out in zip(images, outputs):
        height, width = image.shape[-2:]
        boxes = out["boxes"]
        # predictions come back in the input image's own coordinates
        assert (boxes[:, 0::2] <= width + 1e-3).all() and (boxes[:, 1::2] <= height + 1e-3).all()
        assert set(out["labels"].tolist()) <= {1, 2, 3}
        if arch == "maskrcnn":
            assert out["masks"].shape[-2:] == (height, width)
    metrics = evaluate(model, [(images, targets)])
    expected = {"mAP", "mAP@50", "mAP@75"}
    if arch == "maskrcnn":
        expected |= {"mask_mAP", "mask_mAP@50", "mask_mAP@75"}
    assert set(metrics) == expected and all(0.0 <= v <= 1.0 for v in metrics.values())
    assert model.training is False


def test_detector_reads_the_requested_pyramid_levels():
    model = tiny_detector("fcos")
    fpn = model.backbone
    assert fpn.strides == [8, 16, 32, 64]
    features = fpn(torch.rand(1, 3, 128, 256))
    assert list(features) == ["8", "16", "32", "64", "pool"]  # levels named by stride
    assert [f.shape[-1] for f in features.values()] == [32, 16, 8, 4, 2]
    assert all(f.shape[1] == fpn.out_channels == 32 for f in features.values())
    # the extra stride-128 level is the coarsest FPN map subsampled, not another trunk level
    assert torch.equal(features["pool"], torch.nn.functional.max_pool2d(features["64"], 1, 2))
    # the anchors of every level sit at its own stride
    assert model.transform.size_divisible == 128


def test_segmenter_logits_match_input_size_and_train():
    torch.manual_seed(0)
    model = create_segmenter("semantic_fpn", tiny_body((4, 8, 16, 32, 64)), num_classes=4, fpn_channels=32, channels=16)
    images = torch.rand(2, 3, 70, 102)
    masks = torch.randint(0, 4, (2, 70, 102))
    masks[0, :5] = 255
    model.train()
    losses = train_step(model, images, masks)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    losses["loss"].backward()
    assert model.backbone.body.patch_embed.conv[0].conv.weight.grad.abs().sum() > 0
    assert model.backbone.body.stages[-1].blocks[0].mixer.BCdt_proj.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, 4, 70, 102)
    loader = [collate_segmentation([(images[0], masks[0]), (images[1], masks[1])])]
    metrics = evaluate(model, loader)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["pixel_acc"] <= 1.0


def test_segmenter_ignores_pixels_labelled_255():
    torch.manual_seed(0)
    model = create_segmenter("semantic_fpn", tiny_body((4, 16, 32)), num_classes=3, fpn_channels=16, channels=16)
    model.train()
    model.dropout.p = 0.0
    images = torch.rand(1, 3, 64, 64)
    masks = torch.randint(0, 3, (1, 64, 64))
    torch.manual_seed(1)
    full = train_step(model, images, masks)["loss"]
    flipped = masks.clone()
    flipped[:, :32] = 255  # hide half the pixels: the loss is then the mean over the other half
    torch.manual_seed(1)
    half = train_step(model, images, flipped)["loss"]
    torch.manual_seed(1)
    logits = model(images)
    expected = torch.nn.functional.cross_entropy(logits[:, :, 32:], masks[:, 32:])
    assert not torch.isclose(full, half)
    assert torch.isclose(half, expected, rtol=1e-4)


def test_frozen_stages_stop_gradients_and_bn_updates():
    model = create_detector(
        "fcos", tiny_body((8, 16, 32, 64)), 2, frozen_stages=2, fpn_channels=32, min_size=64, max_size=64
    )
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.patch_embed.parameters())
    assert not any(p.requires_grad for p in body.stages[0].parameters())
    assert all(p.requires_grad for p in body.stages[1].parameters())
    model.train()
    assert not body.patch_embed.training and not body.stages[0].training and body.stages[1].training
    with pytest.raises(EfficientViMError, match="frozen_stages"):
        create_detector("fcos", tiny_body((8, 16, 32, 64)), 2, frozen_stages=9)


def test_classification_weights_load_into_the_detector_backbone(tmp_path):
    torch.manual_seed(3)
    classifier = create_model("efficientvim_m1", num_classes=5, **TINY)
    for p in classifier.parameters():
        p.data.normal_()
    path = save_weights(classifier, tmp_path / "cls.safetensors")
    model = create_detector("maskrcnn", tiny_body((4, 8, 16, 32, 64), seed=7), 2, checkpoint=path, fpn_channels=32)
    reference = classifier.state_dict()
    loaded = model.backbone.body.state_dict()
    assert loaded  # the trunk: stem and all three stages
    for name, value in loaded.items():
        assert torch.equal(value, reference[name]), name
    assert not any(k.startswith(("heads", "norm.")) for k in loaded)


def test_detector_by_name_loads_a_checkpoint_and_drops_unused_stages(tmp_path):
    classifier = create_model("efficientvim_m1", num_classes=3)
    path = save_weights(classifier, tmp_path / "m1.safetensors")
    model = create_detector("fasterrcnn", "efficientvim_m1", 2, checkpoint=path, strides=(4, 8, 16, 32))
    body = model.backbone.body
    assert len(body.stages) == 2  # the stride-64 stage is not read, so it is not built
    assert torch.equal(body.stages[1].blocks[1].mixer.A, classifier.stages[1].blocks[1].mixer.A)
    with pytest.raises(CheckpointError):
        create_detector("fcos", "efficientvim_m2", 2, checkpoint=path)


def test_unknown_architectures_are_refused():
    with pytest.raises(EfficientViMError, match="unknown detector"):
        create_detector("yolo", "efficientvim_m1", 3)
    with pytest.raises(EfficientViMError, match="unknown segmenter"):
        create_segmenter("unet", "efficientvim_m1", 3)
    with pytest.raises(EfficientViMError, match=r"returns strides \(16, 32, 64\), not \(8, 16, 32, 64\)"):
        create_detector("fcos", tiny_body((16, 32, 64)), 3, strides=(8, 16, 32, 64))
    with pytest.raises(EfficientViMError, match="strides name the pyramid levels"):
        create_detector("fcos", "efficientvim_m1", 3, strides=(8, 12))


def test_default_recipes_build_their_models_and_canvases():
    from efficientvim.dense import build_canvases, build_model, default_recipe

    recipe = default_recipe("detection", overrides=TINY, train_canvases=32, val_canvases=16)
    model = build_model(recipe)
    assert type(model).__name__ == "FCOS"
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    train, val = build_canvases(recipe)
    assert len(train) == 32 and len(val) == 16 and not set(train.digit_ids) & set(val.digit_ids)
    recipe = default_recipe("segmentation", overrides=TINY)
    segmenter = build_model(recipe)
    assert segmenter.num_classes == 11 and segmenter.backbone.strides == [4, 8, 16, 32, 64]
    with pytest.raises(EfficientViMError, match="unknown task"):
        default_recipe("panoptic")
