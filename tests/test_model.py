"""The EfficientViM family: exactness against timm's reference port, sizes, and the timm-style backbone API."""

from __future__ import annotations

import pytest
import torch

import efficientvim as ev
from conftest import relative_error
from efficientvim.registry import model_config

ALL = ev.list_models()
TINY = dict(embed_dim=(32, 48, 64), depths=(1, 2, 1), state_dim=(8, 6, 4))

PARAMS = {"efficientvim_m1": 6_679_458, "efficientvim_m2": 13_903_842,
          "efficientvim_m3": 16_604_174, "efficientvim_m4": 19_606_505}
MACS = {"efficientvim_m1": 239e6, "efficientvim_m2": 355e6, "efficientvim_m3": 656e6, "efficientvim_m4": 1111e6}


@pytest.mark.parametrize("name", ALL)
def test_logits_equal_timm_for_random_weights(name, timm_reference):
    reference = timm_reference(name, seed=ALL.index(name))
    model = ev.create_model(name).eval()
    model.load_state_dict(reference.state_dict())
    torch.manual_seed(1)
    with torch.no_grad():
        for size in [(128, 128), (96, 160)]:
            x = torch.randn(2, 3, *size)
            expected = reference(x)
            assert expected.std() > 1e-2  # a meaningful comparison, not two near-zero tensors
            assert relative_error(expected, model(x)) <= 1e-5


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_is_exact(name):
    model = ev.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", list(MACS))
def test_flops_at_default_resolution_within_two_percent(name):
    macs = ev.count_flops(ev.create_model(name), model_config(name)["img_size"])
    assert abs(macs / MACS[name] - 1) <= 0.02


def test_distilled_returns_both_logits_only_when_told_and_their_mean_otherwise(timm_reference):
    reference = timm_reference("efficientvim_m1_dist")
    model = ev.create_model("efficientvim_m1_dist")
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 96)
    model.train()
    reference.train()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # as timm: a tensor in training mode by default
    model.set_distilled_training(True)
    reference.set_distilled_training(True)
    z, z_dist = model(x)
    z_ref, z_dist_ref = reference(x)
    assert relative_error(z_ref, z) <= 1e-5 and relative_error(z_dist_ref, z_dist) <= 1e-5
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = [f.mean(-1) for f in features]
        z_eval, z_dist_eval = model._logits(pooled), model._logits_dist(pooled)
        torch.testing.assert_close(model(x), (z_eval + z_dist_eval) / 2)


def test_every_parameter_receives_a_gradient(randomize):
    # randomised: at initialisation zero BN scales deliberately block some gradients
    model = randomize(ev.create_model("efficientvim_m1_dist", **TINY, num_classes=7)).train()
    model.set_distilled_training(True)
    # 128 px so the last stage has more than one token (a softmax over one token has no gradient)
    z, z_dist = model(torch.randn(2, 3, 128, 128))
    (z.square().mean() + z_dist.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_forward_head_of_forward_features_is_forward():
    model = ev.create_model("efficientvim_m1", **TINY, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), model(x))
        pre = model.forward_head(features, pre_logits=True)
    assert pre.shape == (2, model.num_features) and model.num_features == 32 + 48 + 64 + 64
    # (B, C, N): normalised hidden states (N = state_dim) and the normalised final 1x2 map, flattened
    assert [tuple(f.shape) for f in features] == [(2, 32, 8), (2, 48, 6), (2, 64, 4), (2, 64, 1 * 2)]
    torch.testing.assert_close(pre[:, -64:], features[3].mean(-1))
    # without pooling (timm's global_pool=""), forward returns the features themselves
    model.reset_classifier(0, global_pool="")
    with torch.no_grad():
        for got, want in zip(model(x), features):
            torch.testing.assert_close(got, want)


def test_forward_intermediates_are_the_stage_maps_at_strides_16_32_64():
    model = ev.create_model("efficientvim_m1", **TINY).eval()
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        head_inputs, maps = model.forward_intermediates(x)
        torch.testing.assert_close(model.forward_head(head_inputs), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [m.shape[-2:] for m in maps] == [(8, 12), (4, 6), (2, 3)]
    assert [m.shape[1] for m in maps] == [32, 48, 64]
    torch.testing.assert_close(last_two[0], maps[1])
    with torch.no_grad():
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[0], model.norm[2](maps[2]))  # stage i's map through the head's norm i


@pytest.mark.parametrize("name", ["efficientvim_m1", "efficientvim_m1_dist"])
def test_forward_intermediates_and_pruning_equal_timms_on_the_same_weights(name, timm_reference):
    import copy

    reference = timm_reference(name, **TINY)
    model = ev.create_model(name, **TINY).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 128, 160)
    calls = [dict(), dict(indices=1), dict(indices=[0, -1], norm=True), dict(indices=[1], stop_early=True),
             dict(indices=[0], stop_early=True, norm=True), dict(indices=2, intermediates_only=True)]
    with torch.no_grad():
        for ours, theirs in zip(model.forward_features(x), reference.forward_features(x)):
            assert relative_error(theirs, ours) <= 1e-5
        for kwargs in calls:
            got, want = model.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs)
            got, want = (got, want) if kwargs.get("intermediates_only") else (got[0] + got[1], want[0] + want[1])
            assert len(got) == len(want), kwargs
            for g, w in zip(got, want):
                assert g.shape == w.shape and relative_error(w, g) <= 1e-5, kwargs
        for kwargs in [dict(indices=[1]), dict(indices=[0], prune_norm=True), dict(indices=[2], prune_head=False)]:
            ours, theirs = copy.deepcopy(model), copy.deepcopy(reference)
            assert ours.prune_intermediate_layers(**kwargs) == theirs.prune_intermediate_layers(**kwargs)
            assert len(ours.stages) == len(theirs.stages) and ours.num_features == theirs.num_features
            assert relative_error(theirs(x), ours(x)) <= 1e-5, kwargs
    with pytest.raises(ValueError, match="prune_head=True"):
        model.prune_intermediate_layers([0], prune_head=False)


def test_features_only_returns_stage_maps_with_feature_info(tmp_path):
    classifier = ev.create_model("efficientvim_m1", **TINY).eval()
    ev.save_weights(classifier, tmp_path / "c.safetensors")
    backbone = ev.create_model(
        "efficientvim_m1", **TINY, features_only=True, checkpoint=tmp_path / "c.safetensors"
    ).eval()
    assert backbone.feature_info.channels() == [32, 48, 64]
    assert backbone.feature_info.reduction() == [16, 32, 64]
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        maps = backbone(x)
        _, expected = classifier.forward_intermediates(x)
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want)


def test_features_only_numbers_stages_as_timm_and_adds_the_stems_levels_on_request(timm_reference):
    backbone = ev.create_model("efficientvim_m1", **TINY, features_only=True, out_indices=(0,), stem_strides=(4, 8))
    assert backbone.out_indices == (0,) and backbone.feature_info.reduction() == [4, 8, 16]
    assert len(backbone.stages) == 1  # deeper stages are not built when not asked for
    maps = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 16, 24), (16, 8, 12), (32, 4, 6)]
    # the same out_indices give the same maps as timm's port (its features_only reads forward_intermediates)
    import timm

    reference = timm_reference("efficientvim_m1", **TINY)
    x = torch.randn(1, 3, 96, 128)
    for out_indices in [(0, 1, 2), (1,), (-1,), (0, 2)]:
        ours = ev.create_model("efficientvim_m1", **TINY, features_only=True, out_indices=out_indices).eval()
        assert ours.load_state_dict(reference.state_dict(), strict=False).missing_keys == []
        theirs = timm.create_model("efficientvim_m1", **TINY, features_only=True, out_indices=out_indices)
        assert ours.feature_info.channels() == theirs.feature_info.channels()
        assert ours.feature_info.reduction() == theirs.feature_info.reduction()
        with torch.no_grad():
            want = reference.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
            for g, w in zip(ours(x), want, strict=True):
                torch.testing.assert_close(g, w)
    for bad in [dict(out_indices=(3,)), dict(stem_strides=(2,)), dict(out_indices=())]:
        with pytest.raises(ValueError):
            ev.create_model("efficientvim_m1", **TINY, features_only=True, **bad)


def test_reset_classifier_replaces_all_heads_including_distilled():
    model = ev.create_model("efficientvim_m1_dist", **TINY)
    with torch.no_grad():
        model.weights.fill_(3.0)
    model.reset_classifier(10)
    heads = [*model.heads, *model.heads_dist]
    assert [h.out_features for h in heads] == [10] * 8
    assert model.num_classes == 10
    torch.testing.assert_close(model.weights.detach(), torch.ones(4))
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ev.create_model("efficientvim_m1", **TINY, num_classes=3).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append(model.patch_embed.conv[0].conv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_stochastic_depth_is_linear_over_blocks_and_off_in_eval():
    model = ev.create_model("efficientvim_m1", **TINY, drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path, "drop_prob")]
    assert rates == pytest.approx([0.1, 0.2, 0.3])
    x = torch.randn(4, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_no_weight_decay_names_the_state_skip_weights():
    model = ev.create_model("efficientvim_m1")
    assert "stages.0.blocks.0.mixer.D" in model.no_weight_decay()
    assert all(n.endswith("mixer.D") for n in model.no_weight_decay())
    assert len(model.no_weight_decay()) == 6


@pytest.mark.parametrize("in_chans", [1, 4])
def test_other_input_channels_adapt_the_first_conv_of_loaded_weights(in_chans, tmp_path):
    rgb = ev.create_model("efficientvim_m1", **TINY)
    ev.save_weights(rgb, tmp_path / "rgb.safetensors")
    model = ev.create_model("efficientvim_m1", **TINY, in_chans=in_chans, checkpoint=tmp_path / "rgb.safetensors")
    w_rgb = rgb.patch_embed.conv[0].conv.weight
    w = model.patch_embed.conv[0].conv.weight
    assert w.shape[1] == in_chans
    if in_chans == 1:  # grayscale: the three colour filters summed
        torch.testing.assert_close(w, w_rgb.sum(1, keepdim=True))
    else:  # extra channels: the colour filters repeated (R, G, B, R), rescaled by 3/4 to keep the response
        torch.testing.assert_close(w, w_rgb[:, [0, 1, 2, 0]] * 3 / in_chans)
    assert model.eval()(torch.randn(1, in_chans, 64, 64)).shape == (1, 1000)


def test_input_smaller_than_the_total_stride_is_a_clear_error():
    model = ev.create_model("efficientvim_m1", **TINY).eval()
    with pytest.raises(ev.InputSizeError, match="48x200 is smaller than the network's total stride 64"):
        model(torch.randn(1, 3, 48, 200))
    with pytest.raises(ev.InputSizeError, match=r"expected images of shape \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ev.UnknownModelError, match="did you mean efficientvim_m1"):
        ev.create_model("efficientvim_m1x")
    with pytest.raises(ev.UnknownModelError, match="unknown weights tag 'e999' .* efficientvim_m2.e450_in1k"):
        ev.create_model("efficientvim_m2.e999")


def test_torch_compile_matches_eager():
    model = ev.create_model("efficientvim_m1", **TINY, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-5)


def test_torch_export_with_dynamic_batch_and_trace_match_eager():
    model = ev.create_model("efficientvim_m1_dist", **TINY, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()
    traced = torch.jit.trace(model, x)
    x3 = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(exported(x3), model(x3))
        torch.testing.assert_close(traced(x3), model(x3))


def test_unfused_model_exports_to_onnx_runtime_with_dynamic_sizes(tmp_path):
    import onnxruntime

    model = ev.create_model("efficientvim_m1", **TINY, num_classes=5).eval()
    path = tmp_path / "m.onnx"
    axes = {"x": {0: "batch", 2: "height", 3: "width"}}
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], dynamic_axes=axes)  # fmt: skip
    x = torch.randn(2, 3, 64, 96)
    (y,) = onnxruntime.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-4, atol=1e-5)


def test_timm_configs_and_factory_arguments():
    model = ev.create_model("efficientvim_m2_dist", global_pool="avg", output_stride=64,
                            pretrained_cfg_overlay={"crop_pct": 0.95}, dtype=torch.float64)
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg and cfg["crop_pct"] == 0.95
    assert cfg["first_conv"] == "patch_embed.conv.0.conv" and cfg["pool_size"] is None
    assert cfg["classifier"] == (*[f"heads.{i}" for i in range(4)], *[f"heads_dist.{i}" for i in range(4)])
    modules = dict(model.named_modules())
    assert all(isinstance(modules[name], torch.nn.Linear) for name in cfg["classifier"])
    assert isinstance(modules[cfg["first_conv"]], torch.nn.Conv2d)
    assert next(model.parameters()).dtype == torch.float64
    for bad in ({"global_pool": "max"}, {"output_stride": 16}, {"feature_cls": "dict"}):
        with pytest.raises(ValueError):
            ev.create_model("efficientvim_m1", **TINY, **bad)


def test_reset_classifier_makes_heads_on_the_models_device_and_dtype():
    model = ev.create_model("efficientvim_m1_dist", **TINY).to(torch.float64)
    model.reset_classifier(5, global_pool="avg")
    heads = [*model.heads, *model.heads_dist]
    assert all(h.weight.dtype == torch.float64 and h.out_features == 5 for h in heads)
    assert model.eval()(torch.randn(1, 3, 64, 64, dtype=torch.float64)).shape == (1, 5)


@pytest.mark.parametrize("name", ["efficientvim_m1", "efficientvim_m1_dist", "features"])
def test_torchscript_scripting_and_fx_tracing_match_eager(name, tmp_path):
    import warnings

    from torch.fx import symbolic_trace

    if name == "features":
        model = ev.create_model("efficientvim_m1", **TINY, features_only=True, out_indices=(0, 2), stem_strides=(4,))
        model.eval()
    else:
        model = ev.create_model(name, **TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of torch.compile
        expected = model(x)
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, tmp_path / "m.pt")
        traced = symbolic_trace(model)
        for other in (torch.jit.load(tmp_path / "m.pt"), traced, torch.jit.script(traced)):
            got = other(x)
            for e, g in zip(*[o if isinstance(o, list) else [o] for o in (expected, got)]):
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_torchvision_feature_extractor_reads_stage_outputs():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = ev.create_model("efficientvim_m1", **TINY).eval()
    extractor = create_feature_extractor(model, return_nodes={"stages.0.blocks.0": "block0", "patch_embed": "stem"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = extractor(x)
        stem = model.patch_embed(x)
    torch.testing.assert_close(out["stem"], stem)
    block = out["block0"]  # the block returns (map, hidden state); the extractor may hand over either form
    torch.testing.assert_close(block[0] if isinstance(block, tuple) else block, model.stages[0].blocks[0](stem)[0])


def test_a_model_built_on_the_meta_device_initialises_like_a_normal_one():
    model = ev.create_model("efficientvim_m1_dist", device="meta")
    assert all(p.is_meta for p in model.parameters())
    model = model.to_empty(device="cpu")
    model.init_weights()
    model.eval()
    reference = ev.create_model("efficientvim_m1_dist")
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 96, 96))).all()
    # what the constructor sets to constants (gates, d, fusion weights, BN scales and statistics) is equal;
    # the rest is drawn from the same distributions
    ours, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
    for name in [n for n in ours if n.endswith(("alpha", "mixer.D", "weights", "weights_dist", "norm.weight"))]:
        assert torch.equal(ours[name], theirs[name]), name
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.equal(a, b), name
    a_init = [p for n, p in ours.items() if n.endswith("mixer.A")]
    assert all(p.min() >= 1.0 and p.max() <= 16.0 for p in a_init)
