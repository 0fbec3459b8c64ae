"""fuse(): the folded, token-major inference graph computes what the trained model computes."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import efficientvim
from conftest import randomize_, relative_error
from efficientvim import deploy, kernels
from efficientvim.deploy import fuse
from efficientvim.kernels import SMALL_GEMM_TOKENS

ALL_VARIANTS = efficientvim.list_models()


def _random_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    return randomize_(efficientvim.create_model(name, **kwargs), seed).eval()


@pytest.fixture(scope="module")
def m1_pair() -> tuple[nn.Module, nn.Module]:
    model = _random_model("efficientvim_m1", num_classes=7)
    return model, fuse(model)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_fused_classifier_matches_original_on_square_and_non_square_inputs(name):
    model = _random_model(name, num_classes=10)
    fused = fuse(model)
    torch.manual_seed(0)
    for size in ((64, 64), (64, 96)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, got = model(x), fused(x)
        assert got.shape == expected.shape == (2, 10)
        assert relative_error(expected, got) < 1e-4, size


@pytest.mark.parametrize("name", ["efficientvim_m2", "efficientvim_m4_dist"])
def test_channels_first_layout_computes_the_same_logits(name):
    model = _random_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        expected, got = model(x), fuse(model, layout="channels_first")(x)
    assert relative_error(expected, got) < 1e-4


def test_fused_distilled_model_returns_the_mean_of_both_heads():
    model = _random_model("efficientvim_m1_dist", num_classes=5)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        model.train()
        model.set_distilled_training(True)
        for m in model.modules():  # training mode for the heads only: BN keeps its running stats
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        z, z_dist = model(x)
        model.eval()
        got = fuse(model)(x)
    assert relative_error((z + z_dist) / 2, got) < 1e-4


def test_fused_model_without_classes_returns_the_pooled_features():
    model = _random_model("efficientvim_m1", num_classes=0)
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        expected, got = model(x), fuse(model)(x)
    assert got.shape == (2, model.num_features)
    assert relative_error(expected, got) < 1e-4


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_fused_feature_extractor_matches_every_level(layout):
    model = _random_model("efficientvim_m1", features_only=True, out_indices=(0, 1, 2), stem_strides=(4, 8))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = model(x), fuse(model, layout=layout)(x)
    assert len(got) == 5
    for level, (e, g) in enumerate(zip(expected, got)):
        assert g.shape == e.shape, level
        assert relative_error(e, g) < 1e-4, level


def test_fused_feature_extractor_keeps_its_levels():
    model = _random_model("efficientvim_m4", features_only=True, out_indices=(1,), stem_strides=(8,))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x), fuse(model)(x)
    assert [g.shape for g in got] == [e.shape for e in expected] == [(1, 112, 8, 8), (1, 320, 2, 2)]
    assert max(relative_error(e, g) for e, g in zip(expected, got)) < 1e-4


def test_fuse_leaves_the_input_model_untouched(m1_pair):
    model = m1_pair[0].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse(model)
    assert model.training
    model.eval()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fused_model_has_no_normalisation_layers_and_no_trainable_parameters(m1_pair):
    fused = m1_pair[1]
    kinds = {type(m) for m in fused.modules()}
    assert not any(issubclass(k, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) for k in kinds)
    assert not any(p.requires_grad for p in fused.parameters())
    assert len(list(fused.parameters())) > 0


def test_fused_model_is_inference_only(m1_pair):
    fused = m1_pair[1]
    assert not fused.training
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()


def test_fused_model_keeps_name_and_preprocessing_metadata(m1_pair):
    model, fused = m1_pair
    assert fused.model_name == "efficientvim_m1"
    assert fused.pretrained_cfg == model.pretrained_cfg
    assert fused.pretrained_cfg is not model.pretrained_cfg


def test_fused_model_stays_exact_with_nearly_open_and_closed_gates():
    # gates s near 0 or 1 stress the rescaled stream x / (1 - s); float32 itself loses digits in
    # 1 - s there, so the reference is the original model in float64
    model = _random_model("efficientvim_m1", num_classes=4, embed_dim=(32, 48, 64), state_dim=(8, 6, 4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.where(torch.rand(p.shape) < 0.5, -9.0, 9.0))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = fuse(model)(x)
        expected = model.double()(x.double())
    assert relative_error(expected, got.double()) < 1e-4


def test_fuse_rejects_other_modules():
    with pytest.raises(TypeError, match="EfficientViM"):
        fuse(nn.Linear(2, 2))


def test_fused_model_matches_when_projections_run_as_convolutions():
    # from SMALL_GEMM_TOKENS tokens on, 1x1 projections switch from F.linear to oneDNN convolutions
    model = _random_model("efficientvim_m1", num_classes=4, embed_dim=(32, 48, 64), state_dim=(8, 6, 4))
    x = torch.randn(4, 3, 256, 256)
    assert SMALL_GEMM_TOKENS <= 4 * (256 // 16) ** 2
    with torch.no_grad():
        expected, got = model(x), fuse(model)(x)
    assert relative_error(expected, got) < 1e-4


def test_fused_model_uses_weights_loaded_after_it_has_run():
    # batch-1 projections cache packed copies of their weights; loading new weights must repack them
    tiny = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4), num_classes=4)
    first = _random_model("efficientvim_m1", **tiny)
    second = copy.deepcopy(first)
    with torch.no_grad():
        for name, p in second.named_parameters():
            if "conv.weight" in name or "heads" in name:  # the same gates, so the same fused structure
                p.mul_(1.5)
    fused = fuse(first)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = fused(x)
        fused.load_state_dict(fuse(second).state_dict())
        expected, got = second(x), fused(x)
    assert relative_error(expected, got) < 1e-4
    assert relative_error(expected, before) > 1e-2


def _tiny_fused() -> tuple[nn.Module, nn.Module]:
    model = _random_model("efficientvim_m1", embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4),
                          num_classes=4)
    return model, fuse(model)


@pytest.mark.skipif(not kernels.MKLDNN_PACKED, reason="this PyTorch build has no oneDNN packed convolution")
def test_batch_one_convolutions_run_on_packed_weights_and_stay_exact():
    model, fused = _tiny_fused()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert relative_error(expected, got) < 1e-4
    depthwise = fused.stages[0].blocks[0].dwconv1
    assert list(depthwise.packed) == [(1, 32, 4, 4)]  # the packed path ran, keyed by the input shape


def test_packed_weight_cache_is_bounded_and_never_copied():
    model, fused = _tiny_fused()
    with torch.no_grad():
        for size in range(64, 64 + 16 * (kernels.PACKED_SHAPES + 2), 16):
            x = torch.randn(1, 3, size, size)
            assert relative_error(model(x), fused(x)) < 1e-4
        caches = [m.packed for m in fused.modules() if isinstance(m, deploy.TokenConv)]
        assert max(len(c) for c in caches) <= kernels.PACKED_SHAPES
        # copies and pickles (torch.save of the whole module) start empty and repack on first use
        clone = copy.deepcopy(fused)
        buffer = io.BytesIO()
        torch.save(fused, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        for other in (clone, loaded):
            assert all(len(m.packed) == 0 for m in other.modules() if isinstance(m, deploy.TokenConv))
            assert torch.equal(other(x), fused(x))


def test_state_channels_are_padded_to_whole_blocks_without_changing_the_output():
    model, fused = _tiny_fused()
    block = fused.stages[1].blocks[0]  # state_dim 6: B, C, dt are 18 channels, padded to 32
    assert block.bcdt_split == (6, 6, 6, 14)
    assert block.bcdt_proj.weight.shape == (32, 48)
    assert torch.count_nonzero(block.bcdt_proj.weight[18:]) == 0
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert relative_error(model(x), fused(x)) < 1e-4


def test_model_fused_under_inference_mode_runs_and_matches():
    # its weights are inference tensors, which keep no version counter for the packed-weight cache
    model = _random_model("efficientvim_m1", embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4),
                          num_classes=4)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        fused = fuse(model)
        assert relative_error(model(x), fused(x)) < 1e-4


@pytest.mark.parametrize("name", ["efficientvim_m1", "efficientvim_m4_dist"])
def test_timm_reparameterize_model_folds_every_batchnorm_and_agrees_with_fuse(name):
    """timm's reparameterize_model calls each module's fuse(): no BatchNorm is left, and the result is as
    accurate as the model itself (measured against the original evaluated in float64)."""
    from timm.utils.model import reparameterize_model

    model = _random_model(name, num_classes=7)
    features = _random_model("efficientvim_m1", features_only=True, out_indices=(0, 1, 2), stem_strides=(4, 8))
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for original in (model, features):
            folded = reparameterize_model(original)
            assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
            outs = [torch.atleast_1d(o) for o in (original(x), folded(x), copy.deepcopy(original).double()(x.double()))]
            for expected, got, exact in zip(*[o if isinstance(o, (list, tuple)) else [o] for o in outs]):
                # float32 rounding of a 20-block network: the unfolded model itself is off by ~1e-5 here
                assert relative_error(exact, got.double()) < 5e-5 and relative_error(exact, expected.double()) < 5e-5
                if name == "efficientvim_m1":
                    assert relative_error(expected, got) < 1e-5
        assert relative_error(fuse(model)(x), reparameterize_model(model)(x)) < 1e-4
    with pytest.raises(ValueError, match="already folded"):
        fuse(reparameterize_model(model))
