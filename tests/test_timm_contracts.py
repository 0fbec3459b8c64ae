"""timm's model contracts, checked on our ``_ev`` names.

timm's own ``tests/test_models.py`` checks some contracts only on names it lists (its ``efficientvim_*``,
``repvit``, ``shvit``, ``iformer``): fusion through ``reparameterize_model`` (twice is the same as once),
the feature getter on a fused model, pruning intermediate layers, and ``init_weights`` after ``to_empty``.
A user of timm relies on them for every model, so they are checked here on ours, in our own words, with
the small configuration timm uses for its port, and on the research kit's variants, which fuse too.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet
from timm.utils import reparameterize_model

import efficientvim.timm_registry  # noqa: F401 (registers efficientvim_*_ev in timm)

SMALL = dict(embed_dim=(16, 24, 32), depths=(1, 1, 1), state_dim=(4, 4, 4))
# the paper's family as timm tests its port, and the research kit's variants (each fuses its own way)
FUSING = {
    "m1": ("efficientvim_m1_ev", SMALL),
    "m1_dist": ("efficientvim_m1_dist_ev", SMALL),
    "multi_head": ("efficientvim_m1_ev", {**SMALL, "num_heads": 2}),
    "recursive": ("efficientvim_m1_ev", {**SMALL, "depths": (2, 1, 1), "mixer_depth": 1}),
    "state_passing": ("efficientvim_m1_dist_ev", {**SMALL, "depths": (2, 2, 1), "state_passing": True}),
}


def _trained_looking(name: str, kwargs: dict) -> torch.nn.Module:
    """The model with BatchNorm statistics and gates away from their initial values, so folding them shows."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if hasattr(module, "alpha"):
                module.alpha.uniform_(-1, 1)
    return model


@pytest.mark.parametrize("case", FUSING)
def test_reparameterizing_twice_is_reparameterizing_once(case):
    name, kwargs = FUSING[case]
    model = _trained_looking(name, kwargs)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    fused = reparameterize_model(model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is left as it was
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=2e-5, rtol=2e-5)
        # a second call folds nothing more: the logits are the same to the bit (it changed them by up to 0.027)
        assert torch.equal(reparameterize_model(fused)(x), fused(x))
        assert torch.equal(reparameterize_model(fused, inplace=True)(x), fused(x))


@pytest.mark.parametrize("case", ["m1", "m1_dist"])
@pytest.mark.parametrize("norm, indices", [(False, [0, 1]), (True, [0, -1])])
def test_a_fused_feature_getter_returns_the_models_intermediates(case, norm, indices):
    name, kwargs = FUSING[case]
    model = _trained_looking(name, kwargs)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    expected = model.forward_intermediates(x, indices=indices, norm=norm, intermediates_only=True)
    getter = FeatureGetterNet(copy.deepcopy(model), out_indices=indices, norm=norm).eval()
    torch.testing.assert_close(getter(x), expected)
    fused_getter = reparameterize_model(getter)
    torch.testing.assert_close(fused_getter(x), expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(torch.jit.script(fused_getter)(x), fused_getter(x))
    getter.train()
    sum(t.square().mean() for t in getter(x)).backward()
    assert all(p.grad is not None for p in getter.parameters() if p.requires_grad)
    # a classifier reset after pruning takes the width of what is left
    getter.model.reset_classifier(7, global_pool="avg")
    assert getter.model(x).shape == (2, 7)


@pytest.mark.parametrize("case", ["m1", "m1_dist"])
def test_pruned_intermediate_layers_give_the_same_features_and_no_head(case):
    name, kwargs = FUSING[case]
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = model.forward_features(x)
        assert [t.shape[1] for t in features] == [16, 24, 32, 32]  # the three hidden states and the final map
        torch.testing.assert_close(model(x), model.forward_head(features))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
        expected = model.forward_intermediates(x, indices=[0, 1], norm=True, intermediates_only=True)
        model.prune_intermediate_layers([0, 1])
        torch.testing.assert_close(model.forward_intermediates(x, norm=True, intermediates_only=True), expected)
        assert model(x).shape == (2, model.num_features)  # the head went with the pruned stage


@pytest.mark.parametrize("case", ["m1", "m1_dist"])
def test_init_weights_after_to_empty_leaves_nothing_uninitialised(case):
    name, kwargs = FUSING[case]
    model = timm.create_model(name, device="meta", dtype=torch.float64, num_classes=5, **kwargs)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in model.parameters())
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():  # NaN everywhere: a tensor init_weights misses cannot pass by being finite by chance
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    model.init_weights()
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor).all(), key
    fresh = timm.create_model(name, num_classes=5, **kwargs)
    torch.testing.assert_close(model.stages[0].blocks[0].alpha.float(), fresh.stages[0].blocks[0].alpha)
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64, dtype=torch.float64))).all()
