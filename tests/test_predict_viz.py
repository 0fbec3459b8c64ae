"""The library behind predict / visualize / info: input expansion, hidden-state maps, memory tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import efficientvim
from conftest import randomize_
from efficientvim.images import load_image
from efficientvim.predict import expand_inputs, make_transform, min_image_side, set_input_size
from efficientvim.summary import forward_memory, model_summary
from efficientvim.viz import effective_tokens, hidden_state_maps, state_report


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    model = efficientvim.create_model(
        "efficientvim_m1", embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4), num_classes=5
    )
    return randomize_(model, seed=1).eval()


def test_expand_inputs_takes_files_folders_recursively_and_globs_once_each(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.png", "a/b/y.JPG", "a/readme.txt", "z.webp"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([tmp_path / "a", str(tmp_path / "*.webp"), tmp_path / "a" / "x.png"])
    assert got == [tmp_path / "a" / "b" / "y.JPG", tmp_path / "a" / "x.png", tmp_path / "z.webp"]
    with pytest.raises(FileNotFoundError, match="nothing.png not found"):
        expand_inputs([tmp_path / "nothing.png"])


def test_input_size_must_reach_the_total_stride(tiny):
    set_input_size(tiny, 64)
    assert tiny.pretrained_cfg["input_size"] == (3, 64, 64)
    assert min_image_side(tiny) == 4
    with pytest.raises(efficientvim.InputSizeError, match="total stride 64"):
        set_input_size(tiny, 63)
    set_input_size(tiny, 224)
    assert min_image_side(tiny) == 14


def test_float_images_in_unit_range_are_scaled_to_8_bits(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp, "F").save(tmp_path / "ramp.tif")
    rgb = np.asarray(load_image(tmp_path / "ramp.tif"))
    assert rgb.shape == (32, 32, 3) and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_hidden_state_maps_are_distributions_over_the_tokens_of_each_stage(tiny):
    x = torch.randn(2, 3, 128, 96)
    maps, logits = hidden_state_maps(tiny, x)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8, 6), (2, 6, 4, 3), (2, 4, 2, 2)]
    for m in maps:
        assert torch.allclose(m.sum((-2, -1)), torch.ones(m.shape[:2]), atol=1e-5)
        assert (m >= 0).all()
        assert not torch.allclose(m[0], m[1])  # they depend on the image
    with torch.no_grad():
        assert torch.allclose(logits, tiny(x), atol=1e-6)


def test_hidden_state_maps_are_the_weights_the_forward_pass_used():
    # two blocks in stage 1, so that the first block's maps would not pass for the last one's
    tiny = efficientvim.create_model(
        "efficientvim_m1", embed_dim=(32, 48, 64), depths=(2, 1, 1), state_dim=(8, 6, 4), num_classes=5
    )
    randomize_(tiny, seed=2).eval()
    # the output of each last mixer's depthwise conv holds (B, C, dt) as the forward pass computed them
    x = torch.randn(1, 3, 96, 96)
    used: list[torch.Tensor] = []
    mixers = [stage.blocks[-1].mixer for stage in tiny.stages]
    hooks = [
        m.dw.register_forward_hook(lambda mod, _a, out, m=m: used.append((out.flatten(2)[:, 2 * m.state_dim :], m)))
        for m in mixers
    ]
    try:
        maps, _ = hidden_state_maps(tiny, x)
    finally:
        for hook in hooks:
            hook.remove()
    # the first pass through each mixer is the model's forward (state_weights may run dw again after it)
    assert [m for _, m in used[: len(mixers)]] == mixers
    for (dt, mixer), got in zip(used, maps):
        want = (dt + mixer.A.view(1, -1, 1)).softmax(-1)
        assert torch.allclose(got.flatten(2), want, atol=1e-6)


def test_state_report_shows_the_maps_of_the_models_own_input(tiny):
    from skimage import data

    image = Image.fromarray(data.chelsea())
    report = state_report(tiny, image, k=3)
    x = make_transform(tiny)(image).unsqueeze(0)
    maps, logits = hidden_state_maps(tiny, x)
    for got, want in zip(report.maps, maps):
        assert torch.equal(got, want[0])
    probs = logits.softmax(-1)[0]
    assert [p["index"] for p in report.predictions] == probs.topk(3).indices.tolist()
    assert report.image.shape == (224, 224, 3) and report.image.min() >= 0 and report.image.max() <= 1
    assert report.fusion["heads"] == pytest.approx(tiny.weights.softmax(-1).tolist())


def test_effective_tokens_counts_one_for_a_peak_and_all_for_a_uniform_map():
    peak = torch.zeros(1, 4, 5)
    peak[0, 1, 2] = 1
    uniform = torch.full((1, 4, 5), 1 / 20)
    assert effective_tokens(torch.cat([peak, uniform])).tolist() == pytest.approx([1.0, 20.0])


def test_forward_memory_counts_tensors_alive_at_once_but_not_views_or_in_place_results():
    x = torch.zeros(8, 100)
    hidden = 8 * 1000 * 4
    copy_relu = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(), nn.Linear(1000, 10))
    in_place = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(1000, 10))
    assert forward_memory(copy_relu, x) == 2 * hidden  # linear output and its ReLU copy
    assert forward_memory(in_place, x) == hidden + 8 * 10 * 4  # one hidden buffer, then the output


def test_model_summary_splits_every_parameter_into_parts(tiny):
    s = model_summary(tiny, 128)
    assert s["params"] == sum(p.numel() for p in tiny.parameters())
    assert sum(p["params"] for p in s["parts"]) == s["params"]
    assert [p["output"] for p in s["parts"]] == [[32, 8, 8], [32, 8, 8], [48, 4, 4], [64, 2, 2], [5]]
    assert [p["hidden_state"] for p in s["parts"][1:4]] == [[32, 8], [48, 6], [64, 4]]
    assert s["macs"] == efficientvim.count_flops(tiny, 128)
    assert s["forward_memory_bytes"] > 0


def test_load_model_rebuilds_a_model_made_with_overrides(tiny, tmp_path):
    path = efficientvim.save_weights(tiny, tmp_path / "tiny.safetensors", class_names=list("abcde"))
    loaded = efficientvim.load_model(path).eval()
    assert (loaded.embed_dim, loaded.depths, loaded.state_dim) == ((32, 48, 64), (1, 1, 1), (8, 6, 4))
    assert loaded.pretrained_cfg["label_names"] == list("abcde")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny(x))
