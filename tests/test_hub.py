"""Model folders and hub repos: save_pretrained / from_pretrained / push_to_hub, read by timm's own port too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

import efficientvim as ev
from conftest import randomize_
from efficientvim import CheckpointError

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 2, 1), state_dim=(8, 6, 4))
X = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def pets(tmp_path):
    model = randomize_(ev.create_model("efficientvim_m1_dist", num_classes=3, **TINY)).eval()
    model.pretrained_cfg.update(label_names=["cat", "dog", "fox"], crop_pct=0.95)
    folder = ev.save_pretrained(model, tmp_path / "pets")
    return model, folder


def test_a_saved_folder_rebuilds_the_same_model(pets):
    model, folder = pets
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "efficientvim_m1_dist" and config["num_classes"] == 3
    assert config["model_args"] == {"embed_dim": [32, 48, 64], "depths": [1, 2, 1], "state_dim": [8, 6, 4]}
    assert config["label_names"] == ["cat", "dog", "fox"] and config["pretrained_cfg"]["crop_pct"] == 0.95
    for loaded in (ev.from_pretrained(folder), ev.create_model(str(folder))):
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(X), model(X))
        assert loaded.pretrained_cfg["label_names"] == ["cat", "dog", "fox"]
        assert loaded.pretrained_cfg["crop_pct"] == 0.95
    # a backbone from the same folder: the trunk's weights, heads dropped
    features = ev.create_model(str(folder), features_only=True, out_indices=(2,))
    assert torch.equal(features.stages[2].blocks[0].mixer.A, model.stages[2].blocks[0].mixer.A)


def test_timms_own_port_reads_our_folder_and_we_read_one_timm_wrote(pets, tmp_path):
    model, folder = pets
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(theirs).__module__ == "timm.models.efficientvim"  # timm's port, not ours
    with torch.no_grad():
        torch.testing.assert_close(theirs(X), model(X), rtol=1e-5, atol=1e-6)
    # the other way: a folder written by timm's save_for_hf (config.json + model.safetensors, no metadata of ours)
    from timm.models import save_for_hf

    timm_model = randomize_(timm.create_model("efficientvim_m2", num_classes=5, **TINY), seed=3).eval()
    save_for_hf(timm_model, str(tmp_path / "from-timm"), safe_serialization=True)
    ours = ev.from_pretrained(tmp_path / "from-timm").eval()
    assert isinstance(ours, ev.EfficientViM) and ours.num_classes == 5
    with torch.no_grad():
        torch.testing.assert_close(ours(X), timm_model(X), rtol=1e-5, atol=1e-6)


def test_a_hub_repo_id_downloads_config_and_weights_through_the_cache(pets, monkeypatch):
    """The repo route, with huggingface_hub's download served from a folder (no network here)."""
    import huggingface_hub

    model, folder = pets
    asked = []

    def fake_download(repo, filename, revision=None, **kwargs):
        asked.append((repo, filename, revision))
        path = Path(folder) / filename
        if not path.exists():
            raise huggingface_hub.errors.EntryNotFoundError(filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = ev.create_model("hf-hub:someone/pets", revision="v1").eval()
    assert asked == [("someone/pets", "config.json", "v1"), ("someone/pets", "model.safetensors", "v1")]
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    assert ev.from_pretrained("someone/pets").num_classes == 3  # the prefix is optional for USER/REPO
    # a repo holding only the legacy pickle (old timm repos) is read with weights_only, never run
    torch.save(model.state_dict(), Path(folder) / "pytorch_model.bin")
    (Path(folder) / "model.safetensors").unlink()
    with torch.no_grad():
        assert torch.equal(ev.from_pretrained("someone/pets").eval()(X), model(X))


def test_push_to_hub_uploads_the_folder_and_keeps_an_existing_card(pets, monkeypatch):
    import huggingface_hub

    model, _ = pets
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def file_exists(self, repo_id, filename, revision=None):
            return repo_id == "me/has-card"

        def upload_folder(self, repo_id, folder_path, **kwargs):
            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            uploads.append((repo_id, files, kwargs))
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    speed = [dict(model="efficientvim_m1+fuse", runtime="eager", precision="fp32", batch_size=32, resolution=224,
                  threads=2, images_per_s=241.5, ms_per_image=4.14, machine="AMD EPYC (Zen 4)",
                  command="efficientvim bench --models efficientvim_m1+fuse --no-latency")]
    accuracy = [dict(dataset="digits val (360 images)", top1=99.72, command="efficientvim train")]
    assert ev.push_to_hub(model, "me/pets", speed=speed, accuracy=accuracy, private=True) == "commit"
    ev.push_to_hub(model, "me/has-card")
    (repo, files, kwargs), (_, kept, _) = uploads
    assert repo == "me/pets" and set(files) == {"README.md", "config.json", "model.safetensors"}
    assert "README.md" not in kept  # the repo's own card is not overwritten
    card = files["README.md"].decode()
    params = sum(p.numel() for p in model.parameters())
    assert f"| parameters | {params / 1e6:.2f} M |" in card
    assert f"| multiply-adds | {ev.count_flops(model, 224) / 1e6:.0f} M at 224x224 |" in card
    assert "| 241.5 | 4.14 | AMD EPYC (Zen 4) |" in card and "--no-latency`" in card
    assert "| digits val (360 images) | 99.72 | `efficientvim train` |" in card
    assert 'timm.create_model("hf-hub:me/pets", pretrained=True)' in card


def test_folder_and_repo_mistakes_are_one_line_errors(pets, tmp_path, monkeypatch):
    _, folder = pets
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json: save it with efficientvim.save_pretrained"):
        ev.from_pretrained(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not readable JSON"):
        ev.from_pretrained(broken)
    with pytest.raises(CheckpointError, match="neither a folder here nor a hub repo id"):
        ev.create_model(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "runs").mkdir()
    with pytest.raises(CheckpointError, match=r"no folder runs/typo here: check the path \(for a hub repo write"):
        ev.create_model("runs/typo")  # a local parent folder: a mistyped path, not a repo to download
    with pytest.raises(CheckpointError, match="brings its own weights"):
        ev.create_model(str(folder), checkpoint=folder / "model.safetensors")
    with pytest.raises(TypeError, match="classifier made by efficientvim.create_model"):
        ev.save_pretrained(ev.create_model("efficientvim_m1", features_only=True, **TINY), tmp_path / "f")


@pytest.mark.parametrize("offline", [False, True])
def test_weights_from_an_unreachable_hub_fail_fast_in_one_line(tmp_path, offline):
    """No network: a weights tag is refused within seconds (huggingface_hub's retries took 23 s), saying why."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a loopback port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "HF_HUB_OFFLINE": "1" if offline else "0"}
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(v, None)
    from PIL import Image

    Image.new("RGB", (96, 80), "teal").save(tmp_path / "photo.png")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "efficientvim", "predict", str(tmp_path / "photo.png"), "--model",
                           "efficientvim_m2.e450_in1k"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert time.monotonic() - start < 20  # mostly Python's start-up and imports
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    why = "offline mode (HF_HUB_OFFLINE) is set" if offline else "127.0.0.1 is unreachable (ConnectionRefusedError"
    assert f"no cached model.safetensors for hub repo timm/efficientvim_m2.e450_in1k and {why}" in done.stderr
