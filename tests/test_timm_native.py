"""Our models through timm's own entry points: registry, create_model, data config, reparameterize_model."""

from __future__ import annotations

import pytest
import timm
import torch

import efficientvim
import efficientvim.timm_registry  # noqa: F401 (registers efficientvim_*_ev in timm)

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4))


def test_every_model_is_registered_beside_timms_own_with_its_pretrained_tags():
    ours = efficientvim.list_models()
    assert timm.list_models("*_ev") == sorted(f"{n}_ev" for n in ours)
    assert set(timm.list_models("efficientvim_*")) >= set(ours)  # timm's port keeps its names
    # filed in the same family (module) as timm's port, so tools that select the family select ours
    assert set(timm.list_models(module="efficientvim")) == {*ours, *(f"{n}_ev" for n in ours)}
    pretrained = {n.replace(".", "_ev.") for n in efficientvim.list_models(pretrained=True)}
    assert set(timm.list_pretrained("*_ev.*")) == pretrained


def test_timm_create_model_builds_our_model_with_timms_arguments():
    model = timm.create_model("efficientvim_m1_dist_ev", num_classes=10, drop_path_rate=0.1, **TINY)
    assert isinstance(model, efficientvim.EfficientViM) and model.num_classes == 10 and model.distilled
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 224, 224)
    features = timm.create_model("efficientvim_m4_ev", features_only=True, out_indices=(0, 2), **TINY)
    maps = features(torch.randn(1, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 8, 8), (1, 64, 2, 2)]


def test_a_pretrained_tag_reaches_our_loader(monkeypatch, tmp_path):
    """timm resolves the tag; our create_model downloads timm's published file for it (here: a local one)."""
    asked = []
    source = efficientvim.create_model("efficientvim_m2", num_classes=4, **TINY)
    path = efficientvim.save_weights(source, tmp_path / "w.safetensors")

    def fake_download(name, tag):
        asked.append((name, tag))
        return str(path)

    monkeypatch.setattr(efficientvim.registry, "download_pretrained", fake_download)
    model = timm.create_model("efficientvim_m2_ev.e300_in1k", pretrained=True)
    assert asked == [("efficientvim_m2", "e300_in1k")]
    assert torch.equal(model.heads[0].weight, source.heads[0].weight)


@pytest.mark.parametrize("name", ["efficientvim_m1_ev", "efficientvim_m2_dist_ev"])
def test_timms_reparameterize_model_leaves_no_batchnorm(name):
    from timm.utils.model import reparameterize_model

    model = timm.create_model(name, **TINY).eval()
    folded = reparameterize_model(model)
    x = torch.randn(1, 3, 64, 64)
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_timm_scripts_run_with_our_models_registered(tmp_path):
    """``python -m efficientvim.timm_registry SCRIPT ARGS`` runs a timm script (validate.py ...) as python would."""
    import subprocess
    import sys

    script = tmp_path / "validate.py"
    script.write_text("import sys, timm\n"
                      "model = timm.create_model(sys.argv[1], num_classes=3, embed_dim=(32, 48, 64))\n"
                      "print(type(model).__module__, model.num_classes, __name__)\n")
    run = [sys.executable, "-m", "efficientvim.timm_registry"]
    done = subprocess.run([*run, str(script), "efficientvim_m1_ev"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["efficientvim.model.classifier", "3", "__main__"]
    missing = subprocess.run([*run, str(tmp_path / "nope.py")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: no script {tmp_path / 'nope.py'}: pass a timm script such as validate.py (from timm's repository)"]
