"""Checkpoint loading: authors' releases, timm state dicts, our format, and every way a file can be wrong."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import efficientvim as ev

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4))


def authors_format(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm layout -> the authors' layout: LayerNorm affine as (1, C, 1) and (1, C, 1, 1) for the final map."""
    out = {}
    for k, v in state.items():
        if k.startswith("norm.3."):
            v = v.reshape(1, -1, 1, 1)
        elif re.fullmatch(r"norm\.\d\.(weight|bias)|stages\.\d\.blocks\.\d\.norm\.(weight|bias)", k):
            v = v.reshape(1, -1, 1)
        out[k] = v
    return out


@pytest.fixture(scope="module")
def reference_m1():
    """timm's efficientvim_m1_dist with randomised weights, as the source of truth."""
    import timm

    from conftest import randomize_

    return randomize_(timm.create_model("efficientvim_m1_dist"), seed=3).eval()


def test_authors_checkpoint_loads_and_matches_timm(reference_m1, tmp_path):
    state = authors_format(reference_m1.state_dict())
    assert state["stages.0.blocks.0.norm.weight"].shape == (1, 128, 1)
    assert state["norm.3.weight"].shape == (1, 320, 1, 1)
    ema = state
    raw = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}  # a different "model" entry
    path = tmp_path / "EfficientViM_M1_dist.pth"
    torch.save({"model": raw, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 299}, path)

    model = ev.create_model("efficientvim_m1_dist", checkpoint=path).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = reference_m1(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        # checkpoint_key picks the non-EMA weights
        other = ev.create_model("efficientvim_m1_dist", checkpoint=path, checkpoint_key="model").eval()
        assert not torch.allclose(other(x), expected)


def test_authors_distilled_checkpoint_loads_into_the_plain_model(reference_m1, tmp_path):
    path = tmp_path / "dist.pth"
    torch.save({"model": authors_format(reference_m1.state_dict())}, path)
    model = ev.create_model("efficientvim_m1", checkpoint=path).eval()
    torch.testing.assert_close(model.heads[0].weight, reference_m1.heads[0].weight)


def test_timm_safetensors_state_dict_loads(reference_m1, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference_m1.state_dict().items()}, str(path))
    model = ev.create_model("efficientvim_m1_dist", checkpoint=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_m1(x), rtol=1e-5, atol=1e-5)


def test_our_format_round_trips_with_metadata(tmp_path):
    model = ev.create_model("efficientvim_m2", **TINY, num_classes=3).eval()
    path = ev.save_weights(model, tmp_path / "digits.safetensors", class_names=["zero", "one", "two"])
    assert not (tmp_path / "digits.safetensors.tmp").exists()
    loaded = ev.load_model(path, **TINY).eval()
    assert loaded.model_name == "efficientvim_m2" and loaded.num_classes == 3
    assert loaded.pretrained_cfg["label_names"] == ["zero", "one", "two"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_num_classes_defaults_to_the_checkpoints_and_a_new_one_resets_the_heads(tmp_path):
    source = ev.create_model("efficientvim_m1", **TINY, num_classes=3)
    path = ev.save_weights(source, tmp_path / "w.safetensors")
    assert ev.create_model("efficientvim_m1", **TINY, checkpoint=path).num_classes == 3
    finetune = ev.create_model("efficientvim_m1", **TINY, checkpoint=path, num_classes=7)
    assert [h.out_features for h in finetune.heads] == [7] * 4
    torch.testing.assert_close(finetune.stages[0].blocks[0].alpha, source.stages[0].blocks[0].alpha)


def test_truncated_checkpoint_names_the_file(tmp_path):
    good = ev.save_weights(ev.create_model("efficientvim_m1", **TINY), tmp_path / "w.safetensors")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ev.CheckpointError, match="cut.safetensors is not a readable safetensors file"):
        ev.create_model("efficientvim_m1", **TINY, checkpoint=truncated)
    pth = tmp_path / "cut.pth"
    torch.save(ev.create_model("efficientvim_m1", **TINY).state_dict(), pth)
    pth.write_bytes(pth.read_bytes()[:3000])
    with pytest.raises(ev.CheckpointError, match="cut.pth is truncated or damaged and cannot be read"):
        ev.create_model("efficientvim_m1", **TINY, checkpoint=pth)


def test_foreign_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, path)
    with pytest.raises(ev.CheckpointError, match="resnet.pth is not an EfficientViM checkpoint .first keys: conv1"):
        ev.create_model("efficientvim_m1", checkpoint=path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ev.CheckpointError, match="notes.txt is not a PyTorch or safetensors file"):
        ev.create_model("efficientvim_m1", checkpoint=text)


def test_checkpoint_of_another_variant_lists_the_first_mismatches(tmp_path):
    path = tmp_path / "m1.pth"
    torch.save({"model": ev.create_model("efficientvim_m1").state_dict()}, path)
    expected = r"m1.pth does not fit this model: shape mismatch stages.0.downsample.conv.0.conv.weight "
    with pytest.raises(ev.CheckpointError, match=expected + r"\(768, 128, 1, 1\) vs model \(1024, 128, 1, 1\)"):
        ev.create_model("efficientvim_m2", checkpoint=path)
    ours = ev.save_weights(ev.create_model("efficientvim_m1", **TINY), tmp_path / "m1.safetensors")
    with pytest.raises(ev.CheckpointError, match="holds efficientvim_m1, not efficientvim_m3"):
        ev.create_model("efficientvim_m3", checkpoint=ours)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": _Exploit(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(ev.CheckpointError, match=r"evil.pth was refused: it contains code that would run when "
                       r"loaded \((io|_io|builtins)\.open\)"):
        ev.create_model("efficientvim_m1", checkpoint=path)
    assert not marker.exists()


def test_a_folder_given_as_checkpoint_is_named_as_a_folder(tmp_path):
    with pytest.raises(ev.CheckpointError, match="is a folder: pass the weights file inside it"):
        ev.create_model("efficientvim_m1", checkpoint=tmp_path)


def test_a_damaged_torch_file_is_called_damaged_not_code(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"model": ev.create_model("efficientvim_m1", **TINY).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ev.CheckpointError, match="cut.pth is truncated or damaged"):
        ev.create_model("efficientvim_m1", checkpoint=path)


def test_missing_checkpoint_and_missing_envelope_key(tmp_path):
    with pytest.raises(ev.CheckpointError, match="nope.pth not found"):
        ev.create_model("efficientvim_m1", checkpoint=tmp_path / "nope.pth")
    path = tmp_path / "w.pth"
    torch.save({"model": ev.create_model("efficientvim_m1", **TINY).state_dict()}, path)
    with pytest.raises(ev.CheckpointError, match="no state dict under 'model_ema'; dict entries are \\['model'\\]"):
        ev.create_model("efficientvim_m1", **TINY, checkpoint=path, checkpoint_key="model_ema")


def test_pretrained_offline_says_so_clearly(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = "import efficientvim as ev; ev.create_model('efficientvim_m2.e450_in1k')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    expected = ("no cached model.safetensors for hub repo timm/efficientvim_m2.e450_in1k and offline mode "
                "(HF_HUB_OFFLINE) is set")
    assert expected in result.stderr
