"""The HSM-SSD variants (multi-head selection, recursive hidden-state mixing, hidden-state passing): their
equations written out independently, the paper's layer at their defaults, and every path a model takes
(fuse in both layouts, save/load, the hub config, ONNX, FLOP counting, features, training)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import efficientvim as ev
from conftest import randomize_
from efficientvim import HSMSSD
from efficientvim.flops import count_flops
from efficientvim.hsm_ssd import RecursiveStateMixer
from efficientvim.weights import Checkpoint

TINY = dict(embed_dim=(32, 48, 64), depths=(2, 2, 1), state_dim=(8, 6, 4))
VARIANTS = {
    "heads": dict(num_heads=(2, 4, 1)),
    "recursive": dict(mixer_depth=(1, 2, 1)),
    "passing": dict(state_passing=True),
    "all": dict(num_heads=2, mixer_depth=2, state_passing=True),
}


def gated(h, hz, out, d, d_inner):
    h1, z = torch.einsum("od,bdn->bon", hz, h).split(d_inner, dim=1)
    return torch.einsum("od,bdn->bon", out, h1 * F.silu(z) + d * h1)


def reference_mixer(m: RecursiveStateMixer, h: torch.Tensor) -> torch.Tensor:
    """A recursive mixer on (B, D, N), written out: select from the normalised states, compress the states to
    N', mix, expand back."""
    mean, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
    n = (h - mean) / (var + m.norm.eps).sqrt() * m.norm.weight[:, None] + m.norm.bias[:, None]
    b, c, dt = torch.einsum("od,bdn->bon", m.BCdt_proj.conv.weight[..., 0], n).split(m.states, dim=1)
    a = torch.softmax(dt, dim=-1)  # over the N states
    inner = torch.einsum("bdn,bkn->bdk", h, a * b)
    if m.depth > 1:
        inner = reference_mixer(m.inner, inner)
    else:
        inner = gated(inner, m.hz_proj.conv.weight[..., 0], m.out_proj.conv.weight[..., 0], m.D, m.d_inner)
    return torch.einsum("bdk,bkn->bdn", inner, c)


def reference_layer(layer: HSMSSD, x: torch.Tensor, prev: torch.Tensor | None = None):
    """Multi-head HSM-SSD on a (B, D, H, W) map: per head its own dt (and a), B and C shared."""
    batch, dim, height, width = x.shape
    n, heads = layer.state_dim, layer.num_heads
    bcdt = torch.einsum("od,bdhw->bohw", layer.BCdt_proj.conv.weight[..., 0], x)
    bcdt = F.conv2d(bcdt, layer.dw.conv.weight, padding=1, groups=bcdt.shape[1]).flatten(2)
    b, c, dt = bcdt[:, :n], bcdt[:, n : 2 * n], bcdt[:, 2 * n :]
    a = torch.softmax(dt + layer.A[None, :, None], dim=-1).reshape(batch, heads, n, -1)
    xh = x.flatten(2).reshape(batch, heads, dim // heads, -1)
    h = torch.einsum("bgcl,bgnl->bgcn", xh, a * b[:, None]).reshape(batch, dim, n)
    if prev is not None:
        h = h + prev
    if layer.mixer_depth:
        h = reference_mixer(layer.state_mixer, h)
    else:
        h = gated(h, layer.hz_proj.conv.weight[..., 0], layer.out_proj.conv.weight[..., 0], layer.D, layer.d_inner)
    y = torch.einsum("bdn,bnl->bdl", h, c)
    return y.reshape(batch, dim, height, width), h


@pytest.mark.parametrize("kw", [dict(num_heads=3), dict(mixer_depth=1), dict(mixer_depth=3, mixer_states=5),
                                dict(num_heads=2, mixer_depth=2)])
def test_each_variant_follows_its_equations(kw):
    torch.manual_seed(0)
    layer = randomize_(HSMSSD(dim=24, state_dim=9, **kw)).double()  # float64: the two orders of sums agree
    x, prev = torch.randn(2, 24, 5, 11, dtype=torch.float64), torch.randn(2, 24, 9, dtype=torch.float64)
    for p in (None, prev):
        y, h = layer(x, prev_state=p)
        y_ref, h_ref = reference_layer(layer, x, p)
        torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(h, h_ref, rtol=1e-9, atol=1e-9)
    # tokens with their size give the same answer as the map
    y_tokens, _ = layer(x.flatten(2).transpose(1, 2), (5, 11))
    torch.testing.assert_close(y_tokens.transpose(1, 2).reshape_as(x), layer(x)[0])


def test_defaults_are_the_papers_layer_and_one_head_equals_copied_heads():
    torch.manual_seed(0)
    plain = HSMSSD(dim=24, state_dim=9)
    torch.manual_seed(0)
    explicit = HSMSSD(dim=24, state_dim=9, num_heads=1, mixer_depth=0)
    assert plain.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), explicit.state_dict().values()))
    # H heads whose dt projections, dt kernels and a are copies of the single head's compute the same layer
    randomize_(plain)
    heads = HSMSSD(dim=24, state_dim=9, num_heads=3)
    n = 9
    with torch.no_grad():
        state = {k: v.clone() for k, v in plain.state_dict().items()}
        proj, dw = state["BCdt_proj.conv.weight"], state["dw.conv.weight"]
        state["BCdt_proj.conv.weight"] = torch.cat([proj[: 2 * n], *[proj[2 * n :]] * 3])
        state["dw.conv.weight"] = torch.cat([dw[: 2 * n], *[dw[2 * n :]] * 3])
        state["A"] = state["A"].repeat(3)
    heads.load_state_dict(state)
    x = torch.randn(2, 24, 6, 7)
    torch.testing.assert_close(heads(x)[0], plain(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_heads=5 must be at least 1 and divide the 24 channels"):
        HSMSSD(dim=24, state_dim=9, num_heads=5)


def test_default_family_is_unchanged_and_records_nothing_new(tmp_path):
    model = ev.create_model("efficientvim_m1", num_classes=10)
    assert model.num_heads == (1, 1, 1) and model.mixer_depth == (0, 0, 0) and model.state_passing == (False,) * 3
    meta = Checkpoint(ev.save_weights(model, tmp_path / "m.safetensors")).metadata
    assert not {"num_heads", "mixer_depth", "state_passing"} & set(meta)


def gates_and_statistics_(model):
    """The model's own initial weights with random gates and BatchNorm statistics (what training moves
    first), so that every folded term of fuse() matters and activations keep their trained-like scale."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(-3, 3, generator=g)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-1, 1, generator=g)
    return model


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_models_fuse_save_load_export_and_count(name, tmp_path):
    kw = VARIANTS[name]
    torch.manual_seed(0)
    model = gates_and_statistics_(ev.create_model("efficientvim_m1", num_classes=10, **TINY, **kw)).eval()
    x = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        y = model(x)
        for layout in ("channels_last", "channels_first"):
            fused = ev.fuse(model, layout=layout)
            assert ((fused(x) - y).abs().max() / y.abs().max()).item() <= 1e-4, layout
            assert ((fused(x[:1]) - y[:1]).abs().max() / y.abs().max()).item() <= 1e-4, layout
        # on any weights the folding itself is exact: in float64 it leaves only float64 rounding
        wild = randomize_(ev.create_model("efficientvim_m1", num_classes=10, **TINY, **kw)).eval().double()
        expected = wild(x.double())
        got = ev.fuse(wild, dtype=torch.float64)(x.double())
        assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-10
    # the file records the variant and rebuilds it alone; so does the hub folder
    path = ev.save_weights(model, tmp_path / "v.safetensors")
    again = ev.load_model(path).eval()
    assert again.num_heads == model.num_heads and again.mixer_depth == model.mixer_depth
    assert again.state_passing == model.state_passing
    with torch.no_grad():
        assert torch.equal(again(x), y)
    ev.save_pretrained(model, tmp_path / "hub")
    args = json.loads((tmp_path / "hub" / "config.json").read_text())["model_args"]
    assert {k: tuple(args[k]) for k in kw} == {k: getattr(model, k) for k in kw}
    with torch.no_grad():
        assert torch.equal(ev.create_model(str(tmp_path / "hub")).eval()(x), y)
    # a different variant is refused by name, not with a shape error
    with pytest.raises(ev.EfficientViMError, match="drop the"):
        ev.create_model("efficientvim_m1", checkpoint=path, **{next(iter(kw)): 1 if name != "passing" else False})
    # ONNX: verified against PyTorch by the exporter itself
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from efficientvim.export import export_onnx

    assert export_onnx(model, tmp_path / "v.onnx", img_size=128) <= 1e-4
    assert count_flops(model, 128) > 0


def test_recursive_mixing_costs_what_its_docstring_says():
    """O(N N' D + N' D^2) against O(N D^2): counted multiply-adds of one layer's mixer, by formula."""
    dim, n = 128, 49
    base, rec = HSMSSD(dim, n), HSMSSD(dim, n, mixer_depth=1)  # N' = 24
    x = torch.randn(1, dim, 14, 14)
    flops = {}
    for name, layer in (("base", base), ("rec", rec)):
        with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
            layer(x)
        flops[name] = counter.get_total_flops() // 2
    tokens, n2 = 14 * 14, 24
    shared = tokens * dim * 3 * n + 9 * 3 * n * tokens + 2 * tokens * n * dim  # B/C/dt, its 3x3 DW, h and y
    gate = lambda states: states * dim * 2 * dim + states * dim * dim  # noqa: E731
    assert flops["base"] == shared + gate(n)
    assert flops["rec"] == shared + n * dim * 3 * n2 + 2 * n * n2 * dim + gate(n2)
    assert flops["rec"] < flops["base"]


def test_variants_train_and_give_features(tmp_path):
    model = ev.create_model("efficientvim_m1", num_classes=10, **TINY, **VARIANTS["all"])
    x = torch.randn(2, 3, 128, 128)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    grads = [p.grad for n, p in model.named_parameters() if "state_mixer" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # the paper's state bias a is added to a whole row of a softmax over tokens: it cannot change A, so its
    # gradient vanishes (which is why the recursive mixer has none)
    a_grads = [p.grad for n, p in model.named_parameters() if n.endswith("mixer.A")]
    assert a_grads and all(g.abs().max() < 1e-5 for g in a_grads)
    model.set_grad_checkpointing(True)
    model.zero_grad()
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    features = ev.create_model("efficientvim_m1", features_only=True, **TINY, **VARIANTS["all"]).eval()
    with torch.no_grad():
        maps = features(x)
        fused = ev.fuse(features)(x)
    assert [m.shape[1] for m in maps] == [32, 48, 64]
    for a, b in zip(maps, fused):
        assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-4


def test_a_dense_head_on_a_variant_trunk():
    from efficientvim.dense import create_segmenter

    trunk = ev.create_model("efficientvim_m1", features_only=True, stem_strides=(4, 8), **TINY, **VARIANTS["all"])
    segmenter = create_segmenter("semantic_fpn", trunk, num_classes=3, fpn_channels=32, channels=16)
    x = torch.randn(2, 3, 128, 160)
    logits = segmenter(x)
    assert logits.shape == (2, 3, 128, 160)
    logits.mean().backward()
    assert trunk.stages[0].blocks[1].mixer.state_mixer.BCdt_proj.conv.weight.grad.abs().sum() > 0
