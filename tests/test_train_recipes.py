"""The recipes, the optimiser, the schedule and the losses hold the reference values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import efficientvim
from efficientvim.train.classification import build_optimizer, distillation_loss, mesa_loss
from efficientvim.train.recipes import ConfigError, build_config

TINY_ARGS = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4))


def test_imagenet_300_is_the_reference_recipe():
    cfg = build_config("imagenet-300", overrides={"data": "imagenet"})
    assert (cfg.opt, cfg.betas, cfg.eps, cfg.weight_decay) == ("adamw", (0.9, 0.999), 1e-8, 0.05)
    assert (cfg.lr_base, cfg.lr_base_batch, cfg.warmup_lr_base, cfg.min_lr_base) == (2e-3, 2048, 2e-6, 2e-5)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.cooldown_epochs, cfg.total_epochs) == (300, 20, 10, 310)
    assert cfg.clip_grad == 0.02 and cfg.smoothing == 0.1
    assert (cfg.auto_augment, cfg.color_jitter, cfg.reprob, cfg.remode) == ("rand-m9-mstd0.5-inc1", 0.4, 0.25, "pixel")
    assert (cfg.mixup, cfg.cutmix) == (0.8, 1.0)
    assert (cfg.interpolation, cfg.crop_pct, cfg.img_size) == ("bicubic", 0.875, 224)
    assert (cfg.ema, cfg.ema_decay, cfg.mesa, cfg.mesa_start) == (True, 0.9995, 1.0, 0.25)
    assert cfg.distillation == "none"


def test_imagenet_450_and_distill_differ_only_where_the_reference_does():
    base = build_config("imagenet-300", overrides={"data": "x"}).to_dict()
    long = build_config("imagenet-450", overrides={"data": "x"}).to_dict()
    distill = build_config("imagenet-distill", overrides={"data": "x"}).to_dict()
    assert {k for k in base if base[k] != long[k]} == {"epochs"} and long["epochs"] == 450
    assert {k for k in base if base[k] != distill[k]} == {"distillation", "mesa"}
    assert (distill["distillation"], distill["mesa"], distill["teacher"]) == ("hard", 0.0, "regnety_160")
    assert (distill["distill_alpha"], distill["distill_tau"]) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("batch", "world", "accum", "peak"),
    [(256, 8, 1, 2e-3), (128, 4, 2, 1e-3), (64, 1, 1, 6.25e-5), (512, 8, 2, 8e-3)],
)
def test_learning_rates_scale_linearly_with_total_batch(batch, world, accum, peak):
    cfg = build_config("imagenet-300", overrides={"data": "x", "batch_size": batch, "accum_steps": accum})
    lr, warmup_lr, min_lr = cfg.scaled_lrs(world)
    assert lr == pytest.approx(peak)
    assert warmup_lr == pytest.approx(peak / 1000) and min_lr == pytest.approx(peak / 100)


def test_explicit_lr_is_not_scaled():
    cfg = build_config("imagenet-300", overrides={"data": "x", "lr": 5e-4, "batch_size": 32})
    assert cfg.scaled_lrs(1)[0] == 5e-4


def test_yaml_keys_are_overridden_by_the_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: imagenet-450\nepochs: 7\nbatch_size: 16\nmixup: 0.0\n")
    cfg = build_config(None, path, {"batch_size": 8, "epochs": None, "data": "x"})
    assert (cfg.epochs, cfg.batch_size, cfg.mixup, cfg.cooldown_epochs) == (7, 8, 0.0, 10)


def test_unknown_keys_and_recipes_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="'epoch'.*did you mean epochs"):
        build_config(None, path)
    with pytest.raises(ConfigError, match="imagenet-300"):
        build_config("imagenet300")


def test_digits_defaults_apply_only_without_data():
    digits, folder = build_config(), build_config(overrides={"data": "somewhere"})
    assert (digits.data, digits.img_size, digits.hflip, digits.crop_pct) == (None, 64, 0.0, 1.0)
    assert (folder.img_size, folder.hflip) == (224, 0.5)


def test_adamw_skips_decay_on_norms_biases_and_d():
    model = efficientvim.create_model("efficientvim_m1", num_classes=4, **TINY_ARGS)
    cfg = build_config("imagenet-300", overrides={"data": "x", "batch_size": 256})
    opt, _, _ = build_optimizer(model, cfg, world_size=8, batches_per_epoch=10)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert set(decay) == {0.0, 0.05}
    assert all(p.dim() > 1 and not n.endswith("mixer.D") for n, p in model.named_parameters() if n in decay[0.05])
    assert "stages.0.blocks.0.mixer.D" in decay[0.0] and "norm.0.weight" in decay[0.0]
    assert "heads.0.bias" in decay[0.0] and "stages.0.blocks.0.mixer.A" in decay[0.0]
    assert len(decay[0.0]) + len(decay[0.05]) == len(names)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)


def test_schedule_warms_up_then_cosine_then_cools_down():
    model = efficientvim.create_model("efficientvim_m1", num_classes=4, **TINY_ARGS)
    cfg = build_config("imagenet-300", overrides={"data": "x", "batch_size": 256})
    opt, sched, total = build_optimizer(model, cfg, world_size=8, batches_per_epoch=4)
    assert total == 310

    def lr_at(epoch: float) -> float:
        sched.step_update(int(epoch * 4))
        return opt.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(2e-6)
    assert lr_at(10) == pytest.approx(2e-6 + (2e-3 - 2e-6) * 0.5)
    assert lr_at(20) == pytest.approx(2e-5 + (2e-3 - 2e-5) * 0.5 * (1 + math.cos(math.pi * 20 / 300)))
    assert lr_at(150) == pytest.approx(2e-5 + (2e-3 - 2e-5) * 0.5)
    assert lr_at(305) == pytest.approx(2e-5)


def test_mesa_loss_is_soft_target_cross_entropy_to_the_ema_softmax():
    from timm.loss import SoftTargetCrossEntropy

    g = torch.Generator().manual_seed(0)
    out, ema_out = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    expected = SoftTargetCrossEntropy()(out, ema_out.softmax(-1))
    assert mesa_loss(out, ema_out).item() == pytest.approx(expected.item(), rel=1e-6)
    p = out.softmax(-1)
    assert mesa_loss(out, out).item() == pytest.approx(-(p * p.log()).sum(-1).mean().item(), rel=1e-5)


def test_hard_distillation_mixes_the_teacher_argmax_cross_entropy():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    base = torch.tensor(2.0)
    loss = distillation_loss(base, student, teacher, "hard", alpha=0.5, tau=1.0)
    expected = 0.5 * 2.0 + 0.5 * F.cross_entropy(student, teacher.argmax(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    soft = distillation_loss(base, teacher, teacher, "soft", alpha=0.5, tau=2.0)
    assert soft.item() == pytest.approx(1.0, abs=1e-6)  # KL of identical distributions is zero
