"""The Python API tour (docs/api.md) runs as written (lines that need a downloaded checkpoint are skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

import efficientvim

README = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_api_tour_runs(tmp_path, monkeypatch):
    block = README.read_text().split("## A tour", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        if "e450" in line and "checkpoint=" not in line:
            continue  # timm's published weights: a download
        lines.append(line.replace('checkpoint="EfficientViM_M1_e450.pth", ', "")
                     .replace(', checkpoint="EfficientViM_M2_e450.pth"', ""))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(lines), str(README), "exec"), namespace)  # noqa: S102 (our own docs)
    assert tuple(namespace["logits"].shape) == (1, 1000)
    assert efficientvim.load_model("pets.safetensors").pretrained_cfg["label_names"] == ["cat", "dog", "rabbit"]
    # the folder keeps them too, and its card states the package's licence
    assert efficientvim.from_pretrained("pets").pretrained_cfg["label_names"] == ["cat", "dog", "rabbit"]
    assert "license: mit" in Path("pets/README.md").read_text().split("---")[1].splitlines()


def test_class_names_must_name_every_class(tmp_path):
    model = efficientvim.create_model("efficientvim_m1", num_classes=3, embed_dim=(32, 48, 64), depths=(1, 1, 1))
    with pytest.raises(ValueError, match=r"class_names must be 3 strings, one per output of the model; got 1 "
                       r"entries \(Ellipsis\)"):
        efficientvim.save_weights(model, tmp_path / "w.safetensors", class_names=[...])
    with pytest.raises(ValueError, match=r"class_names must be 3 strings, one per output of the model; got 2"):
        efficientvim.save_pretrained(model, tmp_path / "pets", class_names=["cat", "dog"])
    assert not (tmp_path / "pets" / "model.safetensors").exists()
